package packet

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

func mustParse(tb testing.TB, frame []byte) Packet {
	tb.Helper()
	var p Packet
	if r := Parse(frame, &p); r != OK {
		tb.Fatalf("Parse() = %v", r)
	}
	return p
}

func TestSetMACs(t *testing.T) {
	frame := frameNamed(t, "ipv4/udp")
	orig := append([]byte(nil), frame...)
	if !SetMACs(frame, macGW, macB) {
		t.Fatal("SetMACs() = false")
	}
	if [6]byte(frame[0:6]) != macGW || [6]byte(frame[6:12]) != macB || !bytes.Equal(frame[12:], orig[12:]) {
		t.Errorf("SetMACs wrote % x", frame[:14])
	}
	short := make([]byte, 13)
	if SetMACs(short, macGW, macB) || !bytes.Equal(short, make([]byte, 13)) {
		t.Errorf("SetMACs on a 13-byte frame = true or changed it")
	}
}

func TestDecrementTTL(t *testing.T) {
	for _, tc := range validFrames(t) {
		if tc.want.L3 == L3ARP || tc.want.TTL == 255 {
			continue // never forwarded; NDP with hop limit 254 is invalid
		}
		t.Run(tc.name, func(t *testing.T) {
			frame := append([]byte(nil), tc.frame...)
			p := mustParse(t, frame)
			if r := DecrementTTL(frame, &p); r != OK {
				t.Fatalf("DecrementTTL() = %v", r)
			}
			if p.TTL != tc.want.TTL-1 {
				t.Errorf("p.TTL = %d, want %d", p.TTL, tc.want.TTL-1)
			}
			// Only the TTL (and the IPv4 checksum) changed, and the frame
			// parses as before apart from the TTL.
			diff := 0
			for i := range frame {
				if frame[i] != tc.frame[i] {
					diff++
				}
			}
			if maxDiff := map[L3Kind]int{L3IPv4: 3, L3IPv6: 1}[p.L3]; diff < 1 || diff > maxDiff {
				t.Errorf("%d bytes changed", diff)
			}
			want := tc.want
			want.TTL--
			if got := mustParse(t, frame); !cmp.Equal(want, got, cmpAddr) {
				t.Errorf("after DecrementTTL (-want +got):\n%s", cmp.Diff(want, got, cmpAddr))
			}
			if p.L3 == L3IPv4 {
				// gopacket recomputes the same checksum from scratch.
				hdr := frame[p.L3Off:p.L4Off]
				var ip layers.IPv4
				if err := ip.DecodeFromBytes(append([]byte(nil), hdr...), gopacket.NilDecodeFeedback); err != nil {
					t.Fatal(err)
				}
				buf := gopacket.NewSerializeBuffer()
				if err := ip.SerializeTo(buf, gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf.Bytes(), hdr) {
					t.Errorf("header after DecrementTTL\n% x\ngopacket recomputes\n% x", hdr, buf.Bytes())
				}
			}
		})
	}
}

func TestDecrementTTLExpired(t *testing.T) {
	for _, name := range []string{"ipv4/tcp-syn", "ipv6/udp", "vlan/ipv4-udp"} {
		for _, ttl := range []uint8{1, 0} {
			frame := frameNamed(t, name)
			p := mustParse(t, frame)
			if p.L3 == L3IPv4 {
				frame[p.L3Off+8] = ttl
				fixIPv4(frame, p.L3Off)
			} else {
				frame[p.L3Off+7] = ttl
			}
			p = mustParse(t, frame)
			orig := append([]byte(nil), frame...)
			if r := DecrementTTL(frame, &p); r != TTLExceeded {
				t.Errorf("%s: DecrementTTL() with TTL %d = %v, want ttl_exceeded", name, ttl, r)
			}
			if !bytes.Equal(frame, orig) || p.TTL != ttl {
				t.Errorf("%s: DecrementTTL() with TTL %d changed the frame", name, ttl)
			}
		}
	}
	// Down from 2: allowed once.
	frame := frameNamed(t, "ipv6/udp")
	frame[14+7] = 2
	p := mustParse(t, frame)
	if r1, r2 := DecrementTTL(frame, &p), DecrementTTL(frame, &p); r1 != OK || r2 != TTLExceeded || frame[14+7] != 1 {
		t.Errorf("DecrementTTL from 2 twice = %v, %v, hop limit %d", r1, r2, frame[14+7])
	}
}

