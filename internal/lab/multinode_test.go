package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy/table"
)

// threeNodeDir is a cluster of three nodes with pod CIDRs, hostNetwork
// pods, an outside host and a Service whose backend is on node-3 (see its
// cluster.yaml).
const threeNodeDir = "testdata/threenode"

var (
	udp80    = table.PortSpec{Port: 80, Protocol: table.UDP}
	icmpEcho = table.PortSpec{Protocol: table.ICMP}
	tcp808   = table.PortSpec{Port: 8080, Protocol: table.TCP}
)

// node returns the lab's node of the given name.
func node(t *testing.T, l *Lab, name string) *Node {
	t.Helper()
	n, ok := l.NodeNamed(name)
	if !ok {
		t.Fatalf("lab has no node %s", name)
	}
	return n
}

// TestThreeNodesKernelOnly builds the three-node cluster without agents:
// the underlay, pod CIDR and per-pod routes, the outside host and the
// Service's DNAT on every node carry every probe, over IPv4 and IPv6,
// from every pod, hostNetwork pod, node and the outside host.
func TestThreeNodesKernelOnly(t *testing.T) {
	l := NewForTest(t, Spec{Manifests: []string{threeNodeDir}, Enforcer: EnforcerNone, Prefix: testPrefix, ProbeFromNode: true, ProbeTimeout: time.Second})
	ctx := context.Background()
	if got := len(l.Nodes()); got != 3 {
		t.Fatalf("%d nodes, want 3", got)
	}
	for _, n := range l.Nodes() {
		if len(n.PodCIDRs()) != 2 {
			t.Errorf("node %s: pod CIDRs %v, want one per family", n.Name(), n.PodCIDRs())
		}
	}
	results, err := l.Matrix(ctx, allPorts)
	if err != nil {
		t.Fatal(err)
	}
	// Sources: 4 pods, 2 hostNetwork pods, vm, 3 nodes; destinations: 4
	// pods, 2 hostNetwork pods, vm; pairs without a pod left out except
	// node to vm.
	if got, want := len(results), (4*7+6*4+3)*len(allPorts); got != want {
		t.Errorf("%d results, want %d", got, want)
	}
	for _, r := range Mismatches(results) {
		t.Errorf("%s", r.String())
	}
	for _, pair := range [][2]string{
		{"x/client", "fd00:244:2::2"}, {"fd00:244:3::3", "x/client"}, {"vm", "fd00:244:2::2"}, {"Node node-1", "fd00:244:3::2"},
		{"x/server", "Service x/db"}, {"x/client", "10.96.0.10"}, {"Node node-2", "Service x/db"}, {"x/batch", "Service x/db"},
	} {
		p := allPorts[0]
		if strings.HasPrefix(pair[1], "Service") || pair[1] == "10.96.0.10" {
			p = tcp808
		}
		r, err := l.ProbeResult(ctx, pair[0], pair[1], p)
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK() || !r.Observed {
			t.Errorf("%s", r.String())
		}
	}
}

// TestThreeNodeArticle is the article's scenario with its three pods on
// the three nodes of its node pool and an agent on each: all 60 probes
// as the policies say, and every denial recorded by the agent of the
// node that owns the denying side (egress at the source's node, ingress
// at the destination's).
func TestThreeNodeArticle(t *testing.T) {
	bin, extra := buildPodgate(t)
	l := NewForTest(t, Spec{Manifests: []string{articleThreeNodes}, Prefix: testPrefix, ProbeTimeout: time.Second})
	ctx := context.Background()
	if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	results, err := l.Matrix(ctx, allPorts)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	if err := WriteTable(&text, results); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s\n%s", Summarize(results), text.String())
	if got, want := len(results), 60; got != want {
		t.Errorf("%d probes, want %d", got, want)
	}
	for _, r := range Mismatches(results) {
		t.Errorf("%s %s", r.Mark(), r.String())
	}
	checkDenials(t, results)
	nodes := map[string]bool{}
	for _, r := range results {
		if r.FromKind == KindPod {
			nodes[r.FromNode] = true
		}
	}
	if len(nodes) != 3 {
		t.Errorf("the pods are on %d nodes, want 3", len(nodes))
	}
}

