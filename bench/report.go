package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Report is everything a run measured, with the machine it ran on. Its
// JSON form (WriteJSON) holds every raw number.
//
// Results holds only the quiet machine's results of none, iptables and
// podgate with its default flags (and Settings.AgentArgs); the other runs
// are in lists of their own with the same entry shape: VariantResults
// (quiet, enforcer "podgate-NAME" of Variants) and BusyResults (the
// busy-node pass, every enforcer, with hog_cpu_share).
type Report struct {
	Started   time.Time  `json:"started"`
	Finished  time.Time  `json:"finished"`
	Seconds   float64    `json:"seconds"`
	Command   string     `json:"command,omitempty"`
	Version   string     `json:"podgate_version,omitempty"`
	Quick     bool       `json:"quick"`
	Machine   Machine    `json:"machine"`
	LoadAtEnd [3]float64 `json:"load_average_at_end"`
	Pinning   string     `json:"pinning"`
	// Baseline says how the kernel baseline was enforced.
	Baseline  string            `json:"baseline"`
	Cluster   ClusterSize       `json:"cluster"`
	Settings  Settings          `json:"settings"`
	Generator GeneratorCapacity `json:"generator"`
	Checks    []Check           `json:"checks"`
	Results   []Result          `json:"results"`
	// Variants are the agent configurations measured besides the
	// default one; VariantResults their quiet results.
	Variants       []Variant `json:"variants,omitempty"`
	VariantResults []Result  `json:"variant_results,omitempty"`
	// BusyNode describes the busy-node pass and BusyResults holds its
	// results (absent without --busy-node).
	BusyNode    *BusyNode `json:"busy_node,omitempty"`
	BusyResults []Result  `json:"busy_results,omitempty"`
	// Idle is the idle cost of every agent configuration.
	Idle    []IdleCost   `json:"idle_cost,omitempty"`
	Control []Control    `json:"control_plane"`
	Drops   []DropSample `json:"podgate_drops"`
	Goals   []Goal       `json:"goals"`
	Notes   []string     `json:"notes,omitempty"`
}

// BusyNode is the busy-node pass: a CPU hog on every CPU (nice 0, hog i
// pinned to CPU i) while everything was measured again.
type BusyNode struct {
	Hogs    int    `json:"hogs"`
	Command string `json:"hog_command"`
	// HogShare is the hogs' CPU time over their wall time during the
	// pass, averaged over the hogs (1: each hog had its CPU to itself);
	// HogSharePerCPU the same per hog, hog i on CPU i.
	HogShare       float64    `json:"hog_cpu_share"`
	HogSharePerCPU []float64  `json:"hog_cpu_share_per_cpu"`
	Seconds        float64    `json:"seconds"`
	LoadAtStart    [3]float64 `json:"load_average_at_start"`
	LoadAtEnd      [3]float64 `json:"load_average_at_end"`
	// Generator is the generator's ceiling with the hogs running (the
	// busy pass's rate searches start there).
	Generator GeneratorCapacity `json:"generator"`
}

// ClusterSize is the synthetic cluster in the tables.
type ClusterSize struct {
	Namespaces    int `json:"namespaces"`
	Pods          int `json:"pods"`
	BenchPolicies int `json:"bench_policies"`
}

// Settings are the measurement parameters.
type Settings struct {
	Step           float64 `json:"step_seconds"`
	MaxTrials      int     `json:"max_trials"`
	MaxLoss        float64 `json:"max_loss"`
	MeasureFlows   int     `json:"measure_flows"`
	FrameBytes     int     `json:"frame_bytes"`
	TCPSeconds     float64 `json:"tcp_seconds"`
	ConnSeconds    float64 `json:"conn_seconds"`
	ConnWorkers    int     `json:"conn_workers"`
	LatencySeconds float64 `json:"latency_seconds"`
	LatencyRate    float64 `json:"latency_rate"`
	Policies       []int   `json:"policies"`
	Flows          []int   `json:"flows"`
	// AgentArgs are the extra arguments of every agent run (--agent-arg),
	// the default one included.
	AgentArgs []string `json:"agent_args,omitempty"`
	// BusyFlows are the flow counts of the busy pass (quick: none).
	BusyFlows []int `json:"busy_flows,omitempty"`
}

// GeneratorCapacity is the generator into the sink over a direct veth
// pair, no gateway in the path.
type GeneratorCapacity struct {
	PPS        float64 `json:"pps"`
	OfferedPPS float64 `json:"offered_pps"`
	Sent       uint64  `json:"sent"`
	Received   uint64  `json:"received"`
}

// Check is one allowed/denied probe made before measuring an enforcer.
type Check struct {
	Enforcer string `json:"enforcer"`
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port"`
	Expected string `json:"expected"`
	Observed string `json:"observed"`
	// Busy marks the checks of the busy-node pass.
	Busy bool `json:"busy,omitempty"`
	// Attempts is how many probes were made: one, or up to three for an
	// allowed pair whose probe timed out; Detail is the last failure.
	Attempts int    `json:"attempts"`
	Detail   string `json:"detail,omitempty"`
}

// Result is what one enforcer did with one policy count (and, when Flows
// is not 0, with that many flows tracked: then only Forwarding is set).
type Result struct {
	Enforcer        string        `json:"enforcer"`
	Policies        int           `json:"policies"`
	Flows           int           `json:"flows,omitempty"`
	Forwarding      *SearchResult `json:"forwarding,omitempty"`
	TCP             *IPerf        `json:"tcp,omitempty"`
	Conn            *ConnRate     `json:"connections,omitempty"`
	Latency         *Latency      `json:"latency,omitempty"`
	PrefillSent     uint64        `json:"prefill_sent,omitempty"`
	ConntrackBefore float64       `json:"conntrack_entries_before,omitempty"`
	ConntrackAfter  float64       `json:"conntrack_entries_after,omitempty"`
	Load            [3]float64    `json:"load_average"`
	// HogShare is set in busy results only: the CPU hogs' mean CPU share
	// while this result was measured (see [BusyNode]).
	HogShare float64 `json:"hog_cpu_share,omitempty"`
}

