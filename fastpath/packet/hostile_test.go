package packet

import (
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// ipv4Raw builds an IPv4 frame from A to B whose payload is data, with the
// given protocol, fragment flags and fragment offset in bytes.
func ipv4Raw(tb testing.TB, proto layers.IPProtocol, flags layers.IPv4Flag, off int, data []byte) []byte {
	tb.Helper()
	ip := ip4L(ip4A, ip4B, proto)
	ip.Flags, ip.FragOffset = flags, uint16(off/8)
	return serialize(tb, ethL(macA, macB, layers.EthernetTypeIPv4), ip, gopacket.Payload(data))
}

// ipv6Raw builds an IPv6 frame from A to B with next header nh and the
// given payload (extension headers included).
func ipv6Raw(tb testing.TB, nh layers.IPProtocol, hops uint8, payload ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	ip := ip6L(ip6A, ip6B, nh)
	ip.HopLimit = hops
	return serialize(tb, append([]gopacket.SerializableLayer{ethL(macA, macB, layers.EthernetTypeIPv6), ip}, payload...)...)
}

// tcpBytes returns a TCP header of n bytes (data offset n/4) with ports.
func tcpBytes(n int) []byte {
	b := make([]byte, n)
	put16(b, 0, 40000)
	put16(b, 2, 80)
	b[12] = byte(n/4) << 4
	b[13] = TCPFlagSYN
	return b
}

func repeat(n int, l gopacket.SerializableLayer) []gopacket.SerializableLayer {
	ls := make([]gopacket.SerializableLayer, n)
	for i := range ls {
		ls[i] = l
	}
	return ls
}

// hostileCase is a malformed (or borderline) frame and the Status Parse
// must return for it.
type hostileCase struct {
	name  string
	frame func(t testing.TB) []byte
	want  Status
}

// hostileCases returns the hostile test frames. They also seed the fuzz
// corpus.
func hostileCases() []hostileCase {
	const v4 = 14 // offset of the IPv4/IPv6 header
	return []hostileCase{
		// Ethernet.
		{"eth/multicast-src", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			b[6] |= 1
			return b
		}, BadEthernet},
		{"eth/zero-src", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			clear(b[6:12])
			return b
		}, BadEthernet},
		{"eth/qinq", func(t testing.TB) []byte {
			b := frameNamed(t, "vlan/ipv4-udp")
			put16(b, 16, EtherTypeVLAN)
			return b
		}, UnsupportedEtherType},
		{"eth/8021ad", func(t testing.TB) []byte {
			b := frameNamed(t, "vlan/ipv4-udp")
			put16(b, 12, 0x88A8)
			return b
		}, UnsupportedEtherType},
		{"eth/lldp", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			put16(b, 12, 0x88CC)
			return b
		}, UnsupportedEtherType},
		{"eth/802.3-length", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			put16(b, 12, 46)
			return b
		}, UnsupportedEtherType},
		{"vlan/truncated-tag", func(t testing.TB) []byte {
			return frameNamed(t, "vlan/ipv4-udp")[:16]
		}, Truncated},

		// IPv4 header.
		{"ipv4/version-5", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			b[v4] = 0x55
			return fixIPv4(b, v4)
		}, BadIPv4},
		{"ipv4/ihl-4", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			b[v4] = 0x44
			return b
		}, BadIPv4},
		{"ipv4/ihl-0", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			b[v4] = 0x40
			return b
		}, BadIPv4},
		{"ipv4/ihl-past-total-length", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			b[v4] = 0x4F // 60 bytes, total length 33
			return b
		}, BadIPv4},
		{"ipv4/total-length-lies", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp-padded")
			put16(b, v4+2, 1000)
			return fixIPv4(b, v4)
		}, Truncated},
		{"ipv4/total-length-one-too-many", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			put16(b, v4+2, uint16(len(b)-v4+1))
			return fixIPv4(b, v4)
		}, Truncated},
		{"ipv4/total-length-below-header", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			put16(b, v4+2, 19)
			return fixIPv4(b, v4)
		}, BadIPv4},
		{"ipv4/multicast-source", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			b[v4+12] = 239
			return fixIPv4(b, v4)
		}, BadIPv4},
		{"ipv4/broadcast-source", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			copy(b[v4+12:v4+16], []byte{255, 255, 255, 255})
			return fixIPv4(b, v4)
		}, BadIPv4},
		{"ipv4/class-e-source", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			b[v4+12] = 240
			return fixIPv4(b, v4)
		}, OK},
		{"ipv6/multicast-source", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/udp")
			b[v4+8] = 0xFF
			return b
		}, BadIPv6},
		{"ipv6/ipv4-mapped-source", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/udp")
			copy(b[v4+8:v4+24], []byte{10: 0xFF, 11: 0xFF, 12: 10, 13: 244, 14: 0, 15: 5})
			return b
		}, BadIPv6},
		{"ipv6/ipv4-mapped-destination", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/udp")
			copy(b[v4+24:v4+40], []byte{10: 0xFF, 11: 0xFF, 12: 10, 13: 244, 14: 0, 15: 7})
			return b
		}, OK},
		{"ipv4/bad-checksum", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			b[v4+10] ^= 0x40
			return b
		}, BadIPv4Checksum},
		{"ipv4/bad-checksum-in-options", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/options-tcp")
			b[v4+24] ^= 0x01
			return b
		}, BadIPv4Checksum},
		{"ipv4/option-length-0", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/options-tcp")
			b[v4+22] = 0
			return fixIPv4(b, v4)
		}, BadIPv4},
		{"ipv4/option-runs-past-header", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/options-tcp")
			b[v4+22] = 40
			return fixIPv4(b, v4)
		}, BadIPv4},
		{"ipv4/option-without-length", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/options-tcp")
			copy(b[v4+20:v4+28], []byte{1, 1, 1, 1, 1, 1, 1, 7})
			return fixIPv4(b, v4)
		}, BadIPv4},
		{"ipv4/option-end-then-garbage", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/options-tcp")
			copy(b[v4+20:v4+28], []byte{0, 0xFF, 0, 7, 1, 2, 3, 4})
			return fixIPv4(b, v4)
		}, OK},
		{"ipv4/loose-source-route", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/options-tcp")
			copy(b[v4+20:v4+28], []byte{1, 131, 7, 4, 10, 244, 0, 9})
			return fixIPv4(b, v4)
		}, SourceRouted},
		{"ipv4/strict-source-route", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/options-tcp")
			copy(b[v4+20:v4+28], []byte{137, 7, 4, 10, 244, 0, 9, 0})
			return fixIPv4(b, v4)
		}, SourceRouted},

		// TCP, UDP, SCTP.
		{"tcp/data-offset-4", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/tcp-syn")
			b[34+12] = 4 << 4
			return b
		}, BadTCP},
		{"tcp/data-offset-0", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/tcp-syn")
			b[34+12] = 0
			return b
		}, BadTCP},
		{"tcp/data-offset-past-end", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/tcp-syn")
			b[34+12] = 7 << 4 // 28 bytes, 24 there
			return b
		}, BadTCP},
		{"tcp/short-header", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolTCP, 0, 0, tcpBytes(20)[:19])
		}, BadTCP},
		{"tcp/ipv6-payload-length-cuts-header", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/tcp")
			put16(b, v4+4, 12)
			return b
		}, BadTCP},
		{"udp/length-7", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			put16(b, 34+4, 7)
			return b
		}, BadUDP},
		{"udp/length-0", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/udp")
			put16(b, 54+4, 0)
			return b
		}, BadUDP},
		{"udp/length-past-ip-payload", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp-padded")
			put16(b, 34+4, 14) // 13 in the IP payload; padding follows
			return b
		}, BadUDP},
		{"udp/length-shorter-than-ip-payload", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/udp")
			put16(b, 34+4, 8)
			return b
		}, OK},
		{"udp/short-header", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/udp")
			put16(b, v4+4, 7)
			return b
		}, BadUDP},
		{"sctp/no-chunk", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/sctp-init")
			put16(b, v4+2, 32)
			return fixIPv4(b, v4)
		}, BadSCTP},
		{"sctp/short-common-header", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/sctp-init")
			put16(b, v4+2, 31)
			return fixIPv4(b, v4)
		}, BadSCTP},
		{"sctp/chunk-length-3", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/sctp-init")
			put16(b, 34+14, 3)
			return b
		}, BadSCTP},
		{"sctp/chunk-past-end", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/sctp-init")
			put16(b, 34+14, 21)
			return b
		}, BadSCTP},

		// IPv6 and extension headers.
		{"ipv6/version-4", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/udp")
			b[v4] = 0x40
			return b
		}, BadIPv6},
		{"ipv6/payload-length-lies", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/udp")
			put16(b, v4+4, 1000)
			return b
		}, Truncated},
		{"ipv6/payload-length-0-with-udp", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/udp")
			put16(b, v4+4, 0)
			return b
		}, BadUDP},
		{"ipv6/ext-runs-past-packet", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/hbh-dstopts-udp")
			b[54+1] = 10
			return b
		}, BadIPv6ExtHeader},
		{"ipv6/ext-cut-by-payload-length", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/hbh-dstopts-udp")
			put16(b, v4+4, 12)
			return b
		}, BadIPv6ExtHeader},
		{"ipv6/ext-header-smaller-than-8", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/hbh-dstopts-udp")
			put16(b, v4+4, 4)
			return b
		}, BadIPv6ExtHeader},
		{"ipv6/hop-by-hop-not-first", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/hbh-dstopts-udp")
			b[v4+6] = ProtoDestOpts
			b[54] = ProtoHopByHop
			return b
		}, BadIPv6ExtHeader},
		{"ipv6/eight-ext-headers", func(t testing.TB) []byte {
			ls := append(repeat(7, ext(ProtoDestOpts)), ext(ProtoNoNext))
			return ipv6Raw(t, layers.IPProtocolIPv6Destination, 64, ls...)
		}, OK},
		{"ipv6/nine-ext-headers", func(t testing.TB) []byte {
			ls := append(repeat(8, ext(ProtoDestOpts)), ext(ProtoNoNext))
			return ipv6Raw(t, layers.IPProtocolIPv6Destination, 64, ls...)
		}, TooManyExtHeaders},
		{"ipv6/ext-header-loop-to-the-end", func(t testing.TB) []byte {
			// Every header says another one follows, until the packet ends.
			return ipv6Raw(t, layers.IPProtocolIPv6Destination, 64, repeat(5, ext(ProtoDestOpts))...)
		}, BadIPv6ExtHeader},
		{"ipv6/two-fragment-headers", func(t testing.TB) []byte {
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoFragment, 0, false, 1),
				fragHdr(ProtoUDP, 0, false, 1), udpL(1, 2, ip6L(ip6A, ip6B, 0)))
		}, BadIPv6ExtHeader},
		{"ipv6/routing-segments-left", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/routing-ah-tcp")
			b[54+3] = 1
			return b
		}, SourceRouted},
		{"ipv6/ah-length-0", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/routing-ah-tcp")
			b[62+1] = 0
			return b
		}, BadIPv6ExtHeader},
		{"ipv6/ah-past-end", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/routing-ah-tcp")
			b[62+1] = 200
			return b
		}, BadIPv6ExtHeader},

		// Fragments.
		{"ipv4/tiny-first-fragment-tcp", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolTCP, layers.IPv4MoreFragments, 0, tcpBytes(20)[:8])
		}, TinyFragment},
		{"ipv4/tiny-first-fragment-tcp-options", func(t testing.TB) []byte {
			b := tcpBytes(28)[:24] // data offset 7, 24 bytes there
			return ipv4Raw(t, layers.IPProtocolTCP, layers.IPv4MoreFragments, 0, b)
		}, TinyFragment},
		{"ipv4/first-fragment-tcp-data-offset-4", func(t testing.TB) []byte {
			b := tcpBytes(24)
			b[12] = 4 << 4
			return ipv4Raw(t, layers.IPProtocolTCP, layers.IPv4MoreFragments, 0, b)
		}, BadTCP},
		{"ipv4/tiny-first-fragment-sctp", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolSCTP, layers.IPv4MoreFragments, 0, make([]byte, 8))
		}, TinyFragment},
		{"ipv4/tiny-first-fragment-icmp-error", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-unreach-udp")[34 : 34+16]
			return ipv4Raw(t, layers.IPProtocolICMPv4, layers.IPv4MoreFragments, 0, b)
		}, TinyFragment},
		{"ipv4/first-fragment-udp-length-of-datagram", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/frag-first-udp")
			put16(b, 34+4, 1400)
			return b
		}, OK},
		{"ipv4/fragment-overlaps-tcp-header-8", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolTCP, 0, 8, make([]byte, 16))
		}, BadFragment},
		{"ipv4/fragment-overlaps-tcp-header-16", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolTCP, layers.IPv4MoreFragments, 16, make([]byte, 16))
		}, BadFragment},
		{"ipv4/fragment-after-tcp-header", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolTCP, 0, 24, make([]byte, 16))
		}, OK},
		{"ipv4/fragment-udp-offset-8", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolUDP, 0, 8, make([]byte, 16))
		}, OK},
		{"ipv4/fragment-overlaps-sctp-header", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolSCTP, 0, 8, make([]byte, 16))
		}, BadFragment},
		{"ipv4/fragment-not-multiple-of-8", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolUDP, layers.IPv4MoreFragments, 8, make([]byte, 20))
		}, BadFragment},
		{"ipv4/fragment-past-65535", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolUDP, 0, 8191*8, make([]byte, 20))
		}, BadFragment},
		{"ipv4/fragment-ends-at-65535", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolUDP, 0, 65528-20, make([]byte, 7))
		}, OK},
		{"ipv4/fragment-without-data", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolUDP, layers.IPv4MoreFragments, 0, nil)
		}, BadFragment},
		{"ipv4/last-fragment-without-data", func(t testing.TB) []byte {
			return ipv4Raw(t, layers.IPProtocolUDP, 0, 64, nil)
		}, BadFragment},
		{"ipv6/tiny-first-fragment-chain-cut", func(t testing.TB) []byte {
			// A 16-byte destination options header of which 8 bytes are in
			// this fragment.
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoDestOpts, 0, true, 7),
				gopacket.Payload{ProtoUDP, 1, 1, 4, 0, 0, 0, 0})
		}, TinyFragment},
		{"ipv6/tiny-first-fragment-tcp", func(t testing.TB) []byte {
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoTCP, 0, true, 7),
				gopacket.Payload(tcpBytes(20)[:16]))
		}, TinyFragment},
		{"ipv6/first-fragment-bad-ext-is-not-tiny", func(t testing.TB) []byte {
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoHopByHop, 0, true, 7),
				ext(ProtoUDP), gopacket.Payload(make([]byte, 8)))
		}, BadIPv6ExtHeader},
		{"ipv6/fragment-overlaps-tcp-header", func(t testing.TB) []byte {
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoTCP, 8, false, 7),
				gopacket.Payload(make([]byte, 16)))
		}, BadFragment},
		{"ipv6/fragment-not-multiple-of-8", func(t testing.TB) []byte {
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoUDP, 0, true, 7),
				gopacket.Payload(make([]byte, 12)))
		}, BadFragment},
		{"ipv6/fragment-without-data", func(t testing.TB) []byte {
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoUDP, 32, false, 7))
		}, BadFragment},
		{"ipv6/fragment-past-65535", func(t testing.TB) []byte {
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoUDP, 65528, false, 7),
				gopacket.Payload(make([]byte, 16)))
		}, BadFragment},
		{"ipv6/atomic-fragment", func(t testing.TB) []byte {
			ip := ip6L(ip6A, ip6B, 0)
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoUDP, 0, false, 7), udpL(1, 2, ip))
		}, OK},

		// ICMP and ICMPv6.
		{"icmp/short", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-echo")
			put16(b, v4+2, 27)
			return fixIPv4(b, v4)
		}, BadICMP},
		{"icmp/error-inner-l4-cut", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-unreach-udp")
			put16(b, v4+2, 20+8+20+3)
			return fixIPv4(b, v4)
		}, BadICMP},
		{"icmp/error-inner-header-cut", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-unreach-udp")
			put16(b, v4+2, 20+8+19)
			return fixIPv4(b, v4)
		}, BadICMP},
		{"icmp/error-inner-ihl-past-quote", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-unreach-udp")
			b[42] = 0x4F
			return b
		}, BadICMP},
		{"icmp/error-inner-ihl-4", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-unreach-udp")
			b[42] = 0x44
			return b
		}, BadICMP},
		{"icmp/error-inner-not-ipv4", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-unreach-udp")
			b[42] = 0x65
			return b
		}, BadICMP},
		{"icmp/error-inner-echo-cut", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-timeexceeded-echo")
			put16(b, v4+2, 20+8+20+5)
			return fixIPv4(b, v4)
		}, BadICMP},
		{"icmp/error-inner-non-first-fragment", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv4/icmp-unreach-udp")
			put16(b, 42+6, 3)
			put16(b, v4+2, 20+8+20)
			return fixIPv4(b, v4)
		}, OK},
		{"icmpv6/short", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/icmpv6-echo")
			put16(b, v4+4, 7)
			return b
		}, BadICMPv6},
		{"icmpv6/error-inner-l4-cut", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/icmpv6-ptb-tcp")
			put16(b, v4+4, 8+40+3)
			return b
		}, BadICMPv6},
		{"icmpv6/error-inner-header-cut", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/icmpv6-ptb-tcp")
			put16(b, v4+4, 8+39)
			return b
		}, BadICMPv6},
		{"icmpv6/error-inner-not-ipv6", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/icmpv6-ptb-tcp")
			b[62] = 0x45
			return b
		}, BadICMPv6},
		{"icmpv6/error-inner-ext-past-quote", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/icmpv6-ptb-tcp")
			b[62+6] = ProtoDestOpts
			b[62+40+1] = 30
			return b
		}, BadICMPv6},

		// NDP.
		{"ndp/hop-limit-64", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/ns")
			b[v4+7] = 64
			return b
		}, BadNDP},
		{"ndp/code-1", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/na")
			b[54+1] = 1
			return b
		}, BadNDP},
		{"ndp/ns-short", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/ns-dad")
			put16(b, v4+4, 20)
			return b
		}, BadNDP},
		{"ndp/option-length-0", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/ns")
			b[54+24+1] = 0
			return b
		}, BadNDP},
		{"ndp/option-past-end", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/na")
			b[54+24+1] = 2
			return b
		}, BadNDP},
		{"ndp/option-cut", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/rs")
			put16(b, v4+4, 12)
			return b
		}, BadNDP},
		{"ndp/target-multicast", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/ns")
			b[54+8] = 0xFF
			return b
		}, BadNDP},
		{"ndp/target-ipv4-mapped", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/ns")
			copy(b[54+8:54+24], []byte{10: 0xFF, 11: 0xFF, 12: 224, 13: 0, 14: 0, 15: 1})
			return b
		}, BadNDP},
		{"ndp/solicited-na-to-ipv4-mapped-multicast", func(t testing.TB) []byte {
			// Only IPv6 multicast counts: ::ffff:239.0.0.1 is not.
			b := frameNamed(t, "ipv6/na")
			copy(b[v4+24:v4+40], []byte{10: 0xFF, 11: 0xFF, 12: 239, 13: 0, 14: 0, 15: 1})
			return b
		}, OK},
		{"ndp/dad-with-source-link-address", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/ns")
			clear(b[v4+8 : v4+24])
			return b
		}, BadNDP},
		{"ndp/dad-not-to-solicited-node", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/ns-dad")
			b[v4+24+12] = 0xFE
			return b
		}, BadNDP},
		{"ndp/rs-unspecified-with-source-link-address", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/rs")
			clear(b[v4+8 : v4+24])
			return b
		}, BadNDP},
		{"ndp/solicited-na-to-multicast", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/na")
			b[v4+24] = 0xFF
			return b
		}, BadNDP},
		{"ndp/fragmented", func(t testing.TB) []byte {
			ns := frameNamed(t, "ipv6/ns")[54:]
			return ipv6Raw(t, layers.IPProtocolIPv6Fragment, 255, fragHdr(ProtoICMPv6, 0, true, 7), gopacket.Payload(ns))
		}, BadNDP},
		{"ndp/redirect-short", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/na")
			b[54] = ICMPv6Redirect
			return b
		}, BadNDP},
		{"ndp/router-advert", func(t testing.TB) []byte {
			b := frameNamed(t, "ipv6/rs")
			b[54] = ICMPv6RouterAdvert
			put16(b, v4+4, 16)
			return b
		}, OK},

		// ARP.
		{"arp/hardware-type-6", func(t testing.TB) []byte {
			b := frameNamed(t, "arp/request")
			put16(b, v4, 6)
			return b
		}, BadARP},
		{"arp/protocol-ipv6", func(t testing.TB) []byte {
			b := frameNamed(t, "arp/request")
			put16(b, v4+2, EtherTypeIPv6)
			return b
		}, BadARP},
		{"arp/hlen-8", func(t testing.TB) []byte {
			b := frameNamed(t, "arp/request")
			b[v4+4] = 8
			return b
		}, BadARP},
		{"arp/plen-16", func(t testing.TB) []byte {
			b := frameNamed(t, "arp/request")
			b[v4+5] = 16
			return b
		}, BadARP},
		{"arp/op-3", func(t testing.TB) []byte {
			b := frameNamed(t, "arp/request")
			put16(b, v4+6, 3)
			return b
		}, BadARP},
	}
}

func TestParseHostile(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			frame := tc.frame(t)
			var p Packet
			got := Parse(frame, &p)
			if got != tc.want {
				t.Fatalf("Parse() = %v, want %v", got, tc.want)
			}
			if got == OK {
				checkInvariants(t, frame, &p)
			}
			// Every cut of a hostile frame is handled too.
			for n := range len(frame) {
				if r := Parse(frame[:n], &p); r == OK {
					checkInvariants(t, frame[:n], &p)
				}
			}
		})
	}
}

// TestParseAtomicFragment checks that an IPv6 atomic fragment is a whole
// packet with ports.
func TestParseAtomicFragment(t *testing.T) {
	ip := ip6L(ip6A, ip6B, 0)
	frame := ipv6Raw(t, layers.IPProtocolIPv6Fragment, 64, fragHdr(ProtoUDP, 0, false, 7), udpL(1, 2, ip))
	var p Packet
	if r := Parse(frame, &p); r != OK {
		t.Fatalf("Parse() = %v", r)
	}
	if p.Fragmented || p.FragID != 7 || !p.HasPorts || p.SrcPort != 1 || p.DstPort != 2 || p.L4Off != 62 {
		t.Errorf("atomic fragment parsed as %+v", p)
	}
}
