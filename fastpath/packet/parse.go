package packet

import (
	"encoding/binary"
	"net/netip"
)

// Parse parses frame, an Ethernet frame as received, into p and returns
// [OK] or the reason to drop the frame. It overwrites every field of p.
//
// Parse checks every bound itself and never panics, whatever frame holds.
// It does not allocate, does not keep frame and does not modify it. It is
// safe for concurrent use with distinct Packets.
func Parse(frame []byte, p *Packet) Status {
	*p = Packet{}
	if len(frame) < EthernetHeaderLen {
		return Truncated
	}
	p.DstMAC = [6]byte(frame[0:6])
	p.SrcMAC = [6]byte(frame[6:12])
	if p.SrcMAC[0]&1 != 0 || p.SrcMAC == [6]byte{} {
		return BadEthernet
	}
	off := EthernetHeaderLen
	et := binary.BigEndian.Uint16(frame[12:14])
	if et == EtherTypeVLAN {
		if len(frame) < EthernetHeaderLen+VLANTagLen {
			return Truncated
		}
		p.HasVLAN = true
		p.VLANTCI = binary.BigEndian.Uint16(frame[14:16])
		et = binary.BigEndian.Uint16(frame[16:18])
		off += VLANTagLen
	}
	p.EtherType = et
	p.L3Off = off
	switch et {
	case EtherTypeIPv4:
		return parseIPv4(frame, p)
	case EtherTypeIPv6:
		return parseIPv6(frame, p)
	case EtherTypeARP:
		return parseARP(frame, p)
	}
	return UnsupportedEtherType
}

// parseARP parses Ethernet/IPv4 ARP at p.L3Off.
func parseARP(frame []byte, p *Packet) Status {
	off := p.L3Off
	if len(frame)-off < ARPLen {
		return Truncated
	}
	b := frame[off : off+ARPLen]
	// 0: hardware type, 2: protocol type, 4: hlen, 5: plen, 6: op,
	// 8: sender MAC, 14: sender IP, 18: target MAC, 24: target IP.
	if binary.BigEndian.Uint16(b[0:2]) != 1 || binary.BigEndian.Uint16(b[2:4]) != EtherTypeIPv4 ||
		b[4] != 6 || b[5] != 4 {
		return BadARP
	}
	op := binary.BigEndian.Uint16(b[6:8])
	if op != ARPRequest && op != ARPReply {
		return BadARP
	}
	p.L3 = L3ARP
	p.L3Len = ARPLen
	p.L4Off = off + ARPLen
	p.PayloadOff = p.L4Off
	p.ARP = ARP{
		Op:        op,
		SenderMAC: [6]byte(b[8:14]),
		SenderIP:  netip.AddrFrom4([4]byte(b[14:18])),
		TargetMAC: [6]byte(b[18:24]),
		TargetIP:  netip.AddrFrom4([4]byte(b[24:28])),
	}
	return OK
}

