package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunTiny runs a bench of a few seconds per enforcer end to end: a
// 100-pod table, 0 and 10 policies, 2,000 tracked flows. Every number of
// the report must be there and positive, the iptables baseline must deny
// the denied pairs, and nothing may be left behind.
func TestRunTiny(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, XDP, iptables)")
	}
	if testing.Short() {
		t.Skip("takes about a minute")
	}
	bin := filepath.Join(t.TempDir(), "podgate")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/podgate").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/podgate: %v\n%s", err, out)
	}
	out := t.TempDir()
	var log bytes.Buffer
	const prefix = "pgbtiny"
	cfg := Config{
		AgentBinary: bin, Out: out, Quick: true,
		Namespaces: 10, PodsPerNamespace: 10,
		Policies: []int{0, 10}, Flows: []int{2000},
		Step: 300 * time.Millisecond, MaxTrials: 6,
		TCPDuration: time.Second, ConnDuration: 500 * time.Millisecond,
		LatencyDuration: 500 * time.Millisecond, LatencyRate: 500,
		Prefix: prefix, Log: &log,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := Run(ctx, cfg)
	t.Logf("log:\n%s", log.String())
	if err != nil {
		t.Fatal(err)
	}
	if left := leftovers(prefix); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}

	if r.Generator.PPS <= 0 {
		t.Errorf("generator capacity %v", r.Generator.PPS)
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
		x := r.find(w.enforcer, w.policies, w.flows)
		if x == nil {
			t.Errorf("no result for %+v", w)
			continue
		}
		name := x.Enforcer
		if x.Forwarding == nil || x.Forwarding.Saturated <= 0 || x.Forwarding.Rate <= 0 || len(x.Forwarding.Trials) == 0 {
			t.Errorf("%s %+v: forwarding %+v", name, w, x.Forwarding)
		}
		if w.flows > 0 {
			if x.ConntrackBefore <= 0 || x.PrefillSent < uint64(w.flows) {
				t.Errorf("%s %+v: %.0f flows tracked after sending %d", name, w, x.ConntrackBefore, x.PrefillSent)
			}
			continue
		}
		if x.TCP == nil || x.TCP.BitsPerSecond <= 0 {
			t.Errorf("%s %+v: tcp %+v", name, w, x.TCP)
		}
		if x.Conn == nil || x.Conn.PerSecond <= 0 {
			t.Errorf("%s %+v: connections %+v", name, w, x.Conn)
		}
		if x.Latency == nil || x.Latency.P50 <= 0 || x.Latency.P99 < x.Latency.P50 || len(x.Latency.Samples) == 0 {
			t.Errorf("%s %+v: latency %+v", name, w, x.Latency)
		}
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

	// The baseline was verified before it was measured: denied pairs
	// were denied.
	denied := 0
	for _, c := range r.Checks {
		if c.Observed != c.Expected {
			t.Errorf("check %+v", c)
		}
		if c.Enforcer == EnforcerIPTables && c.Expected == "deny" {
			denied++
		}
	}
	if denied != 2*len(cfg.Policies) {
		t.Errorf("%d denied iptables checks, want %d: %+v", denied, 2*len(cfg.Policies), r.Checks)
	}
	if len(r.Goals) == 0 {
		t.Error("no goals evaluated")
	}

	paths, err := r.WriteFiles(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"report.json", "report.md", "forwarding.png", "connections.png", "loss.png", "latency.png"} {
		if fi, err := os.Stat(filepath.Join(out, name)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v (wrote %v)", name, err, paths)
		}
	}
	md, _ := os.ReadFile(filepath.Join(out, "report.md"))
	for _, s := range []string{"podgate / iptables", "Goals:", "Generator ceiling"} {
		if !bytes.Contains(md, []byte(s)) {
			t.Errorf("report.md lacks %q", s)
		}
	}
}

// leftovers lists namespaces and directories of labs with the prefix.
func leftovers(prefix string) []string {
	var out []string
	for _, dir := range []string{"/run/netns", os.TempDir()} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix+"-") {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
	}
	return out
}