// Control is the control-plane cost of one enforcer at one size.
type Control struct {
	Enforcer string `json:"enforcer"`
	Policies int    `json:"policies"`
	Flows    int    `json:"flows,omitempty"`
	// CompileSeconds is policy.Compile in the bench process (median of
	// three); for iptables it is the input of the rule compiler.
	CompileSeconds float64 `json:"compile_seconds,omitempty"`
	// AgentCompileSeconds is podgate_table_compile_duration_seconds;
	// AgentReadySeconds the agent's start until /readyz.
	AgentCompileSeconds float64 `json:"agent_compile_seconds,omitempty"`
	AgentReadySeconds   float64 `json:"agent_ready_seconds,omitempty"`
	// RuleCompileSeconds is CompileKernelRules (iptables).
	RuleCompileSeconds float64 `json:"rule_compile_seconds,omitempty"`
	// ApplySeconds is ipset restore plus iptables-legacy-restore.
	ApplySeconds float64 `json:"apply_seconds,omitempty"`
	// Rules: for podgate the compiled rules of the whole table, for
	// iptables the rules in the node's chains.
	Rules      int `json:"rules"`
	Chains     int `json:"chains,omitempty"`
	Sets       int `json:"sets,omitempty"`
	SetMembers int `json:"set_members,omitempty"`
	// KernelSetBytes is the ipsets' "Size in memory".
	KernelSetBytes float64 `json:"kernel_set_bytes,omitempty"`
	// RSSBytes is the agent's process_resident_memory_bytes once ready
	// (with Flows: after the flow-table measurement); RSSAfterBytes after
	// the measurements.
	RSSBytes          float64 `json:"rss_bytes,omitempty"`
	RSSAfterBytes     float64 `json:"rss_after_bytes,omitempty"`
	ConntrackCapacity int     `json:"conntrack_capacity,omitempty"`
}

// DropSample is podgate's drop counters (podgate_dropped_packets_total
// by reason, and the AF_XDP socket counters by interface) at the end of
// one agent run.
type DropSample struct {
	// Enforcer is podgate or a variant's name; Busy marks the busy pass.
	Enforcer string             `json:"enforcer"`
	Busy     bool               `json:"busy,omitempty"`
	Policies int                `json:"policies"`
	Flows    int                `json:"flows,omitempty"`
	Reasons  map[string]float64 `json:"reasons"`
}

// Goal is one target of the issue and whether the run met it. A goal the
// run could not judge (its measurement was not made) has NotMeasured set
// and Met false.
type Goal struct {
	Name        string `json:"name"`
	Target      string `json:"target"`
	Value       string `json:"value"`
	Met         bool   `json:"met"`
	NotMeasured bool   `json:"not_measured,omitempty"`
}

func (r *Report) note(s string) {
	if !slices.Contains(r.Notes, s) {
		r.Notes = append(r.Notes, s)
	}
}

// find returns the quiet result of an enforcer (none, iptables, podgate)
// at a policy count and flow count (the none baseline has one result,
// whatever the count).
func (r *Report) find(enforcer string, policies, flows int) *Result {
	return findResult(r.Results, enforcer, policies, flows)
}

// lookup returns the result of any enforcer, variants included, of the
// quiet or the busy pass.
func (r *Report) lookup(busy bool, enforcer string, policies, flows int) *Result {
	if busy {
		return findResult(r.BusyResults, enforcer, policies, flows)
	}
	if x := findResult(r.Results, enforcer, policies, flows); x != nil {
		return x
	}
	return findResult(r.VariantResults, enforcer, policies, flows)
}

func findResult(list []Result, enforcer string, policies, flows int) *Result {
	for i := range list {
		x := &list[i]
		if x.Enforcer == enforcer && x.Flows == flows && (x.Policies == policies || enforcer == EnforcerNone) {
			return x
		}
	}
	return nil
}

// podgates returns podgate and the variants' enforcer names, in order.
func (r *Report) podgates() []string {
	out := []string{EnforcerPodgate}
	for _, v := range r.Variants {
		out = append(out, v.Enforcer())
	}
	return out
}

func (r *Report) control(enforcer string, policies, flows int) *Control {
	for i := range r.Control {
		c := &r.Control[i]
		if c.Enforcer == enforcer && c.Policies == policies && c.Flows == flows {
			return c
		}
	}
	return nil
}

// addDrops records podgate_dropped_packets_total by reason.
func (r *Report) addDrops(enforcer string, busy bool, p int, flows *int, m Metrics) {
	d := DropSample{Enforcer: enforcer, Busy: busy, Policies: p, Reasons: map[string]float64{}}
	if flows != nil {
		d.Flows = *flows
	}
	const name = `podgate_dropped_packets_total{reason="`
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, name); ok && v > 0 {
			reason, _, _ := strings.Cut(rest, `"`)
			d.Reasons[reason] = v
		}
		// The AF_XDP socket counters: frames the kernel could not hand
		// to the agent, by interface.
		for _, x := range []string{"podgate_xsk_rx_dropped_total", "podgate_xsk_fill_ring_empty_total", "podgate_xsk_rx_ring_full_total", "podgate_xsk_tx_ring_full_total", "podgate_xsk_alloc_failures_total"} {
			if rest, ok := strings.CutPrefix(k, x+`{interface="`); ok && v > 0 {
				iface, _, _ := strings.Cut(rest, `"`)
				d.Reasons[strings.TrimPrefix(strings.TrimSuffix(x, "_total"), "podgate_")+" "+iface] = v
			}
		}
	}
	r.Drops = append(r.Drops, d)
}

