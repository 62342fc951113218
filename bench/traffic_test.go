package bench

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/internal/netns"
)

// TestFrameChecksums checks the generator's incremental UDP checksum
// against one computed from scratch.
func TestFrameChecksums(t *testing.T) {
	g := &Generator{cfg: GeneratorConfig{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
		SrcPortBase: 20000, SrcPorts: 1000, DstPortBase: 9000}}
	buildUDPFrame(g.template[:], nil, nil, g.cfg.Src, g.cfg.Dst)
	g.csum0 = binary.BigEndian.Uint16(g.template[40:])
	for _, i := range []int{0, 1, 999, 1000, 123456, 999999} {
		var b [FrameLen]byte
		g.frame(b[:], i)
		if got := packet.Sum(b[14:34], 0); got != 0xffff {
			t.Errorf("flow %d: IPv4 header checksum does not verify (sum %#x)", i, got)
		}
		pseudo := packet.PseudoHeaderSum(g.cfg.Src, g.cfg.Dst, 17, FrameLen-34)
		if got := packet.Sum(b[34:], pseudo); got != 0xffff {
			t.Errorf("flow %d: UDP checksum does not verify (sum %#x)", i, got)
		}
		if sp, dp := binary.BigEndian.Uint16(b[34:]), binary.BigEndian.Uint16(b[36:]); int(sp) != 20000+i%1000 || int(dp) != 9000+i/1000 {
			t.Errorf("flow %d: ports %d %d", i, sp, dp)
		}
	}
}

// TestGeneratorSink sends over a veth pair into the XDP sink: every frame
// sent is counted, paced runs keep their rate.
func TestGeneratorSink(t *testing.T) {
	a := netns.NewForTest(t, "pgbt")
	b := netns.NewForTest(t, "pgbt")
	v, err := netns.AddVeth(netns.VethConfig{NS: a, Name: "gen0", PeerNS: b, PeerName: "sink0"})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := NewSink(b, "sink0", 9000, 9999)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	g, err := NewGenerator(GeneratorConfig{NS: a, Ifname: "gen0", SrcMAC: v.MAC, DstMAC: v.PeerMAC,
		Src: netip.MustParseAddr("10.9.0.1"), Dst: netip.MustParseAddr("10.9.0.2"),
		SrcPortBase: 20000, SrcPorts: 1000, DstPortBase: 9000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	ctx := context.Background()
	s, err := g.Send(ctx, Offer{Duration: time.Second, Flows: 1000})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	n, err := sink.Count()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("unpaced: sent %d (%.0f pps), counted %d", s.Frames, s.Rate(), n)
	if n == 0 || n > s.Frames {
		t.Errorf("counted %d of %d", n, s.Frames)
	}
	s, err = g.Send(ctx, Offer{Rate: 50000, Duration: time.Second, Flows: 10})
	if err != nil {
		t.Fatal(err)
	}
	// Pacing never offers more than asked; a busy machine may offer less
	// (no speed is asserted).
	if r := s.Rate(); r > 52000 || s.Frames == 0 {
		t.Errorf("paced at %.0f pps (%d frames), want at most 50000", r, s.Frames)
	}
	time.Sleep(100 * time.Millisecond)
	n2, _ := sink.Count()
	t.Logf("paced: sent %d (%.0f pps), counted %d", s.Frames, s.Rate(), n2-n)
	if n2-n != s.Frames {
		t.Errorf("paced: counted %d of %d", n2-n, s.Frames)
	}
}
