package packet

import (
	"testing"
)

func BenchmarkParse(b *testing.B) {
	for _, name := range []string{
		"ipv4/tcp-syn",
		"ipv4/udp",
		"vlan/ipv4-udp",
		"ipv4/icmp-unreach-udp",
		"ipv6/tcp",
		"ipv6/hbh-dstopts-udp",
		"ipv6/hbh-dstopts-frag-udp",
		"ipv6/ns",
		"arp/request",
	} {
		frame := frameNamed(b, name)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var p Packet
			for b.Loop() {
				if Parse(frame, &p) != OK {
					b.Fatal("Parse failed")
				}
			}
		})
	}
}

// BenchmarkForward is the per-packet work of forwarding pod to pod: parse,
// set MACs, decrement the TTL.
func BenchmarkForward(b *testing.B) {
	for _, name := range []string{"ipv4/tcp-syn", "ipv6/tcp"} {
		frame := frameNamed(b, name)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var p Packet
			for b.Loop() {
				if name == "ipv6/tcp" {
					frame[14+7] = 64
				} else if frame[14+8] < 2 {
					frame[14+8] = 64
					fixIPv4(frame, 14)
				}
				if Parse(frame, &p) != OK {
					b.Fatal("Parse failed")
				}
				SetMACs(frame, macB, macGW)
				DecrementTTL(frame, &p)
			}
		})
	}
}

func BenchmarkSum1500(b *testing.B) {
	buf := make([]byte, 1500)
	for i := range buf {
		buf[i] = byte(i)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		Sum(buf, 0)
	}
}

func BenchmarkBuildNeighborAdvertisement(b *testing.B) {
	ns := mustParse(b, frameNamed(b, "ipv6/ns"))
	buf := make([]byte, MaxNeighborAdvertisementLen)
	b.ReportAllocs()
	for b.Loop() {
		BuildNeighborAdvertisement(buf, &ns, macGW, NAOverride)
	}
}
