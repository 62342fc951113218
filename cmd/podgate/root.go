package main

import (
	"io"

	"github.com/spf13/cobra"
)

// newRootCommand builds the podgate command tree. Output goes to stdout and
// diagnostics to stderr so that tests can capture both.
func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "podgate",
		Short:         "User-space Kubernetes NetworkPolicy enforcer with an AF_XDP fastpath",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newVersionCommand(),
		newPolicyCommand(),
		newAgentCommand(),
		newFlowsCommand(),
		newLabCommand(),
		newBenchCommand(),
	)
	return root
}
