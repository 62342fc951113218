package hostile

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/internal/test/testutil"
)

// ipDst returns the destination address of an untagged IPv4 or IPv6 frame.
func ipDst(f []byte) (netip.Addr, bool) {
	if len(f) < 14 {
		return netip.Addr{}, false
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		if len(f) >= 14+20 {
			return netip.AddrFrom4([4]byte(f[14+16 : 14+20])), true
		}
	case 0x86dd:
		if len(f) >= 14+40 {
			return netip.AddrFrom16([16]byte(f[14+24 : 14+40])), true
		}
	}
	return netip.Addr{}, false
}

// toAny returns a filter for IP frames to any of addrs.
func toAny(addrs []netip.Addr) func([]byte) bool {
	return func(f []byte) bool {
		d, ok := ipDst(f)
		return ok && slices.Contains(addrs, d)
	}
}

// spoofCase is a frame pod a sends while pretending to be someone else.
type spoofCase struct {
	name   string
	reason string
	frame  func(tb testing.TB, s spoofers) []byte
}

// spoofers is what the spoofing cases need to know about the node.
type spoofers struct {
	aMAC, cMAC, gwMAC net.HardwareAddr
	a4, a6, b4, b6    netip.Addr
	c4, c6, ext4      netip.Addr
}

func spoofCases() []spoofCase {
	w4 := func(s spoofers, src netip.Addr) wire {
		return wire{srcMAC: s.aMAC, dstMAC: s.gwMAC, src: src, dst: s.b4}
	}
	w6 := func(s spoofers, src netip.Addr) wire {
		return wire{srcMAC: s.aMAC, dstMAC: s.gwMAC, src: src, dst: s.b6}
	}
	return []spoofCase{
		// b accepts c on every port but a only on TCP 80 and UDP 5353:
		// as c, a would reach b's TCP 81.
		{"ipv4/source-of-another-pod", "spoofed_source", func(tb testing.TB, s spoofers) []byte {
			return w4(s, s.c4).tcp(tb, 32000, 81, fSYN, mark("as-c"))
		}},
		{"ipv6/source-of-another-pod", "spoofed_source", func(tb testing.TB, s spoofers) []byte {
			return w6(s, s.c6).tcp(tb, 32001, 81, fSYN, mark("as-c6"))
		}},
		{"ipv4/source-outside", "spoofed_source", func(tb testing.TB, s spoofers) []byte {
			return w4(s, s.ext4).udp(tb, 32002, 5353, mark("as-ext"))
		}},
		{"ipv4/source-of-the-destination", "spoofed_source", func(tb testing.TB, s spoofers) []byte {
			return w4(s, s.b4).tcp(tb, 81, 81, fSYN, mark("land"))
		}},
		{"ipv6/link-local-source", "not_routed", func(tb testing.TB, s spoofers) []byte {
			return w6(s, linkLocal(s.aMAC)).udp(tb, 32003, 5353, mark("ll-src"))
		}},
		{"mac/another-pods-mac", "spoofed_mac", func(tb testing.TB, s spoofers) []byte {
			w := w4(s, s.a4)
			w.srcMAC = s.cMAC
			return w.udp(tb, 32004, 5353, mark("c-mac"))
		}},
		{"mac/another-pods-mac-and-ip", "spoofed_mac", func(tb testing.TB, s spoofers) []byte {
			w := w4(s, s.c4)
			w.srcMAC = s.cMAC
			return w.tcp(tb, 32005, 81, fSYN, mark("c-mac-ip"))
		}},
		{"mac/random-mac", "spoofed_mac", func(tb testing.TB, s spoofers) []byte {
			w := w6(s, s.a6)
			w.srcMAC = net.HardwareAddr{0x02, 0x42, 0xde, 0xad, 0xbe, 0xef}
			return w.udp(tb, 32006, 5353, mark("rand-mac"))
		}},
		{"arp/gratuitous-for-another-pod", "spoofed_source", func(tb testing.TB, s spoofers) []byte {
			return arpFrame(tb, s.aMAC, broadcastMAC(), layers.ARPRequest, s.aMAC, s.c4, make(net.HardwareAddr, 6), s.c4)
		}},
		{"arp/gratuitous-reply-for-another-pod", "spoofed_source", func(tb testing.TB, s spoofers) []byte {
			return arpFrame(tb, s.aMAC, broadcastMAC(), layers.ARPReply, s.aMAC, s.c4, broadcastMAC(), s.c4)
		}},
		{"arp/reply-to-gateway-for-another-pod", "spoofed_source", func(tb testing.TB, s spoofers) []byte {
			return arpFrame(tb, s.aMAC, s.gwMAC, layers.ARPReply, s.aMAC, s.c4, s.gwMAC, netip.MustParseAddr("169.254.1.1"))
		}},
		{"arp/sender-mac-of-another-pod", "spoofed_source", func(tb testing.TB, s spoofers) []byte {
			return arpFrame(tb, s.aMAC, broadcastMAC(), layers.ARPRequest, s.cMAC, s.a4, make(net.HardwareAddr, 6), s.b4)
		}},
		{"ndp/unsolicited-advert-for-another-pod", "neighbor", func(tb testing.TB, s spoofers) []byte {
			return neighborAdvert(tb, s.aMAC, net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, linkLocal(s.aMAC),
				netip.MustParseAddr("ff02::1"), s.c6, s.aMAC, 0x20) // override
		}},
		{"ndp/advert-to-pod-for-another-pod", "neighbor", func(tb testing.TB, s spoofers) []byte {
			return neighborAdvert(tb, s.aMAC, s.gwMAC, s.a6, s.b6, s.c6, s.aMAC, 0x20)
		}},
		{"ndp/solicitation-from-another-pods-address", "neighbor", func(tb testing.TB, s spoofers) []byte {
			gw := netip.MustParseAddr("fe80::1")
			sn, snMAC := solicitedNode(gw)
			return neighborSolicit(tb, s.aMAC, snMAC, s.c6, sn, gw, 255)
		}},
		{"ndp/router-advertisement", "not_routed", func(tb testing.TB, s spoofers) []byte {
			ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6,
				SrcIP: linkLocal(s.aMAC).AsSlice(), DstIP: net.ParseIP("ff02::1")}
			ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeRouterAdvertisement, 0)}
			_ = ic.SetNetworkLayerForChecksum(ip)
			ra := &layers.ICMPv6RouterAdvertisement{HopLimit: 64, RouterLifetime: 1800,
				Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: s.aMAC}}}
			return frame(tb, &layers.Ethernet{SrcMAC: s.aMAC, DstMAC: net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6}, ip, ic, ra)
		}},
	}
}

