package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// The report for people: report.md's tables of results, ratios, flow
// tables, the busy node and the idle cost.

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
	r.writeLatencyTrials(b, busy)
}

// writeLatencyTrials writes each latency trial's p50 and p99: how far the
// machine moved one enforcer's latency between its own trials, against
// how far the enforcers differ.
func (r *Report) writeLatencyTrials(b *strings.Builder, busy bool) {
	var parts []string
	add := func(e string, p int, x *Result) {
		if x == nil || x.Latency == nil || len(x.Latency.Trials) == 0 {
			return
		}
		var t []string
		for _, tr := range x.Latency.Trials {
			t = append(t, fmt.Sprintf("%.1f / %.1f", tr.P50, tr.P99))
		}
		where := fmt.Sprintf(" at %d policies", p)
		if e == EnforcerNone {
			where = ""
		}
		parts = append(parts, fmt.Sprintf("%s%s %s", e, where, strings.Join(t, ", ")))
	}
	add(EnforcerNone, 0, r.lookup(busy, EnforcerNone, 0, 0))
	for _, p := range r.Settings.Policies {
		for _, e := range append([]string{EnforcerIPTables}, r.measuredPodgates(busy)...) {
			add(e, p, r.lookup(busy, e, p, 0))
		}
	}
	if len(parts) == 0 {
		return
	}
	fmt.Fprintf(b, "Round trip per latency trial (p50 / p99 µs; the trials are spread over each enforcer's measurements and pooled in the tables): %s.\n\n", strings.Join(parts, "; "))
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
	b.WriteString("Prefill passes (offered rate → new flows admitted per second, flows tracked after the pass):\n\n")
	for _, f := range flows {
		for _, e := range append([]string{EnforcerIPTables}, pgs...) {
			x := r.lookup(busy, e, last, f)
			if x == nil || len(x.Prefill) == 0 {
				continue
			}
			passes := make([]string, len(x.Prefill))
			for i, p := range x.Prefill {
				passes[i] = fmt.Sprintf("%.0f pps → %.0f/s, %.0f", p.Rate, p.Admitted, p.Tracked)
			}
			fmt.Fprintf(b, "- %s, %d flows: %s\n", e, f, strings.Join(passes, "; "))
		}
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