// ratio returns a/b, or NaN.
func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// point is one policy count and flow count (0: the 1,000 measured flows
// only) of the results tables.
type point struct{ policies, flows int }

func (pt point) String() string {
	if pt.flows == 0 {
		return fmt.Sprintf("%d policies", pt.policies)
	}
	return fmt.Sprintf("%d policies, %d flows", pt.policies, pt.flows)
}

// points returns every policy count, then the largest one with each flow
// count.
func (r *Report) points() []point {
	pols := r.Settings.Policies
	var out []point
	for _, p := range pols {
		out = append(out, point{p, 0})
	}
	if len(pols) > 0 {
		for _, f := range r.Settings.Flows {
			out = append(out, point{pols[len(pols)-1], f})
		}
	}
	return out
}

// worstOf returns the worst value of f over pts (the smallest, or with
// lower the largest) and where it was; ok is false if f had no value.
func worstOf(pts []point, lower bool, f func(pt point) (float64, bool)) (v float64, at point, ok bool) {
	for _, pt := range pts {
		x, good := f(pt)
		if !good || math.IsNaN(x) || math.IsInf(x, 0) {
			continue
		}
		if !ok || (!lower && x < v) || (lower && x > v) {
			v, at, ok = x, pt, true
		}
	}
	return v, at, ok
}

// Rows of the results tables that goals refer to.
const (
	rowForwarding = iota
	rowSaturated
	rowTCP
	rowConn
	rowP50
	rowP99
)

// Limits of the goals of issue 10.
const (
	goalFwdVsIPTables    = 1.0
	goalFwdVsIPTablesStr = 1.3
	goalFwdVsRouting     = 0.9
	goalFwdVsRoutingStr  = 1.0
	goalTCPVsRouting     = 0.9
	goalConnVsIPTables   = 1.0
	goalP99VsIPTables    = 1.2
	goalP50AddedUS       = 10.0
	goalBusyWithin       = 0.10
	goalIdleCPUPercent   = 1.0
	goalPinnedPerPort    = 1 << 20
)

// evaluate fills Goals: the goals of issue 10 for podgate with its
// default flags, each judged at its worst policy count (and flow count),
// then the older "no drop from the fewest to the most policies".
func (r *Report) evaluate() {
	r.Goals = nil
	if len(r.Settings.Policies) == 0 {
		return
	}
	rs := rows()
	all, base := r.points(), []point{}
	for _, pt := range all {
		if pt.flows == 0 {
			base = append(base, pt)
		}
	}
	// vs returns podgate's value of row over the other enforcer's at a
	// point, of the quiet pass.
	vs := func(row int, other string) func(pt point) (float64, bool) {
		return func(pt point) (float64, bool) {
			a, b := r.lookup(false, EnforcerPodgate, pt.policies, pt.flows), r.lookup(false, other, pt.policies, pt.flows)
			if other == EnforcerNone {
				b = r.lookup(false, EnforcerNone, 0, 0)
			}
			if a == nil || b == nil {
				return 0, false
			}
			x, ok1 := rs[row].get(a)
			y, ok2 := rs[row].get(b)
			if !ok1 || !ok2 || y == 0 {
				return 0, false
			}
			return x / y, true
		}
	}
	ratioGoal := func(name, target string, pts []point, lower bool, f func(point) (float64, bool), met func(float64) bool, stretch func(float64) bool) {
		v, at, ok := worstOf(pts, lower, f)
		g := Goal{Name: name, Target: target}
		if !ok {
			g.Value, g.NotMeasured = "not measured", true
		} else {
			g.Value = fmt.Sprintf("%.2f× (worst, at %s)", v, at)
			g.Met = met(v)
			if stretch != nil && stretch(v) {
				g.Value += "; stretch met"
			}
		}
		r.Goals = append(r.Goals, g)
	}
	ratioGoal("forwarding at <0.1% loss vs iptables/ipset", fmt.Sprintf("≥ %.1f× (stretch ≥ %.1f×)", goalFwdVsIPTables, goalFwdVsIPTablesStr),
		all, false, vs(rowForwarding, EnforcerIPTables),
		func(v float64) bool { return v >= goalFwdVsIPTables }, func(v float64) bool { return v >= goalFwdVsIPTablesStr })
	ratioGoal("forwarding at <0.1% loss vs plain kernel routing", fmt.Sprintf("≥ %.1f× (stretch ≥ %.1f×)", goalFwdVsRouting, goalFwdVsRoutingStr),
		all, false, vs(rowForwarding, EnforcerNone),
		func(v float64) bool { return v >= goalFwdVsRouting }, func(v float64) bool { return v >= goalFwdVsRoutingStr })
	ratioGoal("TCP bulk (iperf3) vs plain kernel routing", fmt.Sprintf("≥ %.1f×", goalTCPVsRouting),
		base, false, vs(rowTCP, EnforcerNone), func(v float64) bool { return v >= goalTCPVsRouting }, nil)
	ratioGoal("new TCP connections/s vs iptables/ipset", fmt.Sprintf("≥ %.1f×", goalConnVsIPTables),
		base, false, vs(rowConn, EnforcerIPTables), func(v float64) bool { return v >= goalConnVsIPTables }, nil)
	ratioGoal("UDP round trip p99 vs iptables/ipset", fmt.Sprintf("≤ %.1f×", goalP99VsIPTables),
		base, true, vs(rowP99, EnforcerIPTables), func(v float64) bool { return v <= goalP99VsIPTables }, nil)

	// p50 added to routing, in µs.
	none := r.lookup(false, EnforcerNone, 0, 0)
	added, at, ok := worstOf(base, true, func(pt point) (float64, bool) {
		a := r.lookup(false, EnforcerPodgate, pt.policies, 0)
		if a == nil || a.Latency == nil || none == nil || none.Latency == nil {
			return 0, false
		}
		return a.Latency.P50 - none.Latency.P50, true
	})
	g := Goal{Name: "UDP round trip p50 vs plain kernel routing", Target: fmt.Sprintf("≤ +%.0f µs", goalP50AddedUS), Value: "not measured", NotMeasured: !ok}
	if ok {
		g.Value, g.Met, g.NotMeasured = fmt.Sprintf("%+.1f µs (worst, at %s)", added, at), added <= goalP50AddedUS, false
	}
	r.Goals = append(r.Goals, g)

	r.Goals = append(r.Goals, r.busyGoal())
	r.Goals = append(r.Goals, r.idleGoals()...)

	// No drop from the fewest to the most policies (5% allowance for
	// noise).
	pols := r.Settings.Policies
	lo, hi := r.find(EnforcerPodgate, pols[0], 0), r.find(EnforcerPodgate, pols[len(pols)-1], 0)
	a, ok1 := fwdRate(hi)
	b, ok2 := fwdRate(lo)
	if ok1 && ok2 && len(pols) > 1 && b > 0 {
		q := a / b
		r.Goals = append(r.Goals, Goal{
			Name:   fmt.Sprintf("forwarding rate %d → %d policies", pols[0], pols[len(pols)-1]),
			Target: "no drop (≥ 0.95×, run-to-run noise)",
			Value:  fmt.Sprintf("%.2f× (%.0f → %.0f pps)", q, b, a), Met: q >= 0.95,
		})
	}
}

