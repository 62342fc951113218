package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

const (
	articleDir        = "../../deploy/examples/aks-network-policies"
	articleThreeNodes = articleDir + "/three-nodes"
)

func load(t *testing.T, paths ...string) (*policy.Manifests, *table.Table) {
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

// addrCmp compares addresses and prefixes.
var addrCmp = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func TestPlanArticle(t *testing.T) {
	m, tab := load(t, articleDir)
	lay, err := Plan(m, tab, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := &Layout{
		Nodes: []NodeLayout{{Name: "aks-nodepool1-0", IPs: addrs("10.0.1.1")}},
		Pods: []Endpoint{
			{Name: "backend/dbpod", Kind: KindPod, Node: "aks-nodepool1-0", IPs: addrs("10.0.1.10")},
			{Name: "frontend/apipod", Kind: KindPod, Node: "aks-nodepool1-0", IPs: addrs("10.0.1.30")},
			{Name: "frontend/apppod", Kind: KindPod, Node: "aks-nodepool1-0", IPs: addrs("10.0.1.20")},
		},
		Outside: []Endpoint{{Name: "testvm", Kind: KindOutside, IPs: addrs("10.0.0.4")}},
	}
	if diff := cmp.Diff(want, lay, addrCmp); diff != "" {
		t.Errorf("layout (-want +got):\n%s", diff)
	}
}

// TestPlanArticleThreeNodes: the article's pods on the three nodes of its
// node pool share the AKS subnet (Azure CNI), so no node has a pod CIDR
// of its own; the node subnet is the default one.
func TestPlanArticleThreeNodes(t *testing.T) {
	m, tab := load(t, articleThreeNodes)
	lay, err := Plan(m, tab, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []NodeLayout{
		{Name: "aks-nodepool1-0", IPs: addrs("172.18.0.1")},
		{Name: "aks-nodepool1-1", IPs: addrs("172.18.0.2")},
		{Name: "aks-nodepool1-2", IPs: addrs("172.18.0.3")},
	}
	if diff := cmp.Diff(want, lay.Nodes, addrCmp); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	got := map[string]string{}
	for _, p := range lay.Pods {
		got[p.Name] = p.Node
	}
	if diff := cmp.Diff(map[string]string{"backend/dbpod": "aks-nodepool1-0", "frontend/apipod": "aks-nodepool1-1", "frontend/apppod": "aks-nodepool1-2"}, got); diff != "" {
		t.Errorf("placement (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]netip.Prefix{DefaultNodeSubnet4}, lay.NodeSubnets, addrCmp); diff != "" {
		t.Errorf("node subnets (-want +got):\n%s", diff)
	}
}

func TestPlanDualStack(t *testing.T) {
	m, tab := load(t, "testdata/dualstack")
	// By default every node the pods name.
	lay, err := Plan(m, tab, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(lay.Nodes) != 2 || lay.Nodes[0].Name != "node-1" || lay.Nodes[1].Name != "node-2" {
		t.Fatalf("nodes %+v, want node-1 and node-2", lay.Nodes)
	}
	if got, want := len(lay.Pods), 3; got != want {
		t.Fatalf("%d pods, want %d", got, want)
	}
	// Both families: the node-2 pod has IPv4 only, but the lab's pods
	// have both.
	wantNodes := []NodeLayout{
		{Name: "node-1", IPs: addrs("172.18.0.1", "fd00:18::1"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.10.0.0/24"), netip.MustParsePrefix("fd00:10::/64")}},
		{Name: "node-2", IPs: addrs("172.18.0.2", "fd00:18::2"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.10.1.0/24")}},
	}
	if diff := cmp.Diff(wantNodes, lay.Nodes, addrCmp); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	if !lay.hasIPv6() {
		t.Error("hasIPv6 = false")
	}

	// One node, by name: the lab of one node, the others' pods left out.
	lay, err = Plan(m, tab, PlanOptions{NodeName: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(lay.Pods) != 2 {
		t.Fatalf("%d pods on node-1, want 2", len(lay.Pods))
	}
	if diff := cmp.Diff([]NodeLayout{{Name: "node-1", IPs: addrs("10.10.0.1", "fd00:10::1")}}, lay.Nodes, addrCmp); diff != "" {
		t.Errorf("node (-want +got):\n%s", diff)
	}
	if !strings.Contains(strings.Join(lay.Notes, "\n"), "pod app/remote is on node node-2, not node-1: skipped") {
		t.Errorf("notes %q lack the remote pod", lay.Notes)
	}
	lay, err = Plan(m, tab, PlanOptions{NodeName: "node-2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(lay.Pods) != 1 || lay.Pods[0].Name != "app/remote" || lay.Nodes[0].IPs[0] != netip.MustParseAddr("10.10.1.1") {
		t.Errorf("node-2 layout: %+v", lay)
	}
	// A node without pods.
	if _, err := Plan(m, tab, PlanOptions{NodeName: "node-9"}); !errors.Is(err, ErrPlan) {
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
			lay, err := Plan(m, tab, PlanOptions{NodeIPs: tc.ips})
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err == nil && !cmp.Equal(lay.Nodes[0].IPs, tc.ips, addrCmp) {
				t.Errorf("node IPs = %v", lay.Nodes[0].IPs)
			}
		})
	}
	// The default skips taken addresses.
	taken := map[netip.Addr]string{netip.MustParseAddr("10.0.1.1"): "x", netip.MustParseAddr("10.0.1.2"): "y"}
	if a, ok := firstFree(netip.MustParseAddr("10.0.1.10"), taken); !ok || a != netip.MustParseAddr("10.0.1.3") {
		t.Errorf("firstFree = %v, %v; want 10.0.1.3", a, ok)
	}
}

// writeManifests writes docs into a new directory as one file and returns
// the directory.
func writeManifests(t *testing.T, docs ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "m.yaml"), []byte(strings.Join(docs, "\n---\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pod returns a Pod manifest in namespace x.
func pod(name, node, ip string) string {
	s := fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: x}\nspec: {containers: [{name: c, image: i}]", name)
	if node != "" {
		s += ", nodeName: " + node
	}
	s += "}\n"
	if ip != "" {
		s += fmt.Sprintf("status: {phase: Running, podIP: %s, podIPs: [{ip: %s}]}\n", ip, ip)
	}
	return s
}

const nsX = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"

// TestPlanNodes covers the number and names of nodes, round-robin
// placement and the errors.
func TestPlanNodes(t *testing.T) {
	unnamed := writeManifests(t, nsX, pod("a", "", "10.1.0.1"), pod("b", "", "10.1.0.2"), pod("c", "", "10.1.0.3"))
	named := writeManifests(t, nsX, pod("a", "n2", "10.1.0.1"), pod("b", "n1", "10.1.0.2"), pod("c", "n2", "10.1.0.3"), pod("d", "", "10.1.0.4"))
	for _, tc := range []struct {
		name  string
		dir   string
		o     PlanOptions
		nodes []string
		place map[string]string
		err   string
	}{
		{name: "one by default", dir: unnamed, nodes: []string{"lab-node"},
			place: map[string]string{"x/a": "lab-node", "x/b": "lab-node", "x/c": "lab-node"}},
		{name: "round-robin", dir: unnamed, o: PlanOptions{Nodes: 2}, nodes: []string{"lab-node-1", "lab-node-2"},
			place: map[string]string{"x/a": "lab-node-1", "x/b": "lab-node-2", "x/c": "lab-node-1"}},
		{name: "named, by name", dir: named, nodes: []string{"n1", "n2"},
			place: map[string]string{"x/a": "n2", "x/b": "n1", "x/c": "n2", "x/d": "n1"}},
		{name: "named and more", dir: named, o: PlanOptions{Nodes: 3}, nodes: []string{"n1", "n2", "lab-node-3"},
			place: map[string]string{"x/a": "n2", "x/b": "n1", "x/c": "n2", "x/d": "n1"}},
		{name: "one by name", dir: named, o: PlanOptions{NodeName: "n1"}, nodes: []string{"n1"},
			place: map[string]string{"x/b": "n1", "x/d": "n1"}},
		{name: "too few", dir: named, o: PlanOptions{Nodes: 1}, err: "the pods are on 2 nodes (n1, n2): cannot build them on 1"},
		{name: "name and number", dir: named, o: PlanOptions{NodeName: "n1", Nodes: 2}, err: `node name "n1" builds one node`},
		{name: "node IPs with nodes", dir: named, o: PlanOptions{NodeIPs: addrs("10.9.0.1")}, err: "node addresses: only for a lab of one node"},
		{name: "subnet with one node", dir: unnamed, o: PlanOptions{NodeSubnets: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}, err: "a lab of one node has no underlay"},
		{name: "subnet not masked", dir: named, o: PlanOptions{NodeSubnets: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24")}}, err: "want a unicast network address"},
		{name: "subnet too small", dir: named, o: PlanOptions{NodeSubnets: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/31")}}, err: "no room for 2 nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, tab := load(t, tc.dir)
			lay, err := Plan(m, tab, tc.o)
			if tc.err != "" {
				if !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want ErrPlan with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var nodes []string
			for _, n := range lay.Nodes {
				nodes = append(nodes, n.Name)
			}
			place := map[string]string{}
			for _, p := range lay.Pods {
				place[p.Name] = p.Node
			}
			if diff := cmp.Diff(tc.nodes, nodes); diff != "" {
				t.Errorf("nodes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.place, place); diff != "" {
				t.Errorf("placement (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPlanUnderlay covers node subnets (default, moved past manifest
// addresses, given) and pod CIDRs.
func TestPlanUnderlay(t *testing.T) {
	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {clusterIP: 172.18.1.9, clusterIPs: [172.18.1.9], ports: [{port: 80}]}\n"
	dir := writeManifests(t, nsX,
		pod("a", "n1", "10.1.1.2"), pod("b", "n1", "10.1.1.3"),
		pod("c", "n2", "10.1.2.2"), pod("d", "n2", "10.1.1.200"), // d breaks n2's /24 and n1's
		pod("e", "n3", "172.18.0.5"), // in the default subnet
		svc)
	m, tab := load(t, dir)
	lay, err := Plan(m, tab, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// 172.18.0.0/24 holds a pod, 172.18.1.0/24 a ClusterIP.
	if diff := cmp.Diff([]netip.Prefix{netip.MustParsePrefix("172.18.2.0/24")}, lay.NodeSubnets, addrCmp); diff != "" {
		t.Errorf("subnets (-want +got):\n%s", diff)
	}
	want := []NodeLayout{
		{Name: "n1", IPs: addrs("172.18.2.1")},
		{Name: "n2", IPs: addrs("172.18.2.2")},
		{Name: "n3", IPs: addrs("172.18.2.3"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("172.18.0.0/24")}},
	}
	if diff := cmp.Diff(want, lay.Nodes, addrCmp); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}

	// A given subnet may hold pods (Azure CNI): the nodes take free
	// addresses, and no pod CIDR overlaps it.
	lay, err = Plan(m, tab, PlanOptions{NodeSubnets: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	want = []NodeLayout{
		{Name: "n1", IPs: addrs("10.1.1.1")},
		{Name: "n2", IPs: addrs("10.1.1.4")},
		{Name: "n3", IPs: addrs("10.1.1.5"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("172.18.0.0/24")}},
	}
	if diff := cmp.Diff(want, lay.Nodes, addrCmp); diff != "" {
		t.Errorf("nodes in a given subnet (-want +got):\n%s", diff)
	}

	// nextPrefix and lastAddr.
	for _, tc := range []struct{ p, next, last string }{
		{"172.18.0.0/24", "172.18.1.0/24", "172.18.0.255"},
		{"10.0.255.0/24", "10.1.0.0/24", "10.0.255.255"},
		{"fd00:18::/64", "fd00:18:0:1::/64", "fd00:18::ffff:ffff:ffff:ffff"},
	} {
		p := netip.MustParsePrefix(tc.p)
		if n, ok := nextPrefix(p); !ok || n != netip.MustParsePrefix(tc.next) {
			t.Errorf("nextPrefix(%s) = %v, %v; want %s", p, n, ok, tc.next)
		}
		if l := lastAddr(p); l != netip.MustParseAddr(tc.last) {
			t.Errorf("lastAddr(%s) = %v, want %s", p, l, tc.last)
		}
	}
	if _, ok := nextPrefix(netip.MustParsePrefix("255.255.255.0/24")); ok {
		t.Error("nextPrefix of the last /24 succeeded")
	}
}

// TestPlanHostNetwork: a hostNetwork pod is placed on its node and has
// its node's addresses.
func TestPlanHostNetwork(t *testing.T) {
	host := "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {hostNetwork: true, nodeName: n2, containers: [{name: c, image: i}]}\nstatus: {phase: Running, podIP: 10.9.9.9, podIPs: [{ip: 10.9.9.9}]}\n"
	m, tab := load(t, writeManifests(t, nsX, pod("a", "n1", "10.1.1.2"), host))
	lay, err := Plan(m, tab, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Endpoint{{Name: "x/h", Kind: KindHostNetwork, Node: "n2", IPs: addrs("172.18.0.2")}}
	if diff := cmp.Diff(want, lay.HostNetwork, addrCmp); diff != "" {
		t.Errorf("hostNetwork pods (-want +got):\n%s", diff)
	}
	if !strings.Contains(strings.Join(lay.Notes, "\n"), "hostNetwork pod x/h: status.podIPs [10.9.9.9] are not its node's addresses") {
		t.Errorf("notes %q", lay.Notes)
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
			_, err := Plan(m, tab, PlanOptions{})
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
