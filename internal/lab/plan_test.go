package lab

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/policy"
)

const articleDir = "../../deploy/examples/aks-network-policies"

func load(t *testing.T, paths ...string) (*policy.Manifests, *policy.Table) {
	t.Helper()
	m, err := policy.Load(paths...)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := policy.Compile(&m.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	return m, tab
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, x := range s {
		out[i] = netip.MustParseAddr(x)
	}
	return out
}

func TestPlanArticle(t *testing.T) {
	m, tab := load(t, articleDir)
	lay, err := Plan(m, tab, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := &Layout{
		NodeName: "aks-nodepool1-0",
		Pods: []Endpoint{
			{Name: "backend/dbpod", Kind: KindPod, IPs: addrs("10.0.1.10")},
			{Name: "frontend/apipod", Kind: KindPod, IPs: addrs("10.0.1.30")},
			{Name: "frontend/apppod", Kind: KindPod, IPs: addrs("10.0.1.20")},
		},
		Outside: []Endpoint{{Name: "testvm", Kind: KindOutside, IPs: addrs("10.0.0.4")}},
		NodeIPs: addrs("10.0.1.1"),
	}
	if diff := cmp.Diff(want, lay, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("layout (-want +got):\n%s", diff)
	}
}

func TestPlanDualStack(t *testing.T) {
	m, tab := load(t, "testdata/dualstack")
	lay, err := Plan(m, tab, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if lay.NodeName != "node-1" {
		t.Errorf("node = %q, want node-1 (two pods against one)", lay.NodeName)
	}
	if got, want := len(lay.Pods), 2; got != want {
		t.Fatalf("%d pods, want %d", got, want)
	}
	if diff := cmp.Diff(addrs("10.10.0.1", "fd00:10::1"), lay.NodeIPs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("node IPs (-want +got):\n%s", diff)
	}
	if !strings.Contains(strings.Join(lay.Notes, "\n"), "pod app/remote is on node node-2, not node-1: skipped") {
		t.Errorf("notes %q lack the remote pod", lay.Notes)
	}
	if !lay.hasIPv6() {
		t.Error("hasIPv6 = false")
	}

	// The other node, by name.
	lay, err = Plan(m, tab, "node-2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(lay.Pods) != 1 || lay.Pods[0].Name != "app/remote" || lay.NodeIPs[0] != netip.MustParseAddr("10.10.1.1") {
		t.Errorf("node-2 layout: %+v", lay)
	}
	// A node without pods.
	if _, err := Plan(m, tab, "node-9", nil); !errors.Is(err, ErrPlan) {
		t.Errorf("empty node: err = %v, want ErrPlan", err)
	}
}

func TestPlanNodeIPs(t *testing.T) {
	m, tab := load(t, articleDir)
	for _, tc := range []struct {
		name string
		ips  []netip.Addr
		ok   bool
	}{
		{"given", addrs("10.0.1.200"), true},
		{"pod's address", addrs("10.0.1.10"), false},
		{"outside host's address", addrs("10.0.0.4"), false},
		{"two of a family", addrs("10.0.1.200", "10.0.1.201"), false},
		{"loopback", addrs("127.0.0.2"), false},
		{"both families", addrs("10.0.1.200", "fd00::1"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lay, err := Plan(m, tab, "", tc.ips)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err == nil && !cmp.Equal(lay.NodeIPs, tc.ips, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
				t.Errorf("node IPs = %v", lay.NodeIPs)
			}
		})
	}
	// The default skips taken addresses.
	taken := map[netip.Addr]string{netip.MustParseAddr("10.0.1.1"): "x", netip.MustParseAddr("10.0.1.2"): "y"}
	if a, ok := firstFree(netip.MustParseAddr("10.0.1.10"), taken); !ok || a != netip.MustParseAddr("10.0.1.3") {
		t.Errorf("firstFree = %v, %v; want 10.0.1.3", a, ok)
	}
}

func TestMostCommonNode(t *testing.T) {
	eps := func(nodes ...string) []policy.Endpoint {
		out := make([]policy.Endpoint, len(nodes))
		for i, n := range nodes {
			out[i].NodeName = n
		}
		return out
	}
	for _, tc := range []struct {
		nodes []string
		want  string
	}{
		{nil, DefaultNodeName},
		{[]string{""}, DefaultNodeName},
		{[]string{"b", "a"}, "a"},
		{[]string{"b", "a", "b"}, "b"},
		{[]string{"", "", "c"}, "c"},
	} {
		if got := mostCommonNode(eps(tc.nodes...)); got != tc.want {
			t.Errorf("mostCommonNode(%q) = %q, want %q", tc.nodes, got, tc.want)
		}
	}
}

func TestPlanOutsideHostErrors(t *testing.T) {
	base, err := os.ReadFile(filepath.Join(articleDir, "pods.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, doc, want string }{
		{"wrong apiVersion", "apiVersion: v1\nkind: OutsideHost\nmetadata: {name: vm}\nspec: {ips: [10.0.0.4]}\n", "apiVersion: Unsupported value"},
		{"no ips", "apiVersion: lab.podgate.dev/v1alpha1\nkind: OutsideHost\nmetadata: {name: vm}\nspec: {}\n", "spec.ips: Required value"},
		{"bad ip", "apiVersion: lab.podgate.dev/v1alpha1\nkind: OutsideHost\nmetadata: {name: vm}\nspec: {ips: [10.0.0]}\n", "spec.ips[0]: Invalid value"},
		{"unknown field", "apiVersion: lab.podgate.dev/v1alpha1\nkind: OutsideHost\nmetadata: {name: vm}\nspec: {ips: [10.0.0.4], port: 3}\n", "unknown field"},
		{"pod's address", "apiVersion: lab.podgate.dev/v1alpha1\nkind: OutsideHost\nmetadata: {name: vm}\nspec: {ips: [10.0.1.10]}\n", "already backend/dbpod's"},
		{"duplicate", "apiVersion: lab.podgate.dev/v1alpha1\nkind: OutsideHost\nmetadata: {name: vm}\nspec: {ips: [10.0.0.4, 10.0.0.4]}\n", "Duplicate value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "pods.yaml"), base, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "vm.yaml"), []byte(tc.doc), 0o600); err != nil {
				t.Fatal(err)
			}
			m, tab := load(t, dir)
			_, err := Plan(m, tab, "", nil)
			if !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrPlan containing %q", err, tc.want)
			}
		})
	}
}

func TestHostIfName(t *testing.T) {
	for _, tc := range []struct {
		i          int
		name, want string
	}{
		{0, "backend/dbpod", "veth0-dbpod"},
		{12, "ns/a-very-long-pod-name", "veth12-a-very-l"},
	} {
		if got := hostIfName(tc.i, tc.name); got != tc.want {
			t.Errorf("hostIfName(%d, %q) = %q, want %q", tc.i, tc.name, got, tc.want)
		}
	}
}
