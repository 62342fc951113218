package fastpath

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/policy/table"
)

// This file hands established flows to the kernel. The engine decides
// every flow; once it allowed one (a TCP connection once established, a
// UDP or SCTP flow at its first packet) it installs both directions in a
// [FlowTable], whose TC programs then forward the flow's packets without
// the engine (package fastpath/offload). Packets the kernel does not
// forward reach the engine as before: first packets, TCP SYN, FIN and
// RST, fragments, ICMP, anything unusual. The engine keeps owning the
// flow: its conntrack entry carries conntrack.FlagOffloaded, and
//   - a flow the kernel must forget (it ended, was cut, expired, was
//     evicted) is removed through the table's release hook;
//   - a TCP flow that leaves ESTABLISHED (its FIN or RST came through the
//     engine) is removed;
//   - a new policy table is applied to every offloaded flow before the
//     engine forwards anything with it (recheckOffloaded), and the
//     removals of the flows it cuts are done before that, so a cut takes
//     effect in the kernel as it does in the engine;
//   - a pod port that comes or goes takes its offloaded flows with it;
//   - the kernel's per-flow counters and last-seen times are folded into
//     the flows by a sweep of the table, about once a second per flow, so
//     idle timeouts, LRU order, metrics and flow listings stay true.

// KernelAction is what the kernel does with the packets of one direction
// of an offloaded flow.
type KernelAction uint8

// Kernel actions.
const (
	// KernelPass: a pod's packet is left to the kernel, which routes it
	// (to another node, outside, through a Service's DNAT).
	KernelPass KernelAction = iota + 1
	// KernelPeer: a pod's packet to another local pod is rewritten (MACs,
	// TTL) and handed to that pod's eth0 (bpf_redirect_peer).
	KernelPeer
	// KernelRedirect: a packet the kernel routed toward a local pod
	// through the kernel leg is rewritten (MACs) and sent out of the
	// pod's veth instead.
	KernelRedirect
)

// KernelPath is how the kernel forwards one direction of an offloaded
// flow.
type KernelPath struct {
	Action KernelAction
	// InIfindex is where the direction's packets must arrive to be
	// forwarded: the sending pod's veth, or the kernel end of the kernel
	// leg. SrcMAC is the sending pod's MAC (zero from the kernel leg).
	InIfindex int
	SrcMAC    [6]byte
	// OutIfindex is the receiving pod's veth; DstMAC its eth0's MAC and
	// GwMAC the veth's MAC, the frame's new destination and source
	// (KernelPeer and KernelRedirect).
	OutIfindex    int
	DstMAC, GwMAC [6]byte
}

// KernelFlow is a flow in the kernel's table.
type KernelFlow struct {
	// Src, Dst, Proto and the ports are the flow's original direction.
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16
	// Slot names the flow's counters (its conntrack index).
	Slot uint32
	// Path is the way of each direction: index conntrack.Original and
	// conntrack.Reply.
	Path [2]KernelPath
}

// KernelCounters are what the kernel counted for a slot since it was
// last taken.
type KernelCounters struct {
	// LastSeen is the CLOCK_MONOTONIC time of the slot's last packet, 0 if
	// none since the slot was installed.
	LastSeen int64
	// Packets and Bytes per direction (conntrack.Original, .Reply).
	Packets, Bytes [2]uint64
}

// FlowTable is the kernel's table of offloaded flows. Only the engine's
// worker calls it.
type FlowTable interface {
	// Install adds or replaces flows. It returns how many of them, from
	// the first, were installed; on an error the others were not.
	Install(flows []KernelFlow) (int, error)
	// Remove deletes the flows with the given keys (Src, Dst, Proto and
	// ports; the rest is ignored). A flow that is not there is no error.
	Remove(flows []KernelFlow) error
	// Take returns what the kernel counted for slot since the last Take
	// and starts counting again from zero, without a system call or an
	// allocation.
	Take(slot uint32) KernelCounters
	// Lease lets the kernel use the flows until the CLOCK_MONOTONIC time
	// until; after it, it forwards none of them (their packets come to
	// the engine, or are dropped when the engine is gone). The engine
	// renews it while it runs.
	Lease(until int64) error
}

// offloadBatch is how many installs or removals wait for one call of the
// flow table.
const offloadBatch = 256

// offloader is the engine's state of its flow table (worker only).
type offloader struct {
	ft       FlowTable
	installs []KernelFlow
	removes  []KernelFlow
	// cursor is where the next sweep starts; swept when the last one ran.
	cursor uint32
	swept  int64
	// leased is when the lease was last renewed.
	leased int64
	// cut collects the flows that a table change denied, and why.
	cut []cutFlow
	// err is the last error of the flow table, for [Engine.OffloadError].
	err atomic.Pointer[string]
	// fair is the punt budget's state; nil when ft is no [PuntLimiter].
	fair *puntFair
}

type cutFlow struct {
	ent *conntrack.Entry
	v   verdict
}

