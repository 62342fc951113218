package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// signalContext returns the command's context, cancelled on SIGINT or
// SIGTERM, for the commands that stop gracefully (agent, lab, bench,
// flows). The other commands keep the default action of these signals, so
// that a signal ends them whatever they are doing (reading a manifest, for
// example).
func signalContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
}

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
