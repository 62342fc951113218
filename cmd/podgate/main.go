// Command podgate enforces Kubernetes NetworkPolicy in user space with an
// AF_XDP fastpath, and carries the tools around it: policy check, matrix and
// lint, the network-namespace lab, the bench harness and the flow viewer.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
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

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return newRootCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
}
