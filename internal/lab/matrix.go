package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/podgate/podgate/policy/table"
)

// Result is one probe: what was expected and what was observed.
type Result struct {
	From, To string
	// FromKind and ToKind are the kinds of the source and the destination.
	FromKind, ToKind Kind
	// FromNode and ToNode are the nodes the source and the destination run
	// on; empty for outside hosts and Services.
	FromNode, ToNode string
	Src, Dst         netip.Addr
	Port             table.PortSpec
	// Expected and Observed say whether the connection should have worked
	// and whether it did.
	Expected, Observed bool
	// Detail says why an observed connection failed ("timeout", "refused",
	// "reset", ...); empty when it worked.
	Detail  string
	Elapsed time.Duration
	// Retries is how many times [Lab.Matrix] probed again because an
	// expected connection timed out (see [MatrixRetries]).
	Retries int
	// Started is when the (last) probe began.
	Started time.Time
	// DeniedBy is what an agent recorded about the denied flow of a probe
	// that failed: which node's agent denied it, on which side, and why
	// ([Lab.Attribute]). Nil when no agent recorded it (the probe worked,
	// no agent runs, or what failed was no policy decision).
	DeniedBy *Denial
}

// Denial is an agent's record of a denied flow, as [Result.DeniedBy].
type Denial struct {
	// Node is the node whose agent denied the flow.
	Node string `json:"node"`
	// Direction is the side that denied: "egress" (the source's policy, at
	// the source's node) or "ingress" (the destination's, at its node).
	Direction string `json:"direction,omitempty"`
	// Reason is the agent's drop reason: denied_egress, denied_ingress or
	// unknown_endpoint.
	Reason string `json:"reason"`
	// Policies are the policies that isolate the denying side.
	Policies []string `json:"policies,omitempty"`
}

// String returns "DIRECTION at node NODE" (the reason instead of the
// direction when the agent gave none).
func (d *Denial) String() string {
	what := d.Direction
	if what == "" {
		what = d.Reason
	}
	return what + " at node " + d.Node
}

// OK reports whether the observation matches the expectation.
func (r *Result) OK() bool { return r.Expected == r.Observed }

// Mark returns the result's cell in a truth table: "." allowed as
// expected, "X" denied as expected, "!" allowed but expected denied, "?"
// denied but expected allowed.
func (r *Result) Mark() string {
	switch {
	case r.Observed && r.Expected:
		return "."
	case !r.Observed && !r.Expected:
		return "X"
	case r.Observed:
		return "!"
	}
	return "?"
}

func verdict(b bool) string {
	if b {
		return "allow"
	}
	return "deny"
}

// resultJSON is the JSON form of a [Result].
type resultJSON struct {
	From     string  `json:"from"`
	To       string  `json:"to"`
	Port     uint16  `json:"port"`
	Protocol string  `json:"protocol"`
	Expected string  `json:"expected"`
	Observed string  `json:"observed"`
	Detail   string  `json:"detail,omitempty"`
	Retries  int     `json:"retries,omitempty"`
	FromNode string  `json:"fromNode,omitempty"`
	ToNode   string  `json:"toNode,omitempty"`
	DeniedBy *Denial `json:"deniedBy,omitempty"`
}

// MarshalJSON returns {"from","to","port","protocol","expected","observed"}
// with "allow" or "deny" verdicts, plus "detail" when the connection
// failed, "retries" when it was probed again, "fromNode" and "toNode" for
// ends on a node, and "deniedBy" ({"node","direction","reason",
// "policies"}) when an agent recorded the denial.
func (r Result) MarshalJSON() ([]byte, error) {
	return json.Marshal(resultJSON{
		From: r.From, To: r.To, Port: r.Port.Port, Protocol: r.Port.Protocol.String(),
		Expected: verdict(r.Expected), Observed: verdict(r.Observed), Detail: r.Detail,
		Retries: r.Retries, FromNode: r.FromNode, ToNode: r.ToNode, DeniedBy: r.DeniedBy,
	})
}

// String returns "from -> to PORT (src -> dst): expected V, observed V
// (detail) [denied: DIRECTION at node NODE]".
func (r *Result) String() string {
	s := fmt.Sprintf("%s -> %s %s (%s -> %s): expected %s, observed %s", r.From, r.To, r.Port, r.Src, r.Dst, verdict(r.Expected), verdict(r.Observed))
	if r.Detail != "" {
		s += " (" + r.Detail + ")"
	}
	if r.DeniedBy != nil {
		s += " [denied: " + r.DeniedBy.String() + "]"
	}
	return s
}

