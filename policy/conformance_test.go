package policy_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/podgate/podgate/internal/test/conformance"
	"github.com/podgate/podgate/policy"
)

// The conformance tests of sigs.k8s.io/network-policy-api v0.3.0
// (conformance/tests, embedded in the module as conformance.Manifests) run
// through the offline evaluator: internal/test/conformance reads them and
// follows them statement by statement in a cluster of two nodes, once with
// IPv4 and once with IPv6 addresses; every probe is judged by the table
// compiled from the cluster as it is at that point of the test.
// internal/lab runs the same scenarios with real connections.

// TestUpstreamConformance runs the scenarios of the upstream conformance
// tests through the table and reports how many probes pass.
func TestUpstreamConformance(t *testing.T) {
	tests := conformance.ReadTests(t)
	if len(tests) < 28 {
		t.Fatalf("found %d upstream tests, want at least 28", len(tests))
	}
	for _, fam := range []string{"IPv4", "IPv6"} {
		total := conformance.Result{}
		for _, ct := range tests {
			t.Run(fam+"/"+ct.ShortName, func(t *testing.T) {
				w := conformance.NewWorld(t, conformance.Options{IPv6: fam == "IPv6"}, ct.Manifests)
				res := conformance.Run(t, ct, w, evaluate)
				if res.Probes == 0 {
					t.Error("no probes")
				}
				for _, f := range res.Failures {
					t.Error(f)
				}
				total.Add(res)
			})
		}
		t.Logf("%s: %d upstream tests, %d of %d probes pass, %d mutations not ported", fam, len(tests), total.Passed, total.Probes, len(total.Unported))
	}
}

// evaluate judges a probe with the table compiled from the world.
func evaluate(w *conformance.World, p conformance.Probe) string {
	tab, err := policy.Compile(&w.M.Cluster)
	if err != nil {
		return fmt.Sprintf("compile: %v", err)
	}
	src, dst := netip.MustParseAddr(w.PodIP(p.Client)), netip.MustParseAddr(w.PodIP(p.Server))
	if v := tab.Lookup(src, dst, p.Protocol, p.Port); v.Allowed() != p.Want {
		e := tab.Explain(src, dst, p.Protocol, p.Port)
		return fmt.Sprintf("got %v\n    egress: %s\n    ingress: %s", v.Allowed(), e.Egress.Detail, e.Ingress.Detail)
	}
	return ""
}
