package k8swatch

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// runner calls fn from one goroutine when triggered, coalescing triggers.
// A trigger after a quiet period runs fn at once; triggers that arrive while
// a run is waiting or in progress lead to one more run. Runs start at least
// minInterval apart, and the pause after a run is at least as long as the
// run took, so that rebuilding never takes more than half of a CPU however
// many events arrive.
//
// The pause is proportional to the work done, which is what keeps it
// cheap for the common case: a rebuild that only updates the last table
// for a few pod changes (policy.Compiler.UpdatePods) takes about a
// millisecond at 10,000 pods, so the pause after it is about as long and
// minInterval bounds the rate instead (at most 1/minInterval runs per
// second, each a small fraction of a CPU); only a full compile (100 ms
// and more) makes the next change wait as long again. The bound stays
// "half a CPU" in both cases: no separate rule for cheap runs is needed,
// and none that could let a stream of changes that each force a full
// compile take the whole CPU.
//
// Neither k8s.io/utils nor client-go has such a runner: the one in
// kube-proxy (k8s.io/kubernetes/pkg/util/async) is not meant to be
// imported, and client-go's workqueue coalesces keys but does not bound how
// often they are processed.
type runner struct {
	fn          func()
	minInterval time.Duration
	clock       clock.Clock
	kick        chan struct{}
}

func newRunner(fn func(), minInterval time.Duration, clk clock.Clock) *runner {
	return &runner{fn: fn, minInterval: minInterval, clock: clk, kick: make(chan struct{}, 1)}
}

// trigger asks for a run. It never blocks; it is safe for concurrent use.
func (r *runner) trigger() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run serves triggers until ctx is done.
func (r *runner) run(ctx context.Context) {
	var lastStart, lastEnd time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		}
		if !lastStart.IsZero() {
			now := r.clock.Now()
			wait := max(lastStart.Add(r.minInterval).Sub(now), lastEnd.Add(lastEnd.Sub(lastStart)).Sub(now))
			if wait > 0 {
				t := r.clock.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C():
				}
			}
		}
		// Triggers that came while waiting are served by this run: fn
		// reads state that was updated before they were sent.
		select {
		case <-r.kick:
		default:
		}
		lastStart = r.clock.Now()
		r.fn()
		lastEnd = r.clock.Now()
	}
}