func TestDecrementTTLMisuse(t *testing.T) {
	frame := frameNamed(t, "arp/request")
	p := mustParse(t, frame)
	if r := DecrementTTL(frame, &p); r != UnsupportedEtherType {
		t.Errorf("DecrementTTL(ARP) = %v", r)
	}
	for _, name := range []string{"ipv4/udp", "ipv6/udp"} {
		frame = frameNamed(t, name)
		p = mustParse(t, frame)
		if r := DecrementTTL(frame[:p.L3Off+19], &p); r != Truncated {
			t.Errorf("DecrementTTL(%s cut) = %v", name, r)
		}
		p.L3Off = -1
		if r := DecrementTTL(frame, &p); r != Truncated {
			t.Errorf("DecrementTTL(%s, L3Off -1) = %v", name, r)
		}
	}
	var zero Packet
	if r := DecrementTTL(nil, &zero); r != UnsupportedEtherType {
		t.Errorf("DecrementTTL(zero Packet) = %v", r)
	}
}

// TestDecrementTTLRandom checks the incremental checksum update against a
// full computation on random IPv4 headers.
func TestDecrementTTLRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	frame := make([]byte, 14+60)
	for i := 0; i < 100000; i++ {
		hl := 20
		if i%2 == 1 {
			hl = 24 // a NOP-padded options area keeps the header valid
		}
		h := frame[14 : 14+hl]
		for j := range h {
			h[j] = byte(rng.Uint32())
		}
		h[0] = 0x40 | byte(hl/4)
		put16(h, 2, uint16(hl))
		put16(h, 6, 0) // not a fragment
		h[9] = 47      // GRE: no L4 header to parse
		if h[12] >= 224 {
			h[12] = 10
		}
		for j := 20; j < hl; j++ {
			h[j] = 1
		}
		if h[8] < 2 {
			h[8] = 2
		}
		fixIPv4(frame, 14)
		put16(frame, 12, EtherTypeIPv4)
		copy(frame[6:12], macA[:])
		f := frame[:14+hl]
		p := mustParse(t, f)
		if r := DecrementTTL(f, &p); r != OK {
			t.Fatalf("DecrementTTL() = %v", r)
		}
		got := [2]byte(h[10:12])
		if Sum(h, 0) != 0xFFFF {
			t.Fatalf("checksum does not verify after DecrementTTL: % x", h)
		}
		fixIPv4(frame, 14)
		if want := [2]byte(h[10:12]); got != want {
			t.Fatalf("incremental checksum % x, full computation % x, header % x", got, want, h)
		}
	}
}

func TestReplyARP(t *testing.T) {
	for _, name := range []string{"arp/request", "arp/request-padded"} {
		t.Run(name, func(t *testing.T) {
			frame := frameNamed(t, name)
			p := mustParse(t, frame)
			if !ReplyARP(frame, &p, macGW) {
				t.Fatal("ReplyARP() = false")
			}
			want := serialize(t, ethL(macGW, macA, layers.EthernetTypeARP), &layers.ARP{
				AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
				HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPReply,
				SourceHwAddress: hw(macGW), SourceProtAddress: nip(ip4GW),
				DstHwAddress: hw(macA), DstProtAddress: nip(ip4A)})
			if !bytes.Equal(frame[:len(want)], want) || !bytes.Equal(frame[len(want):], make([]byte, len(frame)-len(want))) {
				t.Errorf("reply\n% x\nwant\n% x", frame, want)
			}
			got := gopacketView(t, frame, layers.LayerTypeEthernet)
			if got.ARP.Op != ARPReply || got.ARP.SenderIP != ip4GW || got.ARP.SenderMAC != macGW ||
				got.ARP.TargetIP != ip4A || got.ARP.TargetMAC != macA || got.DstMAC != macA {
				t.Errorf("gopacket decodes the reply as %+v", got)
			}
			q := mustParse(t, frame)
			if ReplyARP(frame, &q, macGW) {
				t.Errorf("ReplyARP() of a reply = true")
			}
		})
	}
	t.Run("vlan", func(t *testing.T) {
		tag := &layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeARP}
		arp := func(op uint16, sha, tha [6]byte, spa, tpa netip.Addr) *layers.ARP {
			return &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
				HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
				SourceHwAddress: hw(sha), SourceProtAddress: nip(spa), DstHwAddress: hw(tha), DstProtAddress: nip(tpa)}
		}
		frame := serialize(t, ethL(macA, [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, layers.EthernetTypeDot1Q), tag,
			arp(ARPRequest, macA, [6]byte{}, ip4A, ip4B))
		p := mustParse(t, frame)
		if !ReplyARP(frame, &p, macGW) {
			t.Fatal("ReplyARP() = false")
		}
		want := serialize(t, ethL(macGW, macA, layers.EthernetTypeDot1Q), tag, arp(ARPReply, macGW, macA, ip4B, ip4A))
		if !bytes.Equal(frame, want) {
			t.Errorf("reply\n% x\nwant\n% x", frame, want)
		}
	})
	t.Run("misuse", func(t *testing.T) {
		frame := frameNamed(t, "arp/request")
		p := mustParse(t, frame)
		if ReplyARP(frame[:41], &p, macGW) {
			t.Error("ReplyARP() of a cut frame = true")
		}
		var zero Packet
		zero.L3, zero.ARP.Op = L3ARP, ARPRequest
		if ReplyARP(frame, &zero, macGW) {
			t.Error("ReplyARP() with a zero Packet = true")
		}
		v4 := frameNamed(t, "ipv4/udp")
		q := mustParse(t, v4)
		if ReplyARP(v4, &q, macGW) {
			t.Error("ReplyARP() of IPv4 = true")
		}
	})
}