// checkDenials fails unless every failed result was recorded by the agent
// of the right node: the source's for egress, the destination's for
// ingress.
func checkDenials(t *testing.T, results []Result) {
	t.Helper()
	ds := SummarizeDenials(results)
	t.Logf("%s", ds)
	if ds.Failed == 0 {
		t.Error("nothing was denied")
	}
	for _, r := range ds.Elsewhere {
		t.Errorf("denied at the wrong node: %s", r.String())
	}
	if ds.Unrecorded > 0 {
		for _, r := range results {
			if !r.Observed && r.DeniedBy == nil {
				t.Errorf("no agent recorded the denial: %s", r.String())
			}
		}
	}
}

// wantDenied checks one result: failed, denied on side dir at node, as
// expected.
func wantDenied(t *testing.T, r Result, dir, node string) {
	t.Helper()
	if r.Observed || r.Expected || r.DeniedBy == nil || r.DeniedBy.Direction != dir || r.DeniedBy.Node != node {
		t.Errorf("%s: want denied by %s at node %s", r.String(), dir, node)
	}
}

// probe probes from -> to, again (as Matrix does) when a connection
// expected to work timed out, and attributes a failure.
func probe(t *testing.T, l *Lab, from, to string, p table.PortSpec) Result {
	t.Helper()
	ctx := context.Background()
	r, err := l.ProbeResult(ctx, from, to, p)
	for retries := 1; err == nil && r.Expected && !r.Observed && r.Detail == "timeout" && retries <= MatrixRetries; retries++ {
		r, err = l.ProbeResult(ctx, from, to, p)
		r.Retries = retries
	}
	if err != nil {
		t.Fatal(err)
	}
	rs := []Result{r}
	if err := l.Attribute(ctx, rs); err != nil {
		t.Fatal(err)
	}
	return rs[0]
}

