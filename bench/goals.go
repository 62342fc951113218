package bench

import (
	"fmt"
	"math"
)

// Goals: what the report checks a run against (the targets of issue 10),
// each judged at its worst policy and flow count.

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
	// ratioGoal adds a goal judged at its worst point, and returns it.
	ratioGoal := func(name, target string, pts []point, lower bool, f func(point) (float64, bool), met func(float64) bool, stretch func(float64) bool) (*Goal, point, bool) {
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
		return &r.Goals[len(r.Goals)-1], at, ok
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
	p99, at, ok := ratioGoal("UDP round trip p99 vs iptables/ipset", fmt.Sprintf("≤ %.1f×", goalP99VsIPTables),
		base, true, vs(rowP99, EnforcerIPTables), func(v float64) bool { return v <= goalP99VsIPTables }, nil)
	if ok {
		lo, hi, ok1 := trialP99Range(r.lookup(false, EnforcerPodgate, at.policies, 0))
		lo2, hi2, ok2 := trialP99Range(r.lookup(false, EnforcerIPTables, at.policies, 0))
		if ok1 && ok2 {
			p99.Value += fmt.Sprintf("; trials' p99 there: podgate %.1f–%.1f µs, iptables %.1f–%.1f µs", lo, hi, lo2, hi2)
		}
	}

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
		g := Goal{
			Name:   fmt.Sprintf("forwarding rate %d → %d policies", pols[0], pols[len(pols)-1]),
			Target: "no drop (≥ 0.95×, run-to-run noise)",
			Value:  fmt.Sprintf("%.2f× (%.0f → %.0f pps)", q, b, a), Met: q >= 0.95,
		}
		if !g.Met && lossless(lo) && lossless(hi) {
			g.Value += "; no step of either search lost a frame: both rates are what the generator offered through the path"
		}
		r.Goals = append(r.Goals, g)
	}
}

// lossless says every trial of x's forwarding search passed: the search
// never found a rate the path could not forward, and its rate is the most
// the generator offered (part of the path's work runs in the generator's
// sendto, so what it offers depends on the path and the machine's moment).
func lossless(x *Result) bool {
	if x == nil || x.Forwarding == nil || len(x.Forwarding.Trials) == 0 {
		return false
	}
	for _, t := range x.Forwarding.Trials {
		if !t.Pass {
			return false
		}
	}
	return true
}

// trialP99Range returns the lowest and highest p99 of x's latency trials.
func trialP99Range(x *Result) (lo, hi float64, ok bool) {
	if x == nil || x.Latency == nil || len(x.Latency.Trials) == 0 {
		return 0, 0, false
	}
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, t := range x.Latency.Trials {
		lo, hi = min(lo, t.P99), max(hi, t.P99)
	}
	return lo, hi, true
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
