package iptables_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/podgate/podgate/bench"
	"github.com/podgate/podgate/bench/iptables"
	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// TestApplyEnforcesArticle applies the compiled rules of the
// article's scenario in a lab's node namespace and probes every pair with
// TCP, UDP and SCTP port 80 and ICMP: what the kernel lets through must be
// exactly what the policy engine decides.
func TestApplyEnforcesArticle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, iptables)")
	}
	ctx := context.Background()
	if err := bench.EnsureTools(ctx, t.Output()); err != nil {
		t.Fatal(err)
	}
	l := lab.NewForTest(t, lab.Spec{Manifests: []string{"../../deploy/examples/aks-network-policies"}, Prefix: "pgbkern", Enforcer: lab.EnforcerNone, ProbeTimeout: time.Second})
	m, err := policy.Load("../../deploy/examples/aks-network-policies")
	if err != nil {
		t.Fatal(err)
	}
	tab, err := policy.Compile(&m.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	r, err := iptables.Compile(&m.Cluster, tab, l.NodeName())
	if err != nil {
		t.Fatal(err)
	}
	node := l.Node().NS
	if _, err := iptables.Apply(ctx, node, r); err != nil {
		t.Fatal(err)
	}
	ports, err := table.ParsePortSpecs("80/TCP,80/UDP,80/SCTP,ICMP")
	if err != nil {
		t.Fatal(err)
	}
	results, err := l.Matrix(ctx, ports)
	if err != nil {
		t.Fatal(err)
	}
	lab.Judge(results, lab.PolicyExpectation(l.Table()))
	denied := 0
	for _, res := range results {
		if !res.OK() {
			t.Errorf("%s %s", res.Mark(), res.String())
		}
		if !res.Observed {
			denied++
		}
	}
	if denied == 0 {
		t.Error("nothing was denied")
	}
	t.Logf("%v, %d denied", lab.Summarize(results), denied)
	if err := iptables.Clear(ctx, node); err != nil {
		t.Fatal(err)
	}
}
