package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
)

// result makes a result with every row set: forwarding rate fwd, TCP
// gbit Gbit/s, conn connections/s, latency p50 and p99 in µs.
func result(enforcer string, policies int, fwd, gbit, conn, p50, p99 float64) Result {
	return Result{
		Enforcer: enforcer, Policies: policies,
		Forwarding: &SearchResult{Rate: fwd, Saturated: fwd * 1.2, Trials: []Trial{{Target: fwd, Sent: 100, Received: 100, Pass: true}}},
		TCP:        &IPerf{BitsPerSecond: gbit * 1e9, Seconds: 1},
		Conn:       &ConnRate{PerSecond: conn, Workers: 8, Seconds: 1},
		Latency:    &Latency{P50: p50, P90: p50, P99: p99, Max: p99, Sent: 1, Samples: []float64{p50}},
	}
}

func flowResult(enforcer string, policies, flows int, fwd float64) Result {
	return Result{
		Enforcer: enforcer, Policies: policies, Flows: flows,
		Forwarding:      &SearchResult{Rate: fwd, Saturated: fwd, Trials: []Trial{{Sent: 1}}},
		PrefillSent:     uint64(flows),
		Prefill:         []PrefillPass{{Rate: 2 * fwd, Sent: uint64(flows), Seconds: float64(flows) / (2 * fwd), Tracked: float64(flows), Admitted: 2 * fwd}},
		ConntrackBefore: float64(flows), ConntrackAfter: float64(flows),
	}
}

// sampleReport is a report of 0 and 2,000 policies and 100,000 flows
// with an offload-none variant, a busy pass and idle costs. podgate meets
// every goal against the baselines at 0 policies and misses them at
// 2,000; on the busy node its forwarding rate at 2,000 policies falls to
// half.
func sampleReport() *Report {
	r := &Report{
		Started: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC), Seconds: 300,
		Machine:  Machine{CPUModel: "test CPU", CPUs: 2, Kernel: "6.18", MemoryMB: 1024, GoVer: "go1.27.3"},
		Settings: Settings{Policies: []int{0, 2000}, Flows: []int{100000}, BusyFlows: []int{100000}, FrameBytes: 64, MeasureFlows: 1000},
		Variants: []Variant{{Name: "offload-none", Args: []string{"--offload=none"}}},
	}
	r.Results = []Result{
		result(EnforcerNone, 0, 900000, 10, 5000, 20, 50),
		result(EnforcerIPTables, 0, 600000, 10, 5000, 25, 60),
		result(EnforcerPodgate, 0, 850000, 9.5, 5200, 25, 60),
		result(EnforcerIPTables, 2000, 600000, 10, 5000, 25, 60),
		result(EnforcerPodgate, 2000, 300000, 3, 4000, 120, 300),
		flowResult(EnforcerIPTables, 2000, 100000, 500000),
		flowResult(EnforcerPodgate, 2000, 100000, 550000),
	}
	r.VariantResults = []Result{
		result("podgate-offload-none", 0, 400000, 3, 5000, 100, 250),
		result("podgate-offload-none", 2000, 200000, 3, 4000, 120, 300),
		flowResult("podgate-offload-none", 2000, 100000, 250000),
	}
	busy := func(x Result, f float64) Result {
		x.HogShare = 0.5
		if x.Forwarding != nil {
			fw := *x.Forwarding
			fw.Rate *= f
			x.Forwarding = &fw
		}
		return x
	}
	for _, x := range append(append([]Result{}, r.Results...), r.VariantResults...) {
		f := 0.95
		if x.Enforcer == EnforcerPodgate && x.Policies == 2000 && x.Flows == 0 {
			f = 0.5
		}
		r.BusyResults = append(r.BusyResults, busy(x, f))
	}
	r.BusyNode = &BusyNode{Hogs: 2, Command: "sh -c '" + hogScript + "'", HogShare: 0.5, HogSharePerCPU: []float64{0.45, 0.55}, Seconds: 150}
	r.Idle = []IdleCost{
		{Enforcer: EnforcerPodgate, PodPorts: 100, Seconds: 10, CPUPercent: 0.3, UMEMBytes: 400 << 20, UMEMReleasedBytes: 400 << 20,
			XSKSockets: 101, XSKRingBytes: 5 << 20, BPFMaps: 2, BPFMapBytes: 1 << 20, BPFProgs: 1, BPFProgBytes: 4096},
		{Enforcer: "podgate-offload-none", PodPorts: 100, Seconds: 10, CPUPercent: 2, UMEMBytes: 50 << 20, UMEMReleasedBytes: 10 << 20, UMEMNoisy: true},
	}
	for i := range r.Idle {
		ic := &r.Idle[i]
		ic.PinnedBytes = ic.UMEMBytes + ic.XSKRingBytes + ic.BPFMapBytes + ic.BPFProgBytes
		ic.PinnedBytesPerPodPort = ic.PinnedBytes / float64(ic.PodPorts)
	}
	r.evaluate()
	return r
}

