package lab

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podgate/podgate/policy/table"
)

// copyManifestDir copies the manifest files of dir (links followed) into
// a new temporary directory and returns it: a copy a test may edit.
func copyManifestDir(t *testing.T, dir string) string {
	t.Helper()
	out := t.TempDir()
	files, err := manifestFiles([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, filepath.Base(f)), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// editManifest replaces old by new in dir/name; old must occur exactly
// once.
func editManifest(t *testing.T, dir, name, old, new string) {
	t.Helper()
	path := filepath.Join(dir, name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), old); n != 1 {
		t.Fatalf("%s: %q occurs %d times, want once", name, old, n)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), old, new, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// moveAppPod is the move of the tests: the App pod (frontend/apppod,
// 10.0.1.20 on aks-nodepool1-2) to the DB pod's node, aks-nodepool1-0,
// as 10.0.1.21: in dir's pods.yaml, and the pod's new node and address.
func moveAppPod(t *testing.T, dir string) (node string, ip netip.Addr) {
	t.Helper()
	editManifest(t, dir, "pods.yaml", "spec:\n  nodeName: aks-nodepool1-2", "spec:\n  nodeName: aks-nodepool1-0")
	editManifest(t, dir, "pods.yaml", "podIP: 10.0.1.20\n  podIPs:\n  - ip: 10.0.1.20", "podIP: 10.0.1.21\n  podIPs:\n  - ip: 10.0.1.21")
	return "aks-nodepool1-0", netip.MustParseAddr("10.0.1.21")
}

// hasLink reports whether node n's namespace has a link called name.
func hasLink(t *testing.T, n *Node, name string) bool {
	t.Helper()
	h, err := n.NS().Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	_, err = h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestMovePod moves the App pod of the article's three-node cluster to
// another node with a new address while an agent runs on each node
// (reading manifests): its veth leaves the old node for the new one, the
// other nodes route the new address to the new node and no longer the
// old one, and once the manifests say so too, every probe of the matrix
// is as the policies say, on the new node.
func TestMovePod(t *testing.T) {
	bin, extra := buildPodgate(t)
	l := NewForTest(t, Spec{Manifests: []string{articleThreeNodes}, Prefix: testPrefix, ProbeTimeout: time.Second})
	ctx := context.Background()
	if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	ep, ok := l.Endpoint("frontend/apppod")
	if !ok {
		t.Fatal("no frontend/apppod")
	}
	oldNode, oldIP, hostIf := node(t, l, ep.Node), ep.IPs[0], ep.HostIf

	dir := copyManifestDir(t, articleThreeNodes)
	to, ip := moveAppPod(t, dir)
	if to == oldNode.Name() {
		t.Fatalf("the move keeps the pod on %s", to)
	}
	if err := l.MovePod("frontend/apppod", to, []netip.Addr{ip}); err != nil {
		t.Fatal(err)
	}
	if err := l.Apply(dir); err != nil {
		t.Fatal(err)
	}
	if hasLink(t, oldNode, hostIf) {
		t.Errorf("node %s still has %s", oldNode.Name(), hostIf)
	}
	if !hasLink(t, node(t, l, to), hostIf) {
		t.Errorf("node %s has no %s", to, hostIf)
	}
	if got, ok := l.Endpoint(ip.String()); !ok || got != ep || ep.Node != to {
		t.Errorf("%s is %v on %s, want frontend/apppod on %s", ip, got, ep.Node, to)
	}
	if _, ok := l.Endpoint(oldIP.String()); ok {
		t.Errorf("%s still names an endpoint", oldIP)
	}
	for _, n := range l.Nodes() {
		h, err := n.NS().Handle()
		if err != nil {
			t.Fatal(err)
		}
		routes, err := h.RouteGet(oldIP.AsSlice())
		h.Close()
		if err == nil && len(routes) > 0 && routes[0].Gw != nil {
			t.Errorf("node %s still routes %s via %s", n.Name(), oldIP, routes[0].Gw)
		}
	}
	if err := l.MovePod("frontend/apppod", to, []netip.Addr{netip.MustParseAddr("10.0.1.10")}); err == nil {
		t.Error("moving onto the DB pod's address: no error")
	}
	if err := l.MovePod("backend/dbpod", to, []netip.Addr{netip.MustParseAddr("10.0.1.11")}); err == nil {
		t.Error("moving the db Service's backend: no error")
	}

	// The new node's agent finds the new veth through netlink; wait for
	// it (the pod's default route and the manifests are in place).
	deadline := time.Now().Add(30 * time.Second)
	for {
		results, err := l.Matrix(ctx, allPorts)
		if err != nil {
			t.Fatal(err)
		}
		bad := Mismatches(results)
		if len(bad) == 0 {
			if len(results) != 60 {
				t.Errorf("%d probes, want 60", len(results))
			}
			break
		}
		if time.Now().After(deadline) {
			for _, r := range bad {
				t.Errorf("%s %s", r.Mark(), r.String())
			}
			t.Fatalf("30s after the move, %d of %d probes are not as the policies say", len(bad), len(results))
		}
		time.Sleep(200 * time.Millisecond)
	}
	r := probe(t, l, "testvm", "frontend/apppod", table.PortSpec{Port: 80, Protocol: table.TCP})
	if !r.Observed || r.ToNode != to || r.Dst != ip {
		t.Errorf("%s: want allowed, to %s on %s", r.String(), ip, to)
	}
}
