package hostile

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/podgate/podgate/internal/test/testutil"
)

// hostileCase is a set of crafted frames from pod a to pod b and the drop
// reason each of them must be counted under.
type hostileCase struct {
	name   string
	reason string
	frames func(tb testing.TB, v4, v6 wire, open openConn) [][]byte
}

// openConn is the tuple of a TCP connection from a to b that is open while
// the cases run.
type openConn struct{ sport, dport uint16 }

// one wraps a single frame.
func one(f []byte) [][]byte { return [][]byte{f} }

// hostileCases returns the malformed frames. Source ports 31000-31999 are
// theirs; every payload carries the marker where there is room.
func hostileCases() []hostileCase {
	return []hostileCase{
		// Ethernet.
		{"eth/multicast-source-mac", "bad_ethernet", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			w := v4
			w.srcMAC = net.HardwareAddr{0x01, 0x00, 0x5e, 0, 0, 1}
			return one(w.udp(tb, 31000, 5353, mark("multicast-mac")))
		}},
		{"eth/zero-source-mac", "bad_ethernet", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			w := v4
			w.srcMAC = make(net.HardwareAddr, 6)
			return one(w.udp(tb, 31001, 5353, mark("zero-mac")))
		}},
		// The kernel takes the outer tag out of the frame before the TC
		// program of the pod's veth sees it, which drops tagged frames.
		{"eth/qinq", "offload_vlan", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			f := v4.udp(tb, 31002, 5353, mark("qinq"))
			return one(cat(f[:12], []byte{0x88, 0xa8, 0, 1, 0x81, 0, 0, 2}, f[12:]))
		}},
		{"eth/802.3-length", "unsupported_ethertype", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			f := v4.udp(tb, 31003, 5353, mark("8023"))
			binary.BigEndian.PutUint16(f[12:], uint16(len(f)-14))
			return one(f)
		}},
		{"eth/vlan-tagged", "offload_vlan", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			f := v4.udp(tb, 31004, 5353, mark("vlan"))
			return one(cat(f[:12], []byte{0x81, 0, 0, 7}, f[12:]))
		}},

		// IPv4 headers.
		{"ipv4/truncated-header", "truncated", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, nil, nil)[:14+10])
		}},
		{"ipv4/ihl-4", "bad_ipv4", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31010, 5353, 8+12, mark("ihl4")), func(ip []byte) { ip[0] = 0x44 }))
		}},
		{"ipv4/ihl-beyond-total-length", "bad_ipv4", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31011, 5353, 8+13, mark("ihl15")), func(ip []byte) { ip[0] = 0x4f }))
		}},
		{"ipv4/total-length-past-frame", "truncated", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31012, 5353, 8+16, mark("tl-long")), func(ip []byte) {
				binary.BigEndian.PutUint16(ip[2:], 1400)
			}))
		}},
		{"ipv4/total-length-below-header", "bad_ipv4", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31013, 5353, 8+15, mark("tl-short")), func(ip []byte) {
				binary.BigEndian.PutUint16(ip[2:], 12)
			}))
		}},
		{"ipv4/version-5", "bad_ipv4", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31014, 5353, 8+13, mark("v5")), func(ip []byte) { ip[0] = 0x55 }))
		}},
		{"ipv4/bad-checksum", "bad_ipv4_checksum", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			f := v4.udp(tb, 31015, 5353, mark("checksum"))
			f[14+10] ^= 0x5a
			return one(f)
		}},
		{"ipv4/loose-source-route", "source_routed", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			opt := cat([]byte{131, 7, 4}, v4.dst.AsSlice(), []byte{0})
			return one(v4.raw4(tb, layers.IPProtocolUDP, cat(opt, udpHeader(31016, 5353, 8+12, mark("lsrr"))), func(ip []byte) { ip[0] = 0x47 }))
		}},
		{"ipv4/option-length-1", "bad_ipv4", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, cat([]byte{68, 1, 0, 0}, udpHeader(31017, 5353, 8+12, mark("optlen"))), func(ip []byte) { ip[0] = 0x46 }))
		}},
		{"ipv4/multicast-source", "bad_ipv4", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			w := v4
			w.src = netip.MustParseAddr("224.0.0.5")
			return one(w.udp(tb, 31018, 5353, mark("mcast-src")))
		}},
		{"ipv4/ttl-1", "ttl_exceeded", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31019, 5353, 8+10, mark("ttl1")), func(ip []byte) { ip[8] = 1 }))
		}},

		// L4 headers.
		{"tcp/shorter-than-header", "bad_tcp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolTCP, tcpHeader(20, 31020, 80, fSYN, nil)[:12], nil))
		}},
		{"tcp/data-offset-past-packet", "bad_tcp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			h := tcpHeader(20, 31021, 80, fSYN, mark("doff60"))
			h[12] = 15 << 4
			return one(v4.raw4(tb, layers.IPProtocolTCP, h, nil))
		}},
		{"tcp/data-offset-below-5", "bad_tcp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			h := tcpHeader(20, 31022, 80, fSYN, mark("doff4"))
			h[12] = 4 << 4
			return one(v4.raw4(tb, layers.IPProtocolTCP, h, nil))
		}},
		{"udp/length-past-packet", "bad_udp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31023, 5353, 900, mark("ulen-long")), nil))
		}},
		{"udp/length-below-8", "bad_udp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31024, 5353, 4, mark("ulen-short")), nil))
		}},
		{"icmp/shorter-than-header", "bad_icmp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolICMPv4, []byte{8, 0, 0, 0}, nil))
		}},
		{"icmp/error-without-quote", "bad_icmp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolICMPv4, []byte{3, 3, 0, 0, 0, 0, 0, 0}, nil))
		}},

		// IPv6 headers and extension headers.
		{"ipv6/truncated-header", "truncated", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhUDP, nil, nil)[:14+24])
		}},
		{"ipv6/payload-length-past-frame", "truncated", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhUDP, udpHeader(31030, 5353, 8+16, mark("plen-long")), func(ip []byte) {
				binary.BigEndian.PutUint16(ip[4:], 1200)
			}))
		}},
		{"ipv6/payload-length-shorter-than-tcp", "bad_tcp", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhTCP, tcpHeader(20, 31031, 80, fSYN, mark("plen-short")), func(ip []byte) {
				binary.BigEndian.PutUint16(ip[4:], 12)
			}))
		}},
		{"ipv6/payload-length-cuts-ext-header", "bad_ipv6_ext_header", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhDestOpts, cat(extHeader(nhUDP, 1), udpHeader(31032, 5353, 8+17, mark("plen-ext"))), func(ip []byte) {
				binary.BigEndian.PutUint16(ip[4:], 8)
			}))
		}},
		{"ipv6/version-4", "bad_ipv6", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhUDP, udpHeader(31033, 5353, 8+13, mark("v6v4")), func(ip []byte) { ip[0] = 0x40 }))
		}},
		{"ipv6/multicast-source", "bad_ipv6", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			w := v6
			w.src = netip.MustParseAddr("ff02::1")
			return one(w.udp(tb, 31034, 5353, mark("mcast6")))
		}},
		{"ipv6/v4-mapped-source", "bad_ipv6", func(tb testing.TB, v4, v6 wire, _ openConn) [][]byte {
			w := v6
			w.src = netip.AddrFrom16(v4.src.As16()) // ::ffff:a's IPv4 address
			return one(w.udp(tb, 31035, 5353, mark("mapped")))
		}},
		{"ipv6/ext-header-past-packet", "bad_ipv6_ext_header", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			h := extHeader(nhUDP, 0)
			h[1] = 200 // 1608 bytes
			return one(v6.raw6(tb, nhDestOpts, cat(h, udpHeader(31036, 5353, 8+13, mark("ext-long"))), nil))
		}},
		{"ipv6/ext-chain-ends-in-ext-header", "bad_ipv6_ext_header", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			// Destination Options headers pointing at Destination
			// Options, and the packet ends where the next should be.
			return one(v6.raw6(tb, nhDestOpts, cat(extHeader(nhDestOpts, 0), extHeader(nhDestOpts, 0)), nil))
		}},
		{"ipv6/ext-chain-self-referencing", "too_many_ext_headers", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			var chain []byte
			for range 20 {
				chain = append(chain, extHeader(nhDestOpts, 0)...)
			}
			chain = append(chain, extHeader(nhUDP, 0)...)
			return one(v6.raw6(tb, nhDestOpts, cat(chain, udpHeader(31037, 5353, 8+14, mark("ext-loop"))), nil))
		}},
		{"ipv6/nine-ext-headers", "too_many_ext_headers", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			var chain []byte
			for range 8 {
				chain = append(chain, extHeader(nhDestOpts, 0)...)
			}
			chain = append(chain, extHeader(nhTCP, 0)...)
			return one(v6.raw6(tb, nhDestOpts, cat(chain, tcpHeader(20, 31038, 80, fSYN, mark("ext9"))), nil))
		}},
		{"ipv6/hop-by-hop-not-first", "bad_ipv6_ext_header", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhDestOpts, cat(extHeader(nhHopByHop, 0), extHeader(nhUDP, 0), udpHeader(31039, 5353, 8+14, mark("hbh"))), nil))
		}},
		{"ipv6/two-fragment-headers", "bad_ipv6_ext_header", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhFragment, cat(fragHeader(nhFragment, 0, true, 77), fragHeader(nhUDP, 0, true, 78),
				udpHeader(31040, 5353, 8+16, mark("2frag"))), nil))
		}},
		{"ipv6/routing-header-segments-left", "source_routed", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			rh := make([]byte, 24)
			rh[0], rh[1], rh[2], rh[3] = nhUDP, 2, 0, 1 // type 0, 1 segment left
			copy(rh[8:], v6.dst.AsSlice())
			return one(v6.raw6(tb, nhRouting, cat(rh, udpHeader(31041, 5353, 8+12, mark("rh"))), nil))
		}},
		{"ipv6/ah-length-0", "bad_ipv6_ext_header", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			ah := make([]byte, 16)
			ah[0] = nhUDP
			return one(v6.raw6(tb, nhAH, cat(ah, udpHeader(31042, 5353, 8+12, mark("ah0"))), nil))
		}},

		// Fragments.
		{"ipv4/tiny-first-fragment", "tiny_fragment", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolTCP, tcpHeader(20, 31050, 80, fSYN, nil)[:8], func(ip []byte) {
				ip[6] = 0x20 // more fragments, offset 0
			}))
		}},
		{"ipv4/fragment-overlapping-tcp-header", "bad_fragment", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			// Offset 8 rewrites the TCP flags on reassembly.
			return one(v4.raw4(tb, layers.IPProtocolTCP, cat(tcpHeader(20, 31051, 81, fSYN, nil)[8:], mark("ovl4")[:12]), func(ip []byte) {
				binary.BigEndian.PutUint16(ip[6:], 1) // offset 1 (8 bytes), last
				binary.BigEndian.PutUint16(ip[4:], 0x5151)
			}))
		}},
		{"ipv4/fragment-without-data", "bad_fragment", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, nil, func(ip []byte) { ip[6] = 0x20 }))
		}},
		{"ipv4/fragment-not-multiple-of-8", "bad_fragment", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, udpHeader(31052, 5353, 100, mark("odd"))[:13], func(ip []byte) { ip[6] = 0x20 }))
		}},
		{"ipv4/fragment-past-65535", "bad_fragment", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, cat(mark("past64k"), make([]byte, 16)), func(ip []byte) {
				binary.BigEndian.PutUint16(ip[6:], 0x1fff) // offset 65528, last
			}))
		}},
		{"ipv4/fragment-without-first", "fragment_no_state", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.raw4(tb, layers.IPProtocolUDP, cat(mark("orphan"), make([]byte, 20)), func(ip []byte) {
				binary.BigEndian.PutUint16(ip[6:], 185) // offset 1480, last
				binary.BigEndian.PutUint16(ip[4:], 0x5252)
			}))
		}},
		{"ipv6/tiny-first-fragment", "tiny_fragment", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhFragment, cat(fragHeader(nhTCP, 0, true, 91), tcpHeader(20, 31053, 80, fSYN, nil)[:8]), nil))
		}},
		{"ipv6/header-chain-in-second-fragment", "tiny_fragment", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhFragment, cat(fragHeader(nhDestOpts, 0, true, 92), extHeader(nhTCP, 1)[:8]), nil))
		}},
		{"ipv6/fragment-overlapping-tcp-header", "bad_fragment", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhFragment, cat(fragHeader(nhTCP, 8, false, 93), tcpHeader(20, 31054, 81, fSYN, nil)[8:], mark("ovl6")[:12]), nil))
		}},
		{"ipv6/fragment-without-first", "fragment_no_state", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.raw6(tb, nhFragment, cat(fragHeader(nhUDP, 1448, false, 94), mark("orphan6"), make([]byte, 16)), nil))
		}},

		// TCP flags: allowed port, new flows and the open connection.
		{"tcp/syn-fin", "invalid_tcp", func(tb testing.TB, v4, v6 wire, _ openConn) [][]byte {
			return [][]byte{v4.tcp(tb, 31060, 80, fSYN|fFIN, mark("synfin")), v6.tcp(tb, 31060, 80, fSYN|fFIN, mark("synfin6"))}
		}},
		{"tcp/no-flags", "invalid_tcp", func(tb testing.TB, v4, v6 wire, _ openConn) [][]byte {
			return [][]byte{v4.tcp(tb, 31061, 80, 0, mark("null")), v6.tcp(tb, 31061, 80, 0, mark("null6"))}
		}},
		{"tcp/all-flags", "invalid_tcp", func(tb testing.TB, v4, v6 wire, _ openConn) [][]byte {
			return [][]byte{v4.tcp(tb, 31062, 80, 0xff, mark("xmas")), v6.tcp(tb, 31062, 80, 0xff, mark("xmas6"))}
		}},
		{"tcp/syn-rst", "invalid_tcp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.tcp(tb, 31063, 80, fSYN|fRST, mark("synrst")))
		}},
		{"tcp/fin-without-flow", "invalid_tcp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.tcp(tb, 31064, 80, fFIN|fACK, mark("finack")))
		}},
		{"tcp/syn-ack-without-flow", "invalid_tcp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.tcp(tb, 31065, 80, fSYN|fACK, mark("synack")))
		}},
		{"tcp/syn-fin-on-open-connection", "invalid_tcp", func(tb testing.TB, v4, _ wire, c openConn) [][]byte {
			return one(v4.tcp(tb, c.sport, c.dport, fSYN|fFIN, mark("synfin-open")))
		}},
		{"tcp/no-flags-on-open-connection", "invalid_tcp", func(tb testing.TB, v4, _ wire, c openConn) [][]byte {
			return one(v4.tcp(tb, c.sport, c.dport, 0, mark("null-open")))
		}},

		// ICMP errors with forged quotes.
		{"icmp/error-quoting-no-flow", "icmp_unrelated", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(v4.icmp4Error(tb, quote4(v4.dst, v4.src, 80, 31070), mark("icmp-noflow")))
		}},
		{"icmp/error-quoting-open-flow-wrong-way", "icmp_unrelated", func(tb testing.TB, v4, _ wire, c openConn) [][]byte {
			// The quote is the open connection a -> b itself, sent to
			// b: an error about a packet b never sent.
			return one(v4.icmp4Error(tb, quote4(v4.src, v4.dst, c.sport, c.dport), mark("icmp-wrongway")))
		}},
		{"icmpv6/error-quoting-no-flow", "icmp_unrelated", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			return one(v6.icmp6Error(tb, quote6(v6.dst, v6.src, 80, 31071), mark("icmp6-noflow")))
		}},

		// ARP and NDP that are not even well-formed.
		{"arp/bad-hardware-type", "bad_arp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			f := arpFrame(tb, v4.srcMAC, broadcastMAC(), layers.ARPRequest, v4.srcMAC, v4.src, make(net.HardwareAddr, 6), v4.dst)
			f[14+1] = 6 // IEEE 802
			return one(f)
		}},
		{"arp/opcode-9", "bad_arp", func(tb testing.TB, v4, _ wire, _ openConn) [][]byte {
			return one(arpFrame(tb, v4.srcMAC, broadcastMAC(), 9, v4.srcMAC, v4.src, make(net.HardwareAddr, 6), v4.dst))
		}},
		{"ndp/solicitation-hop-limit-64", "bad_ndp", func(tb testing.TB, _, v6 wire, _ openConn) [][]byte {
			gw := netip.MustParseAddr("fe80::1")
			sn, snMAC := solicitedNode(gw)
			return one(neighborSolicit(tb, v6.srcMAC, snMAC, v6.src, sn, gw, 64))
		}},
	}
}

