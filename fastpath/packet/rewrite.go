package packet

import (
	"encoding/binary"
	"net/netip"
)

// SetMACs writes dst and src into the Ethernet header of frame, in place.
// It reports false, and changes nothing, if frame is shorter than an
// Ethernet header. It does not allocate.
func SetMACs(frame []byte, dst, src [6]byte) bool {
	if len(frame) < EthernetHeaderLen {
		return false
	}
	*(*[6]byte)(frame[0:6]) = dst
	*(*[6]byte)(frame[6:12]) = src
	return true
}

// DecrementTTL decrements the IPv4 TTL, updating the header checksum
// incrementally (RFC 1624), or the IPv6 hop limit of frame in place, and
// updates p.TTL. p must be the result of parsing frame with [Parse].
//
// It returns [TTLExceeded], and changes nothing, when the TTL or hop limit
// is 1 or 0: the kernel would not forward such a packet, and the caller
// drops and counts it (no ICMP time exceeded is generated). It returns
// [UnsupportedEtherType] if p is not IPv4 or IPv6 and [Truncated] if frame is
// too short for p's IP header. It does not allocate.
func DecrementTTL(frame []byte, p *Packet) Status {
	off := p.L3Off
	switch p.L3 {
	case L3IPv4:
		if off < 0 || len(frame)-off < IPv4MinHeaderLen {
			return Truncated
		}
		h := frame[off : off+IPv4MinHeaderLen]
		ttl := h[8]
		if ttl <= 1 {
			return TTLExceeded
		}
		// TTL and protocol share one 16-bit word of the header.
		old := binary.BigEndian.Uint16(h[8:10])
		h[8] = ttl - 1
		check := binary.BigEndian.Uint16(h[10:12])
		binary.BigEndian.PutUint16(h[10:12], UpdateChecksum(check, old, old-0x100))
		p.TTL = ttl - 1
		return OK
	case L3IPv6:
		if off < 0 || len(frame)-off < IPv6HeaderLen {
			return Truncated
		}
		hop := frame[off+7]
		if hop <= 1 {
			return TTLExceeded
		}
		frame[off+7] = hop - 1
		p.TTL = hop - 1
		return OK
	}
	return UnsupportedEtherType
}

// ReplyARP turns the ARP request in frame, as parsed into p by [Parse],
// into the reply that says that the requested IP address (p.ARP.TargetIP)
// is at mac, in place: the reply goes to the requester's MAC, and any VLAN
// tag and Ethernet padding stay. Send frame as it is afterwards; p then
// no longer describes it.
//
// It reports false, and changes nothing, if p is not an ARP request or
// frame is too short for it. Whether to answer at all is the caller's
// decision. It does not allocate.
func ReplyARP(frame []byte, p *Packet, mac [6]byte) bool {
	off := p.L3Off
	if p.L3 != L3ARP || p.ARP.Op != ARPRequest || !p.ARP.SenderIP.Is4() || !p.ARP.TargetIP.Is4() ||
		off < EthernetHeaderLen || len(frame)-off < ARPLen {
		return false
	}
	if !SetMACs(frame, p.ARP.SenderMAC, mac) {
		return false
	}
	a := frame[off : off+ARPLen]
	binary.BigEndian.PutUint16(a[6:8], ARPReply)
	*(*[6]byte)(a[8:14]) = mac
	*(*[4]byte)(a[14:18]) = p.ARP.TargetIP.As4()
	*(*[6]byte)(a[18:24]) = p.ARP.SenderMAC
	*(*[4]byte)(a[24:28]) = p.ARP.SenderIP.As4()
	return true
}

// Lengths of the neighbor advertisement that [BuildNeighborAdvertisement]
// writes: ICMPv6 message with a target link-layer address option, and the
// whole frame with an 802.1Q tag.
const (
	neighborAdvertLen = 24 + 8
	// MaxNeighborAdvertisementLen is the largest frame that
	// BuildNeighborAdvertisement writes: 90 bytes with a VLAN tag, 86
	// without.
	MaxNeighborAdvertisementLen = EthernetHeaderLen + VLANTagLen + IPv6HeaderLen + neighborAdvertLen
)

