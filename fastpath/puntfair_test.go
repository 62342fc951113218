package fastpath

import (
	"errors"
	"testing"

	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/policy/table"
)

const tick = puntTick

// TestPuntFairShare checks the max-min fair share with made-up demands.
func TestPuntFairShare(t *testing.T) {
	for _, tc := range []struct {
		capacity float64
		demand   []uint64 // frames per second (perSec 1)
		want     float64
	}{
		{1000, nil, 1000},
		{1000, []uint64{5000}, 1000},
		{1000, []uint64{5000, 10, 20}, 970},
		{1000, []uint64{600, 600}, 500},
		{1000, []uint64{100, 600, 600, 10}, 445},
		{1000, []uint64{100, 200}, 900}, // room for all: the largest may use what the others leave
		{100, []uint64{90, 90, 90}, 100.0 / 3},
	} {
		d := append([]uint64(nil), tc.demand...)
		if got := fairShare(tc.capacity, d, 1); got != tc.want {
			t.Errorf("fairShare(%v, %v) = %v, want %v", tc.capacity, tc.demand, got, tc.want)
		}
	}
}

// TestPuntCtl drives the budget's decisions with made-up ticks: nothing
// until the socket drops frames; then the fair share of the capacity (the
// flooding pod gets what the others do not use); not lowered by a
// congestion that more pods do not explain; lowered when more pods flood;
// raised to what the worker showed it drains; after the hold, grown step
// by step while it still limits a pod, cut when that ends in congestion
// (and the hold doubled); lifted once nobody was limited.
func TestPuntCtl(t *testing.T) {
	var c puntCtl
	now := int64(0)
	perSec := float64(1e9 / tick)
	step := func(s puntSample) (uint64, uint64) {
		t.Helper()
		now += tick
		s.dt = tick
		return c.decide(now, s)
	}
	target := func(capacity float64, demand ...uint64) uint64 {
		return uint64(fairShare(capacity, demand, perSec))
	}
	// A busy pod on an uncongested node: never limited.
	for range 50 {
		if r, _ := step(puntSample{demand: []uint64{500}}); r != 0 {
			t.Fatalf("uncongested: rate %d, want unlimited", r)
		}
	}
	if got := c.capacity(now); got != 500*perSec {
		t.Errorf("capacity %v after 500 frames per tick drained, want %v", got, 500*perSec)
	}

	// Congested: pod a floods, b and c punt a little. The budget is the
	// fair share of puntShare of the capacity.
	r, b := step(puntSample{demand: []uint64{290, 5, 5}, drops: 1000})
	capacity := c.capacity(now)
	if want := target(capacity*puntShare, 5, 5, 290); r != want || b != puntMaxBurst {
		t.Fatalf("congested: rate %d, burst %d; want %d, %d (capacity %v)", r, b, want, puntMaxBurst, capacity)
	}
	if r < 30000 || r > 40000 {
		t.Errorf("congested: rate %d, want about 0.8 x 50,000 - 1,000", r)
	}
	// Still congested, a still alone: the budget is not lowered.
	for range 5 {
		if r2, _ := step(puntSample{demand: []uint64{r / 100, 5}, drops: 10, limited: 5000}); r2 < r {
			t.Fatalf("congested, one flooding pod: rate %d, lowered from %d", r2, r)
		}
	}
	r = c.rate
	// Three pods flood: each gets a third of the capacity.
	r3, _ := step(puntSample{demand: []uint64{r / 100, r / 100, r / 100}, drops: 10, limited: 5000})
	if want := target(c.capacity(now), r/100, r/100, r/100); r3 != want || r3 >= r {
		t.Fatalf("congested, three flooding pods: rate %d, want %d (below %d)", r3, want, r)
	}

	// The flood goes on limited, no drops: the budget holds (the window
	// still remembers what the worker drained, so it may go up to the
	// target once; not past it).
	for now-c.congested < c.hold-tick {
		before := c.rate
		got, _ := step(puntSample{demand: []uint64{r3 / 100, 5}, limited: 5000})
		if want := max(before, target(c.capacity(now)*puntShare, 5, r3/100)); got != want {
			t.Fatalf("within the hold: rate %d, want %d", got, want)
		}
	}
	// Past the hold, still limiting: grown by a step each puntStep.
	prev := c.rate
	for range 3 {
		got := prev
		for got == prev {
			got, _ = step(puntSample{demand: []uint64{prev / 100, 5}, limited: 5000})
		}
		if want := prev + prev/puntGrowth; got != want {
			t.Fatalf("after the hold, still limiting: rate %d, want %d", got, want)
		}
		prev = got
	}
	// Congestion right after growing: cut, and the next hold is longer.
	got, _ := step(puntSample{demand: []uint64{prev / 100, 5}, drops: 5, limited: 5000})
	if got > prev-prev/puntCut {
		t.Errorf("congested after growing: rate %d, want at most %d", got, prev-prev/puntCut)
	}
	if c.hold != 2*puntHold {
		t.Errorf("hold after a failed probe %v, want %v", c.hold, 2*puntHold)
	}

	// The flood stops: nobody is limited. Held, then lifted.
	last := now
	for {
		r, b := step(puntSample{demand: []uint64{1, 1}})
		if r == 0 {
			if b != 0 {
				t.Errorf("lifted with burst %d", b)
			}
			break
		}
		if now-last > 2*puntMaxHold {
			t.Fatalf("not lifted %v after the flood", now-last)
		}
	}
	if now-last < 2*puntHold-tick {
		t.Errorf("lifted %d ns after the last congestion, hold is %d", now-last, 2*puntHold)
	}
	if c.hold != puntHold {
		t.Errorf("hold after lifting %v, want %v", c.hold, puntHold)
	}
	// And stays lifted.
	for range 200 {
		if r, _ := step(puntSample{demand: []uint64{100, 2}}); r != 0 {
			t.Fatalf("rate %d after lifting", r)
		}
	}
}

