package fastpath

import (
	"net/netip"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/policy/table"
)

// This file decides packets: a tracked flow passes (after a re-check when
// the policy table changed), a cut flow's tombstone drops both directions,
// and a new flow is judged by the policy table and tracked.
//
// How a node judges (and how the agents of two nodes together give one
// verdict): a node enforces the policies of its own pods only. For a flow
// whose source is a local pod it judges that pod's egress; for a flow
// whose destination is a local pod, that pod's ingress; both when both
// are local. A flow between pods of two nodes is therefore judged twice,
// egress on the source's node and ingress on the destination's, and it
// passes only if both nodes let it. Replies pass on both nodes because
// each tracks the flow. What keeps the two halves one verdict:
//   - A flow is started only by its first packet: a TCP SYN, or the
//     first packet of a UDP, SCTP or other flow. A TCP segment without SYN
//     for a connection the node does not track is not a new connection
//     and is dropped (DropTCPNoFlow), except during the pick-up window
//     after a start, and then it is judged as the connection it belongs
//     to, client to server (see pickup), never in its own direction.
//   - A flow that a new table denies is not forgotten but cut: its entry
//     becomes a tombstone that drops both directions until the connection
//     has been silent for the tombstone timeout. So the node that cut a
//     connection keeps it cut whatever the other node's view, and a
//     retransmission cannot bring it back as a new flow.

// verdict is what judging a packet decided.
type verdict struct {
	// ok: the packet passes.
	ok bool
	// drop is why the packet is dropped, when !ok.
	drop Drop
	// isolated is the local pod whose policy denied the flow, for the
	// per-pod and per-policy denial counts, or the zero Addr.
	isolated netip.Addr
	// cut: the packet belongs to a flow that policy cut (just now, or
	// earlier: its tombstone). A TCP sender may be told with a reset
	// ([Config.CutReset]).
	cut bool
	// byCluster: a cluster policy's rule (Admin or Baseline tier) denied
	// the new flow, not the NetworkPolicies that isolate the pod.
	byCluster bool
	// ent is the flow of a packet that passes, if it has one, and dir the
	// packet's direction in it.
	ent *conntrack.Entry
	dir conntrack.Dir
}

var pass = verdict{ok: true}

func deny(d Drop) verdict { return verdict{drop: d} }

// sides says which ends of a packet are local pods, whose policies this
// node enforces, and whether a local source's packet came back from the
// kernel leg (a Service address DNATed to a local pod).
type sides struct {
	src, dst  bool
	viaKernel bool
	// owner is who a new flow counts against in a full flow table: the
	// local pod that sent the packet, or the local pod it is for.
	owner conntrack.Owner
}

func (s sides) reverse() sides {
	return sides{src: s.dst, dst: s.src, viaKernel: s.viaKernel, owner: s.owner}
}

// Conntrack entry flags of the fastpath.
const (
	// flagSrcJudged and flagDstJudged: which sides of the flow (in its
	// original direction) were local pods whose policy was judged.
	flagSrcJudged conntrack.Flags = 1 << 1
	flagDstJudged conntrack.Flags = 1 << 2
	// flagViaKernel marks a flow between two local pods whose original
	// direction came from the kernel leg: a pod's packet to a Service
	// address that kube-proxy DNATed to a local pod. Its replies must go
	// back through the kernel, whose conntrack reverses the DNAT; switched
	// directly, they would reach the client from the backend's address
	// instead of the Service's, and the client would reset the connection.
	flagViaKernel conntrack.Flags = 1 << 3
	// cutShift and cutMask hold, in a tombstone, why the flow was cut:
	// one of the cut* values.
	cutShift                 = 4
	cutMask  conntrack.Flags = 3 << cutShift
)

// Why a flow was cut, as kept in its tombstone's flags.
const (
	cutEgress  conntrack.Flags = 1 << cutShift // the original source's egress denies it
	cutIngress conntrack.Flags = 2 << cutShift // the original destination's ingress denies it
	cutUnknown conntrack.Flags = 3 << cutShift // a local side is not in the table
)

func judgedFlags(s sides) conntrack.Flags {
	var f conntrack.Flags
	if s.src {
		f |= flagSrcJudged
	}
	if s.dst {
		f |= flagDstJudged
	}
	return f
}

