package main

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBuildInfo: the agent's podgate_build_info names the version and the
// Go version, and `podgate version` prints the same.
func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newBuildInfo())
	want := `
# HELP podgate_build_info Always 1; labels name the agent's build.
# TYPE podgate_build_info gauge
podgate_build_info{goversion="` + runtime.Version() + `",revision="` + revision() + `",version="` + version + `"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "podgate_build_info"); err != nil {
		t.Error(err)
	}
	out, _, err := podgate(t, "version")
	if err != nil || !strings.Contains(out, "podgate "+version+" (revision "+revision()+", "+runtime.Version()) {
		t.Errorf("podgate version: %q, %v", out, err)
	}
}
