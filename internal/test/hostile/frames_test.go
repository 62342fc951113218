package hostile

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// marker starts the payload of every crafted frame that has room for one,
// so that a sniffer can tell crafted frames from the lab's own traffic.
const marker = "PGHOSTILE"

// mark returns a payload carrying the marker and a name.
func mark(name string) []byte { return []byte(marker + " " + name + " ") }

// hasMarker reports whether a frame carries the marker.
func hasMarker(frame []byte) bool { return bytes.Contains(frame, []byte(marker)) }

// TCP flag bits (byte 13 of the TCP header).
const (
	fFIN = 0x01
	fSYN = 0x02
	fRST = 0x04
	fPSH = 0x08
	fACK = 0x10
	fURG = 0x20
	fECE = 0x40
	fCWR = 0x80
)

// wire is what a crafted frame claims: its MACs and addresses.
type wire struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
}

// frame serializes layers, fixing lengths and computing checksums.
func frame(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatalf("serialize frame: %v", err)
	}
	return bytes.Clone(buf.Bytes())
}

func (w wire) eth(et layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: w.srcMAC, DstMAC: w.dstMAC, EthernetType: et}
}

// ether returns the Ethernet header for the wire's address family.
func (w wire) ether() *layers.Ethernet {
	if w.src.Is4() {
		return w.eth(layers.EthernetTypeIPv4)
	}
	return w.eth(layers.EthernetTypeIPv6)
}

func (w wire) ipv4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 0x4711, Protocol: proto,
		SrcIP: w.src.AsSlice(), DstIP: w.dst.AsSlice()}
}

func (w wire) ipv6(nh layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: nh, SrcIP: w.src.AsSlice(), DstIP: w.dst.AsSlice()}
}

// ip returns the IP header for the wire's family carrying proto.
func (w wire) ip(proto layers.IPProtocol) gopacket.NetworkLayer {
	if w.src.Is4() {
		return w.ipv4(proto)
	}
	return w.ipv6(proto)
}

// tcpLayer returns a TCP header with the given flags, its checksum over
// nl.
func tcpLayer(nl gopacket.NetworkLayer, sport, dport uint16, flags uint8) *layers.TCP {
	t := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1000, Window: 64240,
		FIN: flags&fFIN != 0, SYN: flags&fSYN != 0, RST: flags&fRST != 0, PSH: flags&fPSH != 0,
		ACK: flags&fACK != 0, URG: flags&fURG != 0, ECE: flags&fECE != 0, CWR: flags&fCWR != 0}
	if t.ACK {
		t.Ack = 1
	}
	_ = t.SetNetworkLayerForChecksum(nl)
	return t
}

// tcp returns a whole TCP frame.
func (w wire) tcp(tb testing.TB, sport, dport uint16, flags uint8, payload []byte) []byte {
	tb.Helper()
	nl := w.ip(layers.IPProtocolTCP)
	return frame(tb, w.ether(), nl.(gopacket.SerializableLayer), tcpLayer(nl, sport, dport, flags), gopacket.Payload(payload))
}

// udp returns a whole UDP frame.
func (w wire) udp(tb testing.TB, sport, dport uint16, payload []byte) []byte {
	tb.Helper()
	nl := w.ip(layers.IPProtocolUDP)
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	_ = u.SetNetworkLayerForChecksum(nl)
	return frame(tb, w.ether(), nl.(gopacket.SerializableLayer), u, gopacket.Payload(payload))
}

// raw4 returns an IPv4 frame with the given header fields changed and a
// raw payload; fix is applied to the IPv4 header (after the lengths were
// computed) before the header checksum is recomputed.
func (w wire) raw4(tb testing.TB, proto layers.IPProtocol, payload []byte, fix func(ip []byte)) []byte {
	tb.Helper()
	f := frame(tb, w.eth(layers.EthernetTypeIPv4), w.ipv4(proto), gopacket.Payload(payload))
	if fix != nil {
		fix(f[14:])
		ipv4Checksum(f[14:])
	}
	return f
}

// raw6 returns an IPv6 frame with next header nh and a raw payload
// (extension headers included); fix may change the IPv6 header after the
// payload length was computed.
func (w wire) raw6(tb testing.TB, nh layers.IPProtocol, payload []byte, fix func(ip []byte)) []byte {
	tb.Helper()
	f := frame(tb, w.eth(layers.EthernetTypeIPv6), w.ipv6(nh), gopacket.Payload(payload))
	if fix != nil {
		fix(f[14:])
	}
	return f
}

// ipv4Checksum recomputes the header checksum of the IPv4 header at the
// start of ip, whatever its IHL says (bounded by len(ip)).
func ipv4Checksum(ip []byte) {
	hl := int(ip[0]&0x0F) * 4
	if hl < 20 {
		hl = 20
	}
	if hl > len(ip) {
		hl = len(ip) &^ 1
	}
	ip[10], ip[11] = 0, 0
	var sum uint32
	for i := 0; i+1 < hl; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xFFFF {
		sum = sum>>16 + sum&0xFFFF
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
}

// tcpHeader returns a raw TCP header of n bytes (data offset n/4, at most
// 60) with ports and flags, followed by payload; the checksum is left 0.
func tcpHeader(n int, sport, dport uint16, flags uint8, payload []byte) []byte {
	b := make([]byte, n, n+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 1000)
	if n >= 14 {
		b[12] = byte(n/4) << 4
		b[13] = flags
	}
	if n >= 16 {
		binary.BigEndian.PutUint16(b[14:], 64240)
	}
	return append(b, payload...)
}

// udpHeader returns a raw UDP header with the given length field,
// followed by payload.
func udpHeader(sport, dport uint16, length int, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(length))
	return append(b, payload...)
}