// TestPuntCtlOnset: a budget set at the first congested tick, when the
// worker had barely drained anything yet (it was idle), goes up to what
// the worker then shows it drains at once, not by probes after the hold.
func TestPuntCtlOnset(t *testing.T) {
	var c puntCtl
	now := int64(0)
	step := func(s puntSample) uint64 {
		now += tick
		s.dt = tick
		r, _ := c.decide(now, s)
		return r
	}
	if r := step(puntSample{demand: []uint64{2}, drops: 700}); r != puntFloor {
		t.Fatalf("first congested tick: rate %d, want the floor %d", r, puntFloor)
	}
	r := step(puntSample{demand: []uint64{300}, limited: 10000})
	if r < 10000 {
		t.Errorf("after the worker drained 300 frames in a tick: rate %d, want about 0.8 x 15,000 (302 frames in two ticks)", r)
	}
}

// TestPuntCtlFloor: many pods punting at once each keep puntFloor.
func TestPuntCtlFloor(t *testing.T) {
	var c puntCtl
	demand := make([]uint64, 500)
	for i := range demand {
		demand[i] = 2
	}
	if r, b := c.decide(tick, puntSample{dt: tick, demand: demand, drops: 1}); r != puntFloor || b != puntMinBurst {
		t.Errorf("500 pods, 100,000 frames/s: rate %d burst %d, want %d, %d", r, b, puntFloor, puntMinBurst)
	}
	// A congested tick with nothing drained (the worker stalled).
	var c2 puntCtl
	if r, _ := c2.decide(tick, puntSample{dt: tick, drops: 1}); r != puntFloor {
		t.Errorf("nothing drained: rate %d, want the floor %d", r, puntFloor)
	}
	// A zero-length tick changes nothing.
	if r, _ := c2.decide(tick, puntSample{}); r != puntFloor {
		t.Errorf("empty tick: rate %d", r)
	}
	for _, tc := range []struct{ rate, burst uint64 }{{0, 0}, {100, puntMinBurst}, {5000, 50}, {1e6, puntMaxBurst}} {
		if got := (&puntCtl{rate: tc.rate}).burst(); got != tc.burst {
			t.Errorf("burst of %d/s: %d, want %d", tc.rate, got, tc.burst)
		}
	}
}

