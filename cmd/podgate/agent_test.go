package main

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAgentFlagErrors: bad agent flags are rejected before anything on the
// node changes, each naming its flag.
func TestAgentFlagErrors(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--manifests", article}, "--node-name"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--kubeconfig", "k"}, "give one source"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--busy-poll", "-1s"}, "--busy-poll"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--xsk-ring-size", "1000"}, "--xsk-ring-size 1000"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--xsk-ring-size", "32"}, "--xsk-ring-size 32"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--conntrack-max", "10"}, "--conntrack-max"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--metrics-addr", "9402"}, "--metrics-addr"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--metrics-max-conns", "1"}, "--metrics-max-conns"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--metrics-max-conns-per-client", "0"}, "--metrics-max-conns-per-client"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--health-addr", "9403"}, "--health-addr"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--health-addr", "127.0.0.1:9402"}, "must differ from --metrics-addr"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--manifest-file-limit", "-1"}, "--manifest-file-limit"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--log-level", "loud"}, "--log-level"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--worker-nice", "-21"}, "--worker-nice -21"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--worker-nice", "20"}, "--worker-nice 20"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--pprof-addr", "6060"}, "--pprof-addr"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--pprof-addr", "127.0.0.1:9402"}, "--pprof-addr"},
	} {
		_, _, err := podgate(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("podgate %s: err = %v, want it to mention %s", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// TestNiceThread: niceThread changes the nice value of its own thread
// only, not the process's other threads.
func TestNiceThread(t *testing.T) {
	before, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		got int
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Raising the nice value needs no privilege; the goroutine exits
		// locked, so its thread goes with it.
		if err := niceThread(5); err != nil {
			done <- result{err: err}
			return
		}
		got, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
		done <- result{got, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	// getpriority(2) returns 20 - nice.
	if nice := 20 - r.got; nice != 5 {
		t.Errorf("worker thread's nice value %d, want 5", nice)
	}
	after, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("this thread's priority changed from %d to %d", before, after)
	}
}
