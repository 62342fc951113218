package packet

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Addresses used by the test frames: pod A (the sender) and pod B.
var (
	macA  = [6]byte{0x02, 0, 0, 0, 0, 0x0a}
	macB  = [6]byte{0x02, 0, 0, 0, 0, 0x0b}
	macGW = [6]byte{0x02, 0, 0, 0, 0, 0x01}

	ip4A  = netip.MustParseAddr("10.244.0.5")
	ip4B  = netip.MustParseAddr("10.244.0.7")
	ip4GW = netip.MustParseAddr("10.244.0.1")
	ip6A  = netip.MustParseAddr("fd00::5")
	ip6B  = netip.MustParseAddr("fd00::7")
	ip6LL = netip.MustParseAddr("fe80::5")
)

func hw(m [6]byte) net.HardwareAddr { return net.HardwareAddr(m[:]) }
func nip(a netip.Addr) net.IP       { return net.IP(a.AsSlice()) }

// serialize builds a frame with gopacket, fixing lengths and checksums.
func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		tb.Fatalf("SerializeLayers: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func ethL(src, dst [6]byte, et layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: hw(src), DstMAC: hw(dst), EthernetType: et}
}

func ip4L(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Id: 0x1234, Flags: layers.IPv4DontFragment,
		Protocol: proto, SrcIP: nip(src), DstIP: nip(dst)}
}

func ip6L(src, dst netip.Addr, nh layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: nh, SrcIP: nip(src), DstIP: nip(dst)}
}

// ext is a raw IPv6 extension header of 8 bytes with next header nh.
func ext(nh byte) gopacket.Payload { return gopacket.Payload{nh, 0, 1, 4, 0, 0, 0, 0} }

// fragHdr is an IPv6 Fragment header.
func fragHdr(nh byte, off int, more bool, id uint32) gopacket.Payload {
	b := make([]byte, 8)
	b[0] = nh
	v := uint16(off/8) << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:4], v)
	binary.BigEndian.PutUint32(b[4:8], id)
	return b
}

func tcpL(sp, dp uint16, nl gopacket.NetworkLayer) *layers.TCP {
	t := &layers.TCP{SrcPort: layers.TCPPort(sp), DstPort: layers.TCPPort(dp), Seq: 1000, Window: 65535}
	t.SetNetworkLayerForChecksum(nl)
	return t
}

func udpL(sp, dp uint16, nl gopacket.NetworkLayer) *layers.UDP {
	u := &layers.UDP{SrcPort: layers.UDPPort(sp), DstPort: layers.UDPPort(dp)}
	u.SetNetworkLayerForChecksum(nl)
	return u
}

func icmp6L(typ, code uint8, nl gopacket.NetworkLayer) *layers.ICMPv6 {
	i := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}
	i.SetNetworkLayerForChecksum(nl)
	return i
}

// sctpInit is an SCTP INIT chunk.
var sctpInit = gopacket.Payload{1, 0, 0, 20, 0, 0, 0, 1, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1}

// frameCase is a valid frame and what Parse must make of it.
type frameCase struct {
	name  string
	frame []byte
	want  Packet
}

// base returns the Packet expected for a frame from A to B of kind l3
// without VLAN tag.
func base(l3 L3Kind, proto uint8, l3len, l4off, payoff int) Packet {
	p := Packet{DstMAC: macB, SrcMAC: macA, L3: l3, L3Off: 14, L3Len: l3len,
		L4Off: l4off, PayloadOff: payoff, Proto: proto, TTL: 64}
	switch l3 {
	case L3IPv4:
		p.EtherType = EtherTypeIPv4
		p.Src, p.Dst = ip4A, ip4B
		p.DontFragment = true
		p.FragID = 0x1234
	case L3IPv6:
		p.EtherType = EtherTypeIPv6
		p.Src, p.Dst = ip6A, ip6B
	}
	return p
}

