package hostile

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/policy/table"
)

// soakSample is one scrape of the agent during the soak.
type soakSample struct {
	At                      time.Time
	Elapsed                 time.Duration
	RSS, HeapInuse          float64
	Goroutines, FDs         float64
	Conntrack, Generation   float64
	FlowsNew, Drops         float64
	StartTime               float64 // process_start_time_seconds
	PID                     int
	ProbesOK, ProbesBad     int64
	BulkBytes, BulkRestarts int64
}

func (s soakSample) record() []string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	return []string{
		s.At.UTC().Format(time.RFC3339), strconv.FormatFloat(s.Elapsed.Seconds(), 'f', 1, 64),
		f(s.RSS), f(s.HeapInuse), f(s.Goroutines), f(s.FDs), f(s.Conntrack), f(s.Generation),
		f(s.FlowsNew), f(s.Drops), strconv.Itoa(s.PID),
		strconv.FormatInt(s.ProbesOK, 10), strconv.FormatInt(s.ProbesBad, 10),
		strconv.FormatInt(s.BulkBytes, 10), strconv.FormatInt(s.BulkRestarts, 10),
	}
}

func soakHeader() []string {
	return []string{"time", "elapsed_s", "rss_bytes", "heap_inuse_bytes", "goroutines", "open_fds",
		"conntrack_entries", "table_generation", "flows_new_total", "dropped_total", "agent_pid",
		"probes_ok", "probes_bad", "bulk_bytes", "bulk_reconnects"}
}

// soakStats counts the outcomes of the soak's traffic.
type soakStats struct {
	mu           sync.Mutex
	ok, bad      int64
	deniedPassed []string // denied probes that got through
	allowedFail  []string // allowed probes that failed
	bulkBytes    int64
	bulkRestarts int64
	bulkErrs     []string
}

func (s *soakStats) probe(r lab.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.OK() {
		s.ok++
		return
	}
	s.bad++
	if r.Observed {
		s.deniedPassed = append(s.deniedPassed, r.String())
	} else if len(s.allowedFail) < 100 {
		s.allowedFail = append(s.allowedFail, r.String())
	}
}

