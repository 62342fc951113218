package packet

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// cmpAddr lets cmp compare netip.Addr, whose fields are unexported.
var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestParseValid(t *testing.T) {
	for _, tc := range validFrames(t) {
		t.Run(tc.name, func(t *testing.T) {
			var p Packet
			if r := Parse(tc.frame, &p); r != OK {
				t.Fatalf("Parse() = %v, want ok", r)
			}
			if diff := cmp.Diff(tc.want, p, cmpAddr); diff != "" {
				t.Errorf("Parse() mismatch (-want +got):\n%s", diff)
			}
			checkInvariants(t, tc.frame, &p)
		})
	}
}

// TestParseMatchesGopacket checks the fields that gopacket also decodes.
func TestParseMatchesGopacket(t *testing.T) {
	for _, tc := range validFrames(t) {
		t.Run(tc.name, func(t *testing.T) {
			var p Packet
			if r := Parse(tc.frame, &p); r != OK {
				t.Fatalf("Parse() = %v, want ok", r)
			}
			got := p
			// gopacket does not report offsets or the quoted packet of
			// ICMP errors.
			got.L4Off, got.PayloadOff, got.ICMPError, got.Inner = 0, 0, false, Embedded{}
			want := gopacketView(t, tc.frame, layers.LayerTypeEthernet)
			if diff := cmp.Diff(want, got, cmpAddr); diff != "" {
				t.Errorf("gopacket and Parse disagree (-gopacket +Parse):\n%s", diff)
			}
		})
	}
}

func addrOf(tb testing.TB, b []byte) netip.Addr {
	tb.Helper()
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		tb.Fatalf("bad address %v", b)
	}
	return a
}

// gopacketView decodes frame with gopacket into the fields of a Packet
// that gopacket knows about.
func gopacketView(tb testing.TB, frame []byte, first gopacket.LayerType) Packet {
	tb.Helper()
	pkt := gopacket.NewPacket(frame, first, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		tb.Fatalf("gopacket: %v", el.Error())
	}
	var v Packet
	var fragData []byte // L4 bytes of a first fragment
	for _, l := range pkt.Layers() {
		switch l := l.(type) {
		case *layers.Ethernet:
			v.DstMAC, v.SrcMAC = [6]byte(l.DstMAC), [6]byte(l.SrcMAC)
			v.EtherType = uint16(l.EthernetType)
			v.L3Off = 14
		case *layers.Dot1Q:
			v.HasVLAN = true
			v.VLANTCI = uint16(l.Priority)<<13 | l.VLANIdentifier
			if l.DropEligible {
				v.VLANTCI |= 1 << 12
			}
			v.EtherType = uint16(l.Type)
			v.L3Off = 18
		case *layers.IPv4:
			v.L3, v.L3Len = L3IPv4, int(l.Length)
			v.Src, v.Dst = addrOf(tb, l.SrcIP), addrOf(tb, l.DstIP)
			v.TTL, v.Proto = l.TTL, uint8(l.Protocol)
			v.FragID, v.FragOffset = uint32(l.Id), l.FragOffset*8
			v.MoreFragments = l.Flags&layers.IPv4MoreFragments != 0
			v.DontFragment = l.Flags&layers.IPv4DontFragment != 0
			v.Fragmented = v.MoreFragments || v.FragOffset != 0
			fragData = l.Payload
		case *layers.IPv6:
			v.L3, v.L3Len = L3IPv6, 40+int(l.Length)
			v.Src, v.Dst = addrOf(tb, l.SrcIP), addrOf(tb, l.DstIP)
			v.TTL, v.Proto = l.HopLimit, uint8(l.NextHeader)
		case *layers.IPv6HopByHop:
			v.Proto = uint8(l.NextHeader)
		case *layers.IPv6Destination:
			v.Proto = uint8(l.NextHeader)
		case *layers.IPv6Routing:
			v.Proto = uint8(l.NextHeader)
		case *layers.IPSecAH:
			v.Proto = uint8(l.NextHeader)
		case *layers.IPv6Fragment:
			v.Proto = uint8(l.NextHeader)
			v.FragID, v.FragOffset, v.MoreFragments = l.Identification, l.FragmentOffset*8, l.MoreFragments
			v.Fragmented = v.MoreFragments || v.FragOffset != 0
			fragData = l.Payload
		case *layers.TCP:
			v.HasPorts, v.SrcPort, v.DstPort = true, uint16(l.SrcPort), uint16(l.DstPort)
			for i, f := range []bool{l.FIN, l.SYN, l.RST, l.PSH, l.ACK, l.URG, l.ECE, l.CWR} {
				if f {
					v.TCPFlags |= 1 << i
				}
			}
		case *layers.UDP:
			v.HasPorts, v.SrcPort, v.DstPort = true, uint16(l.SrcPort), uint16(l.DstPort)
		case *layers.SCTP:
			v.HasPorts, v.SrcPort, v.DstPort = true, uint16(l.SrcPort), uint16(l.DstPort)
		case *layers.ICMPv4:
			v.ICMPType, v.ICMPCode = l.TypeCode.Type(), l.TypeCode.Code()
			if isICMPv4Query(v.ICMPType) {
				v.HasICMPID, v.ICMPID = true, l.Id
			}
		case *layers.ICMPv6:
			v.ICMPType, v.ICMPCode = l.TypeCode.Type(), l.TypeCode.Code()
		case *layers.ICMPv6Echo:
			v.HasICMPID, v.ICMPID = true, l.Identifier
		case *layers.ICMPv6NeighborSolicitation:
			v.NDP.Target = addrOf(tb, l.TargetAddress)
			setLinkAddr(&v.NDP, l.Options, layers.ICMPv6OptSourceAddress)
		case *layers.ICMPv6NeighborAdvertisement:
			v.NDP.Target = addrOf(tb, l.TargetAddress)
			v.NDP.Flags = NAFlags(l.Flags)
			setLinkAddr(&v.NDP, l.Options, layers.ICMPv6OptTargetAddress)
		case *layers.ICMPv6RouterSolicitation:
			setLinkAddr(&v.NDP, l.Options, layers.ICMPv6OptSourceAddress)
		case *layers.ARP:
			v.L3, v.L3Len = L3ARP, 28
			v.ARP = ARP{Op: l.Operation,
				SenderMAC: [6]byte(l.SourceHwAddress), TargetMAC: [6]byte(l.DstHwAddress),
				SenderIP: addrOf(tb, l.SourceProtAddress), TargetIP: addrOf(tb, l.DstProtAddress)}
		}
	}
	if v.Fragmented && v.FragOffset == 0 && !v.HasPorts {
		// gopacket stops at fragments: decode the first one's L4 header.
		var lt gopacket.LayerType
		switch v.Proto {
		case ProtoTCP:
			lt = layers.LayerTypeTCP
		case ProtoUDP:
			lt = layers.LayerTypeUDP
		case ProtoSCTP:
			lt = layers.LayerTypeSCTP
		}
		if lt != 0 {
			inner := gopacketView(tb, fragData, lt)
			v.HasPorts, v.SrcPort, v.DstPort, v.TCPFlags = inner.HasPorts, inner.SrcPort, inner.DstPort, inner.TCPFlags
		}
	}
	return v
}