// KernelLease is how long the kernel may use the offloaded flows after
// the engine last renewed its lease: an engine that stops (the agent died,
// or its worker is stuck) stops the kernel from forwarding on its verdicts
// within KernelLease. The engine renews the lease four times as often.
const KernelLease = 2 * time.Second

const (
	leaseTime  = int64(KernelLease)
	leaseRenew = leaseTime / 4
)

// sweepPeriod is how often the whole table is swept.
const sweepPeriod = int64(1e9)

// sweepInterval is how often a part of it is.
const sweepInterval = int64(10e6)

func newOffloader(ft FlowTable) *offloader {
	return &offloader{
		ft:       ft,
		installs: make([]KernelFlow, 0, offloadBatch),
		removes:  make([]KernelFlow, 0, offloadBatch),
		fair:     newPuntFair(ft),
	}
}

// kernelPath is how the kernel forwards what the engine sends from port
// from to port to, if it can.
func kernelPath(from, to *port) (KernelPath, bool) {
	var kp KernelPath
	if from.Ifindex <= 0 || to.Ifindex <= 0 {
		return kp, false
	}
	kp.InIfindex = from.Ifindex
	if from.Kind == PodPort {
		kp.SrcMAC = from.PeerMAC
		if kp.SrcMAC == ([6]byte{}) {
			return kp, false
		}
	}
	switch {
	case from.Kind == PodPort && to.Kind == KernelPort:
		kp.Action = KernelPass
		return kp, true
	case from.Kind == PodPort:
		kp.Action = KernelPeer
	case to.Kind == PodPort:
		kp.Action = KernelRedirect
	default:
		return kp, false
	}
	kp.OutIfindex, kp.DstMAC, kp.GwMAC = to.Ifindex, to.PeerMAC, to.MAC
	return kp, kp.DstMAC != [6]byte{}
}

// offload installs the flow of packet p, which the engine forwards from
// port in to port out, once it may go to the kernel. It is called for
// every packet that passes, so what it checks first is cheap.
func (e *Engine) offload(p *packet.Packet, v verdict, in, out *port) {
	ent := v.ent
	if e.off == nil || ent == nil || ent.Flags&conntrack.FlagOffloaded != 0 || p.Fragmented {
		return
	}
	switch p.Proto {
	case packet.ProtoTCP:
		if ent.State() != conntrack.TCPEstablished {
			return
		}
	case packet.ProtoUDP, packet.ProtoSCTP:
	default:
		return
	}
	fwd, ok := kernelPath(in, out)
	if !ok {
		return
	}
	back, ok := kernelPath(out, in)
	if !ok {
		return
	}
	slot, ok := e.ct.Index(ent)
	if !ok {
		return
	}
	k := ent.Key()
	kf := KernelFlow{Proto: uint8(k.Proto), SrcPort: k.SrcPort, DstPort: k.DstPort, Slot: slot}
	kf.Src, kf.Dst = k.Addrs()
	kf.Path[v.dir&1], kf.Path[(v.dir^1)&1] = fwd, back
	if len(e.off.installs) == cap(e.off.installs) {
		e.flushOffload()
	}
	e.off.installs = append(e.off.installs, kf)
	ent.Flags |= conntrack.FlagOffloaded
	e.counters.add(cOffloaded, 1)
}

// unoffload takes flow ent out of the kernel (it stays tracked).
func (e *Engine) unoffload(ent *conntrack.Entry) {
	if ent.Flags&conntrack.FlagOffloaded == 0 {
		return
	}
	e.released(ent)
	ent.Flags &^= conntrack.FlagOffloaded
}

// released is the conntrack release hook: the kernel must forget ent.
func (e *Engine) released(ent *conntrack.Entry) {
	k := ent.Key()
	kf := KernelFlow{Proto: uint8(k.Proto), SrcPort: k.SrcPort, DstPort: k.DstPort}
	kf.Src, kf.Dst = k.Addrs()
	if len(e.off.removes) == cap(e.off.removes) {
		e.flushRemoves()
	}
	e.off.removes = append(e.off.removes, kf)
	e.counters.local[cOffloaded]--
}

// flushOffload makes the kernel's table what the engine decided: the
// removals first (a slot they free may be installed again), then the
// installs, each slot's counters zeroed before.
func (e *Engine) flushOffload() {
	if e.off == nil {
		return
	}
	e.flushRemoves()
	if len(e.off.installs) == 0 {
		return
	}
	for i := range e.off.installs {
		e.off.ft.Take(e.off.installs[i].Slot)
	}
	n, err := e.off.ft.Install(e.off.installs)
	e.counters.add(cOffloadInstalls, uint64(n))
	if err != nil {
		// The flows that did not go stay with the engine.
		e.counters.add(cOffloadErrors, 1)
		for _, kf := range e.off.installs[n:] {
			k := conntrack.MakeKey(kf.Src, kf.Dst, table.Protocol(kf.Proto), kf.SrcPort, kf.DstPort)
			if ent, _ := e.ct.Lookup(k, e.now); ent != nil && ent.Flags&conntrack.FlagOffloaded != 0 {
				ent.Flags &^= conntrack.FlagOffloaded
				e.counters.local[cOffloaded]--
			}
		}
		e.setOffloadErr(fmt.Errorf("install %d offloaded flows: %w", len(e.off.installs)-n, err))
	}
	e.off.installs = e.off.installs[:0]
}