// TestSoak runs mixed traffic and policy churn against the agent for the
// duration in PODGATE_SOAK (skipped without it), sampling the agent's
// metrics every 10s into PODGATE_SOAK_CSV (default: a file in the test's
// temporary directory, whose path is logged). It checks that the agent
// never restarted, that memory, goroutines, open file descriptors and
// conntrack entries stay flat, and that no denied probe got through.
func TestSoak(t *testing.T) {
	spec := os.Getenv("PODGATE_SOAK")
	if spec == "" {
		t.Skip("set PODGATE_SOAK to a duration (e.g. 10m) to run the soak test")
	}
	dur, err := time.ParseDuration(spec)
	if err != nil || dur <= 0 {
		t.Fatalf("PODGATE_SOAK=%q: want a positive duration", spec)
	}
	csvPath := os.Getenv("PODGATE_SOAK_CSV")
	if csvPath == "" {
		csvPath = filepath.Join(t.TempDir(), "soak.csv")
	}
	const period = 10 * time.Second
	n := newNode(t)
	pid := n.l.AgentPID()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	stats := &soakStats{}
	var wg sync.WaitGroup
	every := func(d time.Duration, fn func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := time.NewTicker(d)
			defer tk.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
					fn()
				}
			}
		}()
	}
	probe := func(from, to string, p table.PortSpec) {
		r, err := n.l.ProbeResult(ctx, from, to, p)
		if err != nil {
			if ctx.Err() == nil {
				t.Errorf("probe %s -> %s %s: %v", from, to, p, err)
			}
			return
		}
		stats.probe(r)
	}
	// Bulk TCP at about 2.5 MB/s over one long connection, a -> b.
	wg.Add(1)
	go func() {
		defer wg.Done()
		soakBulk(ctx, n.l, stats)
	}()
	// Many short TCP connections, UDP, ICMP, IPv4 and IPv6, allowed and
	// denied.
	every(100*time.Millisecond, func() { probe("app/a", "app/b", tcpPort(80)) })
	every(150*time.Millisecond, func() { probe("fd00:31::4", "fd00:31::3", tcpPort(81)) })
	every(300*time.Millisecond, func() { probe("app/a", "app/b", udpPort(5353)) })
	every(400*time.Millisecond, func() { probe("fd00:31::2", "fd00:31::3", udpPort(5353)) })
	every(time.Second, func() { probe("app/c", "app/b", icmpEcho()) })
	every(time.Second, func() { probe("fd00:31::3", "fd00:31::4", icmpEcho()) })
	every(time.Second, func() { probe("ext", "app/a", tcpPort(80)) })
	every(2*time.Second, func() { probe("app/a", "app/b", tcpPort(81)) })
	every(2*time.Second, func() { probe("ext", "app/b", tcpPort(80)) })
	every(3*time.Second, func() { probe("app/d", "app/a", udpPort(5353)) })
	every(3*time.Second, func() { probe("app/a", "app/c", icmpEcho()) })
	// Policy churn: every 4s the churn policy alternately allows and
	// denies a -> b on TCP 82; 2.5s after each change a probe checks it.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			port := 82
			if i%2 == 1 {
				port = 83 // 82 denied again
			}
			if err := n.l.WriteManifest("90-churn.yaml", []byte(churnPolicy(port))); err != nil {
				t.Errorf("churn: %v", err)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(2500 * time.Millisecond):
			}
			probe("app/a", "app/b", tcpPort(82))
			select {
			case <-ctx.Done():
				return
			case <-time.After(1500 * time.Millisecond):
			}
		}
	}()

	// Sample every period.
	f, err := os.Create(csvPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := csv.NewWriter(f)
	_ = w.Write(soakHeader())
	var samples []soakSample
	sample := func() {
		m, err := n.scrape()
		if err != nil {
			t.Errorf("scrape at %v: %v", time.Since(start).Round(time.Second), err)
			return
		}
		var dropped float64
		for _, v := range drops(m) {
			dropped += v
		}
		stats.mu.Lock()
		s := soakSample{
			At: time.Now(), Elapsed: time.Since(start),
			RSS: m.Get("process_resident_memory_bytes"), HeapInuse: m.Get("go_memstats_heap_inuse_bytes"),
			Goroutines: m.Get("go_goroutines"), FDs: m.Get("process_open_fds"),
			Conntrack: m.Get("podgate_conntrack_entries"), Generation: m.Get("podgate_table_generation"),
			FlowsNew: m.Get("podgate_flows_new_total"), Drops: dropped,
			StartTime: m.Get("process_start_time_seconds"), PID: n.l.AgentPID(),
			ProbesOK: stats.ok, ProbesBad: stats.bad, BulkBytes: stats.bulkBytes, BulkRestarts: stats.bulkRestarts,
		}
		stats.mu.Unlock()
		samples = append(samples, s)
		_ = w.Write(s.record())
		w.Flush()
		if s.PID != pid || !n.l.AgentRunning() {
			t.Errorf("the agent restarted or died at %v (pid %d, was %d)", s.Elapsed.Round(time.Second), s.PID, pid)
		}
	}
	sample()
	tk := time.NewTicker(period)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tk.C:
			sample()
		}
	}
	tk.Stop()
	wg.Wait()
	sample()
	if err := w.Error(); err != nil {
		t.Errorf("write %s: %v", csvPath, err)
	}

	t.Logf("soak of %v: %d samples written to %s", dur, len(samples), csvPath)
	t.Logf("warm-up %v, then:\n%s", warmUp(dur), soakSummary(samples, warmUp(dur)))
	stats.mu.Lock()
	t.Logf("probes: %d as expected, %d not (%d denied ones got through); bulk: %d MB, %d reconnects",
		stats.ok, stats.bad, len(stats.deniedPassed), stats.bulkBytes>>20, stats.bulkRestarts)
	for _, s := range stats.deniedPassed {
		t.Errorf("a denied probe got through: %s", s)
	}
	if total := stats.ok + stats.bad; total > 0 && float64(len(stats.allowedFail)) > 0.005*float64(total) {
		t.Errorf("%d allowed probes failed (more than 0.5%%), e.g. %v", len(stats.allowedFail), stats.allowedFail[:min(5, len(stats.allowedFail))])
	} else if len(stats.allowedFail) > 0 {
		t.Logf("allowed probes that failed: %v", stats.allowedFail)
	}
	for _, e := range stats.bulkErrs {
		t.Logf("bulk: %s", e)
	}
	stats.mu.Unlock()
	for _, p := range checkFlat(samples, warmUp(dur)) {
		t.Error(p)
	}
	if samples[0].StartTime != samples[len(samples)-1].StartTime {
		t.Errorf("process_start_time_seconds changed: %v -> %v", samples[0].StartTime, samples[len(samples)-1].StartTime)
	}
}

