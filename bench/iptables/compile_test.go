package iptables

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const articleDir = "../../deploy/examples/aks-network-policies"

func compileDir(t *testing.T, node string, paths ...string) *Rules {
	t.Helper()
	m, err := policy.Load(paths...)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := policy.Compile(&m.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Compile(&m.Cluster, tab, node)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", name, diff)
	}
}

// TestCompileArticle compiles the article's scenario: dbpod isolated
// for ingress (from apipod in frontend, TCP 80) and egress (nothing),
// apipod and apppod for both, with ipBlock, namespace and pod selector
// peers.
func TestCompileArticle(t *testing.T) {
	r := compileDir(t, "aks-nodepool1-0", articleDir)
	golden(t, "aks.iptables", r.IPTables)
	golden(t, "aks.ipset", r.IPSet)
	if r.Chains != 6 {
		t.Errorf("%d chains, want 6 (3 pods, both directions)", r.Chains)
	}
	if len(r.Notes) != 0 {
		t.Errorf("notes: %v", r.Notes)
	}
}

// TestCompileOtherNode: pods of other nodes get no chains, but stay
// in the peer sets.
func TestCompileOtherNode(t *testing.T) {
	r := compileDir(t, "elsewhere", articleDir)
	if r.Chains != 0 || strings.Contains(r.IPTables, ingressPfx) {
		t.Errorf("chains for pods of another node:\n%s", r.IPTables)
	}
}

// TestCompileFeatures covers named ports (ingress and egress),
// endPort ranges, protocols without ports, 0.0.0.0/0 and except, and
// identical peers sharing one set.
func TestCompileFeatures(t *testing.T) {
	dir := t.TempDir()
	const manifests = `
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]}]
status: {podIP: 10.1.0.1, podIPs: [{ip: 10.1.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: a, labels: {app: db}}
spec:
  nodeName: n2
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 9090}]}]
status: {podIP: 10.1.0.2, podIPs: [{ip: 10.1.0.2}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}, {namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}, {protocol: UDP, port: 9000, endPort: 9999}, {protocol: UDP}]
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
  egress:
  - to: [{podSelector: {}}]
    ports: [{port: http}]
  - ports: [{protocol: UDP, port: dns}]
`
	if err := os.WriteFile(filepath.Join(dir, "m.yaml"), []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	r := compileDir(t, "n1", dir)
	golden(t, "features.iptables", r.IPTables)
	golden(t, "features.ipset", r.IPSet)
	for _, want := range []string{
		"-p tcp -m tcp --dport 8080 -j ACCEPT",      // named ingress port on web
		"-p udp -m udp --dport 9000:9999 -j ACCEPT", // endPort
		"-p udp -j ACCEPT",                          // protocol without port
		"-p tcp -m tcp --dport 9090 -j RETURN",      // named egress port resolved on db
		"-p udp -m udp --dport 5353 -j RETURN",      // named egress port, any peer: web itself
	} {
		if !strings.Contains(r.IPTables, want) {
			t.Errorf("no rule with %q", want)
		}
	}
	for _, want := range []string{"0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/8 nomatch"} {
		if !strings.Contains(r.IPSet, want) {
			t.Errorf("no set member %q", want)
		}
	}
}