// judge decides packet p with batch index i, whose local ends s gives.
func (e *Engine) judge(p *packet.Packet, i int, s sides) verdict {
	now := e.now
	// Non-first fragments follow their first fragment.
	if p.Fragmented && p.FragOffset != 0 {
		v, ok := e.ct.LookupFragment(conntrack.MakeFragKey(p.Src, p.Dst, table.Protocol(p.Proto), p.FragID), now)
		if !ok || !v.Allowed {
			return deny(DropFragmentNoState)
		}
		return pass
	}
	if p.ICMPError {
		// An error relates to a tracked, allowed flow and goes back to
		// the sender of the quoted packet. A pod is an end of the flow,
		// not a router: the errors it may send are about packets
		// addressed to it, so it must be the quoted packet's destination.
		in := &p.Inner
		rel, _ := e.ct.LookupRelated(makeKey(in.Src, in.Dst, in.Proto, in.HasPorts, in.SrcPort, in.DstPort, in.HasICMPID, in.ICMPID), now)
		if rel == nil || rel.Flags&conntrack.FlagAllowed == 0 || p.Dst != in.Src || (s.src && p.Src != in.Dst) {
			return deny(DropICMPUnrelated)
		}
		return pass
	}
	key, ent, dir := e.flow(i, p)
	if ent == nil {
		return e.newFlow(p, key, s)
	}
	if ent.Tombstoned() {
		return e.onTombstone(p, key, ent, dir, s)
	}
	// The flow's original sides.
	orig := s
	if dir == conntrack.Reply {
		orig = s.reverse()
	}
	// A side that is local now but was not judged when the flow was (its
	// pod had no port yet, e.g. while the agent starts or a pod's veth is
	// re-created) must be judged before the flow's verdict applies to it,
	// whatever KeepEstablished says.
	unjudged := (orig.src && ent.Flags&flagSrcJudged == 0) || (orig.dst && ent.Flags&flagDstJudged == 0)
	stale := !e.cfg.KeepEstablished && e.tab != nil && ent.Generation != e.tab.Generation()
	if unjudged || stale {
		e.counters.add(cRechecks, 1)
		osrc, odst := ent.Key().Addrs()
		v, eg, ing := e.decide(osrc, odst, p.Proto, ent.Key().DstPort, orig)
		if !v.ok {
			e.cut(ent, v)
			v.cut = true
			return v
		}
		if e.tab != nil {
			ent.Generation = e.tab.Generation()
		}
		ent.Egress, ent.Ingress = eg, ing
		ent.Flags |= judgedFlags(orig)
	}
	switch e.ct.Update(ent, dir, p.TCPFlags, p.L3Len, now) {
	case conntrack.Invalid:
		return deny(DropInvalidTCP)
	case conntrack.Restart:
		e.ct.Delete(ent)
		e.changed = true
		return e.newFlow(p, key, s)
	}
	if ent.Flags&conntrack.FlagOffloaded != 0 && p.Proto == packet.ProtoTCP && ent.State() != conntrack.TCPEstablished {
		// A FIN or RST came through: the rest of the connection's life
		// is the engine's.
		e.unoffload(ent)
	}
	e.firstFragment(p, ent, dir)
	return verdict{ok: true, ent: ent, dir: dir}
}

// cut turns a flow that policy now denies (for the reason v) into a
// tombstone.
func (e *Engine) cut(ent *conntrack.Entry, v verdict) {
	why := cutUnknown
	switch v.drop {
	case DropDeniedEgress:
		why = cutEgress
	case DropDeniedIngress:
		why = cutIngress
	}
	ent.Flags = ent.Flags&^cutMask | why
	e.ct.Tombstone(ent, e.now)
	e.counters.add(cFlowsCut, 1)
}

