package fastpath

import (
	"encoding/binary"
	"net/netip"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/fastpath/xsk"
)

// prepare parses the n frames of a batch from port in and looks up the
// flows of those that have one, all at once, so that the memory accesses
// of the lookups overlap (conntrack.Table.LookupBatch).
func (e *Engine) prepare(in *port, n int) {
	k := int32(0)
	for i, f := range e.batch[:n] {
		p := &e.pkts[i]
		e.statuses[i] = packet.Parse(in.Port.Bytes(f), p)
		e.flowIdx[i] = -1
		if e.statuses[i] != packet.OK || p.L3 == packet.L3ARP || p.ICMPError || (p.Fragmented && p.FragOffset != 0) {
			continue
		}
		e.keys[k] = flowKey(p)
		e.flowIdx[i] = k
		k++
	}
	e.changed = false
	if k > 0 {
		e.ct.LookupBatch(e.keys[:k], e.now, e.ents[:k], e.dirs[:k])
	}
}

// flow returns the key of the frame with batch index i and its flow: the
// batch lookup, unless the table changed since (an insert may have added
// the flow or reused the entry of another, a delete freed one).
func (e *Engine) flow(i int, p *packet.Packet) (conntrack.Key, *conntrack.Entry, conntrack.Dir) {
	j := e.flowIdx[i]
	if j < 0 {
		k := flowKey(p)
		ent, dir := e.ct.Lookup(k, e.now)
		return k, ent, dir
	}
	if e.changed {
		ent, dir := e.ct.Lookup(e.keys[j], e.now)
		return e.keys[j], ent, dir
	}
	return e.keys[j], e.ents[j], e.dirs[j]
}

// rxFrame is a received frame: f, whose bytes are b, in the UMEM of the
// socket of port rx, which must release or transmit it.
type rxFrame struct {
	rx *port
	f  xsk.Frame
	b  []byte
}

// frame handles the received frame f of port rx with batch index i, parsed
// by prepare; it always releases or transmits f. A frame on the kernel
// port that a pod port's TC program punted (its destination MAC is the
// punt marker) is handled as if that pod's port had received it.
func (e *Engine) frame(rx *port, f xsk.Frame, i int) {
	fr := rxFrame{rx: rx, f: f, b: rx.Port.Bytes(f)}
	e.counters.add(cRxPackets, 1)
	e.counters.add(cRxBytes, uint64(len(fr.b)))
	p := &e.pkts[i]
	in := rx
	if r := e.statuses[i]; r == packet.OK && rx.Kind == KernelPort {
		if ifindex, ok := offload.PuntedFrom(p.DstMAC); ok {
			if in = e.byIfindex[ifindex]; in == nil {
				e.drop(fr, DropNoPort)
				return
			}
		}
	}
	in.stats.local[pRxPackets]++
	in.stats.local[pRxBytes] += uint64(len(fr.b))
	if r := e.statuses[i]; r != packet.OK {
		e.drop(fr, Drop(r))
		return
	}
	if p.HasVLAN {
		e.drop(fr, DropNotRouted)
		return
	}
	if in.Kind == KernelPort {
		e.fromKernel(fr, p, i)
		return
	}
	e.fromPod(fr, in, p, i)
}

// reject drops the frame fr (parsed into p) from port in, which verdict v
// denied, and accounts the denial. A TCP segment of a connection that
// policy cut is answered with a reset to its sender when
// [Config.CutReset] is set: the frame itself becomes the reset.
func (e *Engine) reject(fr rxFrame, in *port, p *packet.Packet, v verdict) {
	e.recordDenial(p, v)
	if !v.cut || !e.cfg.CutReset || p.Proto != packet.ProtoTCP {
		e.drop(fr, v.drop)
		return
	}
	n := packet.BuildTCPReset(fr.b[:cap(fr.b)], fr.b, p, p.SrcMAC, in.MAC)
	if n == 0 {
		e.drop(fr, v.drop)
		return
	}
	e.counters.drop(v.drop)
	e.counters.add(cResets, 1)
	e.emit(fr, n, in, GatewayReply)
}

func (e *Engine) drop(fr rxFrame, d Drop) {
	fr.rx.Port.Release(fr.f)
	fr.rx.dirty = true
	e.counters.drop(d)
}

func (in *port) owns(a netip.Addr) bool {
	for _, x := range in.PodIPs {
		if x == a {
			return true
		}
	}
	return false
}

// checkPodMAC learns the pod's MAC from its first frame when it was not
// given, and reports whether mac is the pod's.
func (in *port) checkPodMAC(mac [6]byte) bool {
	if in.PeerMAC == ([6]byte{}) {
		in.PeerMAC, in.learned = mac, true
		return true
	}
	return in.PeerMAC == mac
}

