package node

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/policy/table"
)

func TestCollectorLint(t *testing.T) {
	e, err := fastpath.New(fastpath.Config{Store: &table.Store{}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Engine: e, Offload: new(offload.Offload)})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(n))
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	// Before Run: not ready, no ports.
	want := `
# HELP podgate_node_ready 1 when the kernel leg is up and the node's pods were plumbed once.
# TYPE podgate_node_ready gauge
podgate_node_ready 0
# HELP podgate_ports AF_XDP ports by kind (pod, kernel).
# TYPE podgate_ports gauge
podgate_ports{kind="kernel"} 0
podgate_ports{kind="pod"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "podgate_node_ready", "podgate_ports"); err != nil {
		t.Error(err)
	}
}