// onTombstone handles a packet of a flow that policy cut: it is dropped,
// and keeps the tombstone alive, unless it is a SYN that opens a new
// connection on the same addresses and ports, which is judged afresh.
func (e *Engine) onTombstone(p *packet.Packet, key conntrack.Key, ent *conntrack.Entry, dir conntrack.Dir, s sides) verdict {
	if p.Proto == packet.ProtoTCP && conntrack.ClassifyNewTCP(p.TCPFlags) == conntrack.NewTCPOpen {
		e.ct.Delete(ent)
		e.changed = true
		return e.newFlow(p, key, s)
	}
	e.ct.Update(ent, dir, p.TCPFlags, p.L3Len, e.now)
	e.counters.add(cCutDrops, 1)
	osrc, odst := ent.Key().Addrs()
	v := verdict{drop: DropUnknownEndpoint, cut: true}
	switch ent.Flags & cutMask {
	case cutEgress:
		v.drop, v.isolated = DropDeniedEgress, osrc
	case cutIngress:
		v.drop, v.isolated = DropDeniedIngress, odst
	}
	return v
}

// newFlow judges the first packet of a flow (key) that is not tracked and
// tracks it if policy allows it.
func (e *Engine) newFlow(p *packet.Packet, key conntrack.Key, s sides) verdict {
	if p.Proto == packet.ProtoTCP {
		switch conntrack.ClassifyNewTCP(p.TCPFlags) {
		case conntrack.NewTCPOpen:
		case conntrack.NewTCPPickup:
			return e.pickup(p, key, s)
		default:
			return deny(DropInvalidTCP)
		}
	}
	v, eg, ing := e.decide(p.Src, p.Dst, p.Proto, p.DstPort, s)
	if !v.ok {
		return v
	}
	ent, r := e.ct.InsertFor(key, s.owner, false, e.now)
	if r == conntrack.InsertRefused {
		return deny(DropConntrackFull)
	}
	e.track(p, key, ent, conntrack.Original, s, eg, ing)
	return verdict{ok: true, ent: ent, dir: conntrack.Original}
}

// ephemeralPortMin is where the ports that clients' kernels choose begin:
// Linux's default ip_local_port_range starts at 32768, IANA's dynamic
// range (Windows, BSD) at 49152.
const ephemeralPortMin = 32768

// pickup handles a TCP segment without SYN for which no flow exists.
// Outside the pick-up window that follows the engine's start it is no
// connection (DropTCPNoFlow): connections start with a SYN, and a segment
// of a connection the node forgot (cut, evicted, expired) must not bring
// it back. Within the window it may belong to a connection that was open
// across a restart of the agent; it is then judged as that connection,
// from its client to its server, with both sides' policies as this node
// enforces them, whatever the segment's own direction:
//   - the server is the end whose port is not ephemeral when the other's
//     is (a connection from 10.0.0.1:41000 to 10.0.0.2:80 has its server
//     at :80, whichever of them sent the segment);
//   - when that does not tell (both ports ephemeral, or neither), the
//     connection is picked up only if both orientations are allowed, so
//     that no guess can let a denied connection through.
//
// The flow is tracked as established with the client's direction as
// Original.
func (e *Engine) pickup(p *packet.Packet, key conntrack.Key, s sides) verdict {
	if e.cfg.ReversePickup <= 0 || e.now-e.started >= int64(e.cfg.ReversePickup) {
		return deny(DropTCPNoFlow)
	}
	srcEph, dstEph := p.SrcPort >= ephemeralPortMin, p.DstPort >= ephemeralPortMin
	fwd := func() (verdict, table.RuleRef, table.RuleRef) {
		return e.decide(p.Src, p.Dst, p.Proto, p.DstPort, s)
	}
	rev := func() (verdict, table.RuleRef, table.RuleRef) {
		return e.decide(p.Dst, p.Src, p.Proto, p.SrcPort, s.reverse())
	}
	dir := conntrack.Original
	var v verdict
	var eg, ing table.RuleRef
	switch {
	case srcEph && !dstEph: // the segment goes to the server
		v, eg, ing = fwd()
	case dstEph && !srcEph: // the server sent it
		v, eg, ing = rev()
		key, dir, s = key.Reverse(), conntrack.Reply, s.reverse()
	default:
		if v, eg, ing = fwd(); v.ok {
			if r, _, _ := rev(); !r.ok {
				v = r
			}
		}
	}
	if !v.ok {
		return v
	}
	ent, r := e.ct.InsertFor(key, s.owner, true, e.now)
	if r == conntrack.InsertRefused {
		return deny(DropConntrackFull)
	}
	e.track(p, key, ent, dir, s, eg, ing)
	return verdict{ok: true, ent: ent, dir: dir}
}