func TestBuildNeighborAdvertisement(t *testing.T) {
	allNodes := netip.MustParseAddr("ff02::1")
	// A unicast solicitation without source link-layer address (neighbor
	// unreachability detection), and one in a VLAN.
	nud := func() []byte {
		ip := ip6L(ip6A, ip6B, layers.IPProtocolICMPv6)
		ip.HopLimit = 255
		return serialize(t, ethL(macA, macB, layers.EthernetTypeIPv6), ip, icmp6L(135, 0, ip),
			&layers.ICMPv6NeighborSolicitation{TargetAddress: nip(ip6B)})
	}
	vlanNS := func() []byte {
		ip := ip6L(ip6A, netip.MustParseAddr("ff02::1:ff00:1"), layers.IPProtocolICMPv6)
		ip.HopLimit = 255
		return serialize(t, ethL(macA, [6]byte{0x33, 0x33, 0xff, 0, 0, 1}, layers.EthernetTypeDot1Q),
			&layers.Dot1Q{Priority: 5, VLANIdentifier: 42, Type: layers.EthernetTypeIPv6}, ip, icmp6L(135, 0, ip),
			&layers.ICMPv6NeighborSolicitation{TargetAddress: nip(netip.MustParseAddr("fe80::1")),
				Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: hw(macA)}}})
	}
	tests := []struct {
		name   string
		ns     []byte
		flags  NAFlags
		ethDst [6]byte
		dst    netip.Addr
		target netip.Addr
		wflags uint8
		vlan   *layers.Dot1Q
	}{
		{"ns", frameNamed(t, "ipv6/ns"), NARouter | NAOverride, macA, ip6A, ip6B, 0xE0, nil},
		{"ns-solicited-flag-ignored", frameNamed(t, "ipv6/ns"), NASolicited, macA, ip6A, ip6B, 0x40, nil},
		{"dad", frameNamed(t, "ipv6/ns-dad"), NASolicited | NAOverride, [6]byte{0x33, 0x33, 0, 0, 0, 1}, allNodes, ip6A, 0x20, nil},
		{"nud-without-link-address", nud(), NAOverride, macA, ip6A, ip6B, 0x60, nil},
		{"vlan", vlanNS(), NARouter | NAOverride, macA, ip6A, netip.MustParseAddr("fe80::1"), 0xE0,
			&layers.Dot1Q{Priority: 5, VLANIdentifier: 42, Type: layers.EthernetTypeIPv6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := mustParse(t, tc.ns)
			buf := make([]byte, MaxNeighborAdvertisementLen+10)
			for i := range buf {
				buf[i] = 0xAA // the builder must not rely on a clean buffer
			}
			n := BuildNeighborAdvertisement(buf, &ns, macGW, tc.flags)
			if n == 0 {
				t.Fatal("BuildNeighborAdvertisement() = 0")
			}
			got := buf[:n]

			// The same frame built by gopacket.
			ip := ip6L(tc.target, tc.dst, layers.IPProtocolICMPv6)
			ip.HopLimit = 255
			ls := []gopacket.SerializableLayer{ethL(macGW, tc.ethDst, layers.EthernetTypeIPv6)}
			if tc.vlan != nil {
				ls = []gopacket.SerializableLayer{ethL(macGW, tc.ethDst, layers.EthernetTypeDot1Q), tc.vlan}
			}
			ls = append(ls, ip, icmp6L(136, 0, ip), &layers.ICMPv6NeighborAdvertisement{
				Flags: tc.wflags, TargetAddress: nip(tc.target),
				Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptTargetAddress, Data: hw(macGW)}}})
			want := serialize(t, ls...)
			if !bytes.Equal(got, want) {
				t.Errorf("advertisement\n% x\ngopacket builds\n% x", got, want)
			}

			na := mustParse(t, got)
			if !L4ChecksumValid(got, &na) {
				t.Error("ICMPv6 checksum does not verify")
			}
			wantNDP := NDP{Target: tc.target, Flags: NAFlags(tc.wflags), HasLinkAddr: true, LinkAddr: macGW}
			if diff := cmp.Diff(wantNDP, na.NDP, cmpAddr); diff != "" {
				t.Errorf("advertisement NDP fields (-want +got):\n%s", diff)
			}
			g := gopacketView(t, got, layers.LayerTypeEthernet)
			if g.NDP != wantNDP || g.Src != tc.target || g.Dst != tc.dst || g.TTL != 255 {
				t.Errorf("gopacket decodes %+v", g)
			}

			// Written over the solicitation's own buffer.
			own := append(append([]byte(nil), tc.ns...), make([]byte, MaxNeighborAdvertisementLen)...)
			if n := BuildNeighborAdvertisement(own, &ns, macGW, tc.flags); !bytes.Equal(own[:n], want) {
				t.Errorf("advertisement written over the solicitation differs")
			}
			if BuildNeighborAdvertisement(buf[:n-1], &ns, macGW, tc.flags) != 0 {
				t.Errorf("BuildNeighborAdvertisement() into %d bytes != 0", n-1)
			}
		})
	}
	for _, name := range []string{"ipv6/na", "ipv6/rs", "ipv6/icmpv6-echo", "ipv4/udp", "arp/request"} {
		p := mustParse(t, frameNamed(t, name))
		if n := BuildNeighborAdvertisement(make([]byte, 100), &p, macGW, 0); n != 0 {
			t.Errorf("BuildNeighborAdvertisement(%s) = %d, want 0", name, n)
		}
	}
}

