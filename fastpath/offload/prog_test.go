package offload

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// TC return codes as BPF_PROG_RUN reports them.
const (
	tcNext     = 0xffffffff // TC_ACT_UNSPEC, TCX_NEXT
	tcRedirect = 7
	tcShot     = 2
)

// MACs of the test pods' eth0 (macA, macB) and of their host veths.
var (
	macA   = [6]byte{0x02, 0, 0, 0, 0, 0x0a}
	macB   = [6]byte{0x02, 0, 0, 0, 0, 0x0b}
	macGWA = [6]byte{0x02, 0, 0, 0, 1, 0x0a}
	macGWB = [6]byte{0x02, 0, 0, 0, 1, 0x0b}
	macPGW = [6]byte{0x02, 0, 0, 0, 2, 0x01} // pgw0, what the kernel sends to
)

// progEnv runs the programs with BPF_PROG_RUN in a namespace with two veth
// pairs, whose ifindexes stand for pod A's and pod B's host veths and for
// pgk0 (BPF_PROG_RUN needs the context's ifindex to exist).
type progEnv struct {
	o                *Offload
	ns               *netns.Namespace
	podA, podB, kern int
}

func newProgEnv(t *testing.T) *progEnv {
	t.Helper()
	ns := netns.NewForTest(t, "ofprog")
	v1, err := netns.AddVeth(netns.VethConfig{NS: ns, Name: "pa", PeerNS: ns, PeerName: "pb"})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := netns.AddVeth(netns.VethConfig{NS: ns, Name: "pk", PeerNS: ns, PeerName: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	o, err := Open(Config{MaxFlows: 16})
	if err != nil {
		t.Fatalf("Open: %+v", err)
	}
	t.Cleanup(func() {
		if err := o.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &progEnv{o: o, ns: ns, podA: v1.Index, podB: v1.PeerIndex, kern: v2.Index}
}

// skbCtx is the head of struct __sk_buff, up to ifindex: what
// BPF_PROG_RUN lets a test set (len and pkt_type must be zero).
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority uint32
	IngressIfindex, Ifindex                                                               uint32
}

// run runs prog on a copy of frame as if it arrived on (or left by)
// ifindex, and returns the verdict and the frame after the program.
func (e *progEnv) run(t *testing.T, prog *ebpf.Program, ifindex int, frame []byte) (uint32, []byte) {
	t.Helper()
	var (
		ret uint32
		out = make([]byte, len(frame)+256)
	)
	err := e.ns.Do(func() error {
		opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: skbCtx{Ifindex: uint32(ifindex)}}
		var err error
		ret, err = prog.Run(opts)
		out = opts.DataOut
		return err
	})
	if err != nil {
		t.Fatalf("run %v: %v", prog, err)
	}
	return ret, out
}

func (e *progEnv) stats(t *testing.T) Stats {
	t.Helper()
	s, err := e.o.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *progEnv) setPunt(t *testing.T, ifindex int) {
	t.Helper()
	if err := e.o.setPuntIfindex(ifindex); err != nil {
		t.Fatal(err)
	}
}

// peerFlow is a flow from (src, sport) on pod A to (dst, dport) on pod B,
// ActPeer both ways, and the direction of A's packets.
func (e *progEnv) peerFlow(src, dst netip.Addr, proto uint8, sport, dport uint16, slot uint32) (Flow, Dir) {
	k, d := MakeKey(src, dst, proto, sport, dport)
	var v Value
	v.Slot = slot
	v.Dir[d] = FlowDir{InIfindex: uint32(e.podA), OutIfindex: uint32(e.podB), SrcMAC: macA, DstMAC: macB, GwMAC: macGWB, Action: ActPeer}
	v.Dir[1-d] = FlowDir{InIfindex: uint32(e.podB), OutIfindex: uint32(e.podA), SrcMAC: macB, DstMAC: macA, GwMAC: macGWA, Action: ActPeer}
	return Flow{Key: k, Value: v}, d
}

func (e *progEnv) install(t *testing.T, flows ...Flow) {
	t.Helper()
	if _, err := e.o.Install(flows); err != nil {
		t.Fatal(err)
	}
}

var (
	v4A, v4B = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	v6A, v6B = netip.MustParseAddr("fd00::1:1"), netip.MustParseAddr("fd00::2")
)

// udpA is a UDP frame from pod A to pod B, as A sends it.
func udpA(src, dst netip.Addr, sport, dport uint16) frame {
	return frame{srcMAC: macA, dstMAC: macGWA, src: src, dst: dst, proto: ProtoUDP, sport: sport, dport: dport}
}

// TestPodIngressPunt sends pod_ingress one frame per punt reason: each is
// redirected to the punt interface with the marker in its destination MAC
// and nothing else changed, and counted under its reason.
func TestPodIngressPunt(t *testing.T) {
	e := newProgEnv(t)
	e.setPunt(t, e.kern)

	// Flows for the cases that need a hit.
	spoofFlow, _ := e.peerFlow(v4A, v4B, ProtoUDP, 1000, 2000, 1)
	actFlow, ad := e.peerFlow(v4A, v4B, ProtoUDP, 1001, 2000, 2)
	actFlow.Value.Dir[ad].Action = ActRedirect // for kernel_egress only
	noneFlow, nd := e.peerFlow(v4A, v4B, ProtoUDP, 1002, 2000, 3)
	noneFlow.Value.Dir[nd] = FlowDir{}
	e.install(t, spoofFlow, actFlow, noneFlow)
	// A slot past MaxFlows, written around Install's check.
	slotFlow, _ := e.peerFlow(v4A, v4B, ProtoUDP, 1003, 2000, 16)
	if err := e.o.objs.Flows.Put(&slotFlow.Key, &slotFlow.Value); err != nil {
		t.Fatal(err)
	}

	base := udpA(v4A, v4B, 5555, 2000)
	tcp := func(flags string) frame {
		f := base
		f.proto, f.tcpFlags = ProtoTCP, flags
		return f
	}
	v6 := func(f frame) frame { f.src, f.dst = v6A, v6B; return f }
	eth := func(et layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: hw(macA), DstMAC: hw(macGWA), EthernetType: et}
	}
	withIP := func(f frame, mod func(ip *layers.IPv4)) []byte {
		ls := f.layers()
		mod(ls[1].(*layers.IPv4))
		return serialize(t, ls...)
	}
	patch := func(b []byte, off int, v byte) []byte { b[off] = v; return b }

	// BPF_PROG_RUN refuses frames shorter than their IP header, so the
	// truncated cases truncate later headers.
	for _, tc := range []struct {
		name    string
		frame   func() []byte
		ifindex int // 0: pod A
		want    Reason
	}{
		{"arp", func() []byte {
			return serialize(t, eth(layers.EthernetTypeARP), &layers.ARP{
				AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
				Operation: layers.ARPRequest, SourceHwAddress: hw(macA), SourceProtAddress: v4A.AsSlice(),
				DstHwAddress: make([]byte, 6), DstProtAddress: v4B.AsSlice()})
		}, 0, ReasonNotIP},
		{"vlan", func() []byte {
			ls := base.layers()
			ls[0] = eth(layers.EthernetTypeDot1Q)
			return serialize(t, append([]gopacket.SerializableLayer{ls[0], &layers.Dot1Q{VLANIdentifier: 5, Type: layers.EthernetTypeIPv4}}, ls[1:]...)...)
		}, 0, ReasonVLAN},
		{"qinq", func() []byte {
			ls := base.layers()
			ls[0] = eth(layers.EthernetTypeQinQ)
			return serialize(t, append([]gopacket.SerializableLayer{ls[0], &layers.Dot1Q{VLANIdentifier: 5, Type: layers.EthernetTypeIPv4}}, ls[1:]...)...)
		}, 0, ReasonVLAN},
		{"ipv4 version 5", func() []byte { return patch(base.bytes(t), 14, 0x55) }, 0, ReasonMalformed},
		{"ipv4 ihl 4", func() []byte { return patch(base.bytes(t), 14, 0x44) }, 0, ReasonMalformed},
		{"ipv4 ihl past the frame", func() []byte { return patch(base.bytes(t), 14, 0x4f) }, 0, ReasonMalformed},
		{"udp truncated", func() []byte { return base.bytes(t)[:14+20+7] }, 0, ReasonMalformed},
		{"tcp truncated", func() []byte { return tcp("A").bytes(t)[:14+20+19] }, 0, ReasonMalformed},
		{"sctp truncated", func() []byte {
			f := base
			f.proto = ProtoSCTP
			return f.bytes(t)[:14+20+11]
		}, 0, ReasonMalformed},
		{"ipv6 version 4", func() []byte { return patch(v6(base).bytes(t), 14, 0x40) }, 0, ReasonMalformed},
		{"ipv4 more fragments", func() []byte {
			return withIP(base, func(ip *layers.IPv4) { ip.Flags = layers.IPv4MoreFragments })
		}, 0, ReasonFragment},
		{"ipv4 fragment offset", func() []byte {
			return withIP(base, func(ip *layers.IPv4) { ip.Flags, ip.FragOffset = 0, 100 })
		}, 0, ReasonFragment},
		{"ipv6 fragment header", func() []byte {
			ls := v6(base).layers()
			ls[1].(*layers.IPv6).NextHeader = layers.IPProtocolIPv6Fragment
			frag := gopacket.Payload{ProtoUDP, 0, 0, 1, 0, 0, 0, 9} // offset 0, more fragments
			return serialize(t, ls[0], ls[1], frag, ls[2], ls[3])
		}, 0, ReasonFragment},
		{"icmp", func() []byte {
			ls := base.layers()
			ip := ls[1].(*layers.IPv4)
			ip.Protocol = layers.IPProtocolICMPv4
			return serialize(t, ls[0], ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 1, Seq: 1})
		}, 0, ReasonICMP},
		{"icmpv6 neighbor solicitation", func() []byte {
			ls := v6(base).layers()
			ip := ls[1].(*layers.IPv6)
			ip.NextHeader, ip.HopLimit = layers.IPProtocolICMPv6, 255
			icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(135, 0)}
			icmp.SetNetworkLayerForChecksum(ip)
			return serialize(t, ls[0], ip, icmp, gopacket.Payload(make([]byte, 20)))
		}, 0, ReasonICMP},
		{"gre", func() []byte {
			ls := base.layers()
			ip := ls[1].(*layers.IPv4)
			ip.Protocol = layers.IPProtocolGRE
			return serialize(t, ls[0], ip, gopacket.Payload(make([]byte, 24)))
		}, 0, ReasonProto},
		{"ipv6 hop-by-hop before udp", func() []byte {
			ls := v6(base).layers()
			ls[1].(*layers.IPv6).NextHeader = layers.IPProtocolIPv6HopByHop
			hbh := gopacket.Payload{ProtoUDP, 0, 1, 4, 0, 0, 0, 0}
			return serialize(t, ls[0], ls[1], hbh, ls[2], ls[3])
		}, 0, ReasonProto},
		{"tcp syn", func() []byte { return tcp("S").bytes(t) }, 0, ReasonTCPFlags},
		{"tcp syn ack", func() []byte { return tcp("SA").bytes(t) }, 0, ReasonTCPFlags},
		{"tcp fin", func() []byte { return tcp("FA").bytes(t) }, 0, ReasonTCPFlags},
		{"tcp rst", func() []byte { return tcp("R").bytes(t) }, 0, ReasonTCPFlags},
		{"tcp no flags", func() []byte { return tcp("-").bytes(t) }, 0, ReasonTCPFlags},
		{"tcp push without ack", func() []byte { return tcp("P").bytes(t) }, 0, ReasonTCPFlags},
		{"tcp data offset 4", func() []byte { f := tcp("A").bytes(t); return patch(f, 14+20+12, 0x40) }, 0, ReasonMalformed},
		{"ipv4 options", func() []byte {
			return frame{srcMAC: macA, dstMAC: macGWA, src: v4A, dst: v4B, proto: ProtoTCP, sport: 33000, dport: 80, ipOptions: true}.bytes(t)
		}, 0, ReasonProto},
		{"ipv6 tcp syn", func() []byte { return v6(tcp("S")).bytes(t) }, 0, ReasonTCPFlags},
		{"ttl 1", func() []byte { f := base; f.ttl = 1; return f.bytes(t) }, 0, ReasonTTL},
		{"ttl 0", func() []byte { return withIP(base, func(ip *layers.IPv4) { ip.TTL = 0 }) }, 0, ReasonTTL},
		{"hop limit 1", func() []byte { f := v6(base); f.ttl = 1; return f.bytes(t) }, 0, ReasonTTL},
		{"miss udp", func() []byte { return base.bytes(t) }, 0, ReasonMiss},
		{"miss tcp", func() []byte { return tcp("A").bytes(t) }, 0, ReasonMiss},
		{"miss sctp", func() []byte { f := base; f.proto = ProtoSCTP; return f.bytes(t) }, 0, ReasonMiss},
		{"miss ipv6", func() []byte { return v6(base).bytes(t) }, 0, ReasonMiss},
		{"miss reply port", func() []byte { return udpA(v4A, v4B, 2000, 1000).bytes(t) }, 0, ReasonMiss},
		{"spoofed source mac", func() []byte {
			f := udpA(v4A, v4B, 1000, 2000)
			f.srcMAC = [6]byte{0x02, 0, 0, 0, 0, 0x66}
			return f.bytes(t)
		}, 0, ReasonSpoof},
		{"wrong interface", func() []byte { return udpA(v4A, v4B, 1000, 2000).bytes(t) }, -1, ReasonSpoof},
		{"action for kernel_egress", func() []byte { return udpA(v4A, v4B, 1001, 2000).bytes(t) }, 0, ReasonAction},
		{"direction not offloaded", func() []byte { return udpA(v4A, v4B, 1002, 2000).bytes(t) }, 0, ReasonAction},
		{"slot out of range", func() []byte { return udpA(v4A, v4B, 1003, 2000).bytes(t) }, 0, ReasonSlot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ifindex := e.podA
			if tc.ifindex < 0 {
				ifindex = e.podB
			}
			in := tc.frame()
			before := e.stats(t)
			ret, out := e.run(t, e.o.objs.PodIngress, ifindex, in)
			after := e.stats(t)
			switch {
			case tc.want == ReasonVLAN:
				// Dropped, not punted: see pod_ingress.
				if ret != tcShot || !bytes.Equal(out[:len(in)], in) || after.VLANDropped != before.VLANDropped+1 {
					t.Errorf("verdict %#x, VLAN drops %d -> %d; want shot (%d), counted, the frame unchanged", ret, before.VLANDropped, after.VLANDropped, tcShot)
				}
			default:
				if ret != tcRedirect {
					t.Errorf("verdict %#x, want redirect (%d)", ret, tcRedirect)
				}
				if want := PuntMarker(ifindex); !bytes.Equal(out[:6], want[:]) {
					t.Errorf("destination MAC % x, want marker % x", out[:6], want)
				}
				if !bytes.Equal(out[6:], in[6:]) {
					t.Errorf("frame changed beyond the destination MAC:\n in % x\nout % x", in, out)
				}
			}
			for r := Reason(0); r < NumReasons; r++ {
				want := before.Punt[r]
				if r == tc.want {
					want++
				}
				if after.Punt[r] != want {
					t.Errorf("Punt[%v] = %d, want %d", r, after.Punt[r], want)
				}
			}
			if after.Hit != before.Hit || after.PuntUnset != before.PuntUnset {
				t.Errorf("stats changed beyond Punt: %+v -> %+v", before, after)
			}
		})
	}
}