func setLinkAddr(n *NDP, opts layers.ICMPv6Options, typ layers.ICMPv6Opt) {
	for _, o := range opts {
		if o.Type == typ && len(o.Data) >= 6 {
			n.HasLinkAddr, n.LinkAddr = true, [6]byte(o.Data)
			return
		}
	}
}

// checkInvariants checks what must hold for any frame that Parse accepted.
func checkInvariants(tb testing.TB, frame []byte, p *Packet) {
	tb.Helper()
	end := p.L3Off + p.L3Len
	if !(EthernetHeaderLen <= p.L3Off && p.L3Off <= p.L4Off && p.L4Off <= p.PayloadOff &&
		p.PayloadOff <= end && end <= len(frame)) {
		tb.Fatalf("offsets out of order: L3Off %d L4Off %d PayloadOff %d end %d len %d",
			p.L3Off, p.L4Off, p.PayloadOff, end, len(frame))
	}
	switch p.L3 {
	case L3IPv4:
		if !p.Src.Is4() || !p.Dst.Is4() || p.L4Off-p.L3Off < 20 {
			tb.Fatalf("bad IPv4 packet %+v", p)
		}
		if Sum(frame[p.L3Off:p.L4Off], 0) != 0xFFFF {
			tb.Fatalf("IPv4 header checksum does not verify")
		}
	case L3IPv6:
		if !p.Src.Is6() || !p.Dst.Is6() || p.L4Off-p.L3Off < 40 {
			tb.Fatalf("bad IPv6 packet %+v", p)
		}
	case L3ARP:
		if p.L3Len != 28 || !p.ARP.SenderIP.Is4() || !p.ARP.TargetIP.Is4() {
			tb.Fatalf("bad ARP packet %+v", p)
		}
	default:
		tb.Fatalf("L3 = %v", p.L3)
	}
	nonFirst := p.Fragmented && p.FragOffset != 0
	if p.HasPorts && (nonFirst || (p.Proto != ProtoTCP && p.Proto != ProtoUDP && p.Proto != ProtoSCTP)) {
		tb.Fatalf("ports for proto %d, fragment offset %d", p.Proto, p.FragOffset)
	}
	if nonFirst && (p.PayloadOff != p.L4Off || p.ICMPType != 0 || p.ICMPError) {
		tb.Fatalf("L4 fields in a non-first fragment: %+v", p)
	}
	if p.Fragmented != (p.MoreFragments || p.FragOffset != 0) {
		tb.Fatalf("Fragmented %v, MoreFragments %v, FragOffset %d", p.Fragmented, p.MoreFragments, p.FragOffset)
	}
	if p.ICMPError != p.Inner.Src.IsValid() {
		tb.Fatalf("ICMPError %v, inner %+v", p.ICMPError, p.Inner)
	}
	if p.ICMPError && p.Inner.Src.Is4() != p.Src.Is4() {
		tb.Fatalf("inner family differs: %+v", p)
	}
	if (p.NDP != NDP{}) && (p.L3 != L3IPv6 || p.TTL != 255 || p.Proto != ProtoICMPv6) {
		tb.Fatalf("NDP fields in a non-NDP packet: %+v", p)
	}
	// Bytes past the IP packet are never looked at.
	var q Packet
	if r := Parse(frame[:end], &q); r != OK {
		tb.Fatalf("Parse(frame[:L3Off+L3Len]) = %v", r)
	}
	if q != *p {
		tb.Fatalf("Parse(frame[:L3Off+L3Len]) differs:\n%s", cmp.Diff(*p, q, cmpAddr))
	}
}