// sumRef is a straightforward RFC 1071 sum.
func sumRef(b []byte, initial uint16) uint16 {
	acc := uint32(initial)
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	for acc > 0xFFFF {
		acc = acc>>16 + acc&0xFFFF
	}
	return uint16(acc)
}

func TestSum(t *testing.T) {
	// RFC 1071 section 3.
	if got := Sum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, 0); got != 0xddf2 {
		t.Errorf("Sum(RFC 1071 example) = %#x, want 0xddf2", got)
	}
	if got := Sum(nil, 0x1234); got != 0x1234 {
		t.Errorf("Sum(nil, 0x1234) = %#x", got)
	}
	if got := Sum([]byte{0xab}, 0); got != 0xab00 {
		t.Errorf("Sum(odd byte) = %#x, want 0xab00", got)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 2000)
	for i := 0; i < 3000; i++ {
		n := rng.IntN(len(b))
		if i%3 == 0 {
			n = rng.IntN(70)
		}
		for j := range b[:n] {
			b[j] = byte(rng.Uint32())
			if i%5 == 0 {
				b[j] = 0xFF // worst case for carries
			}
		}
		initial := uint16(rng.Uint32())
		if got, want := Sum(b[:n], initial), sumRef(b[:n], initial); got != want {
			t.Fatalf("Sum(%d bytes, %#x) = %#x, want %#x", n, initial, got, want)
		}
		// Pieces chain when the first has an even length.
		k := rng.IntN(n+1) &^ 1
		if got, want := Sum(b[k:n], Sum(b[:k], initial)), sumRef(b[:n], initial); got != want {
			t.Fatalf("chained Sum at %d of %d = %#x, want %#x", k, n, got, want)
		}
	}
}

func TestUpdateChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	b := make([]byte, 40)
	for i := 0; i < 100000; i++ {
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		put16(b, 0, 0)
		put16(b, 0, ^Sum(b, 0))
		w := 2 + 2*rng.IntN(19)
		old := uint16(b[w])<<8 | uint16(b[w+1])
		nw := uint16(rng.Uint32())
		check := uint16(b[0])<<8 | uint16(b[1])
		put16(b, w, nw)
		put16(b, 0, UpdateChecksum(check, old, nw))
		if Sum(b, 0) != 0xFFFF {
			t.Fatalf("updated checksum does not verify: % x", b)
		}
	}
}

