package testutil_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/podgate/podgate/internal/test/testutil"
)

func TestEventually(t *testing.T) {
	calls := 0
	start := time.Now()
	testutil.Eventually(t, time.Second, "third call", func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("cond called %d times, want 3", calls)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("three calls took %v", d)
	}
	n := 0
	testutil.EventuallyTrue(t, time.Second, "second call", func() bool { n++; return n == 2 })
}

// TestEventuallyFails checks the failure in a test of its own: a
// recording testing.TB sees Fatalf.
func TestEventuallyFails(t *testing.T) {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testutil.Eventually(r, 20*time.Millisecond, "never", func() error { return errors.New("still no") })
	}()
	<-done
	if r.msg != "never: not within 20ms: still no" {
		t.Errorf("Fatalf message %q", r.msg)
	}
}

type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestWriteFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if got := testutil.WriteFile(t, p, "x"); got != p {
		t.Errorf("WriteFile returned %q, want %q", got, p)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "x" {
		t.Errorf("file holds %q, %v", b, err)
	}
}