// TestSpoofing has pod a send from other pods' addresses and MACs and
// claim their addresses with ARP and NDP. Every frame must be dropped and
// counted; nothing may reach b or c; the gateway keeps answering
// neighbours itself, and afterwards traffic for c still reaches c, never a.
func TestSpoofing(t *testing.T) {
	n := newNode(t)
	s := spoofers{
		aMAC: n.podMAC(n.a), cMAC: n.podMAC(n.c), gwMAC: n.gatewayMAC(n.a),
		a4: n.a.IPs[0], a6: n.a.IPs[1], b4: n.b.IPs[0], b6: n.b.IPs[1],
		c4: n.c.IPs[0], c6: n.c.IPs[1], ext4: n.ext.IPs[0],
	}
	sniffB := n.sniffer(n.b, hasMarker)
	sniffC := n.sniffer(n.c, hasMarker)
	in := n.injector(n.a)
	counted := map[string]float64{}
	for _, c := range spoofCases() {
		t.Run(c.name, func(t *testing.T) {
			f := c.frame(t, s)
			before := n.metrics()
			if err := in.Send(f); err != nil {
				t.Fatal(err)
			}
			after := n.waitDrops(before, map[string]float64{c.reason: 1}, 3*time.Second)
			d := dropDeltas(before, after)
			if d[c.reason] < 1 {
				t.Errorf("%s did not grow; drops that grew: %v", c.reason, d)
			}
			for r, v := range d {
				if r != c.reason && !background(r) {
					t.Errorf("%s grew by %v too", r, v)
				}
			}
			counted[c.reason] += d[c.reason]
		})
	}
	t.Logf("drops counted by reason: %s", formatCounts(counted))

	t.Run("GatewayAnswersNeighbours", func(t *testing.T) {
		// a asks for c's addresses: the gateway answers with its own MAC
		// (the only answer a ever gets; c is never asked).
		replies := n.sniffer(n.a, func(f []byte) bool {
			return len(f) >= 14 && (binary.BigEndian.Uint16(f[12:]) == 0x0806 || binary.BigEndian.Uint16(f[12:]) == 0x86dd && len(f) > 14+40 && f[14+6] == 58 && f[14+40] == 136)
		})
		// Frames c receives, not its own (its duplicate address
		// detection may send a solicitation at any time).
		cMAC := n.podMAC(n.c)
		askC := n.sniffer(n.c, func(f []byte) bool {
			return len(f) >= 14 && !bytes.Equal(f[6:12], cMAC) &&
				(binary.BigEndian.Uint16(f[12:]) == 0x0806 || binary.BigEndian.Uint16(f[12:]) == 0x86dd && len(f) > 14+40 && f[14+6] == 58 && (f[14+40] == 135 || f[14+40] == 136))
		})
		if err := in.Send(arpFrame(t, s.aMAC, broadcastMAC(), layers.ARPRequest, s.aMAC, s.a4, make(net.HardwareAddr, 6), s.c4)); err != nil {
			t.Fatal(err)
		}
		sn, snMAC := solicitedNode(s.c6)
		if err := in.Send(neighborSolicit(t, s.aMAC, snMAC, s.a6, sn, s.c6, 255)); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 3*time.Second, "ARP and NDP answers", func() error {
			var arp, na bool
			for _, f := range replies.Frames() {
				switch binary.BigEndian.Uint16(f[12:]) {
				case 0x0806:
					// Sender MAC at 14+8, sender IP at 14+14.
					if len(f) >= 14+28 && bytes.Equal(f[14+8:14+14], s.gwMAC) && netip.AddrFrom4([4]byte(f[14+14:14+18])) == s.c4 {
						arp = true
					}
				default:
					// Target at 14+40+8; target link-layer option after.
					if len(f) >= 14+40+32 && netip.AddrFrom16([16]byte(f[14+48:14+64])) == s.c6 && bytes.Equal(f[14+66:14+72], s.gwMAC) {
						na = true
					}
				}
			}
			if !arp || !na {
				return fmt.Errorf("ARP reply with the gateway's MAC: %v, neighbor advertisement with it: %v (%d frames)", arp, na, len(replies.Frames()))
			}
			return nil
		})
		if got := askC.Count(); got != 0 {
			t.Errorf("c received %d ARP/NDP frames: the gateway should answer for it; first: % x", got, askC.Frames()[0])
		}
	})

	t.Run("TrafficForCStillReachesC", func(t *testing.T) {
		atA := n.sniffer(n.a, toAny(n.c.IPs))
		for _, from := range []string{"app/b", "node"} {
			for _, to := range []string{"10.31.0.4", "fd00:31::4"} {
				r, err := n.l.ProbeResult(context.Background(), from, to, tcpPort(81))
				if err != nil {
					t.Fatal(err)
				}
				if !r.Observed {
					t.Errorf("%s -> %s failed after the spoofing: %s", from, to, r.String())
				}
			}
		}
		if got := atA.Count(); got != 0 {
			t.Errorf("a received %d frames for c's addresses", got)
		}
		n.checkKernelNeighbours(n.c)
	})

	time.Sleep(100 * time.Millisecond)
	for name, sn := range map[string]*Sniffer{"b": sniffB, "c": sniffC} {
		if got := sn.Count(); got != 0 {
			t.Errorf("%d spoofed frames reached pod %s, e.g. % x", got, name, sn.Frames()[0])
		}
	}
	n.checkHealthy("after the spoofing")
	n.checkPolicy("after the spoofing")
}