// TestMalformedFrames injects every hostile case from pod a's eth0 and
// checks that each frame is dropped and counted under its reason, that
// none of them reaches pod b, that the agent stays up and that an open
// connection and the policy are unaffected.
func TestMalformedFrames(t *testing.T) {
	n := newNode(t)
	v4 := wire{srcMAC: n.podMAC(n.a), dstMAC: n.gatewayMAC(n.a), src: n.a.IPs[0], dst: n.b.IPs[0]}
	v6 := wire{srcMAC: v4.srcMAC, dstMAC: v4.dstMAC, src: n.a.IPs[1], dst: n.b.IPs[1]}
	if !v4.src.Is4() || !v6.src.Is6() || !v4.dst.Is4() || !v6.dst.Is6() {
		t.Fatalf("unexpected addresses: a %v, b %v", n.a.IPs, n.b.IPs)
	}
	conn := n.dial("app/a", "app/b", tcpPort(80))
	if err := echo(conn, time.Second); err != nil {
		t.Fatal(err)
	}
	la, ra := conn.LocalAddr().(*net.TCPAddr), conn.RemoteAddr().(*net.TCPAddr)
	open := openConn{sport: uint16(la.Port), dport: uint16(ra.Port)}
	sniffB := n.sniffer(n.b, hasMarker)
	in := n.injector(n.a)
	// The sniffer sees a marked frame that is allowed.
	if err := in.Send(v4.udp(t, 31999, 5353, mark("control"))); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 3*time.Second, "an allowed marked frame reaches b", func() error {
		if sniffB.Count() != 1 {
			return fmt.Errorf("sniffer saw %d frames", sniffB.Count())
		}
		return nil
	})
	sniffB.Reset()

	counted := map[string]float64{}
	for _, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			frames := c.frames(t, v4, v6, open)
			before := n.metrics()
			if _, err := in.SendAll(frames, 0, 0); err != nil {
				t.Fatal(err)
			}
			after := n.waitDrops(before, map[string]float64{c.reason: float64(len(frames))}, 3*time.Second)
			d := dropDeltas(before, after)
			if d[c.reason] < float64(len(frames)) {
				t.Errorf("%d frames sent, %s grew by %v; all drops that grew: %v", len(frames), c.reason, d[c.reason], d)
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

	// Pods still work, and nothing marked got to b.
	time.Sleep(100 * time.Millisecond)
	if got := sniffB.Count(); got != 0 {
		t.Errorf("%d crafted frames reached pod b, e.g. % x", got, sniffB.Frames()[0])
	}
	n.checkHealthy("after the hostile frames")
	if err := echo(conn, time.Second); err != nil {
		t.Errorf("the open connection broke: %v", err)
	}
	n.checkPolicy("after the hostile frames")
}

// background reports whether drops of this reason happen without the
// tests' doing: the pods' own multicast (MLD, router solicitations) and
// neighbour traffic.
func background(reason string) bool { return reason == "not_routed" || reason == "neighbor" }

// formatCounts prints a map of counts sorted by key.
func formatCounts(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%v", k, m[k])
	}
	return b.String()
}