func TestEvaluateGoals(t *testing.T) {
	r := sampleReport()
	got := map[string]Goal{}
	for _, g := range r.Goals {
		got[g.Name] = g
	}
	want := []struct {
		name  string
		value string
		met   bool
	}{
		{"forwarding at <0.1% loss vs iptables/ipset", "0.50× (worst, at 2000 policies)", false},
		{"forwarding at <0.1% loss vs plain kernel routing", "0.33× (worst, at 2000 policies)", false},
		{"TCP bulk (iperf3) vs plain kernel routing", "0.30× (worst, at 2000 policies)", false},
		{"new TCP connections/s vs iptables/ipset", "0.80× (worst, at 2000 policies)", false},
		{"UDP round trip p99 vs iptables/ipset", "5.00× (worst, at 2000 policies)", false},
		{"UDP round trip p50 vs plain kernel routing", "+100.0 µs (worst, at 2000 policies)", false},
		{"busy node: every row above within 10% of its quiet value", "10 of 11 rows within; worst forwarding at 2000 policies: 0.50×", false},
		{"idle cost: CPU with no traffic", "0.30% (100 pod ports, 10 s)", true},
		{"idle cost: pinned memory per pod port, default settings", "4.06 MiB (406 MiB over 100 pod ports)", false},
		{"forwarding rate 0 → 2000 policies", "0.35× (850000 → 300000 pps); no step of either search lost a frame: both rates are what the generator offered through the path", false},
	}
	if len(r.Goals) != len(want) {
		t.Errorf("%d goals, want %d: %+v", len(r.Goals), len(want), r.Goals)
	}
	for _, w := range want {
		g, ok := got[w.name]
		if !ok {
			t.Errorf("no goal %q", w.name)
			continue
		}
		if g.Value != w.value || g.Met != w.met || g.NotMeasured {
			t.Errorf("goal %q: %q met %v (not measured %v), want %q met %v", w.name, g.Value, g.Met, g.NotMeasured, w.value, w.met)
		}
	}
}

// TestEvaluateGoalsDropWithLoss: a drop from the fewest to the most
// policies where a search lost frames is not put down to the generator.
func TestEvaluateGoalsDropWithLoss(t *testing.T) {
	r := sampleReport()
	hi := r.find(EnforcerPodgate, 2000, 0)
	hi.Forwarding.Trials = append(hi.Forwarding.Trials, Trial{Target: 2 * hi.Forwarding.Rate, Sent: 100, Received: 90, Loss: 0.1})
	r.evaluate()
	for _, g := range r.Goals {
		if g.Name == "forwarding rate 0 → 2000 policies" {
			if g.Value != "0.35× (850000 → 300000 pps)" || g.Met {
				t.Errorf("goal %q: %q met %v", g.Name, g.Value, g.Met)
			}
			return
		}
	}
	t.Error("no goal for the drop from 0 to 2000 policies")
}

func TestEvaluateGoalsMet(t *testing.T) {
	r := sampleReport()
	// podgate at 2,000 policies and with the flow table as at 0 policies,
	// the busy pass as the quiet one, 0.8 MiB per port.
	for _, list := range [][]Result{r.Results, r.BusyResults} {
		for i, x := range list {
			if x.Enforcer != EnforcerPodgate {
				continue
			}
			y := result(EnforcerPodgate, x.Policies, 850000, 9.5, 5200, 25, 60)
			if x.Flows > 0 {
				y = flowResult(EnforcerPodgate, x.Policies, x.Flows, 850000)
			}
			y.HogShare = x.HogShare
			list[i] = y
		}
	}
	r.Idle[0].PinnedBytesPerPodPort = 0.8 * (1 << 20)
	r.evaluate()
	for _, g := range r.Goals {
		if !g.Met || g.NotMeasured {
			t.Errorf("goal %+v: want met", g)
		}
	}
	// Stretch goals: 850k is 1.42× iptables' 600k, but not 1.0× routing.
	for _, g := range r.Goals {
		switch g.Name {
		case "forwarding at <0.1% loss vs iptables/ipset":
			if !strings.HasSuffix(g.Value, "; stretch met") {
				t.Errorf("%s: %s, want the stretch met", g.Name, g.Value)
			}
		case "forwarding at <0.1% loss vs plain kernel routing":
			if strings.Contains(g.Value, "stretch") {
				t.Errorf("%s: %s, want the stretch missed", g.Name, g.Value)
			}
		}
	}
}

func TestEvaluateGoalsNotMeasured(t *testing.T) {
	r := sampleReport()
	r.BusyNode, r.BusyResults, r.Idle = nil, nil, nil
	r.Results = r.Results[:3] // none, iptables and podgate at 0 policies
	r.Settings.Policies, r.Settings.Flows = []int{0}, nil
	r.evaluate()
	notMeasured := map[string]bool{}
	for _, g := range r.Goals {
		if g.NotMeasured {
			if g.Met {
				t.Errorf("goal %+v: not measured but met", g)
			}
			notMeasured[g.Name] = true
		}
	}
	want := map[string]bool{
		"busy node: every row above within 10% of its quiet value": true,
		"idle cost: CPU with no traffic":                           true,
		"idle cost: pinned memory per pod port, default settings":  true,
	}
	if diff := cmp.Diff(want, notMeasured); diff != "" {
		t.Errorf("goals not measured (-want +got):\n%s", diff)
	}
}

func TestBusyRatios(t *testing.T) {
	r := sampleReport()
	// podgate's busy p99 at 0 policies: 1.1× is within, 1.11× not.
	for _, tc := range []struct {
		p99    float64
		within bool
	}{{66, true}, {66.6, false}, {30, true}} {
		b := r.lookup(true, EnforcerPodgate, 0, 0)
		b.Latency = &Latency{P50: 25, P99: tc.p99, Max: tc.p99, Samples: []float64{25}}
		found := false
		for _, br := range r.busyRatios(EnforcerPodgate) {
			if br.row == rowP99 && br.at == (point{0, 0}) {
				found = true
				if br.within != tc.within || math.Abs(br.ratio-tc.p99/60) > 1e-9 {
					t.Errorf("p99 %v: ratio %v within %v, want %v within %v", tc.p99, br.ratio, br.within, tc.p99/60, tc.within)
				}
			}
		}
		if !found {
			t.Errorf("p99 %v: no busy ratio at 0 policies", tc.p99)
		}
	}
	// none: one point whatever the policy counts; flow rows only have
	// the forwarding rate.
	for _, br := range r.busyRatios(EnforcerNone) {
		if br.at != (point{0, 0}) {
			t.Errorf("none busy ratio at %v", br.at)
		}
	}
	n := 0
	for _, br := range r.busyRatios(EnforcerIPTables) {
		if br.at.flows > 0 {
			n++
			if br.row != rowForwarding {
				t.Errorf("flow-table busy ratio of row %d", br.row)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d flow-table busy ratios for iptables, want 1", n)
	}
}

// TestReportJSONKeepsResults checks the contract of report.json:
// results[] holds the quiet none, iptables and podgate entries only, in
// today's shape; variants and the busy pass are in lists of their own.
func TestReportJSONKeepsResults(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"results", "variants", "variant_results", "busy_node", "busy_results", "idle_cost", "goals"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("report.json lacks %q", k)
		}
	}
	var results []map[string]any
	if err := json.Unmarshal(doc["results"], &results); err != nil {
		t.Fatal(err)
	}
	if len(results) != 7 {
		t.Errorf("%d results, want 7", len(results))
	}
	for _, x := range results {
		switch x["enforcer"] {
		case EnforcerNone, EnforcerIPTables, EnforcerPodgate:
		default:
			t.Errorf("results[] has enforcer %v", x["enforcer"])
		}
		if _, ok := x["hog_cpu_share"]; ok {
			t.Errorf("results[] entry of %v has hog_cpu_share", x["enforcer"])
		}
		for _, k := range []string{"policies", "forwarding", "load_average"} {
			if _, ok := x[k]; !ok {
				t.Errorf("results[] entry %v lacks %q", x["enforcer"], k)
			}
		}
		if x["flows"] == nil {
			fw := x["forwarding"].(map[string]any)
			for _, path := range [][2]string{{"forwarding", "rate_pps"}, {"tcp", "bits_per_second"}, {"connections", "connections_per_second"}, {"latency", "p99_us"}} {
				obj, ok := x[path[0]].(map[string]any)
				if !ok || obj[path[1]] == nil {
					t.Errorf("results[] entry %v lacks %s.%s (forwarding %v)", x["enforcer"], path[0], path[1], fw["rate_pps"])
				}
			}
		}
	}
	var busy []map[string]any
	if err := json.Unmarshal(doc["busy_results"], &busy); err != nil {
		t.Fatal(err)
	}
	for _, x := range busy {
		if x["hog_cpu_share"] != 0.5 {
			t.Errorf("busy_results[] entry of %v: hog_cpu_share %v", x["enforcer"], x["hog_cpu_share"])
		}
	}
	var variants []map[string]any
	if err := json.Unmarshal(doc["variant_results"], &variants); err != nil {
		t.Fatal(err)
	}
	for _, x := range variants {
		if x["enforcer"] != "podgate-offload-none" {
			t.Errorf("variant_results[] has enforcer %v", x["enforcer"])
		}
	}
}

func TestWriteMarkdown(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := r.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, s := range []string{
		// The quiet table: podgate's columns as before, then the variant's.
		"| measurement | policies | none (kernel routing) | iptables/ipset | podgate | podgate / iptables | podgate / none | podgate-offload-none | podgate-offload-none / iptables | podgate-offload-none / none |",
		"| forwarding, 64-byte UDP, <0.1% loss (pps) | 2000 | 900000 | 600000 | 300000 | 0.50× | 0.33× | 200000 | 0.33× | 0.22× |",
		"| 100000 | 500000 | 100000 → 100000 | 550000 | 100000 → 100000 | 1.10× | 0.61× | 250000 | 100000 → 100000 | 0.50× | 0.28× |",
		// Busy: the hogs, the busy table and busy / quiet with the miss.
		"**Busy node**: everything measured again with 2 CPU hogs",
		"The hogs got 50% of their CPUs on average (CPU 0 45%, CPU 1 55%)",
		"| forwarding, 64-byte UDP, <0.1% loss (pps) | 2000 | 855000 | 570000 | 150000 | 0.26× | 0.18× | 190000 | 0.33× | 0.22× |",
		"| forwarding, 64-byte UDP, <0.1% loss (pps) | 2000 | 0 | 0.95× | 0.95× | 0.50× ✗ | 0.95× |",
		"| forwarding, 64-byte UDP, <0.1% loss (pps) | 2000 | 100000 | – | 0.95× | 0.95× | 0.95× |",
		"| UDP round trip p99 (µs) | 0 | 0 | 1.00× | 1.00× | 1.00× | 1.00× |",
		"Busy node, forwarding with the flow table full (2000 policies)",
		"| 100000 | 475000 | 100000 → 100000 | 522500 | 100000 → 100000 | 1.10× | 0.61× | 237500 | 100000 → 100000 | 0.50× | 0.28× |",
		// Idle cost, with the disturbed count marked.
		"| podgate | 100 | 0 | 10.0 | 0.30 | 0 | 0 | 406.0 | 4.06 | 400.0 / 400.0 | 5.00 (101) | 1.00 (2) | 4 (1) | 0 / 0 |",
		"50.0 / 10.0 (disturbed: other pins on the machine)",
		// Goals with met, missed.
		"| idle cost: CPU with no traffic | < 1% of one core | 0.30% (100 pod ports, 10 s) | yes |",
		"| busy node: every row above within 10% of its quiet value | busy / quiet ≥ 0.90× (latency ≤ 1.10×) | 10 of 11 rows within; worst forwarding at 2000 policies: 0.50× | no |",
	} {
		if !strings.Contains(md, s) {
			t.Errorf("report.md lacks\n%s", s)
		}
	}
	if t.Failed() {
		t.Logf("report.md:\n%s", md)
	}
	// Without variants, busy pass or idle cost, the results table is
	// today's.
	r.Variants, r.VariantResults, r.BusyNode, r.BusyResults, r.Idle = nil, nil, nil, nil, nil
	buf.Reset()
	if err := r.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	md = buf.String()
	if !strings.Contains(md, "| measurement | policies | none (kernel routing) | iptables/ipset | podgate | podgate / iptables | podgate / none |\n|---|---:|---:|---:|---:|---:|---:|\n") {
		t.Errorf("report.md without variants: the results table changed:\n%s", md)
	}
	for _, s := range []string{"Busy node", "Idle cost", "offload"} {
		if strings.Contains(md, s) {
			t.Errorf("report.md without busy pass and idle cost has %q", s)
		}
	}
}

func TestParseVariant(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Variant
		err  string
	}{
		{in: "busy-poll=--busy-poll=1ms", want: Variant{Name: "busy-poll", Args: []string{"--busy-poll=1ms"}}},
		{in: "tuned=--busy-poll=5ms  --xsk-ring-size=4096", want: Variant{Name: "tuned", Args: []string{"--busy-poll=5ms", "--xsk-ring-size=4096"}}},
		{in: "no-args=", err: "no agent arguments"},
		{in: "--offload=none", err: "name may only have"},
		{in: "Upper=--x", err: "name may only have"},
		{in: "noequals", err: "want NAME=ARGS"},
		{in: "=--x", err: "1 to 40 characters"},
	} {
		got, err := ParseVariant(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseVariant(%q): %v, want an error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseVariant(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseVariant(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestConfigVariants(t *testing.T) {
	base := Config{AgentBinary: "podgate", Out: "out"}
	c := base.withDefaults()
	if diff := cmp.Diff(DefaultVariants(), c.Variants); diff != "" {
		t.Errorf("default variants (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{EnforcerNone, EnforcerIPTables, EnforcerPodgate, "podgate-offload-none"}, c.Enforcers); diff != "" {
		t.Errorf("default enforcers (-want +got):\n%s", diff)
	}
	if err := c.validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	runs := c.podgateRuns()
	if len(runs) != 2 || runs[0].enforcer != EnforcerPodgate || runs[1].enforcer != "podgate-offload-none" || !slicesEqual(runs[1].args, []string{"--offload=none"}) {
		t.Errorf("runs %+v", runs)
	}

	// --agent-arg applies to every run, before the variant's own.
	c = base
	c.AgentArgs = []string{"--busy-poll=1ms"}
	c.Variants = []Variant{}
	c = c.withDefaults()
	if len(c.Variants) != 0 || len(c.Enforcers) != 3 {
		t.Errorf("no variants: %+v, enforcers %v", c.Variants, c.Enforcers)
	}
	c.Variants = []Variant{{Name: "ring", Args: []string{"--xsk-ring-size=4096"}}}
	c.Enforcers = []string{"podgate-ring"}
	runs = c.podgateRuns()
	if len(runs) != 1 || !slicesEqual(runs[0].args, []string{"--busy-poll=1ms", "--xsk-ring-size=4096"}) {
		t.Errorf("runs %+v", runs)
	}

	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Enforcers = []string{"podgate-nope"} }, `enforcer "podgate-nope"`},
		{func(c *Config) {
			c.Variants = []Variant{{Name: "a", Args: []string{"-x"}}, {Name: "a", Args: []string{"-y"}}}
		}, "given twice"},
		{func(c *Config) { c.IdlePods = 2 }, "idle pods 2"},
		{func(c *Config) { c.IdlePods = maxIdlePods + 1 }, "idle pods"},
		{func(c *Config) { c.IdleDuration = -time.Second }, "idle duration"},
	} {
		c := base.withDefaults()
		tc.mod(&c)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("validate: %v, want an error with %q", err, tc.want)
		}
	}
}

func slicesEqual(a, b []string) bool { return cmp.Equal(a, b) }

func TestIdlePods(t *testing.T) {
	pods := idlePods(maxIdlePods)
	seen := map[string]bool{}
	for i, o := range pods {
		pod := o.(*corev1.Pod)
		ip := pod.Status.PodIP
		if seen[ip] || strings.HasSuffix(ip, ".0") || strings.HasSuffix(ip, ".255") || !strings.HasPrefix(ip, "10.250.") {
			t.Errorf("pod %d: address %s", i, ip)
		}
		seen[ip] = true
		if pod.Spec.NodeName != NodeName || pod.Labels["role"] != "idle" {
			t.Errorf("pod %d: %+v", i, pod)
		}
	}
}

func TestWriteFilesSample(t *testing.T) {
	dir := t.TempDir()
	paths, err := sampleReport().WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"connections.png", "forwarding.png", "latency.png", "loss.png", "report.json", "report.md"}
	if len(paths) != len(want) {
		t.Fatalf("wrote %v, want %v", paths, want)
	}
	for i, p := range paths {
		if !strings.HasSuffix(p, "/"+want[i]) {
			t.Errorf("wrote %s, want %s", p, want[i])
		}
	}
}

// TestMergeLatency: trials are pooled (percentiles of every sample, counts
// summed) and each keeps its own percentiles.
func TestMergeLatency(t *testing.T) {
	trial := func(lo, n int) Latency {
		l := Latency{Rate: 1000, Sent: n + 1, Lost: 1}
		for i := range n {
			l.Samples = append(l.Samples, float64(lo+i))
		}
		l.P50, l.P99, l.Max = quantile(l.Samples, 0.5), quantile(l.Samples, 0.99), l.Samples[n-1]
		return l
	}
	// 1..100, 101..200, 201..300: pooled, the samples 1..300.
	got := mergeLatency([]Latency{trial(1, 100), trial(101, 100), trial(201, 100)})
	if got.Sent != 303 || got.Lost != 3 || len(got.Samples) != 300 || got.Rate != 1000 {
		t.Errorf("counts: sent %d lost %d samples %d rate %v", got.Sent, got.Lost, len(got.Samples), got.Rate)
	}
	if got.P50 != 150 || got.P90 != 270 || got.P99 != 297 || got.Max != 300 {
		t.Errorf("pooled p50 %v p90 %v p99 %v max %v, want 150 270 297 300", got.P50, got.P90, got.P99, got.Max)
	}
	want := []LatencyTrial{{50, 99, 100, 101, 1}, {150, 199, 200, 101, 1}, {250, 299, 300, 101, 1}}
	if !slices.Equal(got.Trials, want) {
		t.Errorf("trials %+v, want %+v", got.Trials, want)
	}
	r := sampleReport()
	for i := range r.Results {
		if r.Results[i].Latency != nil && r.Results[i].Flows == 0 {
			l := mergeLatency([]Latency{*r.Results[i].Latency, *r.Results[i].Latency})
			r.Results[i].Latency = &l
		}
	}
	r.evaluate()
	var buf bytes.Buffer
	if err := r.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "Round trip per latency trial (p50 / p99 µs;") || !strings.Contains(buf.String(), "podgate at 2000 policies ") {
		t.Errorf("report.md lacks the latency trials:\n%s", buf.String())
	}
	// The p99 goal names both enforcers' trial ranges where it is worst
	// (each trial keeps the p99 of the result it was made from).
	for _, g := range r.Goals {
		if g.Name == "UDP round trip p99 vs iptables/ipset" && !strings.Contains(g.Value, "; trials' p99 there: podgate 300.0–300.0 µs, iptables 60.0–60.0 µs") {
			t.Errorf("p99 goal: %q", g.Value)
		}
	}
}