// TestParseTruncated cuts every valid frame at every length: shorter than
// the IP packet is Truncated, anything longer parses as the whole frame.
func TestParseTruncated(t *testing.T) {
	for _, tc := range validFrames(t) {
		t.Run(tc.name, func(t *testing.T) {
			end := tc.want.L3Off + tc.want.L3Len
			for n := 0; n <= len(tc.frame); n++ {
				frame := append([]byte(nil), tc.frame[:n]...)
				var p Packet
				r := Parse(frame, &p)
				if n < end {
					if r != Truncated {
						t.Fatalf("Parse(frame[:%d]) = %v, want truncated", n, r)
					}
					continue
				}
				if r != OK {
					t.Fatalf("Parse(frame[:%d]) = %v, want ok", n, r)
				}
				if diff := cmp.Diff(tc.want, p, cmpAddr); diff != "" {
					t.Fatalf("Parse(frame[:%d]) mismatch (-want +got):\n%s", n, diff)
				}
			}
		})
	}
}

func TestStatusString(t *testing.T) {
	seen := map[string]Status{}
	for r := Status(0); r < NumStatuses; r++ {
		s := r.String()
		if s == "" || s == "unknown" {
			t.Errorf("Status(%d).String() = %q", r, s)
		}
		if o, ok := seen[s]; ok {
			t.Errorf("Status(%d) and Status(%d) are both %q", o, r, s)
		}
		seen[s] = r
	}
	if got := Status(NumStatuses).String(); got != "unknown" {
		t.Errorf("Status(NumStatuses).String() = %q, want unknown", got)
	}
	if OK.String() != "ok" || BadIPv4Checksum.String() != "bad_ipv4_checksum" {
		t.Errorf("unexpected labels %q, %q", OK, BadIPv4Checksum)
	}
}

func TestL3KindString(t *testing.T) {
	for k, want := range map[L3Kind]string{L3None: "none", L3IPv4: "ipv4", L3IPv6: "ipv6", L3ARP: "arp", 9: "none"} {
		if got := k.String(); got != want {
			t.Errorf("L3Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}

// frameNamed returns a copy of the valid frame called name.
func frameNamed(tb testing.TB, name string) []byte {
	tb.Helper()
	for _, tc := range validFrames(tb) {
		if tc.name == name {
			return append([]byte(nil), tc.frame...)
		}
	}
	tb.Fatalf("no valid frame %q", name)
	return nil
}

func put16(b []byte, off int, v uint16) { binary.BigEndian.PutUint16(b[off:], v) }

// fixIPv4 recomputes the checksum of the IPv4 header at off.
func fixIPv4(b []byte, off int) []byte {
	hl := int(b[off]&0x0F) * 4
	put16(b, off+10, 0)
	put16(b, off+10, ^Sum(b[off:off+hl], 0))
	return b
}
