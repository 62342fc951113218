package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
)

// version is set at link time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the podgate version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "podgate %s (revision %s, %s, %s/%s)\n",
				version, revision(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}

// revision is the VCS revision the binary was built from, or "unknown".
func revision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// newBuildInfo returns the podgate_build_info gauge: always 1, labelled
// with the version, revision and Go version, so that dashboards and
// alerts can tell which build each node's agent runs.
func newBuildInfo() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "podgate_build_info",
		Help: "Always 1; labels name the agent's build.",
		ConstLabels: prometheus.Labels{
			"version":   version,
			"revision":  revision(),
			"goversion": runtime.Version(),
		},
	}, func() float64 { return 1 })
}
