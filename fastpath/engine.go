package fastpath

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/internal/addrmap"
	"github.com/podgate/podgate/policy/table"
)

// Port is where frames come from and go to: an [xsk.Socket], or an
// in-memory stand-in in tests. A port belongs to the worker; its methods
// are called from the worker goroutine only.
type Port interface {
	// Receive fills batch with received frames and returns how many.
	Receive(batch []xsk.Frame) int
	// Bytes returns the frame's data, f.Len bytes.
	Bytes(f xsk.Frame) []byte
	// Release gives a frame back to the port.
	Release(f xsk.Frame)
	// Alloc returns a free frame to transmit, whose Len is its capacity.
	Alloc() (xsk.Frame, bool)
	// Transmit queues a frame; on false the caller still owns it.
	Transmit(f xsk.Frame) bool
	// Flush publishes what was queued and released since the last Flush.
	Flush() error
}

// PortKind says what a port is attached to.
type PortKind uint8

// Port kinds.
const (
	// PodPort is the host-side veth of a local pod.
	PodPort PortKind = iota
	// KernelPort is the gateway end of the kernel leg.
	KernelPort
)

// PortSpec describes a port to [Engine.AddPort].
type PortSpec struct {
	// Name identifies the port in errors and stats (the interface name).
	Name string
	Kind PortKind
	Port Port
	// MAC is the MAC of the interface the port is bound to: the pod's
	// gateway MAC for a pod port, the gateway MAC of the kernel leg.
	MAC [6]byte
	// PeerMAC is the MAC at the other end: the pod's eth0 for a pod port
	// (zero if unknown: it is then learned from the pod's frames, and
	// frames to the pod are dropped until it is, counted as
	// [DropNoNeighbor]), the kernel end of the kernel leg for the kernel
	// port (required).
	PeerMAC [6]byte
	// PodIPs are the pod's addresses (pod ports only).
	PodIPs []netip.Addr
	// Ifindex is the index of the pod's host-side veth (pod ports): frames
	// that its TC program punts to the kernel leg carry it in their
	// destination MAC, and arrive on the kernel port.
	Ifindex int
	// TxOnly: the engine never receives from Port; the pod's frames
	// arrive on the kernel port, punted (see Ifindex).
	TxOnly bool
}

// Config configures an [Engine].
type Config struct {
	// Store is where the engine reads the current policy table, once per
	// batch.
	Store *table.Store
	// Conntrack configures the flow table.
	Conntrack conntrack.Config
	// AllowNodeToPod lets the node's own addresses ([Engine.SetNodeAddrs])
	// reach its local pods whatever their ingress policy says (kubelet
	// probes), as NetworkPolicy implementations do.
	AllowNodeToPod bool
	// KeepEstablished keeps flows that were allowed when they started even
	// when a new policy table denies them. By default they are judged again
	// and cut. (A side of a flow that becomes a local pod later is judged
	// anyway.)
	KeepEstablished bool
	// ReversePickup is the pick-up window: how long after the engine
	// starts a TCP segment without SYN of a connection that no flow tracks
	// may be picked up, for connections that were open when the agent
	// restarted. It is then judged as the connection it belongs to, from
	// client to server, whichever end sent it (see pickup in verdict.go).
	// After the window such segments are dropped (DropTCPNoFlow). Default
	// 2 minutes; negative disables pick-up.
	ReversePickup time.Duration
	// CutReset answers a TCP segment of a connection that policy cut
	// (that a new policy table denies, or that is in its tombstone) with
	// a TCP reset to the segment's sender, so that applications on both
	// ends fail at once instead of retransmitting into a black hole. The
	// segment itself is dropped either way. Denied new connections are
	// never answered: they are dropped silently, as NetworkPolicy
	// implementations do.
	CutReset bool
	// BatchSize is the number of frames received from a port at a time.
	BatchSize int
	// IdleWait is how long the worker sleeps when no port has frames
	// (default 100 ms): an expired flow waits for at most that long on an
	// idle node. Commands, a new table in Store and the end of Run's
	// context wake the worker at once.
	IdleWait time.Duration
	// BusyPoll keeps the worker polling its rings without sleeping for
	// this long after the last frame, instead of waiting in poll(2):
	// lower latency and fewer drops under bursts, for a CPU kept busy
	// while traffic flows. Zero (the default) sleeps at once.
	BusyPoll time.Duration
	// Offload, if set, is the kernel's table of established flows, which
	// the engine programs (see kernelflows.go); nil keeps every packet in
	// the engine.
	Offload FlowTable
	// Now returns monotonic nanoseconds; nil means the system's
	// CLOCK_MONOTONIC, the clock of the kernel's timestamps of offloaded
	// flows (bpf_ktime_get_ns).
	Now func() int64
}