// busyRatio is one row of one enforcer at one point: its busy value over
// its quiet value.
type busyRatio struct {
	row   int
	at    point
	ratio float64
	// within says the busy value is within goalBusyWithin of the quiet
	// one (higher-is-better rows may not fall more than 10%, latency
	// rows may not rise more than 10%; better is always within).
	within bool
}

// busyRatios returns busy/quiet of every row and point of an enforcer
// (none: one point, it does not depend on the policy count).
func (r *Report) busyRatios(enforcer string) []busyRatio {
	var out []busyRatio
	pts := r.points()
	if enforcer == EnforcerNone {
		pts = []point{{0, 0}}
	}
	for _, pt := range pts {
		for i, rw := range rows() {
			if pt.flows > 0 && i != rowForwarding {
				continue // flow-table results have the forwarding rate only
			}
			q, b := r.lookup(false, enforcer, pt.policies, pt.flows), r.lookup(true, enforcer, pt.policies, pt.flows)
			if q == nil || b == nil {
				continue
			}
			qv, ok1 := rw.get(q)
			bv, ok2 := rw.get(b)
			if !ok1 || !ok2 || qv == 0 {
				continue
			}
			x := bv / qv
			w := x >= 1-goalBusyWithin
			if rw.lower {
				w = x <= 1+goalBusyWithin
			}
			out = append(out, busyRatio{row: i, at: pt, ratio: x, within: w})
		}
	}
	return out
}

// busyGoal judges podgate's rows on the busy node against its quiet ones.
func (r *Report) busyGoal() Goal {
	g := Goal{Name: "busy node: every row above within 10% of its quiet value", Target: "busy / quiet ≥ 0.90× (latency ≤ 1.10×)"}
	var brs []busyRatio
	for _, br := range r.busyRatios(EnforcerPodgate) {
		if br.row != rowSaturated { // not a row of the goals
			brs = append(brs, br)
		}
	}
	if len(brs) == 0 {
		g.Value, g.NotMeasured = "not measured (run with --busy-node)", true
		return g
	}
	// The worst is the one furthest out of its bound.
	worst, wv := -1, math.Inf(1)
	missed := 0
	for i, br := range brs {
		v := br.ratio
		if rows()[br.row].lower {
			v = 1 / br.ratio
		}
		if v < wv {
			worst, wv = i, v
		}
		if !br.within {
			missed++
		}
	}
	w := brs[worst]
	g.Met = missed == 0
	g.Value = fmt.Sprintf("%d of %d rows within; worst %s at %s: %.2f×", len(brs)-missed, len(brs), rows()[w.row].short, w.at, w.ratio)
	return g
}

// idleGoals judges the default agent's idle cost.
func (r *Report) idleGoals() []Goal {
	cpu := Goal{Name: "idle cost: CPU with no traffic", Target: fmt.Sprintf("< %.0f%% of one core", goalIdleCPUPercent)}
	mem := Goal{Name: "idle cost: pinned memory per pod port, default settings", Target: "≤ 1 MiB"}
	var ic *IdleCost
	for i := range r.Idle {
		if r.Idle[i].Enforcer == EnforcerPodgate {
			ic = &r.Idle[i]
		}
	}
	if ic == nil {
		cpu.Value, cpu.NotMeasured = "not measured", true
		mem.Value, mem.NotMeasured = "not measured", true
		return []Goal{cpu, mem}
	}
	cpu.Value = fmt.Sprintf("%.2f%% (%d pod ports, %.0f s)", ic.CPUPercent, ic.PodPorts, ic.Seconds)
	cpu.Met = ic.CPUPercent < goalIdleCPUPercent
	mem.Value = fmt.Sprintf("%.2f MiB (%.0f MiB over %d pod ports)", ic.PinnedBytesPerPodPort/(1<<20), ic.PinnedBytes/(1<<20), ic.PodPorts)
	mem.Met = ic.PinnedBytesPerPodPort <= goalPinnedPerPort
	if ic.UMEMNoisy {
		mem.Value += "; UMEM count disturbed by other pins on the machine"
	}
	return []Goal{cpu, mem}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", v)
}

