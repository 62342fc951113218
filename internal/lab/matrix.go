package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/podgate/podgate/policy"
)

// Result is one probe: what was expected and what was observed.
type Result struct {
	From, To string
	Src, Dst netip.Addr
	Port     policy.PortSpec
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
	From     string `json:"from"`
	To       string `json:"to"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Expected string `json:"expected"`
	Observed string `json:"observed"`
	Detail   string `json:"detail,omitempty"`
	Retries  int    `json:"retries,omitempty"`
}

// MarshalJSON returns {"from","to","port","protocol","expected","observed"}
// with "allow" or "deny" verdicts, plus "detail" when the connection
// failed and "retries" when it was probed again.
func (r Result) MarshalJSON() ([]byte, error) {
	return json.Marshal(resultJSON{
		From: r.From, To: r.To, Port: r.Port.Port, Protocol: r.Port.Protocol.String(),
		Expected: verdict(r.Expected), Observed: verdict(r.Observed), Detail: r.Detail,
		Retries: r.Retries,
	})
}

// String returns "from -> to PORT: expected V, observed V (detail)".
func (r *Result) String() string {
	s := fmt.Sprintf("%s -> %s %s (%s -> %s): expected %s, observed %s", r.From, r.To, r.Port, r.Src, r.Dst, verdict(r.Expected), verdict(r.Observed))
	if r.Detail != "" {
		s += " (" + r.Detail + ")"
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
// ([policy.Table.Lookup]). ICMP between IPv6 addresses is looked up as
// ICMPv6. The node as a source is expected to be allowed (kubelet probes:
// podgate does not judge the node's own traffic to its pods). A probe to
// a Service's ClusterIP and port is expected to work when the source's
// egress allows it (the table judges it against every ready backend) and
// every ready backend's ingress allows the source, since the node DNATs
// the connection to any of them and the backend's ingress is judged after
// that.
func PolicyExpectation(t *policy.Table) Expectation {
	return func(r *Result) bool {
		if r.From == NodeEndpoint {
			return true
		}
		proto := r.Port.Protocol
		if proto == policy.ICMP && r.Dst.Is6() {
			proto = policy.ICMPv6
		}
		if _, ok := t.ServiceByAddr(r.Dst); ok && proto.HasPorts() {
			return serviceExpectation(t, r)
		}
		return t.Lookup(r.Src, r.Dst, proto, r.Port.Port).Allowed()
	}
}

// Expectation returns the lab's expectation: [PolicyExpectation] of the
// current table with [EnforcerPodgate], [AllowAll] with [EnforcerNone].
func (l *Lab) Expectation() Expectation {
	if l.spec.Enforcer == EnforcerNone {
		return AllowAll
	}
	return PolicyExpectation(l.Table())
}

// Judge sets the Expected field of every result with e.
func Judge(results []Result, e Expectation) {
	for i := range results {
		results[i].Expected = e(&results[i])
	}
}

// Pairs returns the ordered pairs of endpoints Matrix probes: every pod
// and outside host (and the node, with Spec.ProbeFromNode) to every pod
// and outside host, a pod to itself included, one outside host to another
// (or itself) left out.
func (l *Lab) Pairs() [][2]*Endpoint {
	sources := l.Endpoints()
	if l.spec.ProbeFromNode {
		sources = append(sources, l.node)
	}
	var out [][2]*Endpoint
	for _, s := range sources {
		for _, d := range l.endpoints {
			if s.Kind == KindOutside && d.Kind == KindOutside {
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
// [MatrixRetries] times (Result.Retries). It fails only if a probe cannot
// be made at all or ctx is done.
func (l *Lab) Matrix(ctx context.Context, ports []policy.PortSpec) ([]Result, error) {
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
		p        policy.PortSpec
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
func WriteTable(w io.Writer, results []Result) error {
	var order []policy.PortSpec
	byPort := map[policy.PortSpec][]Result{}
	for _, r := range results {
		if _, ok := byPort[r.Port]; !ok {
			order = append(order, r.Port)
		}
		byPort[r.Port] = append(byPort[r.Port], r)
	}
	for n, p := range order {
		if n > 0 {
			if _, err := fmt.Fprintln(w); err != nil {
				return err
			}
		}
		if err := writeGrid(w, p.String(), byPort[p]); err != nil {
			return err
		}
	}
	return nil
}

func writeGrid(w io.Writer, title string, cells []Result) error {
	var rows, cols []string
	seenRow, seenCol := map[string]bool{}, map[string]bool{}
	mark := map[[2]string]string{}
	for i := range cells {
		c := &cells[i]
		if !seenRow[c.From] {
			seenRow[c.From] = true
			rows = append(rows, c.From)
		}
		if !seenCol[c.To] {
			seenCol[c.To] = true
			cols = append(cols, c.To)
		}
		mark[[2]string{c.From, c.To}] = c.Mark()
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