// routable reports whether the gateway forwards packets to a: unicast
// addresses, IPv4 link-local ones included. Clouds serve their instance
// metadata at 169.254.169.254, which the node routes; policy decides
// whether a pod may reach it, as with the kernel, Calico or Cilium. IPv6
// link-local addresses are the link's alone and never routed.
func routable(a netip.Addr) bool {
	return a.IsGlobalUnicast() || a.IsPrivate() || (a.Is4() && !a.IsMulticast() &&
		!a.IsLoopback() && !a.IsUnspecified() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255}))
}

func isNDP(p *packet.Packet) bool {
	return p.L3 == packet.L3IPv6 && p.Proto == packet.ProtoICMPv6 &&
		p.ICMPType >= packet.ICMPv6RouterSolicit && p.ICMPType <= packet.ICMPv6Redirect
}

// fromPod handles a frame that the pod of port in sent.
func (e *Engine) fromPod(fr rxFrame, in *port, p *packet.Packet, i int) {
	if !in.checkPodMAC(p.SrcMAC) {
		e.drop(fr, DropSpoofedMAC)
		return
	}
	if p.L3 == packet.L3ARP {
		a := &p.ARP
		if a.SenderMAC != in.PeerMAC || (!in.owns(a.SenderIP) && !a.SenderIP.IsUnspecified()) {
			e.drop(fr, DropSpoofedSource)
			return
		}
		// The gateway answers for every address but the pod's own (those
		// requests are duplicate address probes).
		if a.Op == packet.ARPRequest && !in.owns(a.TargetIP) {
			e.replyARP(fr, in, p)
			return
		}
		e.drop(fr, DropNeighbor)
		return
	}
	if isNDP(p) {
		if p.ICMPType == packet.ICMPv6NeighborSolicit && !in.owns(p.NDP.Target) &&
			(in.owns(p.Src) || p.Src.IsUnspecified() || p.Src.IsLinkLocalUnicast()) {
			e.replyNA(fr, in, p, packet.NARouter|packet.NAOverride)
			return
		}
		e.dropNDP(fr, p)
		return
	}
	if !in.owns(p.Src) {
		d := DropSpoofedSource
		if p.Src.IsLinkLocalUnicast() || p.Src.IsUnspecified() {
			d = DropNotRouted
		}
		e.drop(fr, d)
		return
	}
	if !routable(p.Dst) {
		e.drop(fr, DropNotRouted)
		return
	}
	out, path := e.local(p.Dst), PodToPod
	if out != nil && e.kernel != nil {
		// A reply of a flow that came from the kernel leg (a Service
		// address DNATed to this pod) goes back the way it came.
		if _, ent, dir := e.flow(i, p); ent != nil && dir == conntrack.Reply && ent.Flags&flagViaKernel != 0 {
			out, path = e.kernel, PodToKernel
		}
	}
	if out == nil {
		out, path = e.kernel, PodToKernel
		if out == nil {
			e.drop(fr, DropNoRoute)
			return
		}
	}
	v := e.judge(p, i, sides{src: true, dst: path == PodToPod, owner: in.owner})
	if !v.ok {
		e.reject(fr, in, p, v)
		return
	}
	e.offload(p, v, in, out)
	e.forward(fr, p, out, path)
}

// fromKernel handles a frame that the kernel sent on the kernel leg.
func (e *Engine) fromKernel(fr rxFrame, p *packet.Packet, i int) {
	in := fr.rx
	if p.L3 == packet.L3ARP {
		if p.ARP.Op == packet.ARPRequest && e.hasAddr(p.ARP.TargetIP) {
			e.replyARP(fr, in, p)
			return
		}
		e.drop(fr, DropNeighbor)
		return
	}
	if isNDP(p) {
		if p.ICMPType == packet.ICMPv6NeighborSolicit && e.hasAddr(p.NDP.Target) {
			e.replyNA(fr, in, p, packet.NAOverride)
			return
		}
		e.dropNDP(fr, p)
		return
	}
	out := e.local(p.Dst)
	if out == nil {
		d := DropNoRoute
		if !routable(p.Dst) {
			d = DropNotRouted
		}
		e.drop(fr, d)
		return
	}
	// A local source here is a pod's packet that the kernel sent back (a
	// Service address DNATed to a local pod): its egress is judged too,
	// and the flow's replies must return through the kernel.
	srcLocal := e.hasAddr(p.Src)
	v := e.judge(p, i, sides{src: srcLocal, dst: true, viaKernel: srcLocal, owner: out.owner})
	if !v.ok {
		e.reject(fr, in, p, v)
		return
	}
	e.offload(p, v, in, out)
	e.forward(fr, p, out, KernelToPod)
}

// local returns the port of a local pod's address, or nil.
func (e *Engine) local(a netip.Addr) *port {
	p, _ := e.byAddr.Get(a)
	return p
}

func (e *Engine) hasAddr(a netip.Addr) bool { return e.local(a) != nil }

// replyARP answers the ARP request fr (parsed into p) that came from port
// in, out of in.
func (e *Engine) replyARP(fr rxFrame, in *port, p *packet.Packet) {
	if !packet.ReplyARP(fr.b, p, in.MAC) {
		e.drop(fr, DropNeighbor)
		return
	}
	e.emit(fr, len(fr.b), in, GatewayReply)
}

// replyNA answers the neighbor solicitation fr (parsed into p) that came
// from port in, out of in.
func (e *Engine) replyNA(fr rxFrame, in *port, p *packet.Packet, flags packet.NAFlags) {
	nf, ok := in.Port.Alloc()
	if !ok {
		e.drop(fr, DropTxRingFull)
		return
	}
	n := packet.BuildNeighborAdvertisement(in.Port.Bytes(nf), p, in.MAC, flags)
	fr.rx.Port.Release(fr.f)
	fr.rx.dirty = true
	if n == 0 {
		in.Port.Release(nf)
		in.dirty = true
		e.counters.drop(DropNeighbor)
		return
	}
	e.send(in, nf, n, GatewayReply)
}

// send transmits f (n bytes, a frame of out's socket) on out and counts it
// on path.
func (e *Engine) send(out *port, f xsk.Frame, n int, path Path) {
	out.dirty = true
	f.Len = uint32(n)
	if !out.Port.Transmit(f) {
		out.Port.Release(f)
		e.counters.drop(DropTxRingFull)
		return
	}
	e.counters.add(cFwdPackets+int(path), 1)
	e.counters.add(cFwdBytes+int(path), uint64(n))
	out.stats.local[pTxPackets]++
	out.stats.local[pTxBytes] += uint64(n)
}

// emit transmits the first n bytes of the received frame fr on out: in
// place when fr belongs to out's socket, else copied into a frame of
// out's socket (fr is then released).
func (e *Engine) emit(fr rxFrame, n int, out *port, path Path) {
	if out == fr.rx {
		e.send(out, fr.f, n, path)
		return
	}
	nf, ok := out.Port.Alloc()
	if !ok {
		e.drop(fr, DropTxRingFull)
		return
	}
	ob := out.Port.Bytes(nf)
	if n > len(ob) {
		out.Port.Release(nf)
		out.dirty = true
		e.drop(fr, DropTooBig)
		return
	}
	copy(ob, fr.b[:n])
	fr.rx.Port.Release(fr.f)
	fr.rx.dirty = true
	e.send(out, nf, n, path)
}

// dropNDP drops an NDP message that the gateway does not answer: a
// neighbor solicitation or advertisement counts as DropNeighbor, the other
// NDP messages (router and redirect ones) as DropNotRouted.
func (e *Engine) dropNDP(fr rxFrame, p *packet.Packet) {
	d := DropNeighbor
	if p.ICMPType != packet.ICMPv6NeighborAdvert && p.ICMPType != packet.ICMPv6NeighborSolicit {
		d = DropNotRouted
	}
	e.drop(fr, d)
}

// forward rewrites the IP packet of fr (parsed into p) for out (TTL or hop
// limit, MACs, a checksum left partial by the sender) and transmits it.
func (e *Engine) forward(fr rxFrame, p *packet.Packet, out *port, path Path) {
	n := p.L3Off + p.L3Len // without Ethernet padding
	if r := packet.DecrementTTL(fr.b, p); r != packet.OK {
		e.drop(fr, Drop(r))
		return
	}
	if out.PeerMAC == ([6]byte{}) {
		// A pod that has not sent a frame yet and whose MAC the port was
		// not given: a frame to the broadcast MAC would be discarded by
		// the pod's TCP, so drop and count.
		e.drop(fr, DropNoNeighbor)
		return
	}
	if n > len(fr.b) {
		e.drop(fr, DropTooBig)
		return
	}
	completeChecksum(fr.b[:n], p)
	packet.SetMACs(fr.b, out.PeerMAC, out.MAC)
	e.emit(fr, n, out, path)
}

// completeChecksum finishes a TCP or UDP checksum that checksum offload in
// the sending pod left partial: the field then holds the folded
// pseudo-header sum (Linux CHECKSUM_PARTIAL), and the receiver of a frame
// sent from an AF_XDP socket verifies it. A complete checksum is left
// alone; one that happens to equal the pseudo-header sum is recomputed to
// the same value.
func completeChecksum(b []byte, p *packet.Packet) {
	if p.Fragmented {
		return
	}
	var off int
	switch p.Proto {
	case packet.ProtoTCP:
		off = 16
	case packet.ProtoUDP:
		off = 6
	default:
		return
	}
	end := p.L3Off + p.L3Len
	if p.L4Off+off+2 > end || end > len(b) {
		return
	}
	l4 := b[p.L4Off:end]
	field := binary.BigEndian.Uint16(l4[off:])
	if field == 0 && p.Proto == packet.ProtoUDP && p.L3 == packet.L3IPv4 {
		return // no checksum
	}
	pseudo := packet.PseudoHeaderSum(p.Src, p.Dst, p.Proto, len(l4))
	if field != pseudo {
		return
	}
	l4[off], l4[off+1] = 0, 0
	c := ^packet.Sum(l4, pseudo)
	if c == 0 && p.Proto == packet.ProtoUDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], c)
}