// BuildNeighborAdvertisement writes into buf the Ethernet frame of the
// neighbor advertisement that answers the neighbor solicitation ns (as
// parsed by [Parse]) with mac as the target's link-layer address, and
// returns its length, or 0 if ns is not a neighbor solicitation or buf is
// shorter than the frame ([MaxNeighborAdvertisementLen] always suffices).
//
// The advertisement comes from the target address, hop limit 255, with a
// target link-layer address option and a valid ICMPv6 checksum, in the
// VLAN of the solicitation. It goes to the soliciting address, at its
// source link-layer address option or else its Ethernet source, with the
// Solicited flag set; when the solicitation came from the unspecified
// address (duplicate address detection) it goes to all nodes (ff02::1)
// without it (RFC 4861 section 7.2.4). flags adds NARouter and NAOverride
// (set Override when answering for an address nobody else on the link may
// claim); NASolicited in flags is ignored.
//
// buf may be the solicitation's own frame: everything needed is read from
// ns. BuildNeighborAdvertisement does not allocate.
func BuildNeighborAdvertisement(buf []byte, ns *Packet, mac [6]byte, flags NAFlags) int {
	if ns.L3 != L3IPv6 || ns.Proto != ProtoICMPv6 || ns.ICMPType != ICMPv6NeighborSolicit ||
		!ns.NDP.Target.Is6() || !ns.Src.Is6() {
		return 0
	}
	n := EthernetHeaderLen
	if ns.HasVLAN {
		n += VLANTagLen
	}
	total := n + IPv6HeaderLen + neighborAdvertLen
	if len(buf) < total {
		return 0
	}
	flags &^= NASolicited
	dst := ns.Src
	ethDst := ns.SrcMAC
	if ns.NDP.HasLinkAddr {
		ethDst = ns.NDP.LinkAddr
	}
	if ns.Src.IsUnspecified() {
		dst = netip.AddrFrom16([16]byte{0: 0xFF, 1: 0x02, 15: 0x01})
		ethDst = [6]byte{0x33, 0x33, 0, 0, 0, 1}
	} else {
		flags |= NASolicited
	}
	src := ns.NDP.Target
	vlan := ns.VLANTCI

	b := buf[:total]
	clear(b)
	*(*[6]byte)(b[0:6]) = ethDst
	*(*[6]byte)(b[6:12]) = mac
	if n > EthernetHeaderLen {
		binary.BigEndian.PutUint16(b[12:14], EtherTypeVLAN)
		binary.BigEndian.PutUint16(b[14:16], vlan)
	}
	binary.BigEndian.PutUint16(b[n-2:n], EtherTypeIPv6)

	ip := b[n : n+IPv6HeaderLen]
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:6], neighborAdvertLen)
	ip[6] = ProtoICMPv6
	ip[7] = 255
	*(*[16]byte)(ip[8:24]) = src.As16()
	*(*[16]byte)(ip[24:40]) = dst.As16()

	// 0: type, 1: code, 2: checksum, 4: flags, 8: target,
	// 24: option type 2 (target link-layer address), length 1 (8 bytes).
	m := b[n+IPv6HeaderLen : total]
	m[0] = ICMPv6NeighborAdvert
	m[4] = byte(flags)
	*(*[16]byte)(m[8:24]) = src.As16()
	m[24] = 2
	m[25] = 1
	*(*[6]byte)(m[26:32]) = mac
	sum := Sum(m, PseudoHeaderSum(src, dst, ProtoICMPv6, neighborAdvertLen))
	binary.BigEndian.PutUint16(m[2:4], ^sum)
	return total
}

// Lengths of the frames that [BuildTCPReset] writes.
const (
	tcpHeaderLen = 20
	// MaxTCPResetLen is the largest frame that BuildTCPReset writes: 74
	// bytes for IPv6, 54 for IPv4.
	MaxTCPResetLen = EthernetHeaderLen + IPv6HeaderLen + tcpHeaderLen
)

// BuildTCPReset writes into buf the Ethernet frame of a TCP reset that
// answers the TCP segment seg (frame, as parsed into p by [Parse]) as its
// receiver would (RFC 9293 section 3.10.7.1): from the segment's
// destination to its source, with seq set to the segment's acknowledgment
// number when it has one, else with ACK and the acknowledgment of the
// segment's sequence space. The frame goes to mac dst from mac src, with
// a fresh IP header (TTL or hop limit 64, IPv4 DF) and valid checksums,
// and carries no VLAN tag, options or payload. It returns the frame's
// length, or 0 if p is not an unfragmented TCP segment or a reset, frame
// is too short for the TCP header p describes, or buf is shorter than
// the reset ([MaxTCPResetLen] always suffices).
//
// buf may be seg's own frame: everything needed is read before it is
// written. BuildTCPReset does not allocate.
func BuildTCPReset(buf []byte, seg []byte, p *Packet, dst, src [6]byte) int {
	if p.Proto != ProtoTCP || !p.HasPorts || p.Fragmented || p.TCPFlags&TCPFlagRST != 0 ||
		p.L4Off < 0 || len(seg) < p.L4Off+tcpHeaderLen || (p.L3 != L3IPv4 && p.L3 != L3IPv6) {
		return 0
	}
	l3 := IPv4MinHeaderLen
	if p.L3 == L3IPv6 {
		l3 = IPv6HeaderLen
	}
	total := EthernetHeaderLen + l3 + tcpHeaderLen
	if len(buf) < total {
		return 0
	}
	th := seg[p.L4Off:]
	segSeq := binary.BigEndian.Uint32(th[4:8])
	segAck := binary.BigEndian.Uint32(th[8:12])
	segLen := uint32(max(0, p.L3Off+p.L3Len-p.PayloadOff))
	if p.TCPFlags&TCPFlagSYN != 0 {
		segLen++
	}
	if p.TCPFlags&TCPFlagFIN != 0 {
		segLen++
	}
	flags, seq, ack := uint8(TCPFlagRST), segAck, uint32(0)
	if p.TCPFlags&TCPFlagACK == 0 {
		flags, seq, ack = TCPFlagRST|TCPFlagACK, 0, segSeq+segLen
	}
	from, to := p.Dst, p.Src
	sport, dport := p.DstPort, p.SrcPort

	b := buf[:total]
	clear(b)
	*(*[6]byte)(b[0:6]) = dst
	*(*[6]byte)(b[6:12]) = src
	ip := b[EthernetHeaderLen : EthernetHeaderLen+l3]
	if l3 == IPv4MinHeaderLen {
		binary.BigEndian.PutUint16(b[12:14], EtherTypeIPv4)
		ip[0] = 4<<4 | 5
		binary.BigEndian.PutUint16(ip[2:4], uint16(l3+tcpHeaderLen))
		ip[6] = 0x40 // DF
		ip[8] = 64
		ip[9] = ProtoTCP
		*(*[4]byte)(ip[12:16]) = from.As4()
		*(*[4]byte)(ip[16:20]) = to.As4()
		binary.BigEndian.PutUint16(ip[10:12], ^Sum(ip, 0))
	} else {
		binary.BigEndian.PutUint16(b[12:14], EtherTypeIPv6)
		ip[0] = 6 << 4
		binary.BigEndian.PutUint16(ip[4:6], tcpHeaderLen)
		ip[6] = ProtoTCP
		ip[7] = 64
		*(*[16]byte)(ip[8:24]) = from.As16()
		*(*[16]byte)(ip[24:40]) = to.As16()
	}
	t := b[EthernetHeaderLen+l3:]
	binary.BigEndian.PutUint16(t[0:2], sport)
	binary.BigEndian.PutUint16(t[2:4], dport)
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
	t[12] = 5 << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[16:18], ^Sum(t, PseudoHeaderSum(from, to, ProtoTCP, tcpHeaderLen)))
	return total
}
