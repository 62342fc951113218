package k8swatch

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/podgate/podgate/internal/test/testutil"
)

// startRunner runs r until the test ends.
func startRunner(t *testing.T, r *runner) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

func TestRunnerCoalescesBursts(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	var runs atomic.Int32
	r := newRunner(func() { runs.Add(1) }, time.Second, clk)
	startRunner(t, r)

	// The first trigger runs at once.
	r.trigger()
	testutil.EventuallyTrue(t, 10*time.Second, "the first run", func() bool { return runs.Load() == 1 })

	// A burst within the minimum interval waits for it and then runs once.
	for range 100 {
		r.trigger()
	}
	testutil.EventuallyTrue(t, 10*time.Second, "the runner to wait on its timer", clk.HasWaiters)
	for range 100 {
		r.trigger()
	}
	clk.Step(999 * time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	if got := runs.Load(); got != 1 {
		t.Fatalf("runs before the minimum interval passed = %d, want 1", got)
	}
	clk.Step(time.Millisecond)
	testutil.EventuallyTrue(t, 10*time.Second, "the coalesced run", func() bool { return runs.Load() == 2 })
	time.Sleep(20 * time.Millisecond)
	if got, w := runs.Load(), clk.Waiters(); got != 2 || w != 0 {
		t.Fatalf("after the burst: runs = %d, timer waiters = %d; want 2 and 0 (the burst runs once)", got, w)
	}

	// After a quiet period longer than the interval, a trigger runs at once.
	clk.Step(5 * time.Second)
	r.trigger()
	testutil.EventuallyTrue(t, 10*time.Second, "the run after a quiet period", func() bool { return runs.Load() == 3 })
}

func TestRunnerDoesNotLoseTriggersDuringARun(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	entered := make(chan struct{})
	release := make(chan struct{})
	var runs atomic.Int32
	r := newRunner(func() {
		if runs.Add(1) == 1 {
			close(entered)
			<-release
		}
	}, time.Second, clk)
	startRunner(t, r)

	r.trigger()
	<-entered
	r.trigger() // while the first run is in progress: its change may be missed
	close(release)
	testutil.EventuallyTrue(t, 10*time.Second, "the runner to wait for the minimum interval", clk.HasWaiters)
	clk.Step(time.Second)
	testutil.EventuallyTrue(t, 10*time.Second, "the second run", func() bool { return runs.Load() == 2 })
}

func TestRunnerPausesAsLongAsARunTook(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	var runs atomic.Int32
	// Each run takes 3 s of (fake) time, more than the 1 s interval.
	r := newRunner(func() {
		runs.Add(1)
		clk.Step(3 * time.Second)
	}, time.Second, clk)
	startRunner(t, r)

	r.trigger()
	testutil.EventuallyTrue(t, 10*time.Second, "the first run", func() bool { return runs.Load() == 1 })
	r.trigger()
	testutil.EventuallyTrue(t, 10*time.Second, "the runner to wait", clk.HasWaiters)
	clk.Step(2999 * time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	if got := runs.Load(); got != 1 {
		t.Fatalf("runs = %d before a pause as long as the last run, want 1", got)
	}
	clk.Step(time.Millisecond)
	testutil.EventuallyTrue(t, 10*time.Second, "the second run", func() bool { return runs.Load() == 2 })
}
