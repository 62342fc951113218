package conformance

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// TestWorldYAML: the world written as YAML loads back into the same
// cluster: the same objects, and tables that decide every pair of pods
// alike on the suite's ports, for every upstream test's world.
func TestWorldYAML(t *testing.T) {
	ports := []table.PortSpec{{Port: 80, Protocol: table.TCP}, {Port: 8080, Protocol: table.TCP}, {Port: 53, Protocol: table.UDP},
		{Port: 5353, Protocol: table.UDP}, {Port: 9003, Protocol: table.SCTP}, {Port: uint16(HostNetworkPorts[1]), Protocol: table.TCP}}
	for _, ct := range ReadTests(t) {
		t.Run(ct.ShortName, func(t *testing.T) {
			w := NewWorld(t, Options{}, ct.Manifests)
			data, err := w.YAML()
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), "world.yaml")
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			m, err := policy.Load(p)
			if err != nil {
				t.Fatalf("load the world's YAML: %v", err)
			}
			a, b := &w.M.Cluster, &m.Cluster
			if len(a.Namespaces) != len(b.Namespaces) || len(a.Nodes) != len(b.Nodes) || len(a.Pods) != len(b.Pods) ||
				len(a.Policies) != len(b.Policies) || len(a.ClusterNetworkPolicies) != len(b.ClusterNetworkPolicies) || len(m.Other) != 0 {
				t.Fatalf("objects differ after the round trip:\n%s", data)
			}
			ta, err := policy.Compile(a)
			if err != nil {
				t.Fatal(err)
			}
			tb, err := policy.Compile(b)
			if err != nil {
				t.Fatal(err)
			}
			for _, from := range w.Pods {
				for _, to := range w.Pods {
					src, dst := netip.MustParseAddr(from.Status.PodIP), netip.MustParseAddr(to.Status.PodIP)
					for _, port := range ports {
						va, vb := ta.Lookup(src, dst, port.Protocol, port.Port), tb.Lookup(src, dst, port.Protocol, port.Port)
						if va.Allowed() != vb.Allowed() {
							t.Errorf("%s/%s -> %s/%s %s: %v before the round trip, %v after", from.Namespace, from.Name, to.Namespace, to.Name, port, va.Allowed(), vb.Allowed())
						}
					}
				}
			}
		})
	}
}
