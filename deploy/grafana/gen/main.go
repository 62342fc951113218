// Command gen writes podgate's Grafana dashboards (package
// [github.com/podgate/podgate/deploy/grafana]) as JSON files:
//
//	go run ./deploy/grafana/gen -dir deploy/grafana
//
// `make dashboards` runs it; the output is committed.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/podgate/podgate/deploy/grafana"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	dir := fs.String("dir", "deploy/grafana", "directory to write the dashboards to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return grafana.Write(*dir)
}