// Expectation says whether a probe's connection should work, from its
// From, To, Src, Dst and Port.
type Expectation func(r *Result) bool

// AllowAll expects every connection to work: the kernel alone
// ([EnforcerNone]).
func AllowAll(*Result) bool { return true }

// PolicyExpectation expects what the policy table allows
// ([table.Table.Lookup]). ICMP between IPv6 addresses is looked up as
// ICMPv6. A node as the source (the node, or a hostNetwork pod) reaches
// the pods of its own node (kubelet probes: podgate does not judge the
// node's own traffic to its pods); to the pods of another node it is an
// address like any other, judged by their ingress. A probe to a Service's
// ClusterIP and port is expected to work when the source's egress allows
// it (the table judges it against every ready backend) and every ready
// backend's ingress allows the source, since the node DNATs the connection
// to any of them and the backend's ingress is judged after that.
//
// PolicyExpectation takes the nodes of the source and the destination
// from the result (FromNode, ToNode; unknown means the same node) and
// puts a Service's backends on the source's node: in a lab of several
// nodes use [Lab.Expectation], which knows where each backend runs.
func PolicyExpectation(t *table.Table) Expectation {
	return policyExpectation(t, nil)
}

// policyExpectation is [PolicyExpectation] with nodeOf giving the node of
// a pod's address ("" when unknown: the source's node).
func policyExpectation(t *table.Table, nodeOf func(netip.Addr) string) Expectation {
	return func(r *Result) bool {
		host := r.From == NodeEndpoint || r.FromKind.host()
		// local reports whether the pod with address a (on node, if
		// known) is on the source's node.
		local := func(a netip.Addr, node string) bool {
			if node == "" && nodeOf != nil {
				node = nodeOf(a)
			}
			return r.FromNode == "" || node == "" || node == r.FromNode
		}
		proto := r.Port.Protocol
		if proto == table.ICMP && r.Dst.Is6() {
			proto = table.ICMPv6
		}
		if _, ok := t.ServiceByAddr(r.Dst); ok && proto.HasPorts() {
			return serviceExpectation(t, r, host, local)
		}
		if _, isPod := t.EndpointByAddr(r.Dst); host && isPod && local(r.Dst, r.ToNode) {
			return true
		}
		return t.Lookup(r.Src, r.Dst, proto, r.Port.Port).Allowed()
	}
}

// Expectation returns the lab's expectation: [PolicyExpectation] of the
// current table (knowing the node of every pod) with [EnforcerPodgate],
// [AllowAll] with [EnforcerNone].
func (l *Lab) Expectation() Expectation {
	if l.spec.Enforcer == EnforcerNone {
		return AllowAll
	}
	return policyExpectation(l.Table(), func(a netip.Addr) string {
		if ep := l.byAddr[a]; ep != nil {
			return ep.Node
		}
		return ""
	})
}

// Judge sets the Expected field of every result with e.
func Judge(results []Result, e Expectation) {
	for i := range results {
		results[i].Expected = e(&results[i])
	}
}

// Pairs returns the ordered pairs of endpoints Matrix probes: every pod,
// hostNetwork pod and outside host (and every node, with
// Spec.ProbeFromNode) to every pod, hostNetwork pod and outside host, a
// pod to itself included, but no pair without a pod (no agent judges
// those), except a node to an outside host.
func (l *Lab) Pairs() [][2]*Endpoint {
	sources := l.Endpoints()
	if l.spec.ProbeFromNode {
		for _, n := range l.nodes {
			sources = append(sources, n.ep)
		}
	}
	var out [][2]*Endpoint
	for _, s := range sources {
		for _, d := range l.endpoints {
			if s.Kind != KindPod && d.Kind != KindPod && !(s.Kind == KindNode && d.Kind == KindOutside) {
				continue
			}
			out = append(out, [2]*Endpoint{s, d})
		}
	}
	return out
}

// MatrixRetries is how many times [Lab.Matrix] probes again when a
// connection that should work timed out. A loaded machine can lose a
// probe (the upstream NetworkPolicy e2e tests retry too); an enforcer that
// wrongly denies does so every time. A connection that worked is never
// probed again, so a leak is never hidden by a retry.
const MatrixRetries = 2