// TestPodIngressPuntUnset: without a punt interface a miss goes on to the
// kernel untouched.
func TestPodIngressPuntUnset(t *testing.T) {
	e := newProgEnv(t)
	in := udpA(v4A, v4B, 1, 2).bytes(t)
	before := e.stats(t)
	ret, out := e.run(t, e.o.objs.PodIngress, e.podA, in)
	after := e.stats(t)
	if ret != tcNext || !bytes.Equal(in, out) {
		t.Errorf("verdict %#x, frame changed %v; want TCX_NEXT, unchanged", ret, !bytes.Equal(in, out))
	}
	if after.PuntUnset != before.PuntUnset+1 || after.Punt[ReasonMiss] != before.Punt[ReasonMiss]+1 {
		t.Errorf("PuntUnset %d -> %d, Punt[miss] %d -> %d", before.PuntUnset, after.PuntUnset, before.Punt[ReasonMiss], after.Punt[ReasonMiss])
	}
}

// coarseNow is CLOCK_MONOTONIC_COARSE, the clock of Counter.LastSeenNS.
func coarseNow(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// TestPodIngressPeer installs flows and sends their packets, in both
// directions, v4 and v6: each lands on the key and direction MakeKey
// computes (so its counter counts), is rewritten for the destination pod
// (MACs, TTL - 1 with a valid IPv4 header checksum, nothing else) and
// redirected.
func TestPodIngressPeer(t *testing.T) {
	e := newProgEnv(t)
	e.setPunt(t, e.kern)
	for i, tc := range []struct {
		name string
		f    frame
	}{
		{"udp v4", udpA(v4A, v4B, 40000, 53)},
		{"udp v4 ports compared in host order", udpA(v4A, netip.MustParseAddr("10.0.0.1"), 0x0100, 0x0001)},
		{"udp v4 higher source", udpA(netip.MustParseAddr("10.0.1.0"), netip.MustParseAddr("10.0.0.255"), 7, 8)},
		{"tcp v4 push", frame{srcMAC: macA, dstMAC: macGWA, src: v4A, dst: v4B, proto: ProtoTCP, sport: 33001, dport: 80, tcpFlags: "AP", payload: 1400}},
		{"sctp v4", frame{srcMAC: macA, dstMAC: macGWA, src: v4A, dst: v4B, proto: ProtoSCTP, sport: 9, dport: 9}},
		{"ttl 2", frame{srcMAC: macA, dstMAC: macGWA, src: v4A, dst: v4B, proto: ProtoUDP, sport: 3, dport: 4, ttl: 2}},
		{"udp v6", udpA(v6A, v6B, 40000, 53)},
		{"udp v6 higher source", udpA(v6A, netip.MustParseAddr("fd00::1:0"), 1, 2)},
		{"tcp v6", frame{srcMAC: macA, dstMAC: macGWA, src: v6A, dst: v6B, proto: ProtoTCP, sport: 33000, dport: 443}},
	} {
		for _, reply := range []bool{false, true} {
			name := tc.name
			if reply {
				name += " reply"
			}
			t.Run(name, func(t *testing.T) {
				slot := uint32(i)
				e.o.ResetCounters(slot)
				flow, dA := e.peerFlow(tc.f.src, tc.f.dst, tc.f.proto, tc.f.sport, tc.f.dport, slot)
				e.install(t, flow)
				t.Cleanup(func() {
					if err := e.o.Remove([]Key{flow.Key}); err != nil {
						t.Error(err)
					}
				})
				f, d, in, out := tc.f, dA, e.podA, e.podB
				if reply {
					f.src, f.dst, f.sport, f.dport = f.dst, f.src, f.dport, f.sport
					f.srcMAC, f.dstMAC = macB, macGWB
					d, in, out = 1-dA, e.podB, e.podA
				}
				if k, dd := MakeKey(f.src, f.dst, f.proto, f.sport, f.dport); k != flow.Key || dd != d {
					t.Fatalf("MakeKey of the packet = %v %d, want %v %d", k, dd, flow.Key, d)
				}
				frame := f.bytes(t)
				before := e.stats(t)
				t0 := coarseNow(t)
				ret, got := e.run(t, e.o.objs.PodIngress, in, frame)
				t1 := coarseNow(t)
				after := e.stats(t)
				if ret != tcRedirect {
					t.Fatalf("verdict %#x, want redirect; stats %+v -> %+v", ret, before, after)
				}
				if after.Hit[ActPeer] != before.Hit[ActPeer]+1 {
					t.Errorf("Hit[peer] %d -> %d", before.Hit[ActPeer], after.Hit[ActPeer])
				}
				dir := flow.Value.Dir[d]
				checkRewrite(t, frame, got, dir.DstMAC, dir.GwMAC, true)
				if dir.OutIfindex != uint32(out) {
					t.Errorf("flow's out ifindex %d, want %d", dir.OutIfindex, out)
				}
				c, other := e.o.Counters(slot, d), e.o.Counters(slot, 1-d)
				if c.Packets != 1 || c.Bytes != uint64(len(frame)) || c.LastSeenNS < t0 || c.LastSeenNS > t1 {
					t.Errorf("Counters(%d, %d) = %+v, want 1 packet, %d bytes, seen in [%d, %d]", slot, d, c, len(frame), t0, t1)
				}
				if other != (Counter{}) {
					t.Errorf("other direction counted: %+v", other)
				}
			})
		}
	}
}

// checkRewrite checks that out is in with the given MACs and, with ttl,
// the TTL or hop limit one lower (and a valid IPv4 header checksum), and
// nothing else changed.
func checkRewrite(t *testing.T, in, out []byte, dst, src [6]byte, ttl bool) {
	t.Helper()
	if len(out) != len(in) {
		t.Fatalf("frame length %d, want %d", len(out), len(in))
	}
	if !bytes.Equal(out[0:6], dst[:]) || !bytes.Equal(out[6:12], src[:]) {
		t.Errorf("MACs dst % x src % x, want % x, % x", out[0:6], out[6:12], dst, src)
	}
	want := bytes.Clone(in)
	copy(want[0:6], dst[:])
	copy(want[6:12], src[:])
	if ttl {
		if binary.BigEndian.Uint16(in[12:]) == 0x0800 {
			want[14+8]--
			if !ipv4HeaderOK(out[14:]) {
				t.Errorf("IPv4 header checksum wrong: % x", out[14:14+int(out[14]&0xf)*4])
			}
			copy(want[14+10:14+12], out[14+10:14+12]) // checked above
		} else {
			want[14+7]--
		}
	}
	if !bytes.Equal(out, want) {
		t.Errorf("frame after the program:\n got % x\nwant % x", out, want)
	}
}

// TestPodIngressKernel: ActKernel counts and hands the frame on untouched.
func TestPodIngressKernel(t *testing.T) {
	e := newProgEnv(t)
	e.setPunt(t, e.kern)
	dst := netip.MustParseAddr("192.0.2.9")
	k, d := MakeKey(v4A, dst, ProtoTCP, 40000, 443)
	var v Value
	v.Slot = 5
	v.Dir[d] = FlowDir{InIfindex: uint32(e.podA), SrcMAC: macA, Action: ActKernel}
	e.install(t, Flow{Key: k, Value: v})
	in := frame{srcMAC: macA, dstMAC: macGWA, src: v4A, dst: dst, proto: ProtoTCP, sport: 40000, dport: 443}.bytes(t)
	before := e.stats(t)
	ret, out := e.run(t, e.o.objs.PodIngress, e.podA, in)
	after := e.stats(t)
	if ret != tcNext || !bytes.Equal(in, out) {
		t.Errorf("verdict %#x, frame changed %v; want TCX_NEXT, unchanged", ret, !bytes.Equal(in, out))
	}
	if after.Hit[ActKernel] != before.Hit[ActKernel]+1 {
		t.Errorf("Hit[kernel] %d -> %d", before.Hit[ActKernel], after.Hit[ActKernel])
	}
	if c := e.o.Counters(5, d); c.Packets != 1 || c.Bytes != uint64(len(in)) {
		t.Errorf("Counters = %+v", c)
	}
	// The reply direction is not offloaded: punted.
	reply := frame{srcMAC: macA, dstMAC: macGWA, src: dst, dst: v4A, proto: ProtoTCP, sport: 443, dport: 40000}.bytes(t)
	if ret, _ := e.run(t, e.o.objs.PodIngress, e.podA, reply); ret != tcRedirect {
		t.Errorf("reply verdict %#x, want punt", ret)
	}
	if s := e.stats(t); s.Punt[ReasonAction] != after.Punt[ReasonAction]+1 {
		t.Errorf("Punt[action] %d -> %d", after.Punt[ReasonAction], s.Punt[ReasonAction])
	}
}

// TestKernelEgress: marked frames pass; hits with ActRedirect arriving on
// pgk0 are rewritten (no TTL change) and redirected; everything else
// passes, counted by reason.
func TestKernelEgress(t *testing.T) {
	e := newProgEnv(t)
	outside := netip.MustParseAddr("192.0.2.7")
	flowTo := func(sport uint16, slot uint32, mod func(*FlowDir)) Flow {
		k, d := MakeKey(outside, v4B, ProtoUDP, sport, 53)
		var v Value
		v.Slot = slot
		v.Dir[d] = FlowDir{InIfindex: uint32(e.kern), OutIfindex: uint32(e.podB), DstMAC: macB, GwMAC: macGWB, Action: ActRedirect}
		v.Dir[1-d] = FlowDir{InIfindex: uint32(e.podB), SrcMAC: macB, Action: ActKernel}
		if mod != nil {
			mod(&v.Dir[d])
		}
		return Flow{Key: k, Value: v}
	}
	e.install(t,
		flowTo(1000, 1, nil),
		flowTo(1001, 2, func(d *FlowDir) { d.InIfindex = uint32(e.podA) }),
		flowTo(1002, 3, func(d *FlowDir) { d.Action = ActPeer }),
	)
	fromKernel := func(sport uint16) frame {
		return frame{srcMAC: [6]byte{0x02, 0, 0, 0, 3, 1}, dstMAC: macPGW, src: outside, dst: v4B, proto: ProtoUDP, sport: sport, dport: 53, ttl: 1}
	}

	t.Run("hit", func(t *testing.T) {
		in := fromKernel(1000).bytes(t)
		before := e.stats(t)
		ret, out := e.run(t, e.o.objs.KernelEgress, e.kern, in)
		after := e.stats(t)
		if ret != tcRedirect {
			t.Fatalf("verdict %#x, want redirect; stats %+v", ret, after)
		}
		checkRewrite(t, in, out, macB, macGWB, false)
		if after.Hit[ActRedirect] != before.Hit[ActRedirect]+1 {
			t.Errorf("Hit[redirect] %d -> %d", before.Hit[ActRedirect], after.Hit[ActRedirect])
		}
		_, d := MakeKey(outside, v4B, ProtoUDP, 1000, 53)
		if c := e.o.Counters(1, d); c.Packets != 1 || c.Bytes != uint64(len(in)) {
			t.Errorf("Counters = %+v", c)
		}
	})
	t.Run("marked", func(t *testing.T) {
		f := udpA(v4A, v4B, 1, 2)
		f.dstMAC = PuntMarker(e.podA)
		in := f.bytes(t)
		before := e.stats(t)
		ret, out := e.run(t, e.o.objs.KernelEgress, e.kern, in)
		after := e.stats(t)
		if ret != tcNext || !bytes.Equal(in, out) || after.EgressMarked != before.EgressMarked+1 {
			t.Errorf("verdict %#x, changed %v, EgressMarked %d -> %d", ret, !bytes.Equal(in, out), before.EgressMarked, after.EgressMarked)
		}
	})
	for _, tc := range []struct {
		name  string
		frame []byte
		want  Reason
	}{
		{"miss", fromKernel(999).bytes(t), ReasonMiss},
		{"wrong interface", fromKernel(1001).bytes(t), ReasonSpoof},
		{"action for pod_ingress", fromKernel(1002).bytes(t), ReasonAction},
		{"tcp syn", frame{dstMAC: macPGW, src: outside, dst: v4B, proto: ProtoTCP, sport: 1000, dport: 53, tcpFlags: "S"}.bytes(t), ReasonTCPFlags},
		{"fragment", func() []byte {
			b := fromKernel(1000).bytes(t)
			b[14+6] |= 0x20 // more fragments
			return b
		}(), ReasonFragment},
		{"icmp", serialize(t, &layers.Ethernet{DstMAC: hw(macPGW), SrcMAC: hw(macGWA), EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, TTL: 5, Protocol: layers.IPProtocolICMPv4, SrcIP: nip(outside), DstIP: nip(v4B)},
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}), ReasonICMP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.stats(t)
			ret, out := e.run(t, e.o.objs.KernelEgress, e.kern, tc.frame)
			after := e.stats(t)
			if ret != tcNext || !bytes.Equal(tc.frame, out) {
				t.Errorf("verdict %#x, frame changed %v; want TCX_NEXT, unchanged", ret, !bytes.Equal(tc.frame, out))
			}
			for r := Reason(0); r < NumReasons; r++ {
				want := before.Pass[r]
				if r == tc.want {
					want++
				}
				if after.Pass[r] != want {
					t.Errorf("Pass[%v] = %d, want %d", r, after.Pass[r], want)
				}
			}
		})
	}
}