func TestPseudoHeaderSumAndL4Checksum(t *testing.T) {
	for _, tc := range validFrames(t) {
		p := tc.want
		checked := !p.Fragmented && (p.Proto == ProtoTCP || p.Proto == ProtoUDP || p.Proto == ProtoICMP || p.Proto == ProtoICMPv6)
		frame := append([]byte(nil), tc.frame...)
		if got := L4ChecksumValid(frame, &p); got != checked {
			t.Errorf("%s: L4ChecksumValid() = %v, want %v", tc.name, got, checked)
		}
		if !checked {
			continue
		}
		frame[p.PayloadOff-1] ^= 0x10
		if L4ChecksumValid(frame, &p) {
			t.Errorf("%s: L4ChecksumValid() of a corrupt frame = true", tc.name)
		}
	}
	// IPv4 UDP without checksum.
	frame := frameNamed(t, "ipv4/udp")
	p := mustParse(t, frame)
	put16(frame, p.L4Off+6, 0)
	if !L4ChecksumValid(frame, &p) {
		t.Error("L4ChecksumValid(IPv4 UDP with zero checksum) = false")
	}
	// A UDP length shorter than the IP payload limits the sum.
	frame = frameNamed(t, "ipv4/udp-padded")
	p = mustParse(t, frame)
	if !L4ChecksumValid(frame, &p) {
		t.Error("L4ChecksumValid(padded) = false")
	}
	bad := p
	bad.L3Len = 1000
	if L4ChecksumValid(frame, &bad) {
		t.Error("L4ChecksumValid(L3Len past the frame) = true")
	}

	// Mixed families fall back to the IPv6 form instead of panicking.
	_ = PseudoHeaderSum(ip4A, ip6A, ProtoUDP, 8)
	_ = PseudoHeaderSum(netip.Addr{}, netip.Addr{}, ProtoUDP, 8)
	// The IPv4 pseudo-header by hand: 10.244.0.5, 10.244.0.7, 0, 17, 8.
	want := sumRef([]byte{10, 244, 0, 5, 10, 244, 0, 7, 0, 17, 0, 8}, 0)
	if got := PseudoHeaderSum(ip4A, ip4B, ProtoUDP, 8); got != want {
		t.Errorf("PseudoHeaderSum(IPv4) = %#x, want %#x", got, want)
	}
	a, b := ip6A.As16(), ip6B.As16()
	ref := append(append(a[:], b[:]...), 0, 1, 0, 4, 0, 0, 0, ProtoICMPv6)
	if got, want := PseudoHeaderSum(ip6A, ip6B, ProtoICMPv6, 65540), sumRef(ref, 0); got != want {
		t.Errorf("PseudoHeaderSum(IPv6, 65540) = %#x, want %#x", got, want)
	}
}