func fmtNum(v float64, ok bool, f string) string {
	if !ok {
		return "–"
	}
	return fmt.Sprintf(f, v)
}

// row is one measured quantity of the results table.
type row struct {
	name   string
	short  string
	format string
	// get returns the value of a result; higher is better unless lower.
	get   func(x *Result) (float64, bool)
	lower bool
}

func rows() []row {
	return []row{
		{"forwarding, 64-byte UDP, <0.1% loss (pps)", "forwarding", "%.0f", func(x *Result) (float64, bool) {
			if x.Forwarding == nil {
				return 0, false
			}
			return x.Forwarding.Rate, true
		}, false},
		{"forwarding at the generator's full rate (pps, loss allowed)", "forwarding at full rate", "%.0f", func(x *Result) (float64, bool) {
			if x.Forwarding == nil {
				return 0, false
			}
			return x.Forwarding.Saturated, true
		}, false},
		{"TCP bulk, iperf3 (Gbit/s)", "TCP bulk", "%.2f", func(x *Result) (float64, bool) {
			if x.TCP == nil {
				return 0, false
			}
			return x.TCP.BitsPerSecond / 1e9, true
		}, false},
		{"new TCP connections/s", "connections/s", "%.0f", func(x *Result) (float64, bool) {
			if x.Conn == nil {
				return 0, false
			}
			return x.Conn.PerSecond, true
		}, false},
		{"UDP round trip p50 (µs)", "p50", "%.1f", func(x *Result) (float64, bool) {
			if x.Latency == nil {
				return 0, false
			}
			return x.Latency.P50, true
		}, true},
		{"UDP round trip p99 (µs)", "p99", "%.1f", func(x *Result) (float64, bool) {
			if x.Latency == nil {
				return 0, false
			}
			return x.Latency.P99, true
		}, true},
	}
}