// extHeader returns an IPv6 extension header (Hop-by-Hop, Routing or
// Destination Options layout) of (hdrLen+1)*8 bytes with next header nh,
// padded with PadN.
func extHeader(nh byte, hdrLen int) []byte {
	b := make([]byte, (hdrLen+1)*8)
	b[0], b[1] = nh, byte(hdrLen)
	b[2], b[3] = 1, byte(len(b)-4) // PadN over the rest
	return b
}

// fragHeader returns an IPv6 Fragment header.
func fragHeader(nh byte, off int, more bool, id uint32) []byte {
	b := make([]byte, 8)
	b[0] = nh
	v := uint16(off/8) << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	binary.BigEndian.PutUint32(b[4:], id)
	return b
}

// cat concatenates byte slices.
func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// IPv6 next header values.
const (
	nhHopByHop = 0
	nhTCP      = 6
	nhUDP      = 17
	nhRouting  = 43
	nhFragment = 44
	nhAH       = 51
	nhICMPv6   = 58
	nhDestOpts = 60
)

// quote4 returns the first bytes of an IPv4 TCP packet from src:sport to
// dst:dport, as an ICMP error quotes it.
func quote4(src, dst netip.Addr, sport, dport uint16) []byte {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 60)
	ip[8], ip[9] = 64, 6
	copy(ip[12:], src.AsSlice())
	copy(ip[16:], dst.AsSlice())
	ipv4Checksum(ip)
	return cat(ip, tcpHeader(20, sport, dport, fACK, nil)[:8])
}

// quote6 is quote4 for IPv6.
func quote6(src, dst netip.Addr, sport, dport uint16) []byte {
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], 20)
	ip[6], ip[7] = 6, 64
	copy(ip[8:], src.AsSlice())
	copy(ip[24:], dst.AsSlice())
	return cat(ip, tcpHeader(20, sport, dport, fACK, nil)[:8])
}

// icmp4Error returns an ICMP destination unreachable (port unreachable)
// frame quoting quote, with payload after it.
func (w wire) icmp4Error(tb testing.TB, quote, payload []byte) []byte {
	tb.Helper()
	ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)}
	return frame(tb, w.eth(layers.EthernetTypeIPv4), w.ipv4(layers.IPProtocolICMPv4), ic, gopacket.Payload(cat(quote, payload)))
}

// icmp6Error is icmp4Error for ICMPv6.
func (w wire) icmp6Error(tb testing.TB, quote, payload []byte) []byte {
	tb.Helper()
	ip := w.ipv6(layers.IPProtocolICMPv6)
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6CodePortUnreachable)}
	_ = ic.SetNetworkLayerForChecksum(ip)
	// Four unused bytes, then the quote.
	return frame(tb, w.eth(layers.EthernetTypeIPv6), ip, ic, gopacket.Payload(cat(make([]byte, 4), quote, payload)))
}

// arp returns an ARP frame.
func arpFrame(tb testing.TB, srcMAC, dstMAC net.HardwareAddr, op uint16, senderMAC net.HardwareAddr, senderIP netip.Addr, targetMAC net.HardwareAddr, targetIP netip.Addr) []byte {
	tb.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeARP}
	a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: op, SourceHwAddress: senderMAC, SourceProtAddress: senderIP.AsSlice(),
		DstHwAddress: targetMAC, DstProtAddress: targetIP.AsSlice()}
	return frame(tb, eth, a)
}

// neighborAdvert returns an unsolicited (or solicited) NDP neighbor
// advertisement for target with a target link-layer address option.
func neighborAdvert(tb testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst, target netip.Addr, lladdr net.HardwareAddr, flags uint8) []byte {
	tb.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborAdvertisement, 0)}
	_ = ic.SetNetworkLayerForChecksum(ip)
	na := &layers.ICMPv6NeighborAdvertisement{Flags: flags, TargetAddress: target.AsSlice(),
		Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptTargetAddress, Data: lladdr}}}
	return frame(tb, &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv6}, ip, ic, na)
}

// neighborSolicit returns an NDP neighbor solicitation for target with a
// source link-layer address option and the given hop limit.
func neighborSolicit(tb testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst, target netip.Addr, hops uint8) []byte {
	tb.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: hops, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	_ = ic.SetNetworkLayerForChecksum(ip)
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice(),
		Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: srcMAC}}}
	return frame(tb, &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv6}, ip, ic, ns)
}

// solicitedNode returns the solicited-node multicast address of a and its
// MAC.
func solicitedNode(a netip.Addr) (netip.Addr, net.HardwareAddr) {
	b := a.As16()
	m := netip.AddrFrom16([16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
	return m, net.HardwareAddr{0x33, 0x33, 0xff, b[13], b[14], b[15]}
}

// linkLocal returns the EUI-64 link-local address of mac.
func linkLocal(mac net.HardwareAddr) netip.Addr {
	return netip.AddrFrom16([16]byte{0: 0xfe, 1: 0x80, 8: mac[0] ^ 2, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5]})
}

// broadcastMAC returns ff:ff:ff:ff:ff:ff.
func broadcastMAC() net.HardwareAddr { return net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }
