package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podgate/podgate/internal/lab"
)

// The podgate binary the root tests run as the agent, built once.
var (
	buildOnce sync.Once
	binDir    string
	binErr    error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// podgateBinary builds ./cmd/podgate once per test binary.
func podgateBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "pgbench-bin-"); binErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "podgate"), "../cmd/podgate").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build ./cmd/podgate: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "podgate")
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, XDP, iptables)")
	}
	if testing.Short() {
		t.Skip("builds labs and runs the agent")
	}
}

// tinyConfig is a bench of well under a second per measurement: a
// 100-pod table, 0 and 10 policies, 2,000 tracked flows, no variants, no
// idle cost, no busy pass.
func tinyConfig(bin, out, prefix string, log *bytes.Buffer) Config {
	return Config{
		AgentBinary: bin, Out: out, Quick: true,
		Namespaces: 10, PodsPerNamespace: 10,
		Policies: []int{0, 10}, Flows: []int{2000},
		Step: 300 * time.Millisecond, MaxTrials: 6,
		TCPDuration: time.Second, ConnDuration: 500 * time.Millisecond,
		LatencyDuration: 500 * time.Millisecond, LatencyRate: 500,
		Variants: []Variant{}, IdlePods: -1,
		Prefix: prefix, Log: log,
	}
}

// TestRunTiny runs a bench of a few seconds per enforcer end to end and
// checks function, not speed: every number of the report is there and
// well formed (none has to be positive or large: on a loaded machine
// podgate may pass no rate at all), the baselines deny the denied pairs,
// the report files exist and parse, and nothing is left behind.
func TestRunTiny(t *testing.T) {
	needRoot(t)
	bin := podgateBinary(t)
	out := t.TempDir()
	var log bytes.Buffer
	const prefix = "pgbtiny"
	cfg := tinyConfig(bin, out, prefix, &log)
	r := runTiny(t, cfg, &log)

	if !finite(r.Generator.PPS) || r.Generator.Sent == 0 {
		t.Errorf("generator capacity %+v: want a finite rate and frames sent", r.Generator)
	}
	if r.Machine.CPUModel == "" || r.Machine.Kernel == "" || r.Machine.CPUs <= 0 {
		t.Errorf("machine %+v", r.Machine)
	}
	want := []struct {
		enforcer string
		policies int
		flows    int
	}{
		{EnforcerNone, 0, 0},
		{EnforcerIPTables, 0, 0}, {EnforcerPodgate, 0, 0},
		{EnforcerIPTables, 10, 0}, {EnforcerPodgate, 10, 0},
		{EnforcerIPTables, 10, 2000}, {EnforcerPodgate, 10, 2000},
	}
	if len(r.Results) != len(want) {
		t.Errorf("%d results, want %d", len(r.Results), len(want))
	}
	for _, w := range want {
		checkResult(t, "quiet", r.find(w.enforcer, w.policies, w.flows), w.enforcer, w.policies, w.flows, cfg)
	}
	if len(r.VariantResults)+len(r.BusyResults)+len(r.Idle) != 0 || r.BusyNode != nil {
		t.Errorf("no variants, busy pass or idle cost asked for, got %d, %d, %d, %v", len(r.VariantResults), len(r.BusyResults), len(r.Idle), r.BusyNode)
	}
	for _, p := range cfg.Policies {
		ip := r.control(EnforcerIPTables, p, 0)
		if ip == nil || ip.ApplySeconds <= 0 || ip.CompileSeconds <= 0 || ip.Rules <= 0 || ip.Sets <= 0 || ip.KernelSetBytes <= 0 {
			t.Errorf("iptables control plane at %d policies: %+v", p, ip)
		}
		pg := r.control(EnforcerPodgate, p, 0)
		if pg == nil || pg.AgentCompileSeconds <= 0 || pg.CompileSeconds <= 0 || pg.RSSBytes <= 0 || pg.RSSAfterBytes <= 0 || pg.Rules <= 0 {
			t.Errorf("podgate control plane at %d policies: %+v", p, pg)
		}
	}
	checkChecks(t, r, false, []string{EnforcerIPTables, EnforcerPodgate}, len(cfg.Policies))
	if len(r.Goals) == 0 {
		t.Error("no goals evaluated")
	}
	checkFiles(t, r, out, "podgate / iptables", "Goals", "Generator ceiling")
}

// TestRunTinyBusyIdle runs the busy-node pass, a variant and the idle
// cost on the smallest bench: plain routing and a podgate variant (no
// default agent), one policy count, no flow table, an idle lab of 5 pods.
func TestRunTinyBusyIdle(t *testing.T) {
	needRoot(t)
	bin := podgateBinary(t)
	out := t.TempDir()
	var log bytes.Buffer
	const prefix = "pgbtinyb"
	cfg := tinyConfig(bin, out, prefix, &log)
	cfg.Policies, cfg.Flows, cfg.MaxTrials = []int{10}, []int{}, 3
	cfg.Variants = []Variant{{Name: "bp", Args: []string{"--busy-poll=1ms"}}}
	cfg.Enforcers = []string{EnforcerNone, "podgate-bp"}
	cfg.BusyNode, cfg.IdlePods, cfg.IdleDuration = true, 5, time.Second
	r := runTiny(t, cfg, &log)

	// Quiet: none in results[], the variant in variant_results[] only.
	if len(r.Results) != 1 || r.Results[0].Enforcer != EnforcerNone {
		t.Errorf("results %+v: want none only", r.Results)
	}
	checkResult(t, "quiet", r.find(EnforcerNone, 0, 0), EnforcerNone, 0, 0, cfg)
	if len(r.VariantResults) != 1 {
		t.Errorf("%d variant results, want 1", len(r.VariantResults))
	}
	checkResult(t, "quiet", r.lookup(false, "podgate-bp", 10, 0), "podgate-bp", 10, 0, cfg)

	// Busy: both again, with the hogs' share.
	bn := r.BusyNode
	if bn == nil {
		t.Fatal("no busy_node")
	}
	if bn.Hogs != r.Machine.CPUs || len(bn.HogSharePerCPU) != bn.Hogs || !finite(bn.HogShare) || bn.HogShare < 0 || bn.Seconds <= 0 {
		t.Errorf("busy node %+v: want %d hogs with a share each", bn, r.Machine.CPUs)
	}
	if bn.Generator.Sent == 0 {
		t.Errorf("busy generator %+v: sent nothing", bn.Generator)
	}
	if len(r.BusyResults) != 2 {
		t.Errorf("%d busy results, want 2", len(r.BusyResults))
	}
	for _, e := range []string{EnforcerNone, "podgate-bp"} {
		x := r.lookup(true, e, 10, 0)
		checkResult(t, "busy", x, e, 10, 0, cfg)
		if x != nil && (!finite(x.HogShare) || x.HogShare < 0) {
			t.Errorf("busy %s: hog share %v", e, x.HogShare)
		}
	}
	for _, x := range append(r.Results, r.VariantResults...) {
		if x.HogShare != 0 {
			t.Errorf("quiet %s has a hog share", x.Enforcer)
		}
	}
	checkChecks(t, r, false, []string{"podgate-bp"}, 1)
	checkChecks(t, r, true, []string{"podgate-bp"}, 1)

	// Idle cost of the variant on 5 pod ports.
	if len(r.Idle) != 1 {
		t.Fatalf("idle cost %+v: want one entry", r.Idle)
	}
	ic := r.Idle[0]
	if ic.Enforcer != "podgate-bp" || ic.PodPorts != 5 || ic.Policies != 10 || ic.Seconds < 1 {
		t.Errorf("idle cost %+v", ic)
	}
	if !finite(ic.CPUPercent) || ic.CPUPercent < 0 || ic.CPUSeconds < 0 || ic.RSSBytes <= 0 {
		t.Errorf("idle cost CPU and RSS %+v", ic)
	}
	// A socket per pod port and the kernel leg, with their rings; the XDP
	// program and its socket map. The UMEM figure is a machine-wide
	// counter: only when nothing else disturbed it must it be there.
	if ic.XSKSockets < ic.PodPorts || ic.XSKRingBytes <= 0 || ic.BPFMaps < 1 || ic.BPFMapBytes <= 0 || ic.BPFProgs < 1 || ic.BPFProgBytes <= 0 {
		t.Errorf("idle cost memory %+v", ic)
	}
	if !ic.UMEMNoisy && ic.UMEMBytes <= 0 {
		t.Errorf("idle cost: no UMEM pinned, %v released, not disturbed", ic.UMEMReleasedBytes)
	}
	if sum := ic.UMEMBytes + ic.XSKRingBytes + ic.BPFMapBytes + ic.BPFProgBytes; ic.PinnedBytes != sum || ic.PinnedBytesPerPodPort != sum/5 {
		t.Errorf("pinned %v, per port %v: want %v and %v", ic.PinnedBytes, ic.PinnedBytesPerPodPort, sum, sum/5)
	}
	checkFiles(t, r, out, "Busy node", "Busy / quiet", "Idle cost", "podgate-bp / none")
}

// TestRunVariantRejected checks that a variant whose arguments the agent
// does not know stops the bench before anything is measured, naming the
// variant, and that one the agent parses but refuses at start-up fails
// the run naming it too.
func TestRunVariantRejected(t *testing.T) {
	needRoot(t)
	bin := podgateBinary(t)
	for _, tc := range []struct {
		name, arg, want string
	}{
		{"unknown", "--no-such-flag=1", "unknown flag"},
		{"refused", "--busy-poll=-1s", "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			prefix := "pgbrej" + tc.name[:1]
			cfg := tinyConfig(bin, t.TempDir(), prefix, &log)
			cfg.Policies, cfg.Flows = []int{0}, []int{}
			cfg.Variants = []Variant{{Name: "bad", Args: []string{tc.arg}}}
			cfg.Enforcers = []string{"podgate-bad"}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			_, err := Run(ctx, cfg)
			if err == nil {
				t.Fatalf("Run with %s: no error\n%s", tc.arg, log.String())
			}
			t.Logf("error: %v", err)
			for _, s := range []string{"podgate-bad", tc.arg, tc.want} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error lacks %q: %v", s, err)
				}
			}
			checkNothingLeft(t, prefix)
		})
	}
}

// runTiny runs a tiny bench, logs its progress and checks that it left
// nothing behind.
func runTiny(t *testing.T, cfg Config, log *bytes.Buffer) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := Run(ctx, cfg)
	t.Logf("log:\n%s", log.String())
	if err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, cfg.Prefix)
	return r
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// checkResult checks that a result has every number it should, finite
// and not negative, and nothing it should not.
func checkResult(t *testing.T, pass string, x *Result, enforcer string, policies, flows int, cfg Config) {
	t.Helper()
	name := fmt.Sprintf("%s %s, %d policies, %d flows", pass, enforcer, policies, flows)
	if x == nil {
		t.Errorf("%s: no result", name)
		return
	}
	if x.Enforcer != enforcer || x.Flows != flows || (enforcer != EnforcerNone && x.Policies != policies) {
		t.Errorf("%s: found %s, %d policies, %d flows", name, x.Enforcer, x.Policies, x.Flows)
	}
	fw := x.Forwarding
	if fw == nil || len(fw.Trials) == 0 || !finite(fw.Rate) || fw.Rate < 0 || !finite(fw.Saturated) || fw.Saturated < 0 {
		t.Errorf("%s: forwarding %+v", name, fw)
	} else {
		for _, tr := range fw.Trials {
			if tr.Sent == 0 || !finite(tr.Loss) || !finite(tr.Offered) || !finite(tr.Delivered) {
				t.Errorf("%s: trial %+v", name, tr)
			}
		}
	}
	if flows > 0 {
		if x.PrefillSent < uint64(flows) || !finite(x.ConntrackBefore) || x.ConntrackBefore < 0 || !finite(x.ConntrackAfter) || x.ConntrackAfter < 0 {
			t.Errorf("%s: %.0f → %.0f flows tracked after sending %d", name, x.ConntrackBefore, x.ConntrackAfter, x.PrefillSent)
		}
		var sent uint64
		for _, p := range x.Prefill {
			sent += p.Sent
			if !finite(p.Rate) || p.Rate <= 0 || !finite(p.Admitted) || !finite(p.Seconds) || p.Seconds <= 0 {
				t.Errorf("%s: prefill pass %+v", name, p)
			}
		}
		if len(x.Prefill) == 0 || sent != x.PrefillSent || x.Prefill[len(x.Prefill)-1].Tracked != x.ConntrackBefore {
			t.Errorf("%s: prefill passes %+v do not add up to %d sent, %.0f tracked", name, x.Prefill, x.PrefillSent, x.ConntrackBefore)
		}
		if x.TCP != nil || x.Conn != nil || x.Latency != nil {
			t.Errorf("%s: a flow-table result has only the forwarding rate", name)
		}
		return
	}
	if x.TCP == nil || !finite(x.TCP.BitsPerSecond) || x.TCP.BitsPerSecond < 0 || x.TCP.Seconds <= 0 {
		t.Errorf("%s: tcp %+v", name, x.TCP)
	}
	if x.Conn == nil || !finite(x.Conn.PerSecond) || x.Conn.PerSecond < 0 || x.Conn.Workers != FullConfig().ConnWorkers || x.Conn.Seconds <= 0 {
		t.Errorf("%s: connections %+v", name, x.Conn)
	}
	if l := x.Latency; l == nil || len(l.Samples) == 0 || l.P50 <= 0 || l.P99 < l.P50 || l.Max < l.P99 || l.Sent < len(l.Samples) {
		t.Errorf("%s: latency %+v", name, x.Latency)
	} else {
		sent := 0
		for _, tr := range l.Trials {
			sent += tr.Sent
			if tr.P50 <= 0 || tr.P99 < tr.P50 || tr.Max < tr.P99 || tr.Max > l.Max {
				t.Errorf("%s: latency trial %+v (pooled max %.1f)", name, tr, l.Max)
			}
		}
		if len(l.Trials) != latencyTrials || sent != l.Sent {
			t.Errorf("%s: %d latency trials sending %d, want %d trials sending %d", name, len(l.Trials), sent, latencyTrials, l.Sent)
		}
	}
}

// checkChecks checks that every probe saw what it expected and that each
// of the enforcers was verified (two denied pairs) n times in the pass.
func checkChecks(t *testing.T, r *Report, busy bool, enforcers []string, n int) {
	t.Helper()
	denied := map[string]int{}
	for _, c := range r.Checks {
		if c.Observed != c.Expected || c.Attempts < 1 || c.Attempts > allowAttempts || (c.Expected == "deny" && c.Attempts != 1) {
			t.Errorf("check %+v", c)
		}
		if c.Busy == busy && c.Expected == "deny" {
			denied[c.Enforcer]++
		}
	}
	for _, e := range enforcers {
		if denied[e] != 2*n {
			t.Errorf("%s pass: %d denied %s checks, want %d: %+v", passName(busy), denied[e], e, 2*n, r.Checks)
		}
	}
}

// checkFiles writes the report files and checks that they exist, that
// report.json parses with results[] of none, iptables and podgate only,
// and that report.md has the given strings.
func checkFiles(t *testing.T, r *Report, out string, md ...string) {
	t.Helper()
	paths, err := r.WriteFiles(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"report.json", "report.md", "forwarding.png", "connections.png", "loss.png", "latency.png"} {
		if fi, err := os.Stat(filepath.Join(out, name)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v (wrote %v)", name, err, paths)
		}
	}
	data, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	if len(back.Results) != len(r.Results) || len(back.BusyResults) != len(r.BusyResults) || len(back.VariantResults) != len(r.VariantResults) || len(back.Idle) != len(r.Idle) {
		t.Errorf("report.json does not read back: %d/%d/%d/%d entries", len(back.Results), len(back.VariantResults), len(back.BusyResults), len(back.Idle))
	}
	for _, x := range back.Results {
		if x.Enforcer != EnforcerNone && x.Enforcer != EnforcerIPTables && x.Enforcer != EnforcerPodgate {
			t.Errorf("results[] has enforcer %q", x.Enforcer)
		}
	}
	text, _ := os.ReadFile(filepath.Join(out, "report.md"))
	for _, s := range md {
		if !bytes.Contains(text, []byte(s)) {
			t.Errorf("report.md lacks %q", s)
		}
	}
}

// checkNothingLeft checks that no namespace, lab directory or CPU hog of
// this test process is left.
func checkNothingLeft(t *testing.T, prefix string) {
	t.Helper()
	if left := lab.Leftovers(fmt.Sprintf("%s-%d", prefix, os.Getpid())); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if pids := processesNamed(hogName(prefix, os.Getpid())); len(pids) > 0 {
		t.Errorf("hogs left running: %v", pids)
	}
}

// processesNamed returns the processes whose command line has name as an
// argument.
func processesNamed(name string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(data), "\x00") {
			if arg == name {
				out = append(out, e.Name())
			}
		}
	}
	return out
}