func TestBuildTCPReset(t *testing.T) {
	a4, b4 := netip.MustParseAddr("10.0.1.20"), netip.MustParseAddr("10.0.1.30")
	a6, b6 := netip.MustParseAddr("fd00::20"), netip.MustParseAddr("fd00::30")
	seg := func(src, dst netip.Addr, tcp *layers.TCP, payload string) []byte {
		var ip gopacket.SerializableLayer
		et := layers.EthernetTypeIPv4
		if src.Is4() {
			l := &layers.IPv4{Version: 4, TTL: 9, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
			_ = tcp.SetNetworkLayerForChecksum(l)
			ip = l
		} else {
			l := &layers.IPv6{Version: 6, HopLimit: 9, NextHeader: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
			_ = tcp.SetNetworkLayerForChecksum(l)
			ip, et = l, layers.EthernetTypeIPv6
		}
		tcp.SrcPort, tcp.DstPort, tcp.Window = 48342, 80, 500
		buf := gopacket.NewSerializeBuffer()
		eth := &layers.Ethernet{SrcMAC: macB[:], DstMAC: macGW[:], EthernetType: et}
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	for _, tc := range []struct {
		name           string
		src, dst       netip.Addr
		tcp            *layers.TCP
		payload        string
		inPlace        bool
		wantFlags      uint8
		wantSeq, wantA uint32
	}{
		{"ipv4 data segment", a4, b4, &layers.TCP{ACK: true, PSH: true, Seq: 1000, Ack: 5000}, "hello", false, TCPFlagRST, 5000, 0},
		{"ipv6 data segment", a6, b6, &layers.TCP{ACK: true, Seq: 1000, Ack: 7}, "x", false, TCPFlagRST, 7, 0},
		{"ipv4 in place", a4, b4, &layers.TCP{ACK: true, FIN: true, Seq: 3, Ack: 4}, "", true, TCPFlagRST, 4, 0},
		{"SYN without ACK", a4, b4, &layers.TCP{SYN: true, Seq: 41}, "", false, TCPFlagRST | TCPFlagACK, 0, 42},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := seg(tc.src, tc.dst, tc.tcp, tc.payload)
			p := mustParse(t, f)
			buf := make([]byte, MaxTCPResetLen)
			if tc.inPlace {
				buf = f
			}
			n := BuildTCPReset(buf, f, &p, p.SrcMAC, p.DstMAC)
			if n == 0 {
				t.Fatal("BuildTCPReset() = 0")
			}
			// The oracle: gopacket decodes it, and serializing what it
			// decoded with fresh checksums gives the same bytes.
			pk := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
			if el := pk.ErrorLayer(); el != nil {
				t.Fatalf("gopacket: %v", el.Error())
			}
			tcp, _ := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
			eth, _ := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if tcp == nil || eth == nil {
				t.Fatal("no TCP or Ethernet layer")
			}
			var src, dst netip.Addr
			var ipl gopacket.SerializableLayer
			if ip4, ok := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
				src, _ = netip.AddrFromSlice(ip4.SrcIP)
				dst, _ = netip.AddrFromSlice(ip4.DstIP)
				_ = tcp.SetNetworkLayerForChecksum(ip4)
				ipl = ip4
			} else if ip6, ok := pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
				src, _ = netip.AddrFromSlice(ip6.SrcIP)
				dst, _ = netip.AddrFromSlice(ip6.DstIP)
				_ = tcp.SetNetworkLayerForChecksum(ip6)
				ipl = ip6
			}
			if src != tc.dst || dst != tc.src || tcp.SrcPort != 80 || tcp.DstPort != 48342 {
				t.Errorf("reset %v:%d -> %v:%d, want %v:80 -> %v:48342", src, tcp.SrcPort, dst, tcp.DstPort, tc.dst, tc.src)
			}
			if [6]byte(eth.DstMAC) != macB || [6]byte(eth.SrcMAC) != macGW {
				t.Errorf("MACs %v <- %v", eth.DstMAC, eth.SrcMAC)
			}
			if got := buf[n-tcpHeaderLen+13]; got != tc.wantFlags {
				t.Errorf("flags %#x, want %#x", got, tc.wantFlags)
			}
			if tcp.Seq != tc.wantSeq || tcp.Ack != tc.wantA || len(tcp.Payload) != 0 {
				t.Errorf("seq %d ack %d payload %d bytes, want %d %d 0", tcp.Seq, tcp.Ack, len(tcp.Payload), tc.wantSeq, tc.wantA)
			}
			again := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(again, gopacket.SerializeOptions{ComputeChecksums: true}, eth, ipl, tcp); err != nil {
				t.Fatal(err)
			}
			// gopacket pads to Ethernet's 60-byte minimum; veth does not need it.
			if diff := cmp.Diff(again.Bytes()[:n], buf[:n]); diff != "" {
				t.Errorf("checksums or lengths differ from gopacket's (-gopacket +ours):\n%s", diff)
			}
		})
	}
	t.Run("not answered", func(t *testing.T) {
		buf := make([]byte, MaxTCPResetLen)
		rst := seg(a4, b4, &layers.TCP{RST: true, Seq: 1}, "")
		p := mustParse(t, rst)
		if BuildTCPReset(buf, rst, &p, macB, macGW) != 0 {
			t.Error("a reset was answered")
		}
		f := seg(a6, b6, &layers.TCP{ACK: true}, "")
		p = mustParse(t, f)
		if BuildTCPReset(buf[:MaxTCPResetLen-1], f, &p, macB, macGW) != 0 {
			t.Error("a reset was written into a short buffer")
		}
		u := frameNamed(t, "ipv4/udp")
		p = mustParse(t, u)
		if BuildTCPReset(buf, u, &p, macB, macGW) != 0 {
			t.Error("UDP was answered with a reset")
		}
	})
}