// TestInstallRemoveRange covers the map API: validation, batch install,
// removal with missing keys, iteration, counters reset.
func TestInstallRemoveRange(t *testing.T) {
	e := newProgEnv(t)
	var flows []Flow
	for i := range 10 {
		f, _ := e.peerFlow(v4A, v4B, ProtoTCP, uint16(1000+i), 80, uint32(i))
		flows = append(flows, f)
	}
	bad := flows[3]
	bad.Value.Slot = 16
	if n, err := e.o.Install([]Flow{flows[0], bad}); err == nil || n != 0 {
		t.Fatal("Install with slot 16 of 16 succeeded")
	}
	if n := count(t, e.o); n != 0 {
		t.Fatalf("a rejected Install left %d flows", n)
	}
	if _, err := e.o.Install(flows); err != nil {
		t.Fatal(err)
	}
	// Replacing is fine.
	if _, err := e.o.Install(flows[:2]); err != nil {
		t.Fatal(err)
	}
	got := map[Key]Value{}
	if err := e.o.Range(func(k Key, v Value) bool { got[k] = v; return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(flows) {
		t.Fatalf("Range saw %d flows, want %d", len(got), len(flows))
	}
	for _, f := range flows {
		if got[f.Key] != f.Value {
			t.Errorf("flow %v = %+v, want %+v", f.Key, got[f.Key], f.Value)
		}
	}
	stop := 0
	if err := e.o.Range(func(Key, Value) bool { stop++; return false }); err != nil || stop != 1 {
		t.Errorf("Range stopping at once: %d calls, %v", stop, err)
	}
	missing, _ := MakeKey(v4A, v4B, ProtoUDP, 1, 1)
	if err := e.o.Remove([]Key{flows[0].Key, missing, flows[1].Key, missing, missing, flows[2].Key}); err != nil {
		t.Fatal(err)
	}
	if err := e.o.Remove([]Key{missing}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, e.o); n != len(flows)-3 {
		t.Errorf("%d flows after removing 3 of %d", n, len(flows))
	}
	// Counters: written by hand here as the programs would.
	*e.o.counters.field(5, DirBA, fieldPackets) = 3
	*e.o.counters.field(5, DirBA, fieldBytes) = 300
	*e.o.counters.field(5, DirBA, fieldLastSeen) = 77
	*e.o.counters.field(5, DirAB, fieldPackets) = 1
	if c := e.o.Counters(5, DirBA); c != (Counter{3, 300, 77}) {
		t.Errorf("Counters(5, BA) = %+v", c)
	}
	if n := testing.AllocsPerRun(100, func() { _ = e.o.Counters(5, DirBA) }); n != 0 {
		t.Errorf("Counters allocates %v times", n)
	}
	if got := e.o.Take(5); got != [2]Counter{{1, 0, 0}, {3, 300, 77}} {
		t.Errorf("Take = %+v", got)
	}
	if got := e.o.Take(5); got != [2]Counter{{}, {0, 0, 77}} {
		t.Errorf("second Take = %+v, want zero counts and the last-seen time", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = e.o.Take(5) }); n != 0 {
		t.Errorf("Take allocates %v times", n)
	}
	e.o.ResetCounters(5)
	if c := e.o.Counters(5, DirBA); c != (Counter{}) {
		t.Errorf("after reset: %+v", c)
	}
	if got := e.o.Take(16); got != [2]Counter{} {
		t.Errorf("Take out of range = %+v", got)
	}
	if c := e.o.Counters(16, DirAB); c != (Counter{}) {
		t.Errorf("Counters out of range = %+v", c)
	}
}

func count(t *testing.T, o *Offload) int {
	t.Helper()
	n := 0
	if err := o.Range(func(Key, Value) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestInstallFull: a full map is an error saying how many flows went in.
func TestInstallFull(t *testing.T) {
	e := newProgEnv(t)
	var flows []Flow
	for i := range 20 {
		f, _ := e.peerFlow(v4A, v4B, ProtoUDP, uint16(i+1), 80, uint32(i%16))
		flows = append(flows, f)
	}
	n, err := e.o.Install(flows)
	if n != 16 {
		t.Errorf("Install of 20 flows into 16 installed %d", n)
	}
	if err == nil {
		t.Fatal("installing 20 flows into 16 succeeded")
	}
	if want := fmt.Sprintf("16 of %d installed", len(flows)); !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

// TestLease: a flow is used while the lease holds (or without one), and
// after it expires every frame of it is punted (pod_ingress) or passed on
// (kernel_egress), counted as ReasonLease, until the lease is renewed.
func TestLease(t *testing.T) {
	e := newProgEnv(t)
	e.setPunt(t, e.kern)
	f := udpA(v4A, v4B, 41000, 53)
	flow, _ := e.peerFlow(f.src, f.dst, f.proto, f.sport, f.dport, 1)
	e.install(t, flow)
	frame := f.bytes(t)
	send := func(what string, want uint32) {
		t.Helper()
		ret, _ := e.run(t, e.o.objs.PodIngress, e.podA, frame)
		if ret != want {
			t.Fatalf("%s: verdict %d, want %d", what, ret, want)
		}
	}
	now := int64(coarseNow(t))
	if err := e.o.Lease(now + int64(time.Hour)); err != nil {
		t.Fatal(err)
	}
	before := e.stats(t)
	send("within the lease", tcRedirect)
	if got := e.stats(t).Hit[ActPeer] - before.Hit[ActPeer]; got != 1 {
		t.Fatalf("within the lease: %d hits, want 1", got)
	}
	if err := e.o.Lease(now - int64(time.Second)); err != nil {
		t.Fatal(err)
	}
	before = e.stats(t)
	send("after the lease", tcRedirect) // punted: also a redirect, to pgk0
	st := e.stats(t)
	if st.Hit[ActPeer] != before.Hit[ActPeer] || st.Punt[ReasonLease] != before.Punt[ReasonLease]+1 {
		t.Errorf("after the lease: hits %d -> %d, lease punts %d -> %d", before.Hit[ActPeer], st.Hit[ActPeer], before.Punt[ReasonLease], st.Punt[ReasonLease])
	}
	// kernel_egress: an expired lease passes frames on.
	ret, _ := e.run(t, e.o.objs.KernelEgress, e.kern, udpA(v4B, v4A, 53, 41000).bytes(t))
	if ret != tcNext {
		t.Errorf("kernel_egress after the lease: verdict %d, want next", ret)
	}
	if err := e.o.Lease(0); err != nil {
		t.Fatal(err)
	}
	before = e.stats(t)
	send("without a lease", tcRedirect)
	if got := e.stats(t).Hit[ActPeer] - before.Hit[ActPeer]; got != 1 {
		t.Errorf("without a lease: %d hits, want 1", got)
	}
	// The punt interface survives lease changes.
	var c config
	if err := e.o.objs.Config.Lookup(uint32(0), &c); err != nil || c.PuntIfindex != uint32(e.kern) {
		t.Errorf("config %+v, %v: punt ifindex lost", c, err)
	}
}

func TestPodAttachedClearAndMetrics(t *testing.T) {
	e := newProgEnv(t)
	attached := func(ifindex int) bool {
		t.Helper()
		var ok bool
		err := e.ns.Do(func() error {
			var err error
			ok, err = e.o.PodAttached(ifindex)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if err := e.ns.Do(func() error { return e.o.AttachPod(e.podA) }); err != nil {
		t.Fatal(err)
	}
	if !attached(e.podA) || attached(e.podB) {
		t.Errorf("PodAttached: A %v, B %v; want true, false", attached(e.podA), attached(e.podB))
	}
	if err := e.ns.Do(func() error { return e.o.DetachPod(e.podA) }); err != nil {
		t.Fatal(err)
	}
	if attached(e.podA) {
		t.Error("PodAttached after DetachPod")
	}
	for i := range 3 {
		f, _ := e.peerFlow(v4A, v4B, ProtoUDP, uint16(1000+i), 53, uint32(i))
		e.install(t, f)
	}
	if n, err := e.o.Clear(); n != 3 || err != nil {
		t.Errorf("Clear() = %d, %v; want 3", n, err)
	}
	left := 0
	if err := e.o.Range(func(Key, Value) bool { left++; return true }); err != nil || left != 0 {
		t.Errorf("%d flows left after Clear (%v)", left, err)
	}
	// One series per action, per reason for punts and passes, two of
	// drops (vlan, punt_limited) and the redirect errors.
	if n := testutil.CollectAndCount(NewCollector(e.o)); n != 3+2*int(NumReasons)+3 {
		t.Errorf("collector: %d series", n)
	}
}

// TestPodIngressPuntLimit: with a punt budget, a pod's punts beyond its
// burst are dropped (TC_ACT_SHOT, the frame unchanged) and counted in
// PuntLimited and under their reason, while another pod's budget is its
// own; rate 0 never drops. The bounds allow for the time the runs take:
// at 1 frame/s, a budget grows by one frame per second of the test.
func TestPodIngressPuntLimit(t *testing.T) {
	e := newProgEnv(t)
	e.setPunt(t, e.kern)
	const burst, frames = 3, 50
	in := udpA(v4A, v4B, 1, 2).bytes(t)
	send := func(ifindex, n int) (redirected, shot int) {
		t.Helper()
		for range n {
			ret, out := e.run(t, e.o.objs.PodIngress, ifindex, in)
			switch ret {
			case tcRedirect:
				redirected++
			case tcShot:
				shot++
				if !bytes.Equal(out, in) {
					t.Errorf("a limited frame was changed: % x", out)
				}
			default:
				t.Fatalf("verdict %#x, want redirect or shot", ret)
			}
		}
		return redirected, shot
	}

	// Unlimited: nothing is dropped.
	before := e.stats(t)
	if r, s := send(e.podA, frames); r != frames || s != 0 {
		t.Errorf("rate 0: %d redirected, %d dropped of %d; want all redirected", r, s, frames)
	}
	if after := e.stats(t); after.PuntLimited != before.PuntLimited {
		t.Errorf("rate 0: PuntLimited %d -> %d", before.PuntLimited, after.PuntLimited)
	}

	if err := e.o.SetPuntLimit(PuntLimit{Rate: 1, Burst: burst}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	before = e.stats(t)
	r, s := send(e.podA, frames)
	elapsed := time.Since(start)
	after := e.stats(t)
	// burst back to back, plus one per second the runs took (and one for
	// the partly elapsed second).
	most := burst + int(elapsed/time.Second) + 1
	if r < burst || r > most {
		t.Errorf("rate 1/s, burst %d: %d of %d frames redirected in %v, want %d to %d", burst, r, frames, elapsed, burst, most)
	}
	if got := after.PuntLimited - before.PuntLimited; got != uint64(s) {
		t.Errorf("PuntLimited grew by %d, %d frames were dropped", got, s)
	}
	if got := after.Punt[ReasonMiss] - before.Punt[ReasonMiss]; got != frames {
		t.Errorf("Punt[miss] grew by %d, want all %d (limited frames count as punts too)", got, frames)
	}
	if after.RedirectErrors != before.RedirectErrors || after.ShortFrames != before.ShortFrames {
		t.Errorf("other drops counted: %+v -> %+v", before, after)
	}

	// Pod B has a budget of its own.
	if r, _ := send(e.podB, burst); r != burst {
		t.Errorf("pod B: %d of its %d-frame burst redirected after A used up its budget", r, burst)
	}

	// Lifting the limit drops nothing again.
	if err := e.o.SetPuntLimit(PuntLimit{}); err != nil {
		t.Fatal(err)
	}
	before = e.stats(t)
	if r, s := send(e.podA, frames); r != frames || s != 0 {
		t.Errorf("lifted: %d redirected, %d dropped of %d", r, s, frames)
	}
	if after := e.stats(t); after.PuntLimited != before.PuntLimited {
		t.Errorf("lifted: PuntLimited %d -> %d", before.PuntLimited, after.PuntLimited)
	}
}

// TestPuntGCRA checks the conversion of a rate and a burst to the GCRA's
// interval and tolerance.
func TestPuntGCRA(t *testing.T) {
	for _, tc := range []struct {
		l                   PuntLimit
		interval, tolerance uint64
	}{
		{PuntLimit{}, 0, 0},
		{PuntLimit{Burst: 10}, 0, 0},
		{PuntLimit{Rate: 1, Burst: 1}, 1e9, 0},
		{PuntLimit{Rate: 1000, Burst: 0}, 1e6, 0},
		{PuntLimit{Rate: 1000, Burst: 32}, 1e6, 31e6},
		{PuntLimit{Rate: 1 << 40, Burst: 2}, 1, 1},
	} {
		i, tol := puntGCRA(tc.l)
		if i != tc.interval || tol != tc.tolerance {
			t.Errorf("puntGCRA(%+v) = %d, %d; want %d, %d", tc.l, i, tol, tc.interval, tc.tolerance)
		}
	}
}
