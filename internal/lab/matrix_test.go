package lab

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/policy/table"
)

// crossNodeResults are results of a lab of two nodes, with denials.
func crossNodeResults() []Result {
	tcp := table.PortSpec{Port: 80, Protocol: table.TCP}
	return []Result{
		{From: "x/a", To: "x/a", FromNode: "n1", ToNode: "n1", Port: tcp, Expected: true, Observed: true},
		{From: "x/a", To: "x/b", FromNode: "n1", ToNode: "n2", Port: tcp, Expected: false, Observed: false,
			DeniedBy: &Denial{Node: "n1", Direction: "egress", Reason: "denied_egress", Policies: []string{"x/a"}}},
		{From: "x/b", To: "x/a", FromNode: "n2", ToNode: "n1", Port: tcp, Expected: true, Observed: false,
			DeniedBy: &Denial{Node: "n1", Direction: "ingress", Reason: "denied_ingress"}},
		{From: "x/b", To: "x/b", FromNode: "n2", ToNode: "n2", Port: tcp, Expected: true, Observed: true},
		{From: "vm", To: "x/a", ToNode: "n1", Port: tcp, Expected: false, Observed: false},
		{From: "vm", To: "x/b", ToNode: "n2", Port: tcp, Expected: false, Observed: false,
			DeniedBy: &Denial{Node: "n1", Direction: "ingress", Reason: "denied_ingress"}}, // the wrong node
	}
}

// TestWriteTableNodes: with several nodes, rows and columns say their
// node and denied cells the agent that denied them.
func TestWriteTableNodes(t *testing.T) {
	var b strings.Builder
	if err := WriteTable(&b, crossNodeResults()); err != nil {
		t.Fatal(err)
	}
	want := `nodes: n1 n1, n2 n2. A denied cell says whose agent denied it: egress@n1 (the source's egress policy, at n1) or ingress@n2 (the destination's ingress policy, at n2).

80/TCP (rows: from, columns: to; . allowed, X denied, as expected; ! allowed but expected denied; ? denied but expected allowed)
          x/a (n1)      x/b (n2)
x/a (n1)  .             X egress@n1
x/b (n2)  ? ingress@n1  .
vm        X             X ingress@n1
`
	if diff := cmp.Diff(want, trimLines(b.String())); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}

	// One node: the table of a lab of one node, unchanged.
	one := crossNodeResults()[:2]
	one[1].ToNode = "n1"
	b.Reset()
	if err := WriteTable(&b, one); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "nodes:") || strings.Contains(b.String(), "egress@") || !strings.Contains(b.String(), "x/a  .    X") {
		t.Errorf("one node:\n%s", b.String())
	}
}

// trimLines removes the spaces at the ends of s's lines (tabwriter pads
// the last column).
func trimLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

func TestSummarizeDenials(t *testing.T) {
	s := SummarizeDenials(crossNodeResults())
	if s.Failed != 4 || s.Egress != 1 || s.Ingress != 1 || s.Unrecorded != 1 || len(s.Elsewhere) != 1 || s.Elsewhere[0].To != "x/b" {
		t.Errorf("%+v", s)
	}
	if got, want := s.String(), "4 failed: 1 denied by egress at the source's node, 1 by ingress at the destination's node, 1 elsewhere, 1 without a record"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// TestResultJSON: the JSON of a result is today's object plus the nodes
// and the denial.
func TestResultJSON(t *testing.T) {
	rs := crossNodeResults()
	got, err := json.Marshal([]Result{rs[1], rs[4]})
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"from":"x/a","to":"x/b","port":80,"protocol":"TCP","expected":"deny","observed":"deny","fromNode":"n1","toNode":"n2","deniedBy":{"node":"n1","direction":"egress","reason":"denied_egress","policies":["x/a"]}},` +
		`{"from":"vm","to":"x/a","port":80,"protocol":"TCP","expected":"deny","observed":"deny","toNode":"n1"}]`
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}
}

// TestPolicyExpectationNodes: a node (or a hostNetwork pod) reaches the
// pods of its own node whatever their policies, and those of other nodes
// as their ingress says.
func TestPolicyExpectationNodes(t *testing.T) {
	_, tab := load(t, threeNodeDir)
	e := PolicyExpectation(tab)
	server := netip.MustParseAddr("10.244.2.2")
	client := netip.MustParseAddr("10.244.1.2")
	node1, node2 := netip.MustParseAddr("172.18.0.1"), netip.MustParseAddr("172.18.0.2")
	icmp := table.PortSpec{Protocol: table.ICMP}
	tcp := table.PortSpec{Port: 80, Protocol: table.TCP}
	for _, tc := range []struct {
		name string
		r    Result
		want bool
	}{
		{"own node", Result{From: "Node node-2", FromKind: KindNode, FromNode: "node-2", ToNode: "node-2", Src: node2, Dst: server, Port: icmp}, true},
		{"other node", Result{From: "Node node-1", FromKind: KindNode, FromNode: "node-1", ToNode: "node-2", Src: node1, Dst: server, Port: tcp}, false},
		{"other node, open pod", Result{From: "Node node-2", FromKind: KindNode, FromNode: "node-2", ToNode: "node-1", Src: node2, Dst: client, Port: tcp}, true},
		{"hostNetwork on its node", Result{From: "x/host-2", FromKind: KindHostNetwork, FromNode: "node-2", ToNode: "node-2", Src: node2, Dst: server, Port: icmp}, true},
		{"hostNetwork elsewhere", Result{From: "x/host-1", FromKind: KindHostNetwork, FromNode: "node-1", ToNode: "node-2", Src: node1, Dst: server, Port: tcp}, false},
		{"a pod with the same labels", Result{From: "x/client", FromNode: "node-1", ToNode: "node-2", Src: client, Dst: server, Port: tcp}, true},
		{"one-node lab's node", Result{From: NodeEndpoint, Src: node1, Dst: server, Port: tcp}, true},
	} {
		if got := e(&tc.r); got != tc.want {
			t.Errorf("%s: %s: expected %v, want %v", tc.name, tc.r.String(), got, tc.want)
		}
	}
}