func ports(p Packet, sp, dp uint16) Packet {
	p.HasPorts, p.SrcPort, p.DstPort = true, sp, dp
	return p
}

// validFrames returns the valid test frames. The same frames seed the fuzz
// corpus and the truncation tests.
func validFrames(tb testing.TB) []frameCase {
	tb.Helper()
	var cs []frameCase
	add := func(name string, frame []byte, want Packet) {
		cs = append(cs, frameCase{name, frame, want})
	}

	{ // IPv4 TCP SYN with an MSS option.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolTCP)
		tcp := tcpL(40000, 80, ip)
		tcp.SYN = true
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}}
		w := ports(base(L3IPv4, ProtoTCP, 44, 34, 58), 40000, 80)
		w.TCPFlags = TCPFlagSYN
		add("ipv4/tcp-syn", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, tcp), w)
	}
	{ // IPv4 UDP.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolUDP)
		w := ports(base(L3IPv4, ProtoUDP, 33, 34, 42), 40001, 8080)
		add("ipv4/udp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, udpL(40001, 8080, ip), gopacket.Payload("hello")), w)
		// The same with Ethernet padding to 60 bytes.
		f := serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, udpL(40001, 8080, ip), gopacket.Payload("hello"))
		f = append(f, make([]byte, 60-len(f))...)
		add("ipv4/udp-padded", f, w)
	}
	{ // IPv4 SCTP INIT.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolSCTP)
		sctp := &layers.SCTP{SrcPort: 5000, DstPort: 36412}
		w := ports(base(L3IPv4, ProtoSCTP, 52, 34, 46), 5000, 36412)
		add("ipv4/sctp-init", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, sctp, sctpInit), w)
	}
	{ // IPv4 ICMP echo request.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolICMPv4)
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 0x4242, Seq: 1}
		w := base(L3IPv4, ProtoICMP, 32, 34, 42)
		w.ICMPType, w.HasICMPID, w.ICMPID = 8, true, 0x4242
		add("ipv4/icmp-echo", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, icmp, gopacket.Payload("ping")), w)
	}
	{ // IPv4 ICMP port unreachable from B quoting A's UDP datagram.
		in := ip4L(ip4A, ip4B, layers.IPProtocolUDP)
		inner := serialize(tb, in, udpL(40001, 8080, in), gopacket.Payload("hello"))
		ip := ip4L(ip4B, ip4A, layers.IPProtocolICMPv4)
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}
		w := base(L3IPv4, ProtoICMP, 20+8+33, 34, 42)
		w.SrcMAC, w.DstMAC, w.Src, w.Dst = macB, macA, ip4B, ip4A
		w.ICMPType, w.ICMPCode, w.ICMPError = 3, 3, true
		w.Inner = Embedded{Src: ip4A, Dst: ip4B, Proto: ProtoUDP, HasPorts: true, SrcPort: 40001, DstPort: 8080}
		add("ipv4/icmp-unreach-udp", serialize(tb, ethL(macB, macA, layers.EthernetTypeIPv4), ip, icmp, gopacket.Payload(inner)), w)
	}
	{ // IPv4 ICMP time exceeded from the gateway quoting A's echo request.
		in := ip4L(ip4A, ip4B, layers.IPProtocolICMPv4)
		inner := serialize(tb, in, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 0x99, Seq: 7})
		ip := ip4L(ip4GW, ip4A, layers.IPProtocolICMPv4)
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(11, 0)}
		w := base(L3IPv4, ProtoICMP, 20+8+28, 34, 42)
		w.SrcMAC, w.DstMAC, w.Src, w.Dst = macGW, macA, ip4GW, ip4A
		w.ICMPType, w.ICMPError = 11, true
		w.Inner = Embedded{Src: ip4A, Dst: ip4B, Proto: ProtoICMP, ICMPType: 8, HasICMPID: true, ICMPID: 0x99}
		add("ipv4/icmp-timeexceeded-echo", serialize(tb, ethL(macGW, macA, layers.EthernetTypeIPv4), ip, icmp, gopacket.Payload(inner)), w)
	}
	{ // IPv4 with a record route option (IHL 7) and TCP ACK.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolTCP)
		ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 7, OptionLength: 7, OptionData: []byte{4, 0, 0, 0, 0}}}
		tcp := tcpL(40000, 80, ip)
		tcp.ACK = true
		w := ports(base(L3IPv4, ProtoTCP, 28+20+4, 42, 62), 40000, 80)
		w.TCPFlags = TCPFlagACK
		add("ipv4/options-tcp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, tcp, gopacket.Payload("data")), w)
	}
	{ // IPv4 first fragment of a UDP datagram.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolUDP)
		ip.Flags = layers.IPv4MoreFragments
		w := ports(base(L3IPv4, ProtoUDP, 20+24, 34, 42), 40001, 8080)
		w.DontFragment, w.Fragmented, w.MoreFragments = false, true, true
		add("ipv4/frag-first-udp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, udpL(40001, 8080, ip), gopacket.Payload("0123456789abcdef")), w)
	}
	{ // IPv4 last fragment at offset 24.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolUDP)
		ip.Flags, ip.FragOffset = 0, 3
		w := base(L3IPv4, ProtoUDP, 40, 34, 34)
		w.DontFragment, w.Fragmented, w.FragOffset = false, true, 24
		add("ipv4/frag-last", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, gopacket.Payload("0123456789abcdefghij")), w)
	}
	{ // IPv4 GRE: a protocol without ports.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolGRE)
		add("ipv4/gre", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, gopacket.Payload{0, 0, 0x08, 0}), base(L3IPv4, 47, 24, 34, 34))
	}
	{ // 802.1Q tagged IPv4 UDP.
		ip := ip4L(ip4A, ip4B, layers.IPProtocolUDP)
		tag := &layers.Dot1Q{Priority: 3, VLANIdentifier: 100, Type: layers.EthernetTypeIPv4}
		w := ports(base(L3IPv4, ProtoUDP, 33, 38, 46), 40001, 8080)
		w.HasVLAN, w.VLANTCI, w.L3Off = true, 3<<13|100, 18
		add("vlan/ipv4-udp", serialize(tb, ethL(macA, macB, layers.EthernetTypeDot1Q), tag, ip, udpL(40001, 8080, ip), gopacket.Payload("hello")), w)
	}
	{ // IPv6 TCP SYN-ACK.
		ip := ip6L(ip6A, ip6B, layers.IPProtocolTCP)
		tcp := tcpL(443, 50000, ip)
		tcp.SYN, tcp.ACK = true, true
		w := ports(base(L3IPv6, ProtoTCP, 60, 54, 74), 443, 50000)
		w.TCPFlags = TCPFlagSYN | TCPFlagACK
		add("ipv6/tcp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv6), ip, tcp), w)
	}
	{ // IPv6 UDP.
		ip := ip6L(ip6A, ip6B, layers.IPProtocolUDP)
		w := ports(base(L3IPv6, ProtoUDP, 53, 54, 62), 40001, 8080)
		add("ipv6/udp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv6), ip, udpL(40001, 8080, ip), gopacket.Payload("hello")), w)
	}
	{ // IPv6 Hop-by-Hop, Destination Options, UDP.
		ip := ip6L(ip6A, ip6B, layers.IPProtocolIPv6HopByHop)
		w := ports(base(L3IPv6, ProtoUDP, 40+16+13, 70, 78), 40001, 8080)
		add("ipv6/hbh-dstopts-udp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv6), ip,
			ext(ProtoDestOpts), ext(ProtoUDP), udpL(40001, 8080, ip), gopacket.Payload("hello")), w)
	}
	{ // IPv6 Hop-by-Hop, Destination Options, Fragment (first), UDP.
		ip := ip6L(ip6A, ip6B, layers.IPProtocolIPv6HopByHop)
		w := ports(base(L3IPv6, ProtoUDP, 40+24+24, 78, 86), 40001, 8080)
		w.Fragmented, w.MoreFragments, w.FragID = true, true, 0xdeadbeef
		add("ipv6/hbh-dstopts-frag-udp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv6), ip,
			ext(ProtoDestOpts), ext(ProtoFragment), fragHdr(ProtoUDP, 0, true, 0xdeadbeef),
			udpL(40001, 8080, ip), gopacket.Payload("0123456789abcdef")), w)
	}
	{ // IPv6 Fragment (last, offset 24).
		ip := ip6L(ip6A, ip6B, layers.IPProtocolIPv6Fragment)
		w := base(L3IPv6, ProtoUDP, 40+8+20, 62, 62)
		w.Fragmented, w.FragOffset, w.FragID = true, 24, 0xdeadbeef
		add("ipv6/frag-last", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv6), ip,
			fragHdr(ProtoUDP, 24, false, 0xdeadbeef), gopacket.Payload("0123456789abcdefghij")), w)
	}
	{ // IPv6 Routing (type 0, segments left 0), AH, TCP.
		ip := ip6L(ip6A, ip6B, layers.IPProtocolIPv6Routing)
		rh := gopacket.Payload{ProtoAH, 0, 0, 0, 0, 0, 0, 0}
		ah := gopacket.Payload{ProtoTCP, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
		w := ports(base(L3IPv6, ProtoTCP, 40+8+24+20, 86, 106), 40000, 443)
		w.TCPFlags = TCPFlagACK
		tcp := tcpL(40000, 443, ip)
		tcp.ACK = true
		add("ipv6/routing-ah-tcp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv6), ip, rh, ah, tcp), w)
	}
	{ // IPv6 ESP ends the walk.
		ip := ip6L(ip6A, ip6B, layers.IPProtocolESP)
		add("ipv6/esp", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv6), ip, gopacket.Payload("0123456789abcdef")),
			base(L3IPv6, ProtoESP, 56, 54, 54))
	}
	{ // ICMPv6 echo request.
		ip := ip6L(ip6A, ip6B, layers.IPProtocolICMPv6)
		w := base(L3IPv6, ProtoICMPv6, 40+8+4, 54, 62)
		w.ICMPType, w.HasICMPID, w.ICMPID = 128, true, 0x77
		add("ipv6/icmpv6-echo", serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv6), ip, icmp6L(128, 0, ip),
			&layers.ICMPv6Echo{Identifier: 0x77, SeqNumber: 1}, gopacket.Payload("ping")), w)
	}
	{ // ICMPv6 packet too big from B quoting A's TCP segment.
		in := ip6L(ip6A, ip6B, layers.IPProtocolTCP)
		inner := serialize(tb, in, tcpL(40000, 443, in))
		ip := ip6L(ip6B, ip6A, layers.IPProtocolICMPv6)
		w := base(L3IPv6, ProtoICMPv6, 40+8+60, 54, 62)
		w.SrcMAC, w.DstMAC, w.Src, w.Dst = macB, macA, ip6B, ip6A
		w.ICMPType, w.ICMPError = 2, true
		w.Inner = Embedded{Src: ip6A, Dst: ip6B, Proto: ProtoTCP, HasPorts: true, SrcPort: 40000, DstPort: 443}
		add("ipv6/icmpv6-ptb-tcp", serialize(tb, ethL(macB, macA, layers.EthernetTypeIPv6), ip, icmp6L(2, 0, ip),
			gopacket.Payload(append([]byte{0, 0, 5, 0}, inner...))), w)
	}
	{ // Neighbor solicitation from A for B, with a source link-layer address.
		snm := netip.MustParseAddr("ff02::1:ff00:7")
		ip := ip6L(ip6A, snm, layers.IPProtocolICMPv6)
		ip.HopLimit = 255
		ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: nip(ip6B),
			Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: hw(macA)}}}
		w := base(L3IPv6, ProtoICMPv6, 40+32, 54, 62)
		w.DstMAC, w.Dst, w.TTL = [6]byte{0x33, 0x33, 0xff, 0, 0, 7}, snm, 255
		w.ICMPType = 135
		w.NDP = NDP{Target: ip6B, HasLinkAddr: true, LinkAddr: macA}
		add("ipv6/ns", serialize(tb, ethL(macA, w.DstMAC, layers.EthernetTypeIPv6), ip, icmp6L(135, 0, ip), ns), w)
	}
	{ // Neighbor solicitation for duplicate address detection.
		snm := netip.MustParseAddr("ff02::1:ff00:5")
		ip := ip6L(netip.IPv6Unspecified(), snm, layers.IPProtocolICMPv6)
		ip.HopLimit = 255
		ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: nip(ip6A)}
		w := base(L3IPv6, ProtoICMPv6, 40+24, 54, 62)
		w.DstMAC, w.Src, w.Dst, w.TTL = [6]byte{0x33, 0x33, 0xff, 0, 0, 5}, netip.IPv6Unspecified(), snm, 255
		w.ICMPType = 135
		w.NDP = NDP{Target: ip6A}
		add("ipv6/ns-dad", serialize(tb, ethL(macA, w.DstMAC, layers.EthernetTypeIPv6), ip, icmp6L(135, 0, ip), ns), w)
	}
	{ // Neighbor advertisement from B to A.
		ip := ip6L(ip6B, ip6A, layers.IPProtocolICMPv6)
		ip.HopLimit = 255
		na := &layers.ICMPv6NeighborAdvertisement{Flags: 0x60, TargetAddress: nip(ip6B),
			Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptTargetAddress, Data: hw(macB)}}}
		w := base(L3IPv6, ProtoICMPv6, 40+32, 54, 62)
		w.SrcMAC, w.DstMAC, w.Src, w.Dst, w.TTL = macB, macA, ip6B, ip6A, 255
		w.ICMPType = 136
		w.NDP = NDP{Target: ip6B, Flags: NASolicited | NAOverride, HasLinkAddr: true, LinkAddr: macB}
		add("ipv6/na", serialize(tb, ethL(macB, macA, layers.EthernetTypeIPv6), ip, icmp6L(136, 0, ip), na), w)
	}
	{ // Router solicitation from A's link-local address.
		allRouters := netip.MustParseAddr("ff02::2")
		ip := ip6L(ip6LL, allRouters, layers.IPProtocolICMPv6)
		ip.HopLimit = 255
		rs := &layers.ICMPv6RouterSolicitation{Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: hw(macA)}}}
		w := base(L3IPv6, ProtoICMPv6, 40+16, 54, 62)
		w.DstMAC, w.Src, w.Dst, w.TTL = [6]byte{0x33, 0x33, 0, 0, 0, 2}, ip6LL, allRouters, 255
		w.ICMPType = 133
		w.NDP = NDP{HasLinkAddr: true, LinkAddr: macA}
		add("ipv6/rs", serialize(tb, ethL(macA, w.DstMAC, layers.EthernetTypeIPv6), ip, icmp6L(133, 0, ip), rs), w)
	}
	{ // ARP request from A for the gateway, unpadded and padded.
		bcast := [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
			SourceHwAddress: hw(macA), SourceProtAddress: nip(ip4A),
			DstHwAddress: make([]byte, 6), DstProtAddress: nip(ip4GW)}
		w := Packet{DstMAC: bcast, SrcMAC: macA, EtherType: EtherTypeARP, L3: L3ARP, L3Off: 14, L3Len: 28,
			L4Off: 42, PayloadOff: 42,
			ARP: ARP{Op: ARPRequest, SenderMAC: macA, SenderIP: ip4A, TargetIP: ip4GW}}
		f := serialize(tb, ethL(macA, bcast, layers.EthernetTypeARP), arp)
		add("arp/request", f, w)
		add("arp/request-padded", append(f[:len(f):len(f)], make([]byte, 18)...), w)
	}
	return cs
}
