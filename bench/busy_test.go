package bench

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 50.
	line := "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200\n"
	got, err := parseStatCPU(line)
	if err != nil || got != 3*time.Second {
		t.Errorf("parseStatCPU: %v, %v; want 3s", got, err)
	}
	for _, bad := range []string{"", "1234 (x", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 -5 0 0"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q): no error", bad)
		}
	}
	// Our own process: some CPU time, no error.
	if _, err := procCPUTime(os.Getpid()); err != nil {
		t.Error(err)
	}
}

func TestHogSampleShare(t *testing.T) {
	at := time.Unix(100, 0)
	a := HogSample{at: at, cpu: []time.Duration{time.Second, 2 * time.Second}}
	b := HogSample{at: at.Add(2 * time.Second), cpu: []time.Duration{2 * time.Second, 4 * time.Second}}
	mean, per := a.Share(b)
	if mean != 0.75 || len(per) != 2 || per[0] != 0.5 || per[1] != 1 {
		t.Errorf("share %v %v, want 0.75 [0.5 1]", mean, per)
	}
	if mean, per := b.Share(a); mean != 0 || per != nil {
		t.Errorf("share backwards in time: %v %v", mean, per)
	}
}

// TestHogs starts a hog per CPU and checks that each is pinned to its
// CPU, named, and gone after Stop. It does not look at how much CPU they
// got.
func TestHogs(t *testing.T) {
	cpus := min(runtime.NumCPU(), 4)
	name := hogName("pgbtest", os.Getpid())
	h, err := StartHogs(cpus, name)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = h.Stop()
		}
	})
	pids := h.PIDs()
	if len(pids) != cpus {
		t.Fatalf("%d hogs, want %d", len(pids), cpus)
	}
	for i, pid := range pids {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(pid, &set); err != nil {
			t.Fatal(err)
		}
		if set.Count() != 1 || !set.IsSet(i) {
			t.Errorf("hog %d (pid %d): affinity %v, want CPU %d only", i, pid, set, i)
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(cmdline), hogScript+"\x00"+name) {
			t.Errorf("hog %d: command line %q, %v", i, cmdline, err)
		}
	}
	s0, err := h.Sample()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	s1, err := h.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if mean, per := s0.Share(s1); len(per) != cpus || mean < 0 || mean > 1.5 {
		t.Errorf("share %v %v", mean, per)
	}
	stopped = true
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	if left := processesNamed(name); len(left) > 0 {
		t.Errorf("hogs still running: %v", left)
	}
	if _, err := StartHogs(0, name); err == nil {
		t.Error("StartHogs(0): no error")
	}
}