// fakeLimiter is a PuntLimiter that records what the engine sets.
type fakeLimiter struct {
	*memFlowTable
	limited uint64
	rate    uint64
	sets    int
	fail    error
}

func (f *fakeLimiter) SetPuntLimit(rate, _ uint64) error {
	if f.fail != nil {
		return f.fail
	}
	f.rate = rate
	f.sets++
	return nil
}

func (f *fakeLimiter) PuntLimited() (uint64, error) { return f.limited, nil }

// statsPort is a kernel port with socket statistics.
type statsPort struct {
	Port
	st xsk.Stats
}

func (p *statsPort) Stats() (xsk.Stats, error) { return p.st, nil }

// TestControlPunts runs the engine's ticks on fake counters: pods' punted
// frames are their ports' received frames, the socket's drops its
// statistics; the budget reaches the limiter, and errors are reported.
func TestControlPunts(t *testing.T) {
	ft := &fakeLimiter{memFlowTable: newMemFlowTable()}
	e, err := New(Config{Store: &table.Store{}, Offload: ft})
	if err != nil {
		t.Fatal(err)
	}
	sock := &statsPort{}
	a, b := &port{PortSpec: PortSpec{Name: "a", Kind: PodPort}}, &port{PortSpec: PortSpec{Name: "b", Kind: PodPort}}
	k := &port{PortSpec: PortSpec{Name: "k", Kind: KernelPort, Port: sock}}
	e.ports, e.kernel = []*port{a, b, k}, k
	run := func(aRx, bRx, drops uint64) {
		e.now += puntTick
		a.stats.local[pRxPackets] += aRx
		b.stats.local[pRxPackets] += bRx
		sock.st.RxDropped += drops
		e.controlPunts()
	}
	run(0, 0, 0) // the first tick only reads
	run(10000, 10, 0)
	if ft.sets != 0 || e.PuntLimit() != 0 {
		t.Fatalf("uncongested: %d sets, limit %d", ft.sets, e.PuntLimit())
	}
	run(20000, 10, 500)
	perSec := float64(1e9 / puntTick)
	want := uint64(e.off.fair.ctl.capacity(e.now)*puntShare - 10*perSec)
	if ft.rate != want || e.PuntLimit() != want || want == 0 {
		t.Fatalf("congested: rate %d, PuntLimit %d; want %d", ft.rate, e.PuntLimit(), want)
	}
	// A new socket (the kernel port was replaced) starts its counters
	// again: no drops are made up.
	sock2 := &statsPort{st: xsk.Stats{RxDropped: 7}}
	k2 := &port{PortSpec: PortSpec{Name: "k", Kind: KernelPort, Port: sock2}}
	e.ports, e.kernel = []*port{a, b, k2}, k2
	sock = sock2
	run(100, 0, 0)
	if c := e.off.fair.ctl.congested; c != e.now-puntTick {
		t.Errorf("the new socket's counters counted as drops (congested at %d, now %d)", c, e.now)
	}
	// Errors reach OffloadError.
	ft.fail = errors.New("boom")
	for range 1000 {
		run(100, 0, 0)
	}
	if e.OffloadError() == "" {
		t.Errorf("a failed SetPuntLimit is not reported")
	}
	// A removed port is forgotten.
	e.ports = []*port{a, k2}
	run(0, 0, 0)
	if _, ok := e.off.fair.rx[b]; ok {
		t.Errorf("removed port still tracked")
	}
}
