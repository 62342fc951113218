// Command podgate enforces Kubernetes NetworkPolicy in user space with an
// AF_XDP fastpath, and carries the tools around it: policy check, matrix and
// lint, the network-namespace lab, the bench harness and the flow viewer.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
)

func main() {
	if err := run(); err != nil {
		var ee *exitError
		if !errors.As(err, &ee) {
			fmt.Fprintln(os.Stderr, "podgate:", err)
		}
		os.Exit(exitCode(err))
	}
}

// run runs the command tree. Signals keep their default action (ending
// the process at once) except in the commands that stop gracefully, which
// catch them with signalContext.
func run() error {
	return newRootCommand(os.Stdout, os.Stderr).ExecuteContext(context.Background())
}