// TestCrossNodeSemantics runs an agent on each of three nodes and checks
// with real connections how two agents, each judging its own pods, give
// one verdict:
//
//   - egress is judged on the source's node and ingress on the
//     destination's; replies pass on both (every TCP, UDP and SCTP probe
//     is an echo);
//   - a Service's ClusterIP, DNATed on the source's node, to a backend on
//     another node: the source's egress at its node, the backend's
//     ingress at the backend's;
//   - a node reaches its own pods (kubelet probes); another node's
//     address reaches them only as their policies say;
//   - a hostNetwork pod is its node: labels that a podSelector matches
//     do not make it a pod;
//   - each node's agent has its own metrics and flow records, and
//     killing one node's agent cuts off that node's pods only.
func TestCrossNodeSemantics(t *testing.T) {
	bin, extra := buildPodgate(t)
	l := NewForTest(t, Spec{Manifests: []string{threeNodeDir}, Prefix: testPrefix, ProbeFromNode: true, ProbeTimeout: time.Second})
	ctx := context.Background()
	start := time.Now()
	if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	t.Logf("3 agents ready in %v", time.Since(start).Round(time.Millisecond))
	results, err := l.Matrix(ctx, allPorts)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	_ = WriteTable(&text, results)
	t.Logf("%s in %v\n%s", Summarize(results), time.Since(start).Round(time.Millisecond), text.String())
	for _, r := range Mismatches(results) {
		t.Errorf("%s %s", r.Mark(), r.String())
	}
	checkDenials(t, results)
	get := func(from, to string, p table.PortSpec) Result {
		for _, r := range results {
			if r.From == from && r.To == to && r.Port == p {
				return r
			}
		}
		t.Fatalf("no result %s -> %s %s", from, to, p)
		return Result{}
	}

	t.Run("EgressAtSourceIngressAtDestination", func(t *testing.T) {
		if r := get("x/client", "x/server", tcp80); !r.Observed {
			t.Errorf("%s", r.String())
		}
		wantDenied(t, get("x/client", "x/db", tcp80), "ingress", "node-3") // client's egress allows db
		wantDenied(t, get("x/batch", "x/server", tcp80), "egress", "node-3")
		wantDenied(t, get("x/db", "x/client", tcp80), "egress", "node-3")
		wantDenied(t, get("x/client", "x/server", icmpEcho), "ingress", "node-2")
		wantDenied(t, get("vm", "x/db", tcp80), "ingress", "node-3")
		if r := get("vm", "x/server", tcp80); !r.Observed { // the server admits the vm
			t.Errorf("%s", r.String())
		}
		// IPv6 across nodes.
		if r := probe(t, l, "x/client", "fd00:244:2::2", tcp80); !r.OK() || !r.Observed {
			t.Errorf("%s", r.String())
		}
		wantDenied(t, probe(t, l, "x/client", "fd00:244:3::2", tcp80), "ingress", "node-3")
		wantDenied(t, probe(t, l, "fd00:244:3::3", "x/server", udp80), "egress", "node-3")
	})
	t.Run("ServiceBackendOnAnotherNode", func(t *testing.T) {
		// server (node-2) -> 10.96.0.10:8080 -> db:80 (node-3).
		if r := probe(t, l, "x/server", "Service x/db", tcp808); !r.OK() || !r.Observed {
			t.Errorf("%s", r.String())
		}
		// client's egress allows db, db's ingress does not: denied at
		// node-3, after node-1 DNATed the connection.
		r := probe(t, l, "x/client", "Service x/db", tcp808)
		wantDenied(t, r, "ingress", "node-3")
		// batch's egress allows clients only: denied at its own node.
		wantDenied(t, probe(t, l, "x/batch", "10.96.0.10", tcp808), "egress", "node-3")
	})
	t.Run("Kubelet", func(t *testing.T) {
		// server denies ICMP from everyone, its own node excepted.
		if r := get("Node node-2", "x/server", icmpEcho); !r.Observed {
			t.Errorf("%s", r.String())
		}
		wantDenied(t, get("Node node-1", "x/server", tcp80), "ingress", "node-2")
		// client has no ingress policy: any node reaches it.
		if r := get("Node node-3", "x/client", tcp80); !r.Observed {
			t.Errorf("%s", r.String())
		}
	})
	t.Run("HostNetworkIsItsNode", func(t *testing.T) {
		// host-1 carries role=client, as client does, on the same node:
		// client reaches server, host-1 is node-1's address.
		wantDenied(t, get("x/host-1", "x/server", tcp80), "ingress", "node-2")
		// host-2 is node-2: it reaches server even on ICMP.
		if r := get("x/host-2", "x/server", icmpEcho); !r.Observed {
			t.Errorf("%s", r.String())
		}
		// A pod's egress to a hostNetwork pod is to its node's address:
		// batch may only reach pods labelled role=client.
		wantDenied(t, get("x/batch", "x/host-1", tcp80), "egress", "node-3")
	})
	t.Run("PerNodeAgents", func(t *testing.T) {
		for _, name := range []string{"node-1", "node-2", "node-3"} {
			n := node(t, l, name)
			m, err := n.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			denied, err := n.Flows(ctx, fastpath.FlowFilter{Verdict: "deny"})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("node %s: %d denied flows recorded, %v denied_ingress and %v denied_egress packets", name, len(denied),
				m.Get("podgate_dropped_packets_total", "reason", "denied_ingress"), m.Get("podgate_dropped_packets_total", "reason", "denied_egress"))
			for _, rec := range denied {
				local := false
				for _, p := range n.Pods() {
					for _, a := range p.IPs {
						local = local || (rec.Direction == "egress" && rec.Src.IP == a) || (rec.Direction == "ingress" && rec.Dst.IP == a)
					}
				}
				if !local {
					t.Errorf("node %s recorded a denial for a pod of another node: %+v", name, rec)
				}
			}
		}
		// db sends nothing: node-3 counts its egress denials, node-1
		// (client, which db probed) counts none of them.
		m3, err := node(t, l, "node-3").Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m3.Get("podgate_policy_denied_packets_total", "direction", "egress", "namespace", "x", "pod", "db") == 0 {
			t.Error("node-3 counted no egress denial of x/db")
		}
		m1, err := node(t, l, "node-1").Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v := m1.Get("podgate_policy_denied_packets_total", "direction", "egress", "namespace", "x", "pod", "db"); v != 0 {
			t.Errorf("node-1 counted %v egress denials of x/db, a pod of node-3", v)
		}

		// Killing node-2's agent cuts node-2's pods off (fail-closed)
		// and nothing else.
		n2 := node(t, l, "node-2")
		if err := n2.KillAgent(); err != nil {
			t.Fatal(err)
		}
		if r := probe(t, l, "x/client", "x/server", tcp80); r.Observed {
			t.Errorf("with node-2's agent down: %s", r.String())
		}
		if r := probe(t, l, "x/batch", "x/client", tcp80); !r.Observed {
			t.Errorf("node-2's agent down cut node-3 -> node-1: %s", r.String())
		}
		if err := n2.RestartAgent(ctx, os.Kill); err != nil {
			t.Fatal(err)
		}
		if r := probe(t, l, "x/client", "x/server", tcp80); !r.Observed {
			t.Errorf("after node-2's agent restarted: %s", r.String())
		}
	})
}