// checkKernelNeighbours checks that the node's kernel resolves the
// endpoint's addresses on the kernel leg to the gateway's MAC, whatever
// pods claimed.
func (n *node) checkKernelNeighbours(ep *lab.Endpoint) {
	n.t.Helper()
	h := n.nodeHandle()
	pgk, err := h.LinkByName("pgk0")
	if err != nil {
		n.t.Fatal(err)
	}
	pgw, err := h.LinkByName("pgw0")
	if err != nil {
		n.t.Fatal(err)
	}
	neighs, err := h.NeighList(pgk.Attrs().Index, netlink.FAMILY_ALL)
	if err != nil {
		n.t.Fatal(err)
	}
	seen := 0
	for _, nb := range neighs {
		a, ok := netip.AddrFromSlice(nb.IP)
		if !ok || !slices.Contains(ep.IPs, a.Unmap()) || len(nb.HardwareAddr) == 0 {
			continue
		}
		seen++
		if !bytes.Equal(nb.HardwareAddr, pgw.Attrs().HardwareAddr) {
			n.t.Errorf("the node resolves %s to %s on pgk0, not to the gateway %s", a, nb.HardwareAddr, pgw.Attrs().HardwareAddr)
		}
	}
	if seen == 0 {
		n.t.Logf("no neighbour entry for %v on pgk0 (nothing to check)", ep.IPs)
	}
}