// WriteMarkdown writes the tables: results with ratios, flow tables,
// control plane, goals, checks.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "Machine: %s, %d CPUs, %d MiB, Linux %s, %s. Load average %.2f/%.2f/%.2f at the start, %.2f/%.2f/%.2f at the end. Run took %.0f s (%s).\n\n",
		m.CPUModel, m.CPUs, m.MemoryMB, m.Kernel, m.GoVer, m.Load[0], m.Load[1], m.Load[2], r.LoadAtEnd[0], r.LoadAtEnd[1], r.LoadAtEnd[2], r.Seconds, r.Started.UTC().Format(time.RFC3339))
	if r.Command != "" {
		fmt.Fprintf(&b, "Command: `%s`", r.Command)
		if r.Version != "" {
			fmt.Fprintf(&b, " (podgate %s)", r.Version)
		}
		b.WriteString("\n\n")
	}
	fmt.Fprintf(&b, "Table: %d pods in %d namespaces plus the bench's 3 pods; synthetic policies as listed plus %d bench policies. Pinning: %s.\n\n",
		r.Cluster.Pods, r.Cluster.Namespaces, r.Cluster.BenchPolicies, r.Pinning)
	fmt.Fprintf(&b, "Generator ceiling (AF_XDP generator → XDP sink over a direct veth pair, no gateway): **%.0f pps** (%d frames of %d bytes, %d flows).\n\n",
		r.Generator.PPS, r.Generator.Sent, r.Settings.FrameBytes, r.Settings.MeasureFlows)

	if len(r.Settings.AgentArgs) > 0 {
		fmt.Fprintf(&b, "Every agent runs with `%s`.\n\n", strings.Join(r.Settings.AgentArgs, " "))
	}
	pgs := r.measuredPodgates(false)
	if len(pgs) > 1 {
		b.WriteString("Agent variants (same bench, extra agent arguments):")
		for _, v := range r.Variants {
			fmt.Fprintf(&b, " %s = `%s`;", v.Enforcer(), strings.Join(v.Args, " "))
		}
		b.WriteString(" \"podgate\" is the agent with its default flags.\n\n")
	}
	r.writeResultsTable(&b, false)
	b.WriteString("\nLatency ratios are podgate's round trip over the other's (lower is better); \"none\" does not depend on the policy count and was measured once.\n\n")
	r.writeLatencyAdded(&b, false)
	r.writeFlowTable(&b, false)
	if r.BusyNode != nil {
		r.writeBusy(&b)
	}
	if len(r.Idle) > 0 {
		r.writeIdle(&b)
	}

	b.WriteString("Control plane:\n\n")
	b.WriteString("| enforcer | policies | flows | policy.Compile in-process (ms) | agent table compile (ms) | agent ready (s) | iptables rule compile + apply (ms) | rules | ipsets (members) | memory |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, c := range r.Control {
		mem := "–"
		switch {
		case c.KernelSetBytes > 0:
			mem = fmt.Sprintf("ipsets %.0f KiB (kernel)", c.KernelSetBytes/(1<<10))
		case c.RSSBytes > 0 && c.RSSAfterBytes > 0:
			mem = fmt.Sprintf("agent RSS %.0f MiB ready, %.0f MiB after", c.RSSBytes/(1<<20), c.RSSAfterBytes/(1<<20))
		case c.RSSBytes > 0:
			mem = fmt.Sprintf("agent RSS %.0f MiB (conntrack max %d)", c.RSSBytes/(1<<20), c.ConntrackCapacity)
		}
		sets := "–"
		if c.Enforcer == EnforcerIPTables {
			sets = fmt.Sprintf("%d (%d)", c.Sets, c.SetMembers)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %s | %s | %d | %s | %s |\n", c.Enforcer, c.Policies, c.Flows,
			fmtNum(1000*c.CompileSeconds, c.CompileSeconds > 0, "%.0f"), fmtNum(1000*c.AgentCompileSeconds, c.AgentCompileSeconds > 0, "%.0f"),
			fmtNum(c.AgentReadySeconds, c.AgentReadySeconds > 0, "%.1f"), applyCell(c),
			c.Rules, sets, mem)
	}
	b.WriteString("\nRules: podgate's are the compiled rules of every policy in the table; iptables' are the rules in the chains of the node's own pods (policies that select no local pod install nothing, as in kube-router and Calico).\n")
	b.WriteString("\nGoals (issue 10: podgate with default flags, each at its worst policy and flow count):\n\n| goal | target | measured | met |\n|---|---|---|---|\n")
	for _, g := range r.Goals {
		met := "no"
		switch {
		case g.Met:
			met = "yes"
		case g.NotMeasured:
			met = "not measured"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", g.Name, g.Target, g.Value, met)
	}
	b.WriteString("\nChecks before measuring (TCP connections; a connection that should work is tried up to 3 times):\n\n| enforcer | pass | from | to | port | expected | observed | attempts |\n|---|---|---|---|---:|---|---|---:|\n")
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s | %d |\n", c.Enforcer, passName(c.Busy), c.From, c.To, c.Port, c.Expected, c.Observed, c.Attempts)
	}
	if len(r.Drops) > 0 {
		b.WriteString("\npodgate drops at the end of each agent run (fastpath reasons; xsk_* are the kernel's AF_XDP counters per interface: rx_dropped and fill_ring_empty mean frames arrived while the worker had no free frame posted):\n\n")
		for _, d := range r.Drops {
			keys := make([]string, 0, len(d.Reasons))
			for k := range d.Reasons {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			parts := make([]string, 0, len(keys))
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s %.0f", k, d.Reasons[k]))
			}
			if len(parts) == 0 {
				parts = append(parts, "none")
			}
			fmt.Fprintf(&b, "- %s, %s, %d policies, %d flows: %s\n", d.Enforcer, passName(d.Busy), d.Policies, d.Flows, strings.Join(parts, ", "))
		}
	}
	if r.Baseline != "" {
		fmt.Fprintf(&b, "\nBaseline: %s\n", r.Baseline)
	}
	if len(r.Notes) > 0 {
		b.WriteString("\nNotes:\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func passName(busy bool) string {
	if busy {
		return "busy"
	}
	return "quiet"
}

// measuredPodgates returns podgate and the variants that have results in
// a pass.
func (r *Report) measuredPodgates(busy bool) []string {
	var out []string
	for _, e := range r.podgates() {
		list := r.Results
		if busy {
			list = r.BusyResults
		} else if e != EnforcerPodgate {
			list = r.VariantResults
		}
		for _, x := range list {
			if x.Enforcer == e {
				out = append(out, e)
				break
			}
		}
	}
	if len(out) == 0 {
		out = []string{EnforcerPodgate} // the columns stay, empty
	}
	return out
}

// cells returns the value of a row for enforcer e and its ratios to
// iptables and none, formatted.
func cells(rw row, x, ip, none *Result) (v, vsIP, vsNone string) {
	get := func(y *Result) (float64, bool) {
		if y == nil {
			return 0, false
		}
		return rw.get(y)
	}
	xv, xok := get(x)
	iv, iok := get(ip)
	nv, nok := get(none)
	ri, rn := math.NaN(), math.NaN()
	if xok && iok {
		ri = ratio(xv, iv)
	}
	if xok && nok {
		rn = ratio(xv, nv)
	}
	return fmtNum(xv, xok, rw.format), fmtRatio(ri), fmtRatio(rn)
}

// writeResultsTable writes the results of a pass: a row per measurement
// and policy count, the baselines, then podgate and each variant with
// their ratios to iptables and to plain routing.
func (r *Report) writeResultsTable(b *strings.Builder, busy bool) {
	pgs := r.measuredPodgates(busy)
	b.WriteString("| measurement | policies | none (kernel routing) | iptables/ipset |")
	sep := "|---|---:|---:|---:|"
	for _, e := range pgs {
		fmt.Fprintf(b, " %s | %s / iptables | %s / none |", e, e, e)
		sep += "---:|---:|---:|"
	}
	b.WriteString("\n" + sep + "\n")
	none := r.lookup(busy, EnforcerNone, 0, 0)
	for _, rw := range rows() {
		for _, p := range r.Settings.Policies {
			ip := r.lookup(busy, EnforcerIPTables, p, 0)
			nv, _, _ := cells(rw, none, nil, nil)
			iv, _, _ := cells(rw, ip, nil, nil)
			fmt.Fprintf(b, "| %s | %d | %s | %s |", rw.name, p, nv, iv)
			for _, e := range pgs {
				v, ri, rn := cells(rw, r.lookup(busy, e, p, 0), ip, none)
				fmt.Fprintf(b, " %s | %s | %s |", v, ri, rn)
			}
			b.WriteString("\n")
		}
	}
}

// writeLatencyAdded writes the round-trip time each enforcer adds to
// plain routing.
func (r *Report) writeLatencyAdded(b *strings.Builder, busy bool) {
	none := r.lookup(busy, EnforcerNone, 0, 0)
	if none == nil || none.Latency == nil {
		return
	}
	b.WriteString("Round-trip latency added to plain kernel routing (p50 / p99):")
	for _, p := range r.Settings.Policies {
		for _, e := range append([]string{EnforcerIPTables}, r.measuredPodgates(busy)...) {
			if x := r.lookup(busy, e, p, 0); x != nil && x.Latency != nil {
				fmt.Fprintf(b, " %s at %d policies %+.1f / %+.1f µs;", e, p, x.Latency.P50-none.Latency.P50, x.Latency.P99-none.Latency.P99)
			}
		}
	}
	b.WriteString("\n\n")
}

// writeFlowTable writes the forwarding rates with the flow table full.
func (r *Report) writeFlowTable(b *strings.Builder, busy bool) {
	flows := r.Settings.Flows
	if busy {
		flows = r.Settings.BusyFlows
	}
	if len(flows) == 0 || len(r.Settings.Policies) == 0 {
		return
	}
	last := r.Settings.Policies[len(r.Settings.Policies)-1]
	pgs := r.measuredPodgates(busy)
	if busy {
		fmt.Fprintf(b, "Busy node, forwarding with the flow table full (%d policies); conntrack entries after the prefill → after the search:\n\n", last)
	} else {
		fmt.Fprintf(b, "Forwarding with the flow table full (%d policies): the flows are sent once each first, then the rate search goes round-robin through all of them (every packet another entry; each flow refreshed before its 30 s UDP timeout at rates above flows/30 pps). Conntrack entries after the prefill → after the search:\n\n", last)
	}
	b.WriteString("| flows | iptables/ipset (pps) | kernel conntrack entries |")
	sep := "|---:|---:|---:|"
	for _, e := range pgs {
		fmt.Fprintf(b, " %s (pps) | %s conntrack entries | %s / iptables | %s / none |", e, e, e, e)
		sep += "---:|---:|---:|---:|"
	}
	b.WriteString("\n" + sep + "\n")
	fwd := rows()[rowForwarding]
	none := r.lookup(busy, EnforcerNone, 0, 0)
	for _, f := range flows {
		ip := r.lookup(busy, EnforcerIPTables, last, f)
		iv, _, _ := cells(fwd, ip, nil, nil)
		fmt.Fprintf(b, "| %d | %s | %s |", f, iv, ctEntries(ip))
		for _, e := range pgs {
			x := r.lookup(busy, e, last, f)
			v, ri, rn := cells(fwd, x, ip, none)
			fmt.Fprintf(b, " %s | %s | %s | %s |", v, ctEntries(x), ri, rn)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

// writeBusy writes the busy-node pass: the hogs, the same tables as the
// quiet pass, and busy/quiet of every row.
func (r *Report) writeBusy(b *strings.Builder) {
	bn := r.BusyNode
	shares := make([]string, len(bn.HogSharePerCPU))
	for i, x := range bn.HogSharePerCPU {
		shares[i] = fmt.Sprintf("CPU %d %.0f%%", i, 100*x)
	}
	fmt.Fprintf(b, "**Busy node**: everything measured again with %d CPU hogs (`%s`, nice 0, hog i pinned to CPU i) running for the whole pass (%.0f s). The hogs got %.0f%% of their CPUs on average (%s); load average %.2f/%.2f/%.2f at the start of the pass, %.2f/%.2f/%.2f at the end; each busy result's hog share is in report.json (busy_results[].hog_cpu_share). Generator ceiling with the hogs: **%.0f pps** (the busy rate searches start there).\n\n",
		bn.Hogs, bn.Command, bn.Seconds, 100*bn.HogShare, strings.Join(shares, ", "),
		bn.LoadAtStart[0], bn.LoadAtStart[1], bn.LoadAtStart[2], bn.LoadAtEnd[0], bn.LoadAtEnd[1], bn.LoadAtEnd[2], bn.Generator.PPS)
	r.writeResultsTable(b, true)
	b.WriteString("\n")
	r.writeLatencyAdded(b, true)
	r.writeFlowTable(b, true)
	r.writeBusyQuiet(b)
}

// writeBusyQuiet writes busy / quiet of every row of every enforcer, and
// whether podgate's and the variants' rows stay within 10%.
func (r *Report) writeBusyQuiet(b *strings.Builder) {
	pgs := r.measuredPodgates(true)
	ratios := map[string]map[[3]int]busyRatio{}
	for _, e := range append([]string{EnforcerNone, EnforcerIPTables}, pgs...) {
		ratios[e] = map[[3]int]busyRatio{}
		for _, br := range r.busyRatios(e) {
			ratios[e][[3]int{br.row, br.at.policies, br.at.flows}] = br
		}
	}
	b.WriteString("Busy / quiet, per row (the goal: podgate's rows within 10% of their quiet value, i.e. ≥ 0.90×, latency ≤ 1.10×; ✗ marks a podgate row outside; – where the quiet value is 0 or either is missing):\n\n")
	b.WriteString("| measurement | policies | flows | none | iptables/ipset |")
	sep := "|---|---:|---:|---:|---:|"
	for _, e := range pgs {
		fmt.Fprintf(b, " %s |", e)
		sep += "---:|"
	}
	b.WriteString("\n" + sep + "\n")
	cell := func(e string, key [3]int, mark bool) string {
		br, ok := ratios[e][key]
		if !ok {
			return "–"
		}
		s := fmtRatio(br.ratio)
		if mark && !br.within {
			s += " ✗"
		}
		return s
	}
	for i, rw := range rows() {
		for _, pt := range r.points() {
			if pt.flows > 0 && i != rowForwarding {
				continue
			}
			key := [3]int{i, pt.policies, pt.flows}
			noneCell := cell(EnforcerNone, [3]int{i, 0, 0}, false)
			if pt.flows > 0 {
				noneCell = "–"
			}
			fmt.Fprintf(b, "| %s | %d | %d | %s | %s |", rw.name, pt.policies, pt.flows, noneCell, cell(EnforcerIPTables, key, false))
			for _, e := range pgs {
				fmt.Fprintf(b, " %s |", cell(e, key, i != rowSaturated))
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\n")
}

// writeIdle writes the idle cost of every agent configuration.
func (r *Report) writeIdle(b *strings.Builder) {
	b.WriteString("**Idle cost**: the agent on a node with the pods below and no traffic, after every pod port is attached and 2 s to settle. CPU is utime+stime of /proc/PID/stat over the window, in % of one core. Pinned memory is what the kernel holds for the agent and cannot reclaim: the UMEMs of its AF_XDP sockets (user pages pinned by the kernel: the growth of nr_foll_pin_acquired − nr_foll_pin_released in /proc/vmstat from before the agent started until every port was attached, checked against the drop when it stopped), the sockets' rings (their mappings in /proc/PID/maps) and its BPF maps and programs (\"memlock\" of /proc/PID/fdinfo). Per pod port is the total over the pod ports, so the node-wide part is included. VmPin and VmLck of /proc/PID/status are shown for reference: AF_XDP pins its UMEM without accounting it there.\n\n")
	b.WriteString("| agent | pod ports | policies | window (s) | CPU (% of one core) | frames received | RSS (MiB) | pinned (MiB) | pinned per pod port (MiB) | UMEM pinned / released at stop (MiB) | AF_XDP rings (MiB, sockets) | BPF maps (MiB, count) | BPF programs (KiB, count) | VmPin / VmLck (KiB) |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, ic := range r.Idle {
		umem := fmt.Sprintf("%.1f / %.1f", ic.UMEMBytes/(1<<20), ic.UMEMReleasedBytes/(1<<20))
		if ic.UMEMNoisy {
			umem += " (disturbed: other pins on the machine)"
		}
		fmt.Fprintf(b, "| %s | %d | %d | %.1f | %.2f | %.0f | %.0f | %.1f | %.2f | %s | %.2f (%d) | %.2f (%d) | %.0f (%d) | %.0f / %.0f |\n",
			ic.Enforcer, ic.PodPorts, ic.Policies, ic.Seconds, ic.CPUPercent, ic.ReceivedPackets, ic.RSSBytes/(1<<20),
			ic.PinnedBytes/(1<<20), ic.PinnedBytesPerPodPort/(1<<20), umem,
			ic.XSKRingBytes/(1<<20), ic.XSKSockets, ic.BPFMapBytes/(1<<20), ic.BPFMaps, ic.BPFProgBytes/(1<<10), ic.BPFProgs,
			ic.VmPinBytes/(1<<10), ic.VmLckBytes/(1<<10))
	}
	b.WriteString("\n")
}

func applyCell(c Control) string {
	if c.ApplySeconds <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f + %.0f", 1000*c.RuleCompileSeconds, 1000*c.ApplySeconds)
}

func fwdRate(x *Result) (float64, bool) {
	if x == nil || x.Forwarding == nil {
		return 0, false
	}
	return x.Forwarding.Rate, true
}

func ctEntries(x *Result) string {
	if x == nil {
		return "–"
	}
	return fmt.Sprintf("%.0f → %.0f", x.ConntrackBefore, x.ConntrackAfter)
}

// WriteFiles writes report.json, report.md and the plots into dir and
// returns the paths written.
func (r *Report) WriteFiles(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("write report: %w", err)
	}
	var paths []string
	for name, write := range map[string]func(io.Writer) error{"report.json": r.WriteJSON, "report.md": r.WriteMarkdown} {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			return paths, fmt.Errorf("write report: %w", err)
		}
		werr := write(f)
		if cerr := f.Close(); werr == nil && cerr != nil {
			werr = fmt.Errorf("write report: %w", cerr)
		}
		if werr != nil {
			return paths, werr
		}
		paths = append(paths, p)
	}
	plots, err := r.WritePlots(dir)
	paths = append(paths, plots...)
	slices.Sort(paths)
	return paths, err
}

// explain adds the notes every reader needs to read the numbers right.
func (r *Report) explain(cfg Config) {
	r.note("\"none\" (plain kernel routing) does not depend on the policy count: it was measured once and is the baseline of every row.")
	r.note("Loss locations per trial (report.json, trials[].drops) are the veths' drop counters; for podgate, \"node-client-veth rx_dropped\" is frames the XDP program could not put into the agent's socket because the worker had not posted free frames in time.")
	r.note(fmt.Sprintf("Forwarding: the generator offers %d-byte UDP frames over %d flows (source ports %d-%d) for %.0f s per step; a step passes below %.1f%% loss; the rate is the highest passing one (min of target and what the generator could offer: the path's work partly runs in the generator's own sendto).",
		FrameLen, cfg.MeasureFlows, FloodSrcBase, FloodSrcBase+FloodSrcN-1, cfg.Step.Seconds(), 100*DefaultMaxLoss))
	if cfg.BusyNode {
		r.note("Busy node: the hogs share every CPU, the load CPU of the generator, clients, servers and iperf3 included, so the baselines slow down too; busy / quiet compares each enforcer with itself, the busy tables compare the enforcers under the same load.")
		if len(cfg.BusyFlows) == 0 && len(cfg.Flows) > 0 {
			r.note("Busy node: the flow-table measurements were left out of the busy pass (--quick).")
		}
	}
	if ctMax := kernelConntrackMax(); ctMax > 0 {
		for _, f := range cfg.Flows {
			if float64(f) > ctMax {
				r.note(fmt.Sprintf("The kernel's conntrack table holds at most %.0f entries (nf_conntrack_max, a host-wide setting the bench does not change), so iptables at %d flows tracks at most that many; new flows evict unreplied ones.", ctMax, f))
				break
			}
		}
	}
}

// kernelConntrackMax reads nf_conntrack_max (0 if unknown).
func kernelConntrackMax() float64 {
	data, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		return 0
	}
	var v float64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(data)), "%g", &v); err != nil {
		return 0
	}
	return v
}