// TestStreamHelpers checks the stream probes without agents: each kind
// flows between two nodes, CheckCut reports a stream that still flows,
// and a stream whose receiver the network no longer reaches (a blackhole
// route on the receiver's node) passes CheckCut.
func TestStreamHelpers(t *testing.T) {
	l := NewForTest(t, Spec{Manifests: []string{threeNodeDir}, Enforcer: EnforcerNone, Prefix: testPrefix, ProbeTimeout: time.Second})
	ctx := context.Background()
	spec := func(p Pusher) StreamSpec { return StreamSpec{Pusher: p, Interval: 100 * time.Millisecond} }
	type tc struct {
		p      table.PortSpec
		pusher Pusher
		// receiver is the endpoint whose route is blackholed on its node.
		receiver string
	}
	cases := []tc{
		{tcp80, ServerPushes, "x/client"}, {tcp80, ClientPushes, "x/server"},
		{udp80, ServerPushes, "x/client"}, {udp80, ClientPushes, "x/server"},
	}
	streams := make([]*Stream, len(cases))
	for i, c := range cases {
		s, err := l.OpenStream(ctx, "x/client", "x/server", c.p, spec(c.pusher))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		streams[i] = s
	}
	waitFlowing(t, streams, 5)
	for _, s := range streams {
		if s.Spec.Pusher != ClientPushes {
			continue
		}
		// The server only receives: nothing comes back to the client.
		_ = s.conn.SetReadDeadline(time.Now().Add(3 * s.Spec.Interval))
		if n, err := s.conn.Read(make([]byte, 100)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: the client read %d bytes (%v), want nothing", s, n, err)
		}
	}
	now := time.Now()
	for _, s := range streams {
		err := s.CheckCut(ctx, now, 200*time.Millisecond, time.Second)
		if err == nil || !strings.Contains(err.Error(), "was not cut") {
			t.Errorf("%s: CheckCut of a flowing stream = %v, want an error", s, err)
		}
	}

	// Blackhole the receivers (client on node-1, server on node-2).
	for _, name := range []string{"x/client", "x/server"} {
		blackhole(t, l, name)
	}
	cut := time.Now()
	var wg sync.WaitGroup
	for _, s := range streams {
		wg.Go(func() {
			if err := s.CheckCut(ctx, cut, time.Second, time.Second); err != nil {
				t.Errorf("blackholed: %v", err)
			}
		})
	}
	wg.Wait()
	for _, s := range streams {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}
}

