package fastpath

import (
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/podgate/podgate/fastpath/xsk"
)

// This file shares the kernel leg's socket fairly between the pods while
// it is congested. The TC program of each pod's veth punts the frames it
// does not forward itself (first packets, handshakes, FIN and RST, ICMP,
// ARP and NDP) to the engine through one AF_XDP socket, on the kernel
// leg's gateway end. A pod that floods new flows faster than the worker
// drains that socket overruns it, and the kernel drops what does not fit,
// whoever sent it: another pod's SYN is lost and retransmitted a second
// later. The kernel therefore keeps a punt budget per pod (a token bucket
// per veth, [PuntLimiter]), unlimited by default, which the worker sets
// only while the socket is congested:
//
//   - every puntTick it reads the socket's drop counters (the kernel's
//     XDP statistics: frames dropped for an empty fill ring or a full RX
//     ring) and how many punted frames it drained from each pod;
//   - when the socket dropped frames, the budget is the max-min fair
//     share of puntShare of the worker's capacity (the most it drained in
//     a step of the last second) among the pods that punted in the tick:
//     those that punted less get what they punted, the others the rest in
//     equal parts, so one pod flooding alone keeps most of the worker and
//     the others what they need; at least puntFloor frames per second.
//     While congested, a budget in force only goes down when more pods
//     need a share (the fair share of the whole capacity is lower);
//   - after a hold without congestion (puntHold, longer when probes keep
//     ending in congestion), a budget that still limits someone grows by
//     a step each puntStep (probing whether the worker drains more than
//     it showed at that budget), and is cut back by a quarter if that
//     ends in congestion; it is lifted once nobody was limited for
//     puntHold.
//
// A busy pod on an uncongested node is never limited: the budget only
// exists after the socket dropped frames.

// PuntLimiter is the kernel's per-pod punt budget. A [FlowTable] in
// [Config.Offload] that implements it lets the worker share the kernel
// leg's socket fairly between pods while it is congested (see
// puntfair.go).
type PuntLimiter interface {
	// SetPuntLimit lets each pod punt rate frames per second, burst back
	// to back; rate 0 lifts the limit.
	SetPuntLimit(rate, burst uint64) error
	// PuntLimited returns how many frames the kernel dropped over their
	// pod's budget so far.
	PuntLimited() (uint64, error)
}

// xskStatser is a port that reports its socket's kernel statistics
// (an *xsk.Socket).
type xskStatser interface {
	Stats() (xsk.Stats, error)
}

const (
	// puntTick is how often the worker looks at the socket: two system
	// calls (the socket's statistics, the kernel's limited count) and a
	// pass over the ports per tick, 200 system calls per second. What a
	// flood makes the socket drop before the budget contains it is about
	// one tick of it: at 10 ms, a flood at 600,000 frames/s costs about
	// 6,000 frames, not the 60,000 of a 100 ms tick (measured in
	// TestFloodFasterThanWorker), and another pod's SYN is less likely
	// among them.
	puntTick = int64(10e6)
	// puntStep is how often a budget may grow, and how long one must be
	// in force before a congestion cuts it: ten ticks, so that what the
	// worker drains at the new budget is measured over enough frames.
	puntStep = int64(100e6)
	// puntWindow is how many steps the capacity estimate looks back: one
	// second.
	puntWindow = 10
	// puntHold is how long a budget stays after the last congestion
	// before it may grow: one SYN retransmission timeout, and ten ticks,
	// so that one quiet tick in a flood does not lift it (the flood would
	// overrun the socket again at once). Each probe (growth or lift) that
	// ends in congestion within puntHold doubles the hold, up to
	// puntMaxHold: a flood that goes on is probed about every 8 s, and
	// each probe costs the other pods about one tick of drops.
	puntHold    = int64(1e9)
	puntMaxHold = int64(8e9)
	// puntShare is the part of the worker's estimated capacity that the
	// pods' budgets add up to: the rest is margin for the estimate's
	// error and for what else the socket carries (the kernel's own frames
	// toward pods).
	puntShare = 0.8
	// puntFloor is the least budget of a pod, frames per second: enough
	// for a pod's ordinary handshakes (a TCP connection punts about four
	// frames: SYN, the ACK that completes it, FIN, RST or the last ACK)
	// at about a hundred new connections per second, however many pods
	// punt at once.
	puntFloor = 500
	// puntBurstDiv, puntMinBurst, puntMaxBurst: a pod may punt a
	// hundredth of a second's budget back to back (a tick's worth), at
	// least puntMinBurst frames (a connection pool opening its
	// connections at once), at most puntMaxBurst: an eighth of the
	// frames the worker keeps posted on the socket (1,024 by default),
	// so that a few pods bursting at once cannot overrun it. (With a
	// tenth of a second's budget, up to 5,000 frames at once, the bursts
	// themselves overran the socket in TestFloodFasterThanWorker, and
	// the budget shrank to a tenth of what the worker drained.)
	puntBurstDiv = 100
	puntMinBurst = 32
	puntMaxBurst = 128
	// puntGrowth: past the hold, a budget that still limits pods grows by
	// 1/puntGrowth each puntStep: it doubles in about 0.6 s, small enough
	// steps that the probe overshoots the worker's capacity by little.
	puntGrowth = 8
	// puntCut: a raise that ends in congestion is undone, and a little
	// more: the budget is cut by 1/puntCut at least (a multiplicative
	// decrease: a probe that overshot falls back below the capacity at
	// once).
	puntCut = 4
)

// puntSample is what the worker saw in one tick.
type puntSample struct {
	// dt is the tick's length in nanoseconds.
	dt int64
	// demand holds, for each pod that punted in the tick, how many of its
	// punted frames the worker received; decide sorts it.
	demand []uint64
	// drops is how many frames the socket dropped (fill ring empty, RX
	// ring full); limited how many the kernel dropped over budget.
	drops, limited uint64
}

// puntCtl decides the per-pod punt budget from the ticks' samples. It is
// pure (no system call, no allocation), for tests.
type puntCtl struct {
	// steps are the rates (frames per second) at which the worker drained
	// punted frames in the last puntWindow steps of puntStep, a ring at
	// next; step and stepStart accumulate the current one.
	steps     [puntWindow]float64
	next      int
	step      uint64
	stepStart int64
	started   bool
	// rate is the budget in force, frames per second per pod; 0: none.
	rate uint64
	// congested and limited are when the socket last dropped frames and
	// when the kernel last limited a pod; changed when rate last changed,
	// probed when it was last raised while limiting.
	congested, limited, changed, probed int64
	// hold is the current hold time: puntHold, doubled (up to
	// puntMaxHold) each time a probe ends in congestion.
	hold int64
	// raised: the last change of rate was a probe's raise.
	raised bool
}

// capacity is the estimate of how many punted frames per second the
// worker drains: the most it drained in a step of the last second (and
// in the current step so far). Not an average: with a budget in force,
// the worker drains no more than the budget, and an average of that
// would pull the budget down step after step, while drops that the
// budget's level did not cause (the worker descheduled: the machine's
// other work, the flood's own softirq on its CPU) go on; with the
// maximum, the budget follows a worker that got slower within a second,
// and never falls below what the worker showed it can do.
func (c *puntCtl) capacity(now int64) float64 {
	m := 0.0
	for _, r := range c.steps {
		m = max(m, r)
	}
	if d := now - c.stepStart; d >= puntTick && c.started {
		m = max(m, float64(c.step)*1e9/float64(d))
	}
	return m
}

// decide takes the sample of the tick that ended at now and returns the
// budget to set: rate frames per second per pod (0: unlimited) and burst.
func (c *puntCtl) decide(now int64, s puntSample) (rate, burst uint64) {
	if s.dt <= 0 {
		return c.rate, c.burst()
	}
	perSec := 1e9 / float64(s.dt)
	if !c.started {
		c.started, c.stepStart = true, now-s.dt
	}
	for _, d := range s.demand {
		c.step += d
	}
	if d := now - c.stepStart; d >= puntStep {
		c.steps[c.next] = float64(c.step) * 1e9 / float64(d)
		c.next = (c.next + 1) % puntWindow
		c.step, c.stepStart = 0, now
	}
	if s.limited > 0 {
		c.limited = now
	}
	if s.drops > 0 {
		c.congested = now
		switch {
		case c.hold == 0:
			c.hold = puntHold
		case c.probed != 0 && now-c.probed < puntHold:
			// A raise ended in congestion: probe less often.
			c.hold = min(2*c.hold, puntMaxHold)
			c.probed = 0
		}
		capacity := c.capacity(now)
		target := uint64(fairShare(capacity*puntShare, s.demand, perSec))
		var rate uint64
		switch {
		case c.rate == 0:
			rate = target
		case c.raised:
			// The last raise overshot: back below it.
			rate = min(target, c.rate-c.rate/puntCut)
		default:
			// A budget in force goes down only if more pods need their
			// share of the worker now (the fair share of the whole
			// capacity is lower), not by puntShare again: the capacity
			// measured under the budget is the budget itself, and the
			// congestion may not be its doing (the worker descheduled).
			// It goes up to the target: the worker showed it drains more.
			rate = max(min(uint64(fairShare(capacity, s.demand, perSec)), c.rate), target)
		}
		c.set(now, max(rate, puntFloor), false)
		return c.rate, c.burst()
	}
	if c.rate != 0 {
		// The worker showed it drains more than the budget assumed (a
		// budget set at the first congested tick, the worker barely
		// awake): up to the target at once.
		if target := uint64(fairShare(c.capacity(now)*puntShare, s.demand, perSec)); target > c.rate {
			c.set(now, target, false)
			return c.rate, c.burst()
		}
	}
	if c.rate == 0 || now-c.congested < c.hold {
		return c.rate, c.burst()
	}
	if now-c.limited >= puntHold {
		// Nobody needs more: lifting changes nothing until the load
		// rises, and then a congestion sets a budget again.
		c.hold = puntHold
		c.set(now, 0, false)
		return 0, 0
	}
	if now-c.changed < puntStep {
		return c.rate, c.burst()
	}
	// Probe: the worker may drain more than it showed at this budget.
	c.probed = now
	c.set(now, c.rate+max(c.rate/puntGrowth, 1), true)
	return c.rate, c.burst()
}