// track records the verdict of a flow just inserted as ent, with key in
// the flow's original direction, and accounts packet p (which travels in
// direction dir; s are the flow's sides in its original direction).
func (e *Engine) track(p *packet.Packet, key conntrack.Key, ent *conntrack.Entry, dir conntrack.Dir, s sides, eg, ing table.RuleRef) {
	e.changed = true
	ent.Flags |= conntrack.FlagAllowed | judgedFlags(s)
	if s.viaKernel && dir == conntrack.Original {
		ent.Flags |= flagViaKernel
	}
	if e.tab != nil {
		ent.Generation = e.tab.Generation()
	}
	ent.Egress, ent.Ingress = eg, ing
	e.ct.Update(ent, dir, p.TCPFlags, p.L3Len, e.now)
	e.counters.add(cFlowsNew, 1)
	e.recordAllowedFlow(key, eg, ing)
	e.firstFragment(p, ent, dir)
}

func (e *Engine) firstFragment(p *packet.Packet, ent *conntrack.Entry, dir conntrack.Dir) {
	if p.Fragmented && p.FragOffset == 0 {
		e.ct.InsertFragment(conntrack.MakeFragKey(p.Src, p.Dst, table.Protocol(p.Proto), p.FragID), ent, dir, true, e.now)
	}
}

func (e *Engine) isNode(a netip.Addr) bool {
	for _, n := range e.nodeAddrs {
		if n == a {
			return true
		}
	}
	return false
}

// decide judges a flow from src to dst (destination port dport) whose
// local ends s gives: the egress of src when it is a local pod, the
// ingress of dst when it is. A local pod the table does not know is
// denied. It returns the rules that allowed each side, or {-1, -1}.
func (e *Engine) decide(src, dst netip.Addr, proto uint8, dport uint16, s sides) (v verdict, eg, ing table.RuleRef) {
	none := table.RuleRef{Policy: -1, Index: -1}
	eg, ing = none, none
	t := e.tab
	if t == nil {
		return deny(DropUnknownEndpoint), none, none
	}
	pr := table.Protocol(proto)
	if s.src {
		dec := t.Egress(src, dst, pr, dport)
		switch {
		case dec.Reason == table.NotPod:
			return deny(DropUnknownEndpoint), none, none
		case !dec.Allowed():
			return verdict{drop: DropDeniedEgress, isolated: src, byCluster: dec.Reason != table.Denied}, none, none
		}
		eg = dec.Rule
	}
	if s.dst {
		if e.cfg.AllowNodeToPod && !s.src && e.isNode(src) {
			if _, known := t.EndpointByAddr(dst); !known {
				return deny(DropUnknownEndpoint), none, none
			}
			return pass, eg, ing
		}
		dec := t.Ingress(src, dst, pr, dport)
		switch {
		case dec.Reason == table.NotPod:
			return deny(DropUnknownEndpoint), none, none
		case !dec.Allowed():
			return verdict{drop: DropDeniedIngress, isolated: dst, byCluster: dec.Reason != table.Denied}, none, none
		}
		ing = dec.Rule
	}
	return pass, eg, ing
}

// flowKey is the conntrack key of a packet.
func flowKey(p *packet.Packet) conntrack.Key {
	return makeKey(p.Src, p.Dst, p.Proto, p.HasPorts, p.SrcPort, p.DstPort, p.HasICMPID, p.ICMPID)
}

// makeKey is the conntrack key of a packet from src to dst: with ports for
// TCP, UDP and SCTP, the identifier (as both ports) for ICMP queries,
// zeros otherwise.
func makeKey(src, dst netip.Addr, proto uint8, hasPorts bool, sport, dport uint16, hasID bool, id uint16) conntrack.Key {
	pr := table.Protocol(proto)
	switch {
	case hasPorts:
		return conntrack.MakeKey(src, dst, pr, sport, dport)
	case hasID:
		return conntrack.MakeKey(src, dst, pr, id, id)
	}
	return conntrack.MakeKey(src, dst, pr, 0, 0)
}