// waitFlowing waits until n more lines arrived on each stream, all at
// once, and fails the test otherwise.
func waitFlowing(t *testing.T, streams []*Stream, n int) {
	t.Helper()
	errs := make([]error, len(streams))
	var wg sync.WaitGroup
	for i, s := range streams {
		wg.Go(func() {
			errs[i] = s.WaitFlowing(context.Background(), n, time.Duration(n)*s.Spec.Interval+3*time.Second)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// blackhole replaces the route to a pod's addresses on its node by a
// blackhole route.
func blackhole(t *testing.T, l *Lab, name string) {
	t.Helper()
	ep, ok := l.Endpoint(name)
	if !ok {
		t.Fatalf("no endpoint %s", name)
	}
	h := netns.HandleForTest(t, node(t, l, ep.Node).NS())
	for _, a := range ep.IPs {
		r := &netlink.Route{Dst: hostNet(a), Type: unix.RTN_BLACKHOLE}
		if err := h.RouteReplace(r); err != nil {
			t.Fatalf("blackhole %s: %v", a, err)
		}
	}
}

// TestCrossNodePolicyCut is issue 15's standard for a policy change that
// cuts established connections across nodes: one end pushes a line every
// 0.5s, the other never speaks; after the change no line may arrive
// later than 1s, and the connection must stay cut (4s are watched, which
// covers two TCP retransmissions). One change closes
//
//   - server's ingress: client (node-1) -> server (node-2) must be cut by
//     node-2, the destination's node, although server's egress stays
//     open and node-1 still allows client's egress;
//   - batch's egress: batch (node-3) -> client (node-1) must be cut by
//     node-3, the source's node, although client's ingress stays open;
//
// each as TCP and UDP, with either end pushing. server (node-2) -> db
// (node-3) is not affected and must keep flowing. The agents run with
// --reverse-pickup at its default (the change comes within its first 2
// minutes) and with --reverse-pickup 0.
//
// This is issue 15's cross-node test. Before the fastpath kept cut flows
// as tombstones, it failed: after the node that denies deleted the flow,
// the next segment the far end pushed was judged as a new flow in its own
// direction, on the side the change left open, and the other node still
// held the flow and let it through (and within the reverse pick-up window
// the near end's segments too).
func TestCrossNodePolicyCut(t *testing.T) {
	bin, extra := buildPodgate(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ReversePickupDefault", nil},
		{"ReversePickupOff", []string{"--reverse-pickup", "0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := NewForTest(t, Spec{Manifests: []string{threeNodeDir}, Prefix: testPrefix, ProbeTimeout: time.Second})
			if err := l.StartAgent(context.Background(), bin, append(extra(l), tc.args...)...); err != nil {
				t.Fatal(err)
			}
			crossNodeCut(t, l)
		})
	}
}

// TestOnePolicyCut is [TestCrossNodePolicyCut] with every pod on one
// node: the same manifests without their nodeName.
func TestOnePolicyCut(t *testing.T) {
	bin, extra := buildPodgate(t)
	dir := t.TempDir()
	for _, f := range []string{"cluster.yaml", "policy.yaml", "services.yaml"} {
		b, err := os.ReadFile(filepath.Join(threeNodeDir, f))
		if err != nil {
			t.Fatal(err)
		}
		b = regexp.MustCompile(`(?m)^\s*nodeName: node-\d\n`).ReplaceAll(b, nil)
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l := NewForTest(t, Spec{Manifests: []string{dir}, Prefix: testPrefix, ProbeTimeout: time.Second})
	if n := len(l.Nodes()); n != 1 {
		t.Fatalf("%d nodes, want 1", n)
	}
	if err := l.StartAgent(context.Background(), bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	crossNodeCut(t, l)
}

// crossNodeCut is [TestCrossNodePolicyCut] on a lab whose agents run.
func crossNodeCut(t *testing.T, l *Lab) {
	ctx := context.Background()
	type stream struct {
		from, to string
		p        table.PortSpec
		pusher   Pusher
		cut      bool
	}
	var specs []stream
	// The server's ingress and batch's egress are cut; the outside vm is a
	// client of the server too (the server's egress stays open, so its
	// half of the connection alone would look allowed).
	for _, pair := range [][2]string{{"x/client", "x/server"}, {"x/batch", "x/client"}, {"vm", "x/server"}} {
		for _, p := range []table.PortSpec{tcp80, udp80} {
			for _, pusher := range []Pusher{ServerPushes, ClientPushes} {
				specs = append(specs, stream{pair[0], pair[1], p, pusher, true})
			}
		}
	}
	specs = append(specs, stream{"x/server", "x/db", tcp80, ServerPushes, false})
	streams := make([]*Stream, len(specs))
	for i, sp := range specs {
		s, err := l.OpenStream(ctx, sp.from, sp.to, sp.p, StreamSpec{Pusher: sp.pusher})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		streams[i] = s
	}
	waitFlowing(t, streams, 2)

	names, err := l.ManifestNames()
	if err != nil {
		t.Fatal(err)
	}
	policyFile := ""
	for _, n := range names {
		if strings.HasSuffix(n, "-policy.yaml") {
			policyFile = n
		}
	}
	if policyFile == "" {
		t.Fatalf("no policy file among %v", names)
	}
	cut, err := os.ReadFile(threeNodeDir + "/cut/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	change := time.Now()
	if err := l.WriteManifest(policyFile, cut); err != nil {
		t.Fatal(err)
	}
	const within, hold = time.Second, 4 * time.Second
	var wg sync.WaitGroup
	errs := make([]error, len(streams))
	for i, s := range streams {
		wg.Go(func() {
			if specs[i].cut {
				errs[i] = s.CheckCut(ctx, change, within, hold)
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Until(change.Add(within + hold))):
			}
			if n := len(s.ArrivalsAfter(change.Add(within))); n < 6 {
				errs[i] = fmt.Errorf("stream %s, which the change allows, got %d lines in the %v after the first second (last error: %v)", s, n, hold, s.Err())
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("%v", err)
		} else {
			t.Logf("ok: %s (%s)", streams[i], map[bool]string{true: "cut", false: "still flowing"}[specs[i].cut])
		}
	}
	for _, nd := range l.Nodes() {
		name := nd.Name()
		m, err := nd.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("node %s: flows rechecked %v, cut %v", name, m.Get("podgate_flows_rechecked_total"), m.Get("podgate_flows_cut_total"))
	}

	// New connections follow the new table, each denied at its node: the
	// destination's for ingress, the source's for egress.
	r := probe(t, l, "x/client", "x/server", tcp80)
	wantDenied(t, r, "ingress", r.ToNode)
	r = probe(t, l, "x/batch", "x/client", tcp80)
	wantDenied(t, r, "egress", r.FromNode)
}

// TestNodeAgentErrors: a lab of several nodes gives each agent its own
// state directory and refuses one in the arguments; a node's agent cannot
// be restarted before it was started.
func TestNodeAgentErrors(t *testing.T) {
	l := NewForTest(t, Spec{Manifests: []string{threeNodeDir}, Enforcer: EnforcerNone, Prefix: testPrefix})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := l.StartAgent(ctx, self, "--state-dir", "/tmp/x"); err == nil || !strings.Contains(err.Error(), "--state-dir") {
		t.Errorf("StartAgent with --state-dir: %v", err)
	}
	n := l.Nodes()[0]
	if err := n.RestartAgent(ctx, os.Interrupt); err == nil {
		t.Error("RestartAgent of a node never started: no error")
	}
	if err := l.StopAgent(os.Interrupt); !errors.Is(err, ErrNoAgent) {
		t.Errorf("StopAgent without agents: %v, want ErrNoAgent", err)
	}
	// The fake agent (this test binary) on every node: its arguments
	// name its node and its own state directory.
	if err := l.StartAgent(ctx, self); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, self); !errors.Is(err, ErrAgentRunning) {
		t.Errorf("second StartAgent: %v, want ErrAgentRunning", err)
	}
	for _, n := range l.Nodes() {
		if !n.AgentRunning() || n.AgentPID() == 0 {
			t.Errorf("node %s: agent not running", n.Name())
		}
	}
	pids := map[string]int{}
	for _, n := range l.Nodes() {
		pids[n.Name()] = n.AgentPID()
	}
	if err := l.RestartAgent(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Nodes() {
		if pid := n.AgentPID(); pid == 0 || pid == pids[n.Name()] {
			t.Errorf("node %s: agent PID %d after a restart, was %d", n.Name(), pid, pids[n.Name()])
		}
	}
	if err := l.KillAgent(); err != nil {
		t.Error(err)
	}
	for _, n := range l.Nodes() {
		log, err := os.ReadFile(n.AgentLog())
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{fmt.Sprintf("%q %q", "--node-name", n.Name()), fmt.Sprintf("%q %q", "--state-dir", n.StateDir())} {
			if !strings.Contains(string(log), want) {
				t.Errorf("node %s: log lacks %s:\n%s", n.Name(), want, log)
			}
		}
	}
}
