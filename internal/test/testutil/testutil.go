// Package testutil holds the small helpers that tests of several packages
// need: waiting for a condition and writing a file. It is imported by
// tests only.
package testutil

import (
	"errors"
	"os"
	"testing"
	"time"
)

// maxPoll is the longest pause between two calls of a condition.
const maxPoll = 10 * time.Millisecond

// Eventually calls cond until it returns nil, and fails the test with
// what and cond's last error if timeout passes first. It calls cond at
// once, then after pauses that grow from 1 ms to 10 ms, so that a
// condition that holds soon is seen soon and a slow one costs little.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, maxPoll)
	}
}

// errNotYet is the error EventuallyTrue reports for a condition that never
// held.
var errNotYet = errors.New("condition never held")

// EventuallyTrue is [Eventually] for a condition with nothing to say but
// whether it holds.
func EventuallyTrue(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Eventually(t, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

// WriteFile writes content to path (mode 0644), failing the test on error,
// and returns path.
func WriteFile(t testing.TB, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