// churnPolicy is a policy that lets a reach b on one TCP port.
func churnPolicy(port int) string {
	return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: churn
  namespace: app
spec:
  podSelector:
    matchLabels:
      app: b
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: a
    ports:
    - protocol: TCP
      port: %d
`, port)
}

// soakBulk streams the deterministic stream from a to b's echo server at
// about 2.5 MB/s and checks the echo, reconnecting after errors, until ctx
// is done.
func soakBulk(ctx context.Context, l *lab.Lab, stats *soakStats) {
	for ctx.Err() == nil {
		c, err := l.Dial(ctx, "app/a", "app/b", tcpPort(80))
		if err != nil {
			stats.mu.Lock()
			stats.bulkErrs = append(stats.bulkErrs, fmt.Sprintf("%s dial: %v", time.Now().Format(time.TimeOnly), err))
			stats.mu.Unlock()
			time.Sleep(time.Second)
			continue
		}
		err = streamUntil(ctx, c, stats)
		c.Close()
		if err != nil && ctx.Err() == nil {
			stats.mu.Lock()
			stats.bulkRestarts++
			stats.bulkErrs = append(stats.bulkErrs, fmt.Sprintf("%s: %v", time.Now().Format(time.TimeOnly), err))
			stats.mu.Unlock()
		}
	}
}

// streamUntil writes 64 KiB every 25ms on c and checks what comes back.
func streamUntil(ctx context.Context, c net.Conn, stats *soakStats) error {
	errs := make(chan error, 2)
	go func() {
		s := newStream()
		buf := make([]byte, 64<<10)
		tk := time.NewTicker(25 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				_ = c.SetDeadline(time.Now())
				errs <- nil
				return
			case <-tk.C:
			}
			s.fill(buf)
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(buf); err != nil {
				errs <- fmt.Errorf("write: %w", err)
				_ = c.SetDeadline(time.Now())
				return
			}
		}
	}()
	go func() {
		s := newStream()
		buf := make([]byte, 64<<10)
		want := make([]byte, 64<<10)
		for {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := c.Read(buf)
			if n > 0 {
				s.fill(want[:n])
				if string(buf[:n]) != string(want[:n]) {
					errs <- errors.New("echoed data differs")
					_ = c.SetDeadline(time.Now())
					return
				}
				stats.mu.Lock()
				stats.bulkBytes += int64(n)
				stats.mu.Unlock()
			}
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, io.EOF) {
					errs <- nil
				} else {
					errs <- fmt.Errorf("read: %w", err)
				}
				_ = c.SetDeadline(time.Now())
				return
			}
		}
	}()
	return errors.Join(<-errs, <-errs)
}

// warmUp is how long the soak's first samples are left out of the flatness
// checks: a quarter of the soak, from one to three minutes (conntrack
// entries level off once the first closed connections expire, after the
// 120s of TIME_WAIT).
func warmUp(d time.Duration) time.Duration { return min(3*time.Minute, max(time.Minute, d/4)) }

// quarters splits the samples after the warm-up into four.
func quarters(samples []soakSample, warmUp time.Duration) [4][]soakSample {
	var q [4][]soakSample
	var rest []soakSample
	for _, s := range samples {
		if s.Elapsed >= warmUp {
			rest = append(rest, s)
		}
	}
	for i, s := range rest {
		q[i*4/len(rest)] = append(q[i*4/len(rest)], s)
	}
	return q
}

func avg(ss []soakSample, f func(soakSample) float64) float64 {
	if len(ss) == 0 {
		return 0
	}
	sum := 0.0
	for _, s := range ss {
		sum += f(s)
	}
	return sum / float64(len(ss))
}

func maxOf(ss []soakSample, f func(soakSample) float64) float64 {
	m := 0.0
	for _, s := range ss {
		m = max(m, f(s))
	}
	return m
}

// checkFlat returns the problems with the samples: growth from the first
// quarter after the warm-up to the last beyond the bounds, or goroutines
// or file descriptors that grew from each quarter to the next.
func checkFlat(samples []soakSample, warmUp time.Duration) []string {
	q := quarters(samples, warmUp)
	if len(q[0]) < 2 || len(q[3]) < 2 {
		return nil // too short to judge; the summary says so
	}
	var problems []string
	rss := func(s soakSample) float64 { return s.RSS }
	gor := func(s soakSample) float64 { return s.Goroutines }
	fds := func(s soakSample) float64 { return s.FDs }
	ct := func(s soakSample) float64 { return s.Conntrack }
	if first, last := avg(q[0], rss), avg(q[3], rss); last > 1.25*first+8<<20 {
		problems = append(problems, fmt.Sprintf("RSS grew: first quarter %.1f MiB, last %.1f MiB", first/(1<<20), last/(1<<20)))
	}
	for _, m := range []struct {
		name string
		f    func(soakSample) float64
	}{{"goroutines", gor}, {"open fds", fds}} {
		first, last := maxOf(q[0], m.f), maxOf(q[3], m.f)
		if last > first+10 {
			problems = append(problems, fmt.Sprintf("%s grew: first quarter max %v, last %v", m.name, first, last))
		}
		if a, b, c, d := maxOf(q[0], m.f), maxOf(q[1], m.f), maxOf(q[2], m.f), maxOf(q[3], m.f); a < b && b < c && c < d {
			problems = append(problems, fmt.Sprintf("%s grew quarter after quarter: %v, %v, %v, %v", m.name, a, b, c, d))
		}
	}
	if first, last := avg(q[0], ct), avg(q[3], ct); last > 2*first+200 {
		problems = append(problems, fmt.Sprintf("conntrack entries grew: first quarter %.0f, last %.0f", first, last))
	}
	return problems
}

// soakSummary prints the samples at the start, the middle and the end, and
// the quarters' averages.
func soakSummary(samples []soakSample, warmUp time.Duration) string {
	var b strings.Builder
	if len(samples) == 0 {
		return "no samples"
	}
	row := func(label string, s soakSample) {
		fmt.Fprintf(&b, "%-7s %7.0fs  RSS %6.1f MiB  heap %6.1f MiB  goroutines %4.0f  fds %4.0f  conntrack %6.0f  generation %5.0f\n",
			label, s.Elapsed.Seconds(), s.RSS/(1<<20), s.HeapInuse/(1<<20), s.Goroutines, s.FDs, s.Conntrack, s.Generation)
	}
	row("start", samples[0])
	row("middle", samples[len(samples)/2])
	row("end", samples[len(samples)-1])
	q := quarters(samples, warmUp)
	if len(q[0]) == 0 {
		b.WriteString("(no samples after the warm-up: too short to judge flatness)\n")
		return b.String()
	}
	for i, qs := range q {
		fmt.Fprintf(&b, "quarter %d (%d samples): RSS avg %.1f MiB, goroutines max %.0f, fds max %.0f, conntrack avg %.0f\n", i+1, len(qs),
			avg(qs, func(s soakSample) float64 { return s.RSS })/(1<<20), maxOf(qs, func(s soakSample) float64 { return s.Goroutines }),
			maxOf(qs, func(s soakSample) float64 { return s.FDs }), avg(qs, func(s soakSample) float64 { return s.Conntrack }))
	}
	return b.String()
}
