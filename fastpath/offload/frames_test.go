package offload

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// frame describes a test frame; zero fields take defaults (TTL 64, a TCP
// ACK, 16 bytes of payload).
type frame struct {
	srcMAC, dstMAC [6]byte
	src, dst       netip.Addr
	proto          uint8
	sport, dport   uint16
	ttl            uint8
	tcpFlags       string // letters of S, F, R, A, P; "" is "A", "-" none
	payload        int    // bytes; 0 is 16
	// ipOptions adds a 4-byte IPv4 option (NOP, NOP, NOP, EOL): IHL 6.
	ipOptions bool
}

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

// layers returns the frame's layers, for tests that change or add some.
func (f frame) layers() []gopacket.SerializableLayer {
	ttl := f.ttl
	if ttl == 0 {
		ttl = 64
	}
	n := f.payload
	if n == 0 {
		n = 16
	}
	payload := make(gopacket.Payload, n)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	var (
		ls []gopacket.SerializableLayer
		nl gopacket.NetworkLayer
	)
	if f.src.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: ttl, Id: 0x1234, Flags: layers.IPv4DontFragment,
			Protocol: layers.IPProtocol(f.proto), SrcIP: nip(f.src), DstIP: nip(f.dst)}
		if f.ipOptions {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		ls = append(ls, &layers.Ethernet{SrcMAC: hw(f.srcMAC), DstMAC: hw(f.dstMAC), EthernetType: layers.EthernetTypeIPv4}, ip)
		nl = ip
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: ttl, NextHeader: layers.IPProtocol(f.proto), SrcIP: nip(f.src), DstIP: nip(f.dst)}
		ls = append(ls, &layers.Ethernet{SrcMAC: hw(f.srcMAC), DstMAC: hw(f.dstMAC), EthernetType: layers.EthernetTypeIPv6}, ip)
		nl = ip
	}
	switch f.proto {
	case ProtoTCP:
		t := &layers.TCP{SrcPort: layers.TCPPort(f.sport), DstPort: layers.TCPPort(f.dport), Seq: 1000, Ack: 2000, Window: 65535}
		flags := f.tcpFlags
		if flags == "" {
			flags = "A"
		}
		for _, c := range flags {
			switch c {
			case 'P':
				t.PSH = true
			case 'S':
				t.SYN = true
			case 'F':
				t.FIN = true
			case 'R':
				t.RST = true
			case 'A':
				t.ACK = true
			}
		}
		t.SetNetworkLayerForChecksum(nl)
		ls = append(ls, t)
	case ProtoUDP:
		u := &layers.UDP{SrcPort: layers.UDPPort(f.sport), DstPort: layers.UDPPort(f.dport)}
		u.SetNetworkLayerForChecksum(nl)
		ls = append(ls, u)
	case ProtoSCTP:
		ls = append(ls, &layers.SCTP{SrcPort: layers.SCTPPort(f.sport), DstPort: layers.SCTPPort(f.dport), VerificationTag: 7})
	}
	return append(ls, payload)
}

func (f frame) bytes(tb testing.TB) []byte {
	tb.Helper()
	return serialize(tb, f.layers()...)
}

// ipv4HeaderOK reports whether the IPv4 header at b (IHL from its first
// byte) has a valid checksum.
func ipv4HeaderOK(b []byte) bool {
	n := int(b[0]&0x0f) * 4
	var s uint32
	for i := 0; i+1 < n; i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return s == 0xffff
}