// Engine is the fastpath worker. Create it with [New], start [Engine.Run]
// in a goroutine, and change its ports and node addresses with
// [Engine.AddPort], [Engine.RemovePort] and [Engine.SetNodeAddrs] from any
// goroutine; [Engine.Stats] may be called from any goroutine too.
type Engine struct {
	cfg      Config
	cmds     chan command
	wake     *waker // ends the idle wait when a command is queued
	applied  atomic.Uint64
	counters counters
	done     chan struct{}
	events   *eventRing
	// snapshot is the current set of ports, for readers on other
	// goroutines (their counters are atomics).
	snapshot atomic.Pointer[[]*port]
	// allow counts per policy of the current table; folded into
	// allowTotal when the table changes.
	allow      atomic.Pointer[policyCounters]
	allowMu    sync.Mutex
	allowTotal map[PolicyName]PolicyCounts

	// Owned by the worker goroutine.
	ct        *conntrack.Table
	ports     []*port
	rxPorts   []*port // the ports the worker receives from
	kernel    *port
	byAddr    *addrmap.Map[*port] // local pod addresses; rebuilt when ports change
	byIfindex map[int]*port       // pod ports by the ifindex of their veth
	byOwner   map[conntrack.Owner]*port
	nodeAddrs []netip.Addr
	batch     []xsk.Frame
	pkts      []packet.Packet // parsed frames of the batch
	statuses  []packet.Status // their parse results
	flowIdx   []int32         // per frame: index of its flow in keys, ents, dirs, or -1
	keys      []conntrack.Key
	ents      []*conntrack.Entry
	dirs      []conntrack.Dir
	changed   bool // the flow table changed during this batch
	tab       *table.Table
	off       *offloader // nil without Config.Offload
	now       int64
	waiter    waiter
	// started is Config.Now when the engine was made.
	started int64
	// lastWork is Config.Now at the last batch that had frames.
	lastWork int64
	// monoBase and wallBase relate Config.Now to the wall clock.
	monoBase int64
	wallBase time.Time
}

type port struct {
	PortSpec
	// owner is the conntrack owner of the flows of this port's pod (pod
	// ports; 0 for the kernel port).
	owner   conntrack.Owner
	learned bool // PeerMAC was learned from the pod's frames
	dirty   bool // needs a Flush
	stats   portCounters
}

// ErrStopped is returned by commands sent to an engine that is not running.
var ErrStopped = errors.New("fastpath engine stopped")

// New returns an engine. It makes no system call; ports are added later.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("new fastpath engine: Config.Store is nil")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 64
	}
	if cfg.IdleWait <= 0 {
		cfg.IdleWait = 100 * time.Millisecond
	}
	if cfg.ReversePickup == 0 {
		cfg.ReversePickup = 2 * time.Minute
	}
	if cfg.Now == nil {
		now, err := monotonicClock()
		if err != nil {
			return nil, fmt.Errorf("new fastpath engine: %w", err)
		}
		cfg.Now = now
	}
	cfg.Conntrack.SetDefaults()
	ct, err := conntrack.New(cfg.Conntrack)
	if err != nil {
		return nil, fmt.Errorf("new fastpath engine: %w", err)
	}
	e := &Engine{
		started:    cfg.Now(),
		monoBase:   cfg.Now(),
		wallBase:   time.Now(),
		events:     &eventRing{},
		allowTotal: make(map[PolicyName]PolicyCounts),
		cfg:        cfg,
		cmds:       make(chan command, cmdQueue),
		wake:       newWaker(),
		done:       make(chan struct{}),
		ct:         ct,
		byAddr:     addrmap.New[*port](0, 0),
		batch:      make([]xsk.Frame, cfg.BatchSize),
		pkts:       make([]packet.Packet, cfg.BatchSize),
		statuses:   make([]packet.Status, cfg.BatchSize),
		flowIdx:    make([]int32, cfg.BatchSize),
		keys:       make([]conntrack.Key, cfg.BatchSize),
		ents:       make([]*conntrack.Entry, cfg.BatchSize),
		dirs:       make([]conntrack.Dir, cfg.BatchSize),
	}
	if cfg.Offload != nil {
		e.off = newOffloader(cfg.Offload)
		ct.SetReleaseHook(e.released)
	}
	ct.SetEvictHook(e.evicted)
	cfg.Store.OnPublish(e.wake.wake) // an idle worker takes a new table at once
	return e, nil
}

// command is a change the worker makes between batches.
type command struct {
	fn    func(e *Engine) error
	reply chan error
}

// cmdQueue is how many commands wait for the worker before do blocks.
const cmdQueue = 16

func (e *Engine) do(ctx context.Context, fn func(e *Engine) error) error {
	c := command{fn: fn, reply: make(chan error, 1)}
	select {
	case e.cmds <- c:
	case <-e.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	// Wake the worker only now that the command is queued: a wake before
	// it could be consumed by a worker that then finds no command and
	// sleeps for the whole idle wait.
	e.wake.wake()
	select {
	case err := <-c.reply:
		return err
	case <-e.done:
		return ErrStopped
	}
}

// AddPort adds a port. For a pod port, its addresses become routed to it;
// a second kernel port, or an address another port has, is an error.
func (e *Engine) AddPort(ctx context.Context, spec PortSpec) error {
	return e.do(ctx, func(e *Engine) error { return e.addPort(spec) })
}

// RemovePort removes the port named name, after which the caller may close
// it; frames queued on it are flushed first.
func (e *Engine) RemovePort(ctx context.Context, name string) error {
	return e.do(ctx, func(e *Engine) error { return e.removePort(name) })
}

// SetNodeAddrs sets the node's own addresses (for [Config.AllowNodeToPod]).
func (e *Engine) SetNodeAddrs(ctx context.Context, addrs []netip.Addr) error {
	a := append([]netip.Addr(nil), addrs...)
	return e.do(ctx, func(e *Engine) error { e.nodeAddrs = a; return nil })
}

// Wall converts a time of the engine's clock (FlowEvent.Mono) to wall time.
func (e *Engine) Wall(mono int64) time.Time { return e.wallBase.Add(time.Duration(mono - e.monoBase)) }

// Stats returns the counters as of the last batch.
func (e *Engine) Stats() Stats { return e.counters.snapshot() }

// AppliedGeneration returns the generation of the policy table the worker
// enforces: every offloaded flow has been re-checked against it. It is safe
// to call from any goroutine and does not wake the worker.
func (e *Engine) AppliedGeneration() uint64 { return e.applied.Load() }

// ConntrackStats returns the flow table's counters. It is safe to call
// from any goroutine.
func (e *Engine) ConntrackStats() conntrack.Stats { return e.ct.Stats() }

// Flows calls fn for every tracked flow, on the worker goroutine, between
// two batches; fn must not keep the entry.
func (e *Engine) Flows(ctx context.Context, fn func(*conntrack.Entry) bool) error {
	return e.do(ctx, func(e *Engine) error {
		e.ct.Range(e.now, func(ent *conntrack.Entry) bool {
			if e.off != nil {
				e.fold(ent)
			}
			return fn(ent)
		})
		return nil
	})
}

func (e *Engine) addPort(s PortSpec) error {
	if s.Port == nil {
		return fmt.Errorf("add port %s: no Port", s.Name)
	}
	for _, p := range e.ports {
		if p.Name == s.Name {
			return fmt.Errorf("add port %s: already added", s.Name)
		}
	}
	p := &port{PortSpec: s}
	switch s.Kind {
	case KernelPort:
		if e.kernel != nil {
			return fmt.Errorf("add port %s: kernel port %s already added", s.Name, e.kernel.Name)
		}
		if s.PeerMAC == ([6]byte{}) {
			return fmt.Errorf("add port %s: kernel port needs PeerMAC", s.Name)
		}
		e.kernel = p
	case PodPort:
		if len(s.PodIPs) == 0 {
			return fmt.Errorf("add port %s: pod port has no PodIPs", s.Name)
		}
		for _, a := range s.PodIPs {
			if q, ok := e.byAddr.Get(a.Unmap()); ok {
				return fmt.Errorf("add port %s: address %s already belongs to port %s", s.Name, a, q.Name)
			}
		}
		if q := e.byIfindex[s.Ifindex]; s.Ifindex != 0 && q != nil {
			return fmt.Errorf("add port %s: ifindex %d already belongs to port %s", s.Name, s.Ifindex, q.Name)
		}
		if s.TxOnly && s.Ifindex <= 0 {
			return fmt.Errorf("add port %s: a transmit-only pod port needs the ifindex its frames are punted with", s.Name)
		}
		p.PodIPs = make([]netip.Addr, len(s.PodIPs))
		for i, a := range s.PodIPs {
			p.PodIPs[i] = a.Unmap()
		}
		p.owner = e.freeOwner()
	default:
		return fmt.Errorf("add port %s: unknown kind %d", s.Name, s.Kind)
	}
	e.ports = append(e.ports, p)
	e.portsChanged()
	// A pod's flows that the kernel forwarded as remote change their way.
	e.unoffloadAddrs(p.PodIPs)
	return nil
}

// portsChanged rebuilds what depends on the set of ports.
func (e *Engine) portsChanged() {
	e.waiter = nil
	snap := append([]*port(nil), e.ports...)
	e.snapshot.Store(&snap)
	n4, n6 := 0, 0
	for _, p := range e.ports {
		for _, a := range p.PodIPs {
			if a.Is4() {
				n4++
			} else {
				n6++
			}
		}
	}
	m := addrmap.New[*port](n4, n6)
	byIfindex := make(map[int]*port, len(e.ports))
	byOwner := make(map[conntrack.Owner]*port, len(e.ports))
	e.rxPorts = e.rxPorts[:0]
	for _, p := range e.ports {
		for _, a := range p.PodIPs {
			m.Insert(a, p)
		}
		if p.Kind == PodPort && p.Ifindex > 0 {
			byIfindex[p.Ifindex] = p
		}
		if p.owner != 0 {
			byOwner[p.owner] = p
		}
		if !p.TxOnly {
			e.rxPorts = append(e.rxPorts, p)
		}
	}
	e.byAddr, e.byIfindex, e.byOwner = m, byIfindex, byOwner
}

// freeOwner returns the lowest conntrack owner that no port has, or 0
// (nobody: its flows are not counted against a share) when all are taken.
// A removed pod's owner is given out again only once its flows are gone.
func (e *Engine) freeOwner() conntrack.Owner {
	for o := conntrack.Owner(1); int(o) < e.cfg.Conntrack.MaxOwners; o++ {
		if e.byOwner[o] == nil && e.ct.OwnerFlows(o) == 0 {
			return o
		}
	}
	return 0
}

func (e *Engine) removePort(name string) error {
	for i, p := range e.ports {
		if p.Name != name {
			continue
		}
		err := p.Port.Flush()
		if e.kernel == p {
			e.kernel = nil
			e.unoffloadAll()
		}
		e.unoffloadAddrs(p.PodIPs)
		e.ports = append(e.ports[:i], e.ports[i+1:]...)
		e.portsChanged()
		if err != nil {
			return fmt.Errorf("remove port %s: flush: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("remove port %s: no such port", name)
}

// Run runs the worker until ctx is done. It must be called once.
func (e *Engine) Run(ctx context.Context) error {
	defer close(e.done)
	defer e.wake.close()
	stop := context.AfterFunc(ctx, e.wake.wake) // the end of ctx ends an idle wait
	defer stop()
	for {
		select {
		case <-ctx.Done():
			e.flushAll()
			return nil
		case c := <-e.cmds:
			c.reply <- c.fn(e)
			continue
		default:
		}
		if e.runOnce() {
			e.lastWork = e.now
		} else if e.cfg.BusyPoll <= 0 || e.now-e.lastWork >= int64(e.cfg.BusyPoll) {
			e.idle(ctx)
		}
	}
}

// runOnce receives one batch from every port and processes it, and
// reports whether there was any frame.
func (e *Engine) runOnce() bool {
	e.now = e.cfg.Now()
	if t := e.cfg.Store.Load(); t != e.tab {
		e.tab = t
		e.tableChanged()
		e.recheckOffloaded()
		if t != nil {
			e.applied.Store(t.Generation())
		}
	}
	worked := false
	for _, p := range e.rxPorts {
		n := p.Port.Receive(e.batch)
		if n == 0 {
			continue
		}
		worked = true
		e.counters.add(cBatches, 1)
		e.prepare(p, n)
		for i, f := range e.batch[:n] {
			e.frame(p, f, i)
		}
		p.dirty = true
	}
	e.flushAll()
	e.ct.Expire(e.now, 64)
	e.sweep()
	e.flushOffload()
	e.renewLease()
	e.counters.publish()
	for _, p := range e.ports {
		p.stats.publish()
	}
	return worked
}

func (e *Engine) flushAll() {
	for _, p := range e.ports {
		if p.dirty {
			p.dirty = false
			// A flush error (a failed sendto) loses at most the batch; the
			// port's own statistics count it.
			_ = p.Port.Flush()
		}
	}
}

// monotonicClock returns a clock that reads CLOCK_MONOTONIC in nanoseconds
// without a system call: one reading of the kernel's clock plus Go's
// monotonic time since, which is the same clock.
func monotonicClock() (func() int64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	base, start := ts.Nano(), time.Now()
	return func() int64 { return base + int64(time.Since(start)) }, nil
}