func (e *Engine) flushRemoves() {
	if len(e.off.removes) == 0 {
		return
	}
	if err := e.off.ft.Remove(e.off.removes); err != nil {
		e.counters.add(cOffloadErrors, 1)
		e.setOffloadErr(fmt.Errorf("remove %d offloaded flows: %w", len(e.off.removes), err))
	} else {
		e.counters.add(cOffloadRemoves, uint64(len(e.off.removes)))
	}
	e.off.removes = e.off.removes[:0]
}

// renewLease renews the kernel's lease on the flows when it is due.
func (e *Engine) renewLease() {
	if e.off == nil || (e.off.leased != 0 && e.now-e.off.leased < leaseRenew) {
		return
	}
	e.off.leased = e.now
	if err := e.off.ft.Lease(e.now + leaseTime); err != nil {
		e.counters.add(cOffloadErrors, 1)
		e.setOffloadErr(fmt.Errorf("renew the kernel's lease on the flows: %w", err))
	}
}

// sweep folds the kernel's counters of a part of the flow table into the
// flows, so that the whole table is swept once per sweepPeriod. The punt
// budget's ticks run at its cadence too (controlPunts).
func (e *Engine) sweep() {
	if e.off == nil {
		return
	}
	e.controlPunts()
	if e.now-e.off.swept < sweepInterval {
		return
	}
	e.off.swept = e.now
	n := max(64, e.ct.Cap()/int(sweepPeriod/sweepInterval))
	e.off.cursor = e.ct.Scan(e.off.cursor, n, e.fold)
}

// fold folds the kernel's counters of flow ent into it.
func (e *Engine) fold(ent *conntrack.Entry) {
	if ent.Flags&conntrack.FlagOffloaded == 0 {
		return
	}
	slot, ok := e.ct.Index(ent)
	if !ok {
		return
	}
	c := e.off.ft.Take(slot)
	if c.LastSeen != 0 || c.Packets != [2]uint64{} {
		e.ct.Touch(ent, c.LastSeen, c.Packets, c.Bytes, e.now)
	}
}

// recheckOffloaded applies a new policy table to every offloaded flow, as
// the engine applies it to the flows it forwards itself when their next
// packet comes (judge): flows the table denies are cut, and the kernel
// forgets them before the engine goes on. It runs on the worker, once per
// table, in time proportional to the size of the flow table.
func (e *Engine) recheckOffloaded() {
	if e.off == nil || e.cfg.KeepEstablished || e.tab == nil {
		return
	}
	gen := e.tab.Generation()
	e.off.cut = e.off.cut[:0]
	e.ct.Scan(0, e.ct.Cap(), func(ent *conntrack.Entry) {
		if ent.Flags&conntrack.FlagOffloaded == 0 || ent.Generation == gen {
			return
		}
		e.counters.add(cRechecks, 1)
		k := ent.Key()
		src, dst := k.Addrs()
		v, eg, ing := e.decide(src, dst, uint8(k.Proto), k.DstPort, sides{src: e.hasAddr(src), dst: e.hasAddr(dst)})
		if !v.ok {
			e.off.cut = append(e.off.cut, cutFlow{ent, v})
			return
		}
		ent.Generation, ent.Egress, ent.Ingress = gen, eg, ing
	})
	for _, c := range e.off.cut {
		e.cut(c.ent, c.v)
	}
	e.off.cut = e.off.cut[:0]
	e.flushOffload()
}

func (e *Engine) setOffloadErr(err error) {
	msg := err.Error()
	e.off.err.Store(&msg)
}

// OffloadError returns the last error of the kernel's flow table, or "".
// It is safe to call from any goroutine.
func (e *Engine) OffloadError() string {
	if e.off == nil {
		return ""
	}
	if p := e.off.err.Load(); p != nil {
		return *p
	}
	return ""
}

// unoffloadAll takes every flow out of the kernel.
func (e *Engine) unoffloadAll() {
	if e.off == nil {
		return
	}
	e.ct.Scan(0, e.ct.Cap(), e.unoffload)
	e.flushOffload()
}

// unoffloadAddrs takes out of the kernel every offloaded flow with an end
// at one of addrs: a pod port came or went, so the flow's ways changed
// (or a side became local and must be judged).
func (e *Engine) unoffloadAddrs(addrs []netip.Addr) {
	if e.off == nil || len(addrs) == 0 {
		return
	}
	has := func(a netip.Addr) bool {
		for _, x := range addrs {
			if x == a {
				return true
			}
		}
		return false
	}
	e.ct.Scan(0, e.ct.Cap(), func(ent *conntrack.Entry) {
		if ent.Flags&conntrack.FlagOffloaded == 0 {
			return
		}
		src, dst := ent.Key().Addrs()
		if has(src) || has(dst) {
			e.unoffload(ent)
		}
	})
	e.flushOffload()
}
