package packet

import (
	"testing"
)

func TestNoAllocs(t *testing.T) {
	check := func(name string, f func()) {
		t.Helper()
		if n := testing.AllocsPerRun(200, f); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", name, n)
		}
	}
	var p Packet
	for _, tc := range validFrames(t) {
		check("Parse "+tc.name, func() { Parse(tc.frame, &p) })
	}
	for _, tc := range hostileCases() {
		frame := tc.frame(t)
		check("Parse "+tc.name, func() { Parse(frame, &p) })
	}

	frame := frameNamed(t, "ipv4/tcp-syn")
	q := mustParse(t, frame)
	check("DecrementTTL ipv4", func() {
		frame[q.L3Off+8] = 64
		DecrementTTL(frame, &q)
	})
	check("SetMACs", func() { SetMACs(frame, macA, macB) })
	check("L4ChecksumValid", func() { L4ChecksumValid(frame, &q) })
	check("PseudoHeaderSum", func() { PseudoHeaderSum(ip6A, ip6B, ProtoTCP, 20) })
	check("Sum", func() { Sum(frame, 0) })
	var sink uint16
	check("UpdateChecksum", func() { sink = UpdateChecksum(sink, 2, 3) })
	check("Status.String", func() { _ = BadIPv4Checksum.String() })

	frame6 := frameNamed(t, "ipv6/hbh-dstopts-udp")
	q6 := mustParse(t, frame6)
	check("DecrementTTL ipv6", func() {
		frame6[q6.L3Off+7] = 64
		DecrementTTL(frame6, &q6)
	})

	arp := frameNamed(t, "arp/request")
	orig := append([]byte(nil), arp...)
	ap := mustParse(t, arp)
	check("ReplyARP", func() {
		copy(arp, orig)
		ReplyARP(arp, &ap, macGW)
	})

	ns := mustParse(t, frameNamed(t, "ipv6/ns"))
	buf := make([]byte, MaxNeighborAdvertisementLen)
	check("BuildNeighborAdvertisement", func() { BuildNeighborAdvertisement(buf, &ns, macGW, NAOverride) })
}