// parseIPv4 parses the IPv4 packet at p.L3Off and what it carries.
func parseIPv4(frame []byte, p *Packet) Status {
	off := p.L3Off
	if len(frame)-off < IPv4MinHeaderLen {
		return Truncated
	}
	// 0: version, IHL; 2: total length; 4: ID; 6: flags, fragment offset;
	// 8: TTL; 9: protocol; 10: checksum; 12: source; 16: destination.
	b := frame[off:]
	if b[0]>>4 != 4 {
		return BadIPv4
	}
	hl := int(b[0]&0x0F) * 4
	tl := int(binary.BigEndian.Uint16(b[2:4]))
	if hl < IPv4MinHeaderLen || tl < hl {
		return BadIPv4
	}
	if len(b) < tl {
		return Truncated
	}
	h := b[:hl]
	if Sum(h, 0) != 0xFFFF {
		return BadIPv4Checksum
	}
	if hl > IPv4MinHeaderLen {
		if r := checkIPv4Options(h[IPv4MinHeaderLen:]); r != OK {
			return r
		}
	}
	p.L3 = L3IPv4
	p.L3Len = tl
	p.TTL = h[8]
	p.Proto = h[9]
	p.Src = netip.AddrFrom4([4]byte(h[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(h[16:20]))
	if h[12] >= 224 && (h[12] < 240 || h[12]&h[13]&h[14]&h[15] == 0xFF) {
		return BadIPv4 // multicast or limited broadcast source
	}
	p.FragID = uint32(binary.BigEndian.Uint16(h[4:6]))
	ff := binary.BigEndian.Uint16(h[6:8])
	p.DontFragment = ff&0x4000 != 0
	p.MoreFragments = ff&0x2000 != 0
	fo := int(ff&0x1FFF) * 8
	p.FragOffset = uint16(fo)
	p.L4Off = off + hl
	p.PayloadOff = p.L4Off
	pkt := frame[:off+tl]
	if p.MoreFragments || fo != 0 {
		p.Fragmented = true
		if r := checkFragment(fo, tl-hl, 0xFFFF-hl, p.MoreFragments, p.Proto); r != OK {
			return r
		}
		if fo != 0 {
			return OK
		}
	}
	return parseL4(pkt, p)
}

// checkIPv4Options checks the TLV structure of IPv4 options and rejects
// source routing.
func checkIPv4Options(opts []byte) Status {
	for i := 0; i < len(opts); {
		t := opts[i]
		switch t {
		case 0: // end of option list; the rest is padding
			return OK
		case 1: // no operation
			i++
			continue
		}
		if len(opts)-i < 2 {
			return BadIPv4
		}
		l := int(opts[i+1])
		if l < 2 || l > len(opts)-i {
			return BadIPv4
		}
		if t == 131 || t == 137 { // loose, strict source and record route
			return SourceRouted
		}
		i += l
	}
	return OK
}

// minL4Header is the L4 header length that a first fragment must hold and
// that a non-first fragment's offset must not reach into.
func minL4Header(proto uint8) int {
	switch proto {
	case ProtoTCP:
		return 20
	case ProtoSCTP:
		return 12
	case ProtoUDP, ProtoICMP, ProtoICMPv6:
		return 8
	}
	return 0
}

// checkFragment checks a fragment of data length n at byte offset off; max
// is the largest value off+n may have.
func checkFragment(off, n, max int, more bool, proto uint8) Status {
	if n <= 0 || off+n > max || (more && n%8 != 0) {
		return BadFragment
	}
	if off != 0 && off < minL4Header(proto) {
		return BadFragment
	}
	return OK
}

// parseIPv6 parses the IPv6 packet at p.L3Off and what it carries.
func parseIPv6(frame []byte, p *Packet) Status {
	off := p.L3Off
	if len(frame)-off < IPv6HeaderLen {
		return Truncated
	}
	// 0: version, traffic class, flow label; 4: payload length;
	// 6: next header; 7: hop limit; 8: source; 24: destination.
	b := frame[off:]
	if b[0]>>4 != 6 {
		return BadIPv6
	}
	tl := IPv6HeaderLen + int(binary.BigEndian.Uint16(b[4:6]))
	if len(b) < tl {
		return Truncated
	}
	p.L3 = L3IPv6
	p.L3Len = tl
	p.TTL = b[7]
	p.Src = netip.AddrFrom16([16]byte(b[8:24]))
	p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	if b[8] == 0xFF || p.Src.Is4In6() {
		// A multicast source (RFC 4291 section 2.7), or an IPv4-mapped
		// one, which the kernel drops too: ::ffff:10.0.0.1 must not pass
		// for 10.0.0.1.
		return BadIPv6
	}
	pkt := frame[:off+tl]
	var x extChain
	r := x.walk(pkt, off+IPv6HeaderLen, b[6], true)
	if x.fragHdr >= 0 {
		p.FragID = x.fragID
		p.FragOffset = uint16(x.fragOff)
		p.MoreFragments = x.more
		p.Fragmented = x.fragOff != 0 || x.more
	}
	if r != OK {
		if x.overrun && p.Fragmented && x.fragOff == 0 {
			// The header chain goes on in the next fragment (RFC 7112).
			return TinyFragment
		}
		return r
	}
	p.Proto = x.proto
	p.L4Off = x.l4
	p.PayloadOff = x.l4
	if p.Fragmented {
		data := x.fragHdr + 8
		unfrag := x.fragHdr - (off + IPv6HeaderLen)
		if r := checkFragment(x.fragOff, len(pkt)-data, 0xFFFF-unfrag, x.more, p.Proto); r != OK {
			return r
		}
		if x.fragOff != 0 {
			return OK
		}
	}
	return parseL4(pkt, p)
}

// extChain is the result of walking an IPv6 extension header chain.
type extChain struct {
	proto   uint8 // upper-layer protocol
	l4      int   // offset of the upper-layer header
	fragHdr int   // offset of the Fragment header, -1 if none
	fragOff int   // fragment offset in bytes
	more    bool
	fragID  uint32
	overrun bool // the chain ran past the packet
}

// walk walks the extension headers of the IPv6 packet that ends at
// len(pkt), starting at off with next header nh. outer is false for the
// packet quoted in an ICMPv6 error, whose routing header is not judged.
// The fragment fields are set even when walk fails.
func (x *extChain) walk(pkt []byte, off int, nh uint8, outer bool) Status {
	x.fragHdr = -1
	for n := 0; ; n++ {
		switch nh {
		case ProtoHopByHop, ProtoRouting, ProtoFragment, ProtoDestOpts, ProtoAH:
		default:
			x.proto = nh
			x.l4 = off
			return OK
		}
		if n == MaxExtensionHeaders {
			return TooManyExtHeaders
		}
		// Every extension header is at least 8 bytes long.
		if len(pkt)-off < 8 {
			x.overrun = true
			return BadIPv6ExtHeader
		}
		h := pkt[off:]
		hl := (int(h[1]) + 1) * 8
		switch nh {
		case ProtoHopByHop:
			if n != 0 {
				return BadIPv6ExtHeader
			}
		case ProtoRouting:
			if outer && h[3] != 0 && hl <= len(h) {
				return SourceRouted
			}
		case ProtoAH:
			// Payload length in 4-byte units minus 2; the fixed part
			// is 12 bytes.
			if h[1] == 0 {
				return BadIPv6ExtHeader
			}
			hl = (int(h[1]) + 2) * 4
		case ProtoFragment:
			if x.fragHdr >= 0 {
				return BadIPv6ExtHeader
			}
			// 0: next header, 2: offset (13 bits), M; 4: identification.
			hl = 8
			fo := binary.BigEndian.Uint16(h[2:4])
			x.fragHdr = off
			x.fragOff = int(fo>>3) * 8
			x.more = fo&1 != 0
			x.fragID = binary.BigEndian.Uint32(h[4:8])
			if x.fragOff != 0 {
				// The rest is not the start of anything.
				x.proto = h[0]
				x.l4 = off + 8
				return OK
			}
		}
		if hl > len(h) {
			x.overrun = true
			return BadIPv6ExtHeader
		}
		nh = h[0]
		off += hl
	}
}

// parseL4 parses the upper-layer header at p.L4Off of pkt, which ends where
// the IP packet ends. It is not called for non-first fragments.
func parseL4(pkt []byte, p *Packet) Status {
	l4 := pkt[p.L4Off:]
	switch p.Proto {
	case ProtoTCP:
		// 0: source port, 2: destination port, 12: data offset, 13: flags.
		if len(l4) < 20 {
			return short(p, BadTCP)
		}
		doff := int(l4[12]>>4) * 4
		if doff < 20 {
			return BadTCP
		}
		if doff > len(l4) {
			return short(p, BadTCP)
		}
		p.HasPorts = true
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
		p.TCPFlags = l4[13]
		p.PayloadOff = p.L4Off + doff
	case ProtoUDP:
		// 0: source port, 2: destination port, 4: length, 6: checksum.
		if len(l4) < 8 {
			return short(p, BadUDP)
		}
		if !p.Fragmented {
			// A fragment's UDP length is that of the whole datagram.
			ulen := int(binary.BigEndian.Uint16(l4[4:6]))
			if ulen < 8 || ulen > len(l4) {
				return BadUDP
			}
		}
		p.HasPorts = true
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
		p.PayloadOff = p.L4Off + 8
	case ProtoSCTP:
		// 0: source port, 2: destination port, 4: verification tag,
		// 8: checksum, 12: chunks (type, flags, length).
		if len(l4) < 12 {
			return short(p, BadSCTP)
		}
		if !p.Fragmented {
			if len(l4) < 16 {
				return BadSCTP
			}
			cl := int(binary.BigEndian.Uint16(l4[14:16]))
			if cl < 4 || cl > len(l4)-12 {
				return BadSCTP
			}
		}
		p.HasPorts = true
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
		p.PayloadOff = p.L4Off + 12
	case ProtoICMP:
		if p.L3 == L3IPv4 {
			return parseICMPv4(l4, p)
		}
	case ProtoICMPv6:
		if p.L3 == L3IPv6 {
			return parseICMPv6(l4, p)
		}
	}
	return OK
}

// short returns TinyFragment for a first fragment that is too short, bad
// for a whole packet.
func short(p *Packet, bad Status) Status {
	if p.Fragmented {
		return TinyFragment
	}
	return bad
}

// isICMPv4Query reports whether ICMP type t has an identifier.
func isICMPv4Query(t uint8) bool {
	switch t {
	case ICMPEchoReply, ICMPEchoRequest, ICMPTimestamp, ICMPTimestampReply,
		ICMPInfoRequest, ICMPInfoReply, ICMPAddrMask, ICMPAddrMaskReply:
		return true
	}
	return false
}

// parseICMPv4 parses the ICMP message l4.
func parseICMPv4(l4 []byte, p *Packet) Status {
	// 0: type, 1: code, 2: checksum, 4: identifier (queries),
	// 8: quoted packet (errors).
	if len(l4) < 8 {
		return short(p, BadICMP)
	}
	t := l4[0]
	p.ICMPType = t
	p.ICMPCode = l4[1]
	p.PayloadOff = p.L4Off + 8
	switch t {
	case ICMPDestUnreach, ICMPSourceQuench, ICMPRedirect, ICMPTimeExceeded, ICMPParamProblem:
		p.ICMPError = true
		return parseInnerIPv4(l4[8:], p)
	}
	if isICMPv4Query(t) {
		p.HasICMPID = true
		p.ICMPID = binary.BigEndian.Uint16(l4[4:6])
	}
	return OK
}

// parseInnerIPv4 parses the IPv4 packet quoted in an ICMP error. The
// quote is usually cut short, so only its header and the first L4 bytes
// must be there.
func parseInnerIPv4(b []byte, p *Packet) Status {
	if len(b) < IPv4MinHeaderLen || b[0]>>4 != 4 {
		return short(p, BadICMP)
	}
	hl := int(b[0]&0x0F) * 4
	if hl < IPv4MinHeaderLen || hl > len(b) {
		return short(p, BadICMP)
	}
	in := &p.Inner
	in.Proto = b[9]
	in.Src = netip.AddrFrom4([4]byte(b[12:16]))
	in.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	if binary.BigEndian.Uint16(b[6:8])&0x1FFF != 0 {
		return OK // non-first fragment: no L4 header
	}
	if !parseInnerL4(b[hl:], in, ProtoICMP) {
		return short(p, BadICMP)
	}
	return OK
}

// parseInnerIPv6 parses the IPv6 packet quoted in an ICMPv6 error.
func parseInnerIPv6(b []byte, p *Packet) Status {
	if len(b) < IPv6HeaderLen || b[0]>>4 != 6 {
		return short(p, BadICMPv6)
	}
	in := &p.Inner
	in.Src = netip.AddrFrom16([16]byte(b[8:24]))
	in.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	var x extChain
	if x.walk(b, IPv6HeaderLen, b[6], false) != OK {
		return short(p, BadICMPv6)
	}
	in.Proto = x.proto
	if x.fragOff != 0 {
		return OK // non-first fragment: no L4 header
	}
	if !parseInnerL4(b[x.l4:], in, ProtoICMPv6) {
		return short(p, BadICMPv6)
	}
	return OK
}

// parseInnerL4 fills the ports or ICMP fields of a quoted packet from its
// first L4 bytes b; icmp is the ICMP protocol of its family. It reports
// whether b held enough.
func parseInnerL4(b []byte, in *Embedded, icmp uint8) bool {
	switch in.Proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		if len(b) < 4 {
			return false
		}
		in.HasPorts = true
		in.SrcPort = binary.BigEndian.Uint16(b[0:2])
		in.DstPort = binary.BigEndian.Uint16(b[2:4])
	case icmp:
		if len(b) < 8 {
			return false
		}
		in.ICMPType = b[0]
		in.ICMPCode = b[1]
		if (icmp == ProtoICMP && isICMPv4Query(b[0])) ||
			(icmp == ProtoICMPv6 && (b[0] == ICMPv6EchoRequest || b[0] == ICMPv6EchoReply)) {
			in.HasICMPID = true
			in.ICMPID = binary.BigEndian.Uint16(b[4:6])
		}
	}
	return true
}

// parseICMPv6 parses the ICMPv6 message l4.
func parseICMPv6(l4 []byte, p *Packet) Status {
	// 0: type, 1: code, 2: checksum, 4: message body.
	if len(l4) < 8 {
		return short(p, BadICMPv6)
	}
	t := l4[0]
	p.ICMPType = t
	p.ICMPCode = l4[1]
	p.PayloadOff = p.L4Off + 8
	switch t {
	case ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, ICMPv6ParamProblem:
		p.ICMPError = true
		return parseInnerIPv6(l4[8:], p)
	case ICMPv6EchoRequest, ICMPv6EchoReply:
		p.HasICMPID = true
		p.ICMPID = binary.BigEndian.Uint16(l4[4:6])
	case ICMPv6RouterSolicit, ICMPv6RouterAdvert, ICMPv6NeighborSolicit, ICMPv6NeighborAdvert, ICMPv6Redirect:
		return parseNDP(l4, p)
	}
	return OK
}

// parseNDP validates an NDP message (RFC 4861 sections 6.1, 7.1 and 8.1,
// RFC 6980) and fills p.NDP for solicitations and advertisements.
func parseNDP(l4 []byte, p *Packet) Status {
	if p.Fragmented || p.TTL != 255 || p.ICMPCode != 0 {
		return BadNDP
	}
	t := p.ICMPType
	var optOff int    // where the options start
	var optType uint8 // the link-layer address option we report
	switch t {
	case ICMPv6RouterSolicit:
		optOff, optType = 8, 1
	case ICMPv6RouterAdvert:
		optOff, optType = 16, 0
	case ICMPv6NeighborSolicit:
		optOff, optType = 24, 1
	case ICMPv6NeighborAdvert:
		optOff, optType = 24, 2
	default: // redirect
		optOff, optType = 40, 0
	}
	if len(l4) < optOff {
		return BadNDP
	}
	if t == ICMPv6NeighborSolicit || t == ICMPv6NeighborAdvert {
		p.NDP.Target = netip.AddrFrom16([16]byte(l4[8:24]))
		if l4[8] == 0xFF || p.NDP.Target.Is4In6() {
			return BadNDP // multicast or IPv4-mapped target
		}
	}
	if t == ICMPv6NeighborAdvert {
		p.NDP.Flags = NAFlags(l4[4] & 0xE0)
		if isMulticast6(p.Dst) && p.NDP.Flags&NASolicited != 0 {
			return BadNDP
		}
	}
	for o := optOff; o < len(l4); {
		// 0: type, 1: length in 8-byte units, 2: data.
		if len(l4)-o < 8 {
			return BadNDP
		}
		ol := int(l4[o+1]) * 8
		if ol == 0 || ol > len(l4)-o {
			return BadNDP
		}
		if optType != 0 && l4[o] == optType && !p.NDP.HasLinkAddr {
			p.NDP.HasLinkAddr = true
			p.NDP.LinkAddr = [6]byte(l4[o+2 : o+8])
		}
		o += ol
	}
	if p.Src.IsUnspecified() {
		// Duplicate address detection: no source link-layer address, and
		// a solicitation goes to a solicited-node multicast address.
		if p.NDP.HasLinkAddr && (t == ICMPv6RouterSolicit || t == ICMPv6NeighborSolicit) {
			return BadNDP
		}
		if t == ICMPv6NeighborSolicit && !isSolicitedNode(p.Dst) {
			return BadNDP
		}
	}
	return OK
}

// isMulticast6 reports whether the IPv6 address a is multicast. Unlike
// netip.Addr.IsMulticast it does not look into IPv4-mapped addresses.
func isMulticast6(a netip.Addr) bool {
	return a.As16()[0] == 0xFF
}

// isSolicitedNode reports whether a is in ff02::1:ff00:0/104.
func isSolicitedNode(a netip.Addr) bool {
	b := a.As16()
	return a.Is6() && b[0] == 0xFF && b[1] == 0x02 && b[2]|b[3]|b[4]|b[5]|b[6]|b[7]|b[8]|b[9]|b[10] == 0 &&
		b[11] == 1 && b[12] == 0xFF
}
