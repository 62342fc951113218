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
	Control   []Control         `json:"control_plane"`
	Drops     []DropSample      `json:"podgate_drops"`
	Goals     []Goal            `json:"goals"`
	Notes     []string          `json:"notes,omitempty"`
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
	Policies int                `json:"policies"`
	Flows    int                `json:"flows,omitempty"`
	Reasons  map[string]float64 `json:"reasons"`
}

// Goal is one target of the issue and whether the run met it.
type Goal struct {
	Name   string `json:"name"`
	Target string `json:"target"`
	Value  string `json:"value"`
	Met    bool   `json:"met"`
}

func (r *Report) note(s string) {
	if !slices.Contains(r.Notes, s) {
		r.Notes = append(r.Notes, s)
	}
}

// find returns the result of an enforcer at a policy count and flow count
// (the none baseline has one result, whatever the count).
func (r *Report) find(enforcer string, policies, flows int) *Result {
	for i := range r.Results {
		x := &r.Results[i]
		if x.Enforcer == enforcer && x.Flows == flows && (x.Policies == policies || enforcer == EnforcerNone) {
			return x
		}
	}
	return nil
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
func (r *Report) addDrops(p int, flows *int, m Metrics) {
	d := DropSample{Policies: p, Reasons: map[string]float64{}}
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

// evaluate fills Goals.
func (r *Report) evaluate() {
	r.Goals = nil
	pols := r.Settings.Policies
	if len(pols) == 0 {
		return
	}
	none := r.find(EnforcerNone, 0, 0)
	worst := func(f func(p int) (float64, bool)) (float64, int) {
		w, at := math.Inf(1), -1
		for _, p := range pols {
			if v, ok := f(p); ok && v < w {
				w, at = v, p
			}
		}
		return w, at
	}
	fwd := func(x *Result) (float64, bool) {
		if x == nil || x.Forwarding == nil {
			return 0, false
		}
		return x.Forwarding.Rate, true
	}
	// Forwarding vs iptables.
	v, at := worst(func(p int) (float64, bool) {
		a, ok1 := fwd(r.find(EnforcerPodgate, p, 0))
		b, ok2 := fwd(r.find(EnforcerIPTables, p, 0))
		return ratio(a, b), ok1 && ok2 && b > 0
	})
	r.addGoal("forwarding rate vs iptables/ipset", "≥ 1.0×", v, at, v >= 1.0)
	v, at = worst(func(p int) (float64, bool) {
		a, ok1 := fwd(r.find(EnforcerPodgate, p, 0))
		b, ok2 := fwd(none)
		return ratio(a, b), ok1 && ok2 && b > 0
	})
	r.addGoal("forwarding rate vs plain kernel routing", "≥ 0.9×", v, at, v >= 0.9)
	v, at = worst(func(p int) (float64, bool) {
		a, b := r.find(EnforcerPodgate, p, 0), r.find(EnforcerIPTables, p, 0)
		if a == nil || b == nil || a.Conn == nil || b.Conn == nil || b.Conn.PerSecond == 0 {
			return 0, false
		}
		return ratio(a.Conn.PerSecond, b.Conn.PerSecond), true
	})
	r.addGoal("connection rate vs iptables/ipset", "≥ 1.0×", v, at, v >= 1.0)
	// Latency: the largest added p99.
	added, addedAt := math.Inf(-1), -1
	for _, p := range pols {
		a := r.find(EnforcerPodgate, p, 0)
		if a == nil || a.Latency == nil || none == nil || none.Latency == nil {
			continue
		}
		if d := a.Latency.P99 - none.Latency.P99; d > added {
			added, addedAt = d, p
		}
	}
	if addedAt >= 0 {
		r.Goals = append(r.Goals, Goal{
			Name: "latency added at p99 vs plain kernel routing", Target: "< 50 µs",
			Value: fmt.Sprintf("%+.1f µs (at %d policies)", added, addedAt), Met: added < 50,
		})
	}
	// No drop from the fewest to the most policies (5% allowance for
	// noise).
	lo, hi := r.find(EnforcerPodgate, pols[0], 0), r.find(EnforcerPodgate, pols[len(pols)-1], 0)
	a, ok1 := fwd(hi)
	b, ok2 := fwd(lo)
	if ok1 && ok2 && len(pols) > 1 && b > 0 {
		q := a / b
		r.Goals = append(r.Goals, Goal{
			Name:   fmt.Sprintf("forwarding rate %d → %d policies", pols[0], pols[len(pols)-1]),
			Target: "no drop (≥ 0.95×, run-to-run noise)",
			Value:  fmt.Sprintf("%.2f× (%.0f → %.0f pps)", q, b, a), Met: q >= 0.95,
		})
	}
}

func (r *Report) addGoal(name, target string, v float64, at int, met bool) {
	if at < 0 || math.IsInf(v, 0) {
		return
	}
	r.Goals = append(r.Goals, Goal{Name: name, Target: target, Value: fmt.Sprintf("%.2f× (worst, at %d policies)", v, at), Met: met})
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
	format string
	// get returns the value of a result; higher is better unless lower.
	get   func(x *Result) (float64, bool)
	lower bool
}

func rows() []row {
	return []row{
		{"forwarding, 64-byte UDP, <0.1% loss (pps)", "%.0f", func(x *Result) (float64, bool) {
			if x.Forwarding == nil {
				return 0, false
			}
			return x.Forwarding.Rate, true
		}, false},
		{"forwarding at the generator's full rate (pps, loss allowed)", "%.0f", func(x *Result) (float64, bool) {
			if x.Forwarding == nil {
				return 0, false
			}
			return x.Forwarding.Saturated, true
		}, false},
		{"TCP bulk, iperf3 (Gbit/s)", "%.2f", func(x *Result) (float64, bool) {
			if x.TCP == nil {
				return 0, false
			}
			return x.TCP.BitsPerSecond / 1e9, true
		}, false},
		{"new TCP connections/s", "%.0f", func(x *Result) (float64, bool) {
			if x.Conn == nil {
				return 0, false
			}
			return x.Conn.PerSecond, true
		}, false},
		{"UDP round trip p50 (µs)", "%.1f", func(x *Result) (float64, bool) {
			if x.Latency == nil {
				return 0, false
			}
			return x.Latency.P50, true
		}, true},
		{"UDP round trip p99 (µs)", "%.1f", func(x *Result) (float64, bool) {
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

	b.WriteString("| measurement | policies | none (kernel routing) | iptables/ipset | podgate | podgate / iptables | podgate / none |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	none := r.find(EnforcerNone, 0, 0)
	for _, rw := range rows() {
		for _, p := range r.Settings.Policies {
			ip, pg := r.find(EnforcerIPTables, p, 0), r.find(EnforcerPodgate, p, 0)
			var nv, iv, pv float64
			var nok, iok, pok bool
			if none != nil {
				nv, nok = rw.get(none)
			}
			if ip != nil {
				iv, iok = rw.get(ip)
			}
			if pg != nil {
				pv, pok = rw.get(pg)
			}
			ri, rn := math.NaN(), math.NaN()
			if pok && iok {
				ri = ratio(pv, iv)
			}
			if pok && nok {
				rn = ratio(pv, nv)
			}
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s |\n", rw.name, p,
				fmtNum(nv, nok, rw.format), fmtNum(iv, iok, rw.format), fmtNum(pv, pok, rw.format), fmtRatio(ri), fmtRatio(rn))
		}
	}
	b.WriteString("\nLatency ratios are podgate's round trip over the other's (lower is better); \"none\" does not depend on the policy count and was measured once.\n\n")
	if none != nil && none.Latency != nil {
		b.WriteString("Round-trip latency added to plain kernel routing (p50 / p99):")
		for _, p := range r.Settings.Policies {
			for _, e := range []string{EnforcerIPTables, EnforcerPodgate} {
				if x := r.find(e, p, 0); x != nil && x.Latency != nil {
					fmt.Fprintf(&b, " %s at %d policies %+.1f / %+.1f µs;", e, p, x.Latency.P50-none.Latency.P50, x.Latency.P99-none.Latency.P99)
				}
			}
		}
		b.WriteString("\n\n")
	}

	if len(r.Settings.Flows) > 0 {
		last := r.Settings.Policies[len(r.Settings.Policies)-1]
		fmt.Fprintf(&b, "Forwarding with the flow table full (%d policies): the flows are sent once each first, then the rate search goes round-robin through all of them (every packet another entry; each flow refreshed before its 30 s UDP timeout at rates above flows/30 pps). Conntrack entries after the prefill → after the search:\n\n", last)
		b.WriteString("| flows | iptables/ipset (pps) | kernel conntrack entries | podgate (pps) | podgate conntrack entries | podgate / iptables | podgate / none |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, f := range r.Settings.Flows {
			ip, pg := r.find(EnforcerIPTables, last, f), r.find(EnforcerPodgate, last, f)
			iv, iok := fwdRate(ip)
			pv, pok := fwdRate(pg)
			nv, nok := fwdRate(none)
			ri, rn := math.NaN(), math.NaN()
			if iok && pok {
				ri = ratio(pv, iv)
			}
			if nok && pok {
				rn = ratio(pv, nv)
			}
			fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s |\n", f, fmtNum(iv, iok, "%.0f"), ctEntries(ip),
				fmtNum(pv, pok, "%.0f"), ctEntries(pg), fmtRatio(ri), fmtRatio(rn))
		}
		b.WriteString("\n")
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
	b.WriteString("\nGoals:\n\n| goal | target | measured | met |\n|---|---|---|---|\n")
	for _, g := range r.Goals {
		met := "no"
		if g.Met {
			met = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", g.Name, g.Target, g.Value, met)
	}
	b.WriteString("\nChecks before measuring (TCP connections):\n\n| enforcer | from | to | port | expected | observed |\n|---|---|---|---:|---|---|\n")
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %s |\n", c.Enforcer, c.From, c.To, c.Port, c.Expected, c.Observed)
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
			fmt.Fprintf(&b, "- %d policies, %d flows: %s\n", d.Policies, d.Flows, strings.Join(parts, ", "))
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