// Matrix probes every pair of [Lab.Pairs] for every port, Spec.Parallel
// probes at a time, and returns the results ordered by port, then source,
// then destination. Servers are started on every destination address
// first. A probe expected to work that timed out is repeated up to
// [MatrixRetries] times (Result.Retries). When agents run, the failed
// probes are then matched with the agents' records of denied flows
// ([Lab.Attribute]). It fails only if a probe cannot be made at all or
// ctx is done.
func (l *Lab) Matrix(ctx context.Context, ports []table.PortSpec) ([]Result, error) {
	for _, d := range l.endpoints {
		for _, a := range d.IPs {
			for _, p := range ports {
				if err := l.servers.ensure(d.NS, a, p); err != nil {
					return nil, fmt.Errorf("matrix: %w", err)
				}
			}
		}
	}
	type job struct {
		i        int
		from, to string
		p        table.PortSpec
	}
	var jobs []job
	pairs := l.Pairs()
	for _, p := range ports {
		for _, pr := range pairs {
			jobs = append(jobs, job{len(jobs), pr[0].Name, pr[1].Name, p})
		}
	}
	results := make([]Result, len(jobs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan job)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range min(l.spec.Parallel, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				r, err := l.ProbeResult(ctx, j.from, j.to, j.p)
				for retries := 1; err == nil && r.Expected && !r.Observed && r.Detail == "timeout" && retries <= MatrixRetries; retries++ {
					r, err = l.ProbeResult(ctx, j.from, j.to, j.p)
					r.Retries = retries
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					continue
				}
				results[j.i] = r
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case ch <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("matrix: %w", firstErr)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("matrix: %w", err)
	}
	if err := l.Attribute(ctx, results); err != nil {
		return nil, fmt.Errorf("matrix: %w", err)
	}
	return results, nil
}

// Summary counts results.
type Summary struct {
	Probes int
	// AsExpected is the number of results whose observation matched.
	AsExpected int
	// UnexpectedAllow counts connections that worked but should not have
	// ("!"); UnexpectedDeny those that failed but should have worked ("?").
	UnexpectedAllow, UnexpectedDeny int
}

// Summarize counts results.
func Summarize(results []Result) Summary {
	var s Summary
	for i := range results {
		r := &results[i]
		s.Probes++
		switch {
		case r.OK():
			s.AsExpected++
		case r.Observed:
			s.UnexpectedAllow++
		default:
			s.UnexpectedDeny++
		}
	}
	return s
}

// OK reports whether every observation matched.
func (s Summary) OK() bool { return s.AsExpected == s.Probes }

// String returns "N probes: M as expected, A allowed but expected denied
// (!), D denied but expected allowed (?)".
func (s Summary) String() string {
	return fmt.Sprintf("%d probes: %d as expected, %d allowed but expected denied (!), %d denied but expected allowed (?)",
		s.Probes, s.AsExpected, s.UnexpectedAllow, s.UnexpectedDeny)
}

// DenialSummary counts where the failed probes of a lab of several nodes
// were denied, from their [Result.DeniedBy].
type DenialSummary struct {
	// Failed is the number of probes whose connection failed.
	Failed int
	// Egress counts those denied by the source's egress policy at the
	// source's node, Ingress those denied by the destination's ingress
	// policy at the destination's node (for a Service, at any node).
	Egress, Ingress int
	// Elsewhere counts denials recorded by another node's agent, or
	// without a side (unknown_endpoint): Elsewhere lists them.
	Elsewhere []Result
	// Unrecorded counts failed probes no agent recorded a denial of.
	Unrecorded int
}

// SummarizeDenials counts where the failed results were denied.
func SummarizeDenials(results []Result) DenialSummary {
	var s DenialSummary
	for _, r := range results {
		if r.Observed {
			continue
		}
		s.Failed++
		d := r.DeniedBy
		switch {
		case d == nil:
			s.Unrecorded++
		case d.Direction == "egress" && d.Node == r.FromNode:
			s.Egress++
		case d.Direction == "ingress" && (d.Node == r.ToNode || r.ToKind == KindService):
			s.Ingress++
		default:
			s.Elsewhere = append(s.Elsewhere, r)
		}
	}
	return s
}

// String returns "N failed: E denied by egress at the source's node, I by
// ingress at the destination's node, O elsewhere, U without a record".
func (s DenialSummary) String() string {
	return fmt.Sprintf("%d failed: %d denied by egress at the source's node, %d by ingress at the destination's node, %d elsewhere, %d without a record",
		s.Failed, s.Egress, s.Ingress, len(s.Elsewhere), s.Unrecorded)
}

// Mismatches returns the results whose observation differs from the
// expectation.
func Mismatches(results []Result) []Result {
	var out []Result
	for _, r := range results {
		if !r.OK() {
			out = append(out, r)
		}
	}
	return out
}

// WriteJSON prints results as one JSON array.
func WriteJSON(w io.Writer, results []Result) error {
	if results == nil {
		results = []Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(results)
}

// WriteTable prints one truth table per port, like `podgate policy matrix
// -o table`: rows are sources, columns destinations, and each cell says
// whether the observation agreed with the expectation ([Result.Mark]);
// "-" marks pairs that were not probed.
//
// When the results span several nodes, a first line numbers the nodes
// (n1, n2, ... in name order), each row and column says the node of its
// endpoint, and each failed cell that an agent recorded says which node's
// agent denied it on which side: "X egress@n1" (the source's egress, at
// its node n1), "X ingress@n2" (the destination's ingress, at n2).
func WriteTable(w io.Writer, results []Result) error {
	var order []table.PortSpec
	byPort := map[table.PortSpec][]Result{}
	for _, r := range results {
		if _, ok := byPort[r.Port]; !ok {
			order = append(order, r.Port)
		}
		byPort[r.Port] = append(byPort[r.Port], r)
	}
	nodes := resultNodes(results)
	if len(nodes) > 1 {
		var legend []string
		for i, n := range nodes {
			legend = append(legend, fmt.Sprintf("n%d %s", i+1, n))
		}
		if _, err := fmt.Fprintf(w, "nodes: %s. A denied cell says whose agent denied it: egress@n1 (the source's egress policy, at n1) or ingress@n2 (the destination's ingress policy, at n2).\n\n", strings.Join(legend, ", ")); err != nil {
			return err
		}
	} else {
		nodes = nil
	}
	for n, p := range order {
		if n > 0 {
			if _, err := fmt.Fprintln(w); err != nil {
				return err
			}
		}
		if err := writeGrid(w, p.String(), byPort[p], nodes); err != nil {
			return err
		}
	}
	return nil
}

// resultNodes returns the nodes the results' endpoints are on, by name.
func resultNodes(results []Result) []string {
	var out []string
	for i := range results {
		for _, n := range []string{results[i].FromNode, results[i].ToNode} {
			if n != "" && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out
}

// writeGrid prints one port's table; with nodes (a lab of several), rows
// and columns carry their endpoints' nodes and denied cells the denying
// node.
func writeGrid(w io.Writer, title string, cells []Result, nodes []string) error {
	short := func(node string) string {
		if i := slices.Index(nodes, node); i >= 0 {
			return fmt.Sprintf("n%d", i+1)
		}
		return node
	}
	label := func(name, node string) string {
		if nodes == nil || node == "" {
			return name
		}
		return name + " (" + short(node) + ")"
	}
	var rows, cols []string
	seenRow, seenCol := map[string]bool{}, map[string]bool{}
	mark := map[[2]string]string{}
	for i := range cells {
		c := &cells[i]
		row, col := label(c.From, c.FromNode), label(c.To, c.ToNode)
		if !seenRow[row] {
			seenRow[row] = true
			rows = append(rows, row)
		}
		if !seenCol[col] {
			seenCol[col] = true
			cols = append(cols, col)
		}
		m := c.Mark()
		if nodes != nil && c.DeniedBy != nil {
			what := c.DeniedBy.Direction
			if what == "" {
				what = c.DeniedBy.Reason
			}
			m += " " + what + "@" + short(c.DeniedBy.Node)
		}
		mark[[2]string{row, col}] = m
	}
	if _, err := fmt.Fprintf(w, "%s (rows: from, columns: to; . allowed, X denied, as expected; ! allowed but expected denied; ? denied but expected allowed)\n", title); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "\t")
	for _, c := range cols {
		fmt.Fprintf(tw, "%s\t", c)
	}
	fmt.Fprintln(tw)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t", r)
		for _, c := range cols {
			m, ok := mark[[2]string{r, c}]
			if !ok {
				m = "-"
			}
			fmt.Fprintf(tw, "%s\t", m)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