// set makes rate the budget; probe says it is a probe's raise.
func (c *puntCtl) set(now int64, rate uint64, probe bool) {
	if rate != c.rate {
		c.raised = probe
		c.rate, c.changed = rate, now
	}
}

// fairShare returns the max-min fair share of capacity (frames per second)
// among pods with the given demands (frames per tick; times perSec per
// second): the level such that the pods that want less get what they
// want, and the others that level each. Demands are sorted in place. With
// no demand, or room for every demand, it is what the largest may use.
func fairShare(capacity float64, demand []uint64, perSec float64) float64 {
	slices.Sort(demand)
	left := capacity
	for i, d := range demand {
		level := left / float64(len(demand)-i)
		if float64(d)*perSec >= level {
			return level
		}
		if i < len(demand)-1 {
			left -= float64(d) * perSec
		}
	}
	return max(left, 0)
}

// burst is the burst of the budget in force.
func (c *puntCtl) burst() uint64 {
	if c.rate == 0 {
		return 0
	}
	return min(max(c.rate/puntBurstDiv, puntMinBurst), puntMaxBurst)
}

// puntFair is the worker's state of the punt budget.
type puntFair struct {
	lim PuntLimiter
	ctl puntCtl
	// last is when the last tick ended, 0 before the first.
	last int64
	// sock is the kernel port's socket of the last tick, and its drop
	// counters then; limited the kernel's count then.
	sock    xskStatser
	sockRx  uint64
	limited uint64
	// rx is each pod port's received-frame count at the last tick;
	// demand the tick's sample's, reused.
	rx     map[*port]uint64
	demand []uint64
	// set is the budget the kernel has; limit is it, for other goroutines
	// ([Engine.PuntLimit]).
	set   uint64
	limit atomic.Uint64
}

func newPuntFair(ft FlowTable) *puntFair {
	lim, ok := ft.(PuntLimiter)
	if !ok {
		return nil
	}
	return &puntFair{lim: lim, rx: make(map[*port]uint64)}
}

// controlPunts runs a tick of the punt budget when one is due: a few
// system calls every puntTick, nothing per packet (the pods' punted frames
// are their ports' received frames: pod ports receive nothing else in the
// node, whose pods' veths have transmit-only sockets).
func (e *Engine) controlPunts() {
	f := e.off.fair
	if f == nil || (f.last != 0 && e.now-f.last < puntTick) {
		return
	}
	dt := e.now - f.last
	first := f.last == 0
	f.last = e.now
	var s puntSample
	s.dt = dt
	pods := 0
	f.demand = f.demand[:0]
	for _, p := range e.ports {
		if p.Kind != PodPort {
			continue
		}
		pods++
		rx := p.stats.local[pRxPackets]
		prev, seen := f.rx[p]
		f.rx[p] = rx
		if seen && rx > prev {
			f.demand = append(f.demand, rx-prev)
		}
	}
	s.demand = f.demand
	if len(f.rx) > pods {
		for p := range f.rx {
			if !e.hasPort(p) {
				delete(f.rx, p)
			}
		}
	}
	var sock xskStatser
	if e.kernel != nil {
		sock, _ = e.kernel.Port.(xskStatser)
	}
	if sock != nil {
		if st, err := sock.Stats(); err == nil {
			drops := st.RxDropped + st.RxRingFull
			if sock == f.sock && drops >= f.sockRx {
				s.drops = drops - f.sockRx
			}
			f.sockRx = drops
		}
	}
	f.sock = sock
	if n, err := f.lim.PuntLimited(); err == nil {
		if n >= f.limited {
			s.limited = n - f.limited
		}
		f.limited = n
	}
	if first {
		return
	}
	rate, burst := f.ctl.decide(e.now, s)
	if rate == f.set {
		return
	}
	if err := f.lim.SetPuntLimit(rate, burst); err != nil {
		e.counters.add(cOffloadErrors, 1)
		e.setOffloadErr(fmt.Errorf("set the punt budget to %d frames/s per pod: %w", rate, err))
		return
	}
	f.set = rate
	f.limit.Store(rate)
}

// PuntLimit returns the punt budget in force: how many frames per second
// each pod may punt to the engine, 0 when unlimited (the socket is not
// congested, or the flow table sets no budget). It is safe to call from
// any goroutine.
func (e *Engine) PuntLimit() uint64 {
	if e.off == nil || e.off.fair == nil {
		return 0
	}
	return e.off.fair.limit.Load()
}

func (e *Engine) hasPort(p *port) bool {
	for _, x := range e.ports {
		if x == p {
			return true
		}
	}
	return false
}
