package policy_test

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// FuzzLoad feeds arbitrary bytes to the manifest loader as a file: it must
// return objects or an error naming the file, never panic; whatever it
// accepts must compile or fail with an error, and the compiled table must
// answer lookups.
func FuzzLoad(f *testing.F) {
	for _, name := range []string{"namespaces.yaml", "pods.yaml", "dbpod-policy.yaml", "apipod-policy.yaml", "apppod-policy.yaml", "testvm.yaml", "db-service.yaml"} {
		b, err := os.ReadFile(filepath.Join("../deploy/examples/aks-network-policies", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, name := range []string{"deny-instance-metadata.yaml", "frontend-default-deny.yaml"} {
		b, err := os.ReadFile(filepath.Join("../deploy/examples/aks-network-policies/cluster-network-policies", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec: {priority: 3, subject: {pods: {namespaceSelector: {}, podSelector: {}}}, egress: [{action: Pass, to: [{nodes: {}}, {networks: ['::/0']}], ports: [{portRange: {start: 1, end: 9}}]}]}\n"))
	f.Add([]byte("apiVersion: v1\nkind: Node\nmetadata: {name: n, labels: {a: b}}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec: {tier: Baseline, priority: 0, subject: {namespaces: {}}, egress: [{action: Deny, to: [{nodes: {matchLabels: {a: b}}}], protocols: [{destinationNamedPort: x}]}]}\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  status: {podIPs: [{ip: 'fd00::1'}, {ip: 10.0.0.1}]}\n"))
	f.Add([]byte(npHeader + "spec: {podSelector: {matchExpressions: [{key: a, operator: NotIn, values: [x]}]}, ingress: [{from: [{ipBlock: {cidr: 010.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 1, endPort: 65535, protocol: SCTP}, {port: http}]}]}"))
	f.Add([]byte(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"a"},"spec":{"podSelector":{},"egress":[{}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "m.yaml")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := policy.Load(p)
		if err != nil {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		tab, err := policy.Compile(&m.Cluster)
		if err != nil {
			return
		}
		_ = policy.Lint(&m.Cluster, tab)
		for _, e := range tab.Endpoints() {
			for _, a := range e.IPs {
				tab.Explain(a, netip.MustParseAddr("192.0.2.1"), table.TCP, 80)
				tab.Lookup(netip.MustParseAddr("192.0.2.1"), a, table.UDP, 53)
			}
		}
	})
}

// FuzzCompile compiles random clusters (the differential test's generator,
// seeded by the fuzzer) and checks the table against the reference
// evaluator on a sample of queries.
func FuzzCompile(f *testing.F) {
	for _, s := range []uint64{0, 1, 7, 42, 1234} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, seed uint64) {
		g := gen{rand.New(rand.NewPCG(seed, 7))}
		c := g.clusterWithTiers()
		tab, err := policy.Compile(c)
		if err != nil {
			t.Fatalf("Compile of a valid generated cluster: %v", err)
		}
		ref := newRefWorld(c)
		var addrs []netip.Addr
		for _, p := range c.Pods {
			for _, ip := range p.Status.PodIPs {
				addrs = append(addrs, netip.MustParseAddr(ip.IP))
			}
		}
		addrs = append(addrs, netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7"))
		for _, src := range addrs {
			for _, dst := range addrs {
				if src.Is4() != dst.Is4() {
					continue
				}
				for _, port := range []uint16{80, 81, 83} {
					v := tab.Lookup(src, dst, table.TCP, port)
					we, wi := ref.decide(src, dst, table.TCP, port)
					if v.Egress.Allowed() != we || v.Ingress.Allowed() != wi {
						t.Fatalf("%s -> %s TCP/%d: table %v/%v, reference %v/%v", src, dst, port, v.Egress.Allowed(), v.Ingress.Allowed(), we, wi)
					}
				}
			}
		}
	})
}
