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
	Enforcer    string        `json:"enforcer"`
	Policies    int           `json:"policies"`
	Flows       int           `json:"flows,omitempty"`
	Forwarding  *SearchResult `json:"forwarding,omitempty"`
	TCP         *IPerf        `json:"tcp,omitempty"`
	Conn        *ConnRate     `json:"connections,omitempty"`
	Latency     *Latency      `json:"latency,omitempty"`
	PrefillSent uint64        `json:"prefill_sent,omitempty"`
	// Prefill describes each pass of the prefill, in order.
	Prefill         []PrefillPass `json:"prefill,omitempty"`
	ConntrackBefore float64       `json:"conntrack_entries_before,omitempty"`
	ConntrackAfter  float64       `json:"conntrack_entries_after,omitempty"`
	Load            [3]float64    `json:"load_average"`
	// HogShare is set in busy results only: the CPU hogs' mean CPU share
	// while this result was measured (see [BusyNode]).
	HogShare float64 `json:"hog_cpu_share,omitempty"`
}

// PrefillPass is one pass of a flow-table prefill: every flow sent once
// at Rate. Tracked is the enforcer's conntrack size after the pass;
// Admitted is the flows it added per second of the pass (its new-flow
// admission rate at that offered rate).
type PrefillPass struct {
	Rate     float64 `json:"rate_pps"`
	Sent     uint64  `json:"sent"`
	Seconds  float64 `json:"seconds"`
	Tracked  float64 `json:"tracked"`
	Admitted float64 `json:"admitted_per_second"`
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
	// RuleCompileSeconds is iptables.Compile.
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

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
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
	r.note(fmt.Sprintf("New TCP connections/s: %d client threads open, use and reset connections for %.0f s, %d times; the rate is the median trial (all trials in report.json, connections.trials_per_second).",
		cfg.ConnWorkers, cfg.ConnDuration.Seconds(), connTrials))
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
