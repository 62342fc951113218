package fastpath

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

const article = "../deploy/examples/aks-network-policies"

// The article's pods and the test VM, as the engine tests wire them.
var (
	dbIP    = netip.MustParseAddr("10.0.1.10")
	appIP   = netip.MustParseAddr("10.0.1.20")
	apiIP   = netip.MustParseAddr("10.0.1.30")
	vmIP    = netip.MustParseAddr("10.0.0.4")
	nodeIP  = netip.MustParseAddr("10.0.1.4")
	otherIP = netip.MustParseAddr("192.168.7.7") // outside the VNET

	kernelMAC     = [6]byte{2, 0, 0, 0, 0xff, 1} // pgw0
	kernelPeerMAC = [6]byte{2, 0, 0, 0, 0xff, 2} // pgk0
)

// kernelIfindex is pgk0's ifindex in the rigs.
const kernelIfindex = 99

type podWire struct {
	name   string
	ip     netip.Addr
	gwMAC  [6]byte // host end
	podMAC [6]byte // pod's eth0
}

var podWires = []podWire{
	{"db", dbIP, [6]byte{2, 0, 0, 1, 0, 1}, [6]byte{2, 0, 0, 2, 0, 1}},
	{"app", appIP, [6]byte{2, 0, 0, 1, 0, 2}, [6]byte{2, 0, 0, 2, 0, 2}},
	{"api", apiIP, [6]byte{2, 0, 0, 1, 0, 3}, [6]byte{2, 0, 0, 2, 0, 3}},
}

func wire(name string) podWire {
	for _, w := range podWires {
		if w.name == name {
			return w
		}
	}
	panic(name)
}

type rig struct {
	t     testing.TB
	e     *Engine
	store *table.Store
	ports map[string]*memPort
	clock int64
	// punt: pod ports only transmit; what a pod sends arrives on the
	// kernel port with the punt marker, as the TC programs send it.
	punt bool
}

func articleTable(t testing.TB) *table.Table {
	t.Helper()
	m, err := policy.Load(article)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := policy.Compile(&m.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func newRig(t testing.TB, tab *table.Table, tweak func(*Config)) *rig {
	t.Helper()
	return newRigMode(t, tab, tweak, false)
}

// newPuntRig is newRig with transmit-only pod ports (rig.punt), and an
// engine that offloads flows to a flow table that keeps nothing (a flow
// it offloaded still reaches the engine when its packets are punted).
func newPuntRig(t testing.TB, tab *table.Table, tweak func(*Config)) *rig {
	t.Helper()
	return newRigMode(t, tab, func(c *Config) {
		c.Offload = nopFlowTable{}
		if tweak != nil {
			tweak(c)
		}
	}, true)
}

// nopFlowTable accepts every flow and forwards nothing.
type nopFlowTable struct{}

func (nopFlowTable) Install(flows []KernelFlow) (int, error) { return len(flows), nil }
func (nopFlowTable) Remove([]KernelFlow) error               { return nil }
func (nopFlowTable) Take(uint32) KernelCounters              { return KernelCounters{} }
func (nopFlowTable) Lease(int64) error                       { return nil }

func newRigMode(t testing.TB, tab *table.Table, tweak func(*Config), punt bool) *rig {
	t.Helper()
	r := &rig{t: t, store: &table.Store{}, ports: map[string]*memPort{}, clock: 1e9, punt: punt}
	if tab != nil {
		r.store.Publish(tab)
	}
	cfg := Config{
		Store:          r.store,
		Conntrack:      conntrack.Config{Capacity: 1024, Seed: 1},
		AllowNodeToPod: true,
		Now:            func() int64 { return r.clock },
	}
	if tweak != nil {
		tweak(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.e = e
	e.nodeAddrs = []netip.Addr{nodeIP}
	for i, w := range podWires {
		r.add(PortSpec{Name: w.name, Kind: PodPort, MAC: w.gwMAC, PeerMAC: w.podMAC, PodIPs: []netip.Addr{w.ip}, Ifindex: 10 + i})
	}
	r.add(PortSpec{Name: "kernel", Kind: KernelPort, MAC: kernelMAC, PeerMAC: kernelPeerMAC, Ifindex: kernelIfindex})
	return r
}

func (r *rig) add(s PortSpec) {
	r.t.Helper()
	if s.Kind == PodPort && s.Ifindex == 0 && s.Name != "noindex" {
		s.Ifindex = 100 + len(r.ports)
	}
	s.TxOnly = s.Kind == PodPort && r.punt
	m := newMemPort(64, 2048)
	s.Port = m
	if err := r.e.addPort(s); err != nil {
		r.t.Fatal(err)
	}
	r.ports[s.Name] = m
}

// send injects frame on port from, runs one batch and returns what every
// port transmitted.
func (r *rig) send(from string, frame []byte) map[string][][]byte {
	r.t.Helper()
	if r.punt && from != "kernel" {
		frame = punted(r.t, r.e, from, frame)
		from = "kernel"
	}
	if !r.ports[from].inject(frame) {
		r.t.Fatal("inject failed")
	}
	r.e.runOnce()
	out := map[string][][]byte{}
	for name, p := range r.ports {
		if p.err != nil {
			r.t.Fatalf("port %s misused: %v", name, p.err)
		}
		if s := p.sent(); len(s) > 0 {
			out[name] = s
		}
		if n := p.leaked(); n != 0 {
			r.t.Fatalf("port %s: %d frames held by the worker after the batch", name, n)
		}
	}
	return out
}

// rigMaker makes a rig: newRig or newPuntRig.
type rigMaker func(t testing.TB, tab *table.Table, tweak func(*Config)) *rig

// bothModes runs fn with pod ports that receive (AF_XDP on each veth) and
// with transmit-only pod ports whose frames arrive punted on the kernel
// port (the TC offload's punt path).
func bothModes(t *testing.T, fn func(t *testing.T, newRig rigMaker)) {
	t.Run("rx ports", func(t *testing.T) { fn(t, newRig) })
	t.Run("punted", func(t *testing.T) { fn(t, newPuntRig) })
}

// punted returns frame as the TC program of port from's veth punts it to
// the kernel leg: with the punt marker and the veth's ifindex as its
// destination MAC.
func punted(t testing.TB, e *Engine, from string, frame []byte) []byte {
	t.Helper()
	for _, p := range e.ports {
		if p.Name == from {
			f := append([]byte(nil), frame...)
			m := offload.PuntMarker(p.Ifindex)
			copy(f, m[:])
			return f
		}
	}
	t.Fatalf("no port %s", from)
	return nil
}

// expectOne checks that exactly one frame left, on port to, and parses it.
func (r *rig) expectOne(out map[string][][]byte, to string) (packet.Packet, []byte) {
	r.t.Helper()
	var p packet.Packet
	if len(out) != 1 || len(out[to]) != 1 {
		r.t.Fatalf("sent %d frames on %d ports (%v), want one on %s; drops %v", countFrames(out), len(out), portNames(out), to, r.drops())
	}
	f := out[to][0]
	if reason := packet.Parse(f, &p); reason != packet.OK {
		r.t.Fatalf("forwarded frame does not parse: %v", reason)
	}
	return p, f
}

func (r *rig) expectDrop(out map[string][][]byte, d Drop, before Stats) {
	r.t.Helper()
	if len(out) != 0 {
		r.t.Fatalf("sent frames on %v, want a drop (%v)", portNames(out), d)
	}
	if got := r.e.Stats().Drops[d] - before.Drops[d]; got != 1 {
		r.t.Fatalf("drop %v counted %d times, want 1; drops %v", d, got, r.drops())
	}
}

func (r *rig) drops() map[string]uint64 {
	m := map[string]uint64{}
	for d, n := range r.e.Stats().Drops {
		if n > 0 {
			m[Drop(d).String()] = n
		}
	}
	return m
}

func countFrames(out map[string][][]byte) int {
	n := 0
	for _, f := range out {
		n += len(f)
	}
	return n
}

func portNames(out map[string][][]byte) []string {
	var s []string
	for k := range out {
		s = append(s, k)
	}
	return s
}

// --- frames ---

func mac(b [6]byte) net.HardwareAddr { return net.HardwareAddr(b[:]) }

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

type tcpOpt struct {
	syn, ack, fin, rst bool
	ttl                uint8
	payload            []byte
	seq, ackNo         uint32 // sequence number (default 1) and acknowledgment number
}

func ipLayer(src, dst netip.Addr, proto layers.IPProtocol, ttl uint8) (gopacket.SerializableLayer, gopacket.NetworkLayer, layers.EthernetType) {
	if ttl == 0 {
		ttl = 64
	}
	if src.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: ttl, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		return ip, ip, layers.EthernetTypeIPv4
	}
	ip := &layers.IPv6{Version: 6, HopLimit: ttl, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	return ip, ip, layers.EthernetTypeIPv6
}

func tcpFrame(t testing.TB, srcMAC, dstMAC [6]byte, src, dst netip.Addr, sport, dport uint16, o tcpOpt) []byte {
	ip, nl, et := ipLayer(src, dst, layers.IPProtocolTCP, o.ttl)
	if o.seq == 0 {
		o.seq = 1
	}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: o.syn, ACK: o.ack, FIN: o.fin, RST: o.rst, Window: 1000, Seq: o.seq, Ack: o.ackNo}
	_ = tcp.SetNetworkLayerForChecksum(nl)
	return serialize(t, &layers.Ethernet{SrcMAC: mac(srcMAC), DstMAC: mac(dstMAC), EthernetType: et}, ip, tcp, gopacket.Payload(o.payload))
}

func udpFrame(t testing.TB, srcMAC, dstMAC [6]byte, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	ip, nl, et := ipLayer(src, dst, layers.IPProtocolUDP, 0)
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	_ = udp.SetNetworkLayerForChecksum(nl)
	return serialize(t, &layers.Ethernet{SrcMAC: mac(srcMAC), DstMAC: mac(dstMAC), EthernetType: et}, ip, udp, gopacket.Payload(payload))
}

func icmpEcho(t testing.TB, srcMAC, dstMAC [6]byte, src, dst netip.Addr, reply bool) []byte {
	typ := uint8(layers.ICMPv4TypeEchoRequest)
	if reply {
		typ = layers.ICMPv4TypeEchoReply
	}
	ip, _, et := ipLayer(src, dst, layers.IPProtocolICMPv4, 0)
	return serialize(t, &layers.Ethernet{SrcMAC: mac(srcMAC), DstMAC: mac(dstMAC), EthernetType: et}, ip,
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: 7, Seq: 1}, gopacket.Payload("ping"))
}

// fromPod builds a frame that pod w sends to its gateway.
func fromPod(w podWire) ([6]byte, [6]byte) { return w.podMAC, w.gwMAC }

// fromKernel builds the MACs of a frame the kernel sends on the kernel leg.
func fromKernel() ([6]byte, [6]byte) { return kernelPeerMAC, kernelMAC }

func syn(t testing.TB, w podWire, dst netip.Addr, dport uint16) []byte {
	s, d := fromPod(w)
	return tcpFrame(t, s, d, w.ip, dst, 40000, dport, tcpOpt{syn: true})
}

// --- tests ---

func TestPodToPodAllowedIsRewrittenAndTracked(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		app, api := wire("app"), wire("api")
		p, f := r.expectOne(r.send("app", syn(t, app, apiIP, 80)), "api")
		if p.DstMAC != api.podMAC || p.SrcMAC != api.gwMAC {
			t.Errorf("MACs %x <- %x, want %x <- %x", p.DstMAC, p.SrcMAC, api.podMAC, api.gwMAC)
		}
		if p.TTL != 63 {
			t.Errorf("TTL = %d, want 63", p.TTL)
		}
		if !packet.L4ChecksumValid(f, &p) {
			t.Error("TCP checksum invalid after forwarding")
		}
		// The reply passes although apppod's ingress allows only TCP 80 from
		// the VNET: it belongs to a tracked flow.
		s, d := fromPod(api)
		p, _ = r.expectOne(r.send("api", tcpFrame(t, s, d, apiIP, appIP, 80, 40000, tcpOpt{syn: true, ack: true})), "app")
		if p.DstMAC != app.podMAC {
			t.Errorf("reply dst MAC %x, want %x", p.DstMAC, app.podMAC)
		}
		st := r.e.Stats()
		if st.FlowsNew != 1 || st.FwdPackets[PodToPod] != 2 {
			t.Errorf("flows new %d, pod-to-pod packets %d; want 1, 2", st.FlowsNew, st.FwdPackets[PodToPod])
		}
	})
}

func TestPolicyDenials(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		tests := []struct {
			name  string
			from  string // pod port or "kernel"
			frame func(t testing.TB) []byte
			drop  Drop
		}{
			{"app to db: app's egress allows only the API pod", "app",
				func(t testing.TB) []byte { return syn(t, wire("app"), dbIP, 80) }, DropDeniedEgress},
			{"db has no egress", "db",
				func(t testing.TB) []byte { return syn(t, wire("db"), apiIP, 80) }, DropDeniedEgress},
			{"db to the test VM", "db",
				func(t testing.TB) []byte { return syn(t, wire("db"), vmIP, 22) }, DropDeniedEgress},
			{"test VM to db", "kernel", func(t testing.TB) []byte {
				s, d := fromKernel()
				return tcpFrame(t, s, d, vmIP, dbIP, 5555, 80, tcpOpt{syn: true})
			}, DropDeniedIngress},
			{"outside the VNET to api", "kernel", func(t testing.TB) []byte {
				s, d := fromKernel()
				return tcpFrame(t, s, d, otherIP, apiIP, 5555, 80, tcpOpt{syn: true})
			}, DropDeniedIngress},
			{"api to db on another port", "api",
				func(t testing.TB) []byte { return syn(t, wire("api"), dbIP, 5432) }, DropDeniedIngress},
			{"ICMP to api (rules name TCP 80 only)", "kernel", func(t testing.TB) []byte {
				s, d := fromKernel()
				return icmpEcho(t, s, d, vmIP, apiIP, false)
			}, DropDeniedIngress},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := newRig(t, articleTable(t), nil)
				before := r.e.Stats()
				r.expectDrop(r.send(tc.from, tc.frame(t)), tc.drop, before)
			})
		}
	})
}

func TestKernelLeg(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		api := wire("api")
		s, d := fromKernel()
		// The test VM reaches the API pod on TCP 80 (criterion 3).
		p, _ := r.expectOne(r.send("kernel", tcpFrame(t, s, d, vmIP, apiIP, 5555, 80, tcpOpt{syn: true})), "api")
		if p.DstMAC != api.podMAC || p.SrcMAC != api.gwMAC {
			t.Errorf("MACs %x <- %x", p.DstMAC, p.SrcMAC)
		}
		// The API pod's answer goes out of the kernel leg to pgk0.
		ps, pd := fromPod(api)
		p, _ = r.expectOne(r.send("api", tcpFrame(t, ps, pd, apiIP, vmIP, 80, 5555, tcpOpt{syn: true, ack: true})), "kernel")
		if p.DstMAC != kernelPeerMAC || p.SrcMAC != kernelMAC {
			t.Errorf("MACs %x <- %x", p.DstMAC, p.SrcMAC)
		}
		// An address that is no local pod's.
		before := r.e.Stats()
		r.expectDrop(r.send("kernel", tcpFrame(t, s, d, vmIP, netip.MustParseAddr("10.0.1.99"), 5555, 80, tcpOpt{syn: true})), DropNoRoute, before)
	})
}

func TestNodeReachesLocalPods(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		s, d := fromKernel()
		probe := func(t testing.TB) []byte { return tcpFrame(t, s, d, nodeIP, dbIP, 33000, 8080, tcpOpt{syn: true}) }
		r := newRig(t, articleTable(t), nil)
		r.expectOne(r.send("kernel", probe(t)), "db")

		r = newRig(t, articleTable(t), func(c *Config) { c.AllowNodeToPod = false })
		before := r.e.Stats()
		r.expectDrop(r.send("kernel", probe(t)), DropDeniedIngress, before)
	})
}

func TestNeighbors(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		app := wire("app")
		arp := func(srcMAC [6]byte, sender, target netip.Addr) []byte {
			return serialize(t, &layers.Ethernet{SrcMAC: mac(srcMAC), DstMAC: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, EthernetType: layers.EthernetTypeARP},
				&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
					Operation: layers.ARPRequest, SourceHwAddress: srcMAC[:], SourceProtAddress: sender.AsSlice(),
					DstHwAddress: make([]byte, 6), DstProtAddress: target.AsSlice()})
		}
		// The pod asks for its gateway: the host end's MAC answers.
		p, _ := r.expectOne(r.send("app", arp(app.podMAC, appIP, netip.MustParseAddr("169.254.1.1"))), "app")
		if p.ARP.Op != packet.ARPReply || p.ARP.SenderMAC != app.gwMAC || p.DstMAC != app.podMAC {
			t.Errorf("ARP reply %+v", p.ARP)
		}
		// The kernel asks for a local pod on the kernel leg.
		p, _ = r.expectOne(r.send("kernel", arp(kernelPeerMAC, nodeIP, dbIP)), "kernel")
		if p.ARP.Op != packet.ARPReply || p.ARP.SenderMAC != kernelMAC || p.ARP.SenderIP != dbIP {
			t.Errorf("ARP reply %+v", p.ARP)
		}
		// Not for an address that is no local pod's, nor a pod's probe for its
		// own address.
		before := r.e.Stats()
		r.expectDrop(r.send("kernel", arp(kernelPeerMAC, nodeIP, vmIP)), DropNeighbor, before)
		before = r.e.Stats()
		r.expectDrop(r.send("app", arp(app.podMAC, appIP, appIP)), DropNeighbor, before)
		// ARP from a pod lying about its address.
		before = r.e.Stats()
		r.expectDrop(r.send("app", arp(app.podMAC, apiIP, vmIP)), DropSpoofedSource, before)
	})
}

func TestSpoofing(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		app := wire("app")
		before := r.e.Stats()
		// apppod claims the API pod's address.
		r.expectDrop(r.send("app", tcpFrame(t, app.podMAC, app.gwMAC, apiIP, dbIP, 1, 80, tcpOpt{syn: true})), DropSpoofedSource, before)
		before = r.e.Stats()
		r.expectDrop(r.send("app", tcpFrame(t, [6]byte{2, 9, 9, 9, 9, 9}, app.gwMAC, appIP, apiIP, 1, 80, tcpOpt{syn: true})), DropSpoofedMAC, before)
	})
}

func TestPartialChecksumIsCompleted(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		app := wire("app")
		s, d := fromPod(app)
		f := tcpFrame(t, s, d, appIP, apiIP, 40000, 80, tcpOpt{syn: true, payload: []byte("data the checksum must cover")})
		var p packet.Packet
		if packet.Parse(f, &p) != packet.OK {
			t.Fatal("parse")
		}
		// What a pod with checksum offload sends: only the pseudo-header sum.
		l4len := p.L3Off + p.L3Len - p.L4Off
		binary.BigEndian.PutUint16(f[p.L4Off+16:], packet.PseudoHeaderSum(p.Src, p.Dst, p.Proto, l4len))
		if packet.L4ChecksumValid(f, &p) {
			t.Fatal("partial checksum verifies; the test is broken")
		}
		q, out := r.expectOne(r.send("app", f), "api")
		if !packet.L4ChecksumValid(out, &q) {
			t.Error("partial TCP checksum was not completed")
		}

		// UDP too (from the node, which may reach local pods).
		ks, kd := fromKernel()
		f = udpFrame(t, ks, kd, nodeIP, dbIP, 5353, 53, []byte("a UDP payload"))
		if packet.Parse(f, &p) != packet.OK {
			t.Fatal("parse")
		}
		binary.BigEndian.PutUint16(f[p.L4Off+6:], packet.PseudoHeaderSum(p.Src, p.Dst, p.Proto, p.L3Off+p.L3Len-p.L4Off))
		q, out = r.expectOne(r.send("kernel", f), "db")
		if !packet.L4ChecksumValid(out, &q) {
			t.Error("partial UDP checksum was not completed")
		}
	})
}

func TestTableChangeCutsEstablishedFlows(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		open := func(t *testing.T, r *rig) { handshake(t, r, "api", "db", dbIP, 40000, 80) }
		next := func(t testing.TB) []byte {
			s, d := fromPod(wire("api"))
			return tcpFrame(t, s, d, apiIP, dbIP, 40000, 80, tcpOpt{ack: true, payload: []byte("x")})
		}
		// A table in which dbpod-policy no longer allows the API pod.
		m, err := policy.Load(article)
		if err != nil {
			t.Fatal(err)
		}
		for _, np := range m.Policies {
			if np.Name == "dbpod-policy" {
				np.Spec.Ingress = nil
			}
		}
		strict, err := policy.Compile(&m.Cluster)
		if err != nil {
			t.Fatal(err)
		}

		t.Run("strict", func(t *testing.T) {
			r := newRig(t, articleTable(t), nil)
			open(t, r)
			r.store.Publish(strict)
			before := r.e.Stats()
			r.expectDrop(r.send("api", next(t)), DropDeniedIngress, before)
			if st := r.e.Stats(); st.FlowsCut != 1 || st.Rechecks != 1 {
				t.Errorf("flows cut %d, rechecks %d; want 1, 1", st.FlowsCut, st.Rechecks)
			}
		})
		t.Run("keep established", func(t *testing.T) {
			r := newRig(t, articleTable(t), func(c *Config) { c.KeepEstablished = true })
			open(t, r)
			r.store.Publish(strict)
			r.expectOne(r.send("api", next(t)), "db")
			// New connections follow the new table.
			before := r.e.Stats()
			s, d := fromPod(wire("api"))
			r.expectDrop(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 40001, 80, tcpOpt{syn: true})), DropDeniedIngress, before)
		})
		t.Run("an unchanged verdict keeps the flow", func(t *testing.T) {
			r := newRig(t, articleTable(t), nil)
			open(t, r)
			r.store.Publish(articleTable(t))
			r.expectOne(r.send("api", next(t)), "db")
			if st := r.e.Stats(); st.FlowsCut != 0 || st.Rechecks != 1 {
				t.Errorf("flows cut %d, rechecks %d; want 0, 1", st.FlowsCut, st.Rechecks)
			}
		})
	})
}

// handshake opens a TCP connection from pod port from to pod port to.
func handshake(t testing.TB, r *rig, from, to string, dst netip.Addr, sport, dport uint16) {
	t.Helper()
	c, s := wire(from), wire(to)
	cs, cd := fromPod(c)
	ss, sd := fromPod(s)
	r.expectOne(r.send(from, tcpFrame(t, cs, cd, c.ip, dst, sport, dport, tcpOpt{syn: true})), to)
	r.expectOne(r.send(to, tcpFrame(t, ss, sd, dst, c.ip, dport, sport, tcpOpt{syn: true, ack: true})), from)
	r.expectOne(r.send(from, tcpFrame(t, cs, cd, c.ip, dst, sport, dport, tcpOpt{ack: true})), to)
}

func TestMidStreamPickupAfterRestart(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		// A fresh engine (as after an agent restart) sees an ACK of an allowed
		// connection: it is judged as new and passes; a denied one does not.
		r := newRig(t, articleTable(t), nil)
		s, d := fromPod(wire("api"))
		r.expectOne(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 40000, 80, tcpOpt{ack: true, payload: []byte("x")})), "db")
		s, d = fromPod(wire("app"))
		before := r.e.Stats()
		r.expectDrop(r.send("app", tcpFrame(t, s, d, appIP, dbIP, 40000, 80, tcpOpt{ack: true})), DropDeniedEgress, before)
		// The server's packet may come first: dbpod may not send to apipod, but
		// this is the reply direction of apipod -> dbpod:80, which is allowed.
		s, d = fromPod(wire("db"))
		r.expectOne(r.send("db", tcpFrame(t, s, d, dbIP, apiIP, 80, 40100, tcpOpt{ack: true, payload: []byte("y")})), "api")
		s, d = fromPod(wire("api"))
		r.expectOne(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 40100, 80, tcpOpt{ack: true})), "db")
		// Not when neither way is allowed (dbpod -> apppod:80 and apppod -> dbpod).
		s, d = fromPod(wire("db"))
		before = r.e.Stats()
		r.expectDrop(r.send("db", tcpFrame(t, s, d, dbIP, appIP, 80, 40200, tcpOpt{ack: true})), DropDeniedEgress, before)
		// A FIN or SYN-ACK cannot start a flow.
		before = r.e.Stats()
		s, d = fromPod(wire("api"))
		r.expectDrop(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 40009, 80, tcpOpt{fin: true, ack: true})), DropInvalidTCP, before)
	})
}

func TestUnknownEndpointsAreDenied(t *testing.T) {
	r := newRig(t, articleTable(t), nil)
	// A pod the table does not know yet (its port exists first).
	newPod := podWire{"new", netip.MustParseAddr("10.0.1.50"), [6]byte{2, 0, 0, 1, 0, 9}, [6]byte{2, 0, 0, 2, 0, 9}}
	r.add(PortSpec{Name: "new", Kind: PodPort, MAC: newPod.gwMAC, PeerMAC: newPod.podMAC, PodIPs: []netip.Addr{newPod.ip}})
	before := r.e.Stats()
	r.expectDrop(r.send("new", syn(t, newPod, vmIP, 80)), DropUnknownEndpoint, before)
	s, d := fromKernel()
	before = r.e.Stats()
	r.expectDrop(r.send("kernel", tcpFrame(t, s, d, vmIP, newPod.ip, 1, 80, tcpOpt{syn: true})), DropUnknownEndpoint, before)
	before = r.e.Stats()
	r.expectDrop(r.send("kernel", tcpFrame(t, s, d, nodeIP, newPod.ip, 1, 80, tcpOpt{syn: true})), DropUnknownEndpoint, before)
	// And before any table at all, every pod is unknown.
	r = newRig(t, nil, nil)
	before = r.e.Stats()
	r.expectDrop(r.send("api", syn(t, wire("api"), dbIP, 80)), DropUnknownEndpoint, before)
}

func TestICMP(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		app, api := wire("app"), wire("api")
		// apppod may send anything to apipod (egress), but apipod's ingress
		// allows only TCP 80: an echo request is denied at apipod's ingress.
		before := r.e.Stats()
		s, d := fromPod(app)
		r.expectDrop(r.send("app", icmpEcho(t, s, d, appIP, apiIP, false)), DropDeniedIngress, before)
		// apipod pings the DB pod: egress to backend allowed, but dbpod's
		// ingress denies ICMP. The API pod's UDP to the DB pod is denied too;
		// use a flow that is allowed: apipod -> dbpod TCP 80, and an ICMP
		// error about it from dbpod passes as related.
		r.expectOne(r.send("api", syn(t, api, dbIP, 80)), "db")
		inner := syn(t, api, dbIP, 80)[14:]
		db := wire("db")
		s, d = fromPod(db)
		ip, _, et := ipLayer(dbIP, apiIP, layers.IPProtocolICMPv4, 0)
		unreach := serialize(t, &layers.Ethernet{SrcMAC: mac(s), DstMAC: mac(d), EthernetType: et}, ip,
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)},
			gopacket.Payload(inner[:28]))
		r.expectOne(r.send("db", unreach), "api")
		// The same error about a flow nobody opened is dropped.
		inner = syn(t, api, dbIP, 81)[14:]
		unrelated := serialize(t, &layers.Ethernet{SrcMAC: mac(s), DstMAC: mac(d), EthernetType: et}, ip,
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)},
			gopacket.Payload(inner[:28]))
		before = r.e.Stats()
		r.expectDrop(r.send("db", unrelated), DropICMPUnrelated, before)
	})
}

func TestTTLAndInvalidTCP(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		s, d := fromPod(wire("api"))
		before := r.e.Stats()
		r.expectDrop(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 1, 80, tcpOpt{syn: true, ttl: 1})), Drop(packet.TTLExceeded), before)
		before = r.e.Stats()
		r.expectDrop(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 1, 80, tcpOpt{syn: true, fin: true})), DropInvalidTCP, before)
		before = r.e.Stats()
		r.expectDrop(r.send("api", []byte{1, 2, 3}), Drop(packet.Truncated), before)
	})
}

func TestFragmentsFollowTheFirstFragment(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		api := wire("api")
		s, d := fromPod(api)
		frag := func(id uint16, offset uint16, more bool, proto layers.IPProtocol, payload []byte) []byte {
			flags := layers.IPv4Flag(0)
			if more {
				flags = layers.IPv4MoreFragments
			}
			ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: apiIP.AsSlice(), DstIP: dbIP.AsSlice(), Id: id, Flags: flags, FragOffset: offset / 8}
			return serialize(t, &layers.Ethernet{SrcMAC: mac(s), DstMAC: mac(d), EthernetType: layers.EthernetTypeIPv4}, ip, gopacket.Payload(payload))
		}
		// First fragment: a TCP SYN to port 80 (allowed), 24 bytes of TCP.
		tcpHdr := make([]byte, 24)
		binary.BigEndian.PutUint16(tcpHdr[0:], 40000)
		binary.BigEndian.PutUint16(tcpHdr[2:], 80)
		tcpHdr[12] = 5 << 4
		tcpHdr[13] = packet.TCPFlagSYN
		r.expectOne(r.send("api", frag(9, 0, true, layers.IPProtocolTCP, tcpHdr)), "db")
		r.expectOne(r.send("api", frag(9, 24, false, layers.IPProtocolTCP, make([]byte, 16))), "db")
		// A non-first fragment of a datagram whose first fragment was not seen.
		before := r.e.Stats()
		r.expectDrop(r.send("api", frag(10, 24, false, layers.IPProtocolTCP, make([]byte, 16))), DropFragmentNoState, before)
	})
}

func TestBatchDoesNotAllocate(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		api := wire("api")
		est := make([][]byte, 16)
		for i := range est {
			s, d := fromPod(api)
			handshake(t, r, "api", "db", dbIP, uint16(41000+i), 80)
			est[i] = tcpFrame(t, s, d, apiIP, dbIP, uint16(41000+i), 80, tcpOpt{ack: true, payload: make([]byte, 100)})
		}
		newFlows := make([][]byte, 1000)
		for i := range newFlows {
			newFlows[i] = syn(t, api, dbIP, 80)
			binary.BigEndian.PutUint16(newFlows[i][34:], uint16(1000+i)) // source port; checksum fixed below
			var p packet.Packet
			packet.Parse(newFlows[i], &p)
			binary.BigEndian.PutUint16(newFlows[i][p.L4Off+16:], 0)
			binary.BigEndian.PutUint16(newFlows[i][p.L4Off+16:], ^packet.Sum(newFlows[i][p.L4Off:], packet.PseudoHeaderSum(p.Src, p.Dst, p.Proto, p.L3Len-20)))
		}
		in := "api"
		if r.punt {
			in = "kernel"
			for i := range est {
				est[i] = punted(t, r.e, "api", est[i])
			}
			for i := range newFlows {
				newFlows[i] = punted(t, r.e, "api", newFlows[i])
			}
		}
		port, db := r.ports[in], r.ports["db"]
		n := 0
		allocs := testing.AllocsPerRun(200, func() {
			for _, f := range est {
				port.inject(f)
			}
			for range 8 {
				port.inject(newFlows[n%len(newFlows)])
				n++
			}
			r.e.runOnce()
			db.txq = db.txq[:0] // drop transmitted frames without copying
			for i := range db.state {
				if db.state[i] == frameKernel {
					db.state[i] = frameFree
					db.free = append(db.free, uint32(i))
				}
			}
		})
		if allocs != 0 {
			t.Errorf("a batch of established and new flows allocates %v times, want 0", allocs)
		}
		if st := r.e.Stats(); st.FwdPackets[PodToPod] < 200*24 {
			t.Errorf("forwarded %d packets, want at least %d: drops %v", st.FwdPackets[PodToPod], 200*24, r.drops())
		}
	})
}

func TestUnknownPodMACIsNotBroadcast(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		w := podWire{"quiet", netip.MustParseAddr("10.0.1.30"), [6]byte{2, 0, 0, 1, 0, 8}, [6]byte{}}
		// Replace apipod's port by one that was given no MAC and saw no frame.
		if err := r.e.removePort("api"); err != nil {
			t.Fatal(err)
		}
		r.add(PortSpec{Name: "quiet", Kind: PodPort, MAC: w.gwMAC, PodIPs: []netip.Addr{w.ip}})
		before := r.e.Stats()
		r.expectDrop(r.send("app", syn(t, wire("app"), apiIP, 80)), DropNoNeighbor, before)
		// Once the pod speaks, its MAC is learned.
		learned := [6]byte{2, 0, 0, 2, 0, 8}
		s := tcpFrame(t, learned, w.gwMAC, apiIP, dbIP, 40000, 80, tcpOpt{syn: true})
		r.expectOne(r.send("quiet", s), "db")
		p, _ := r.expectOne(r.send("app", syn(t, wire("app"), apiIP, 80)), "quiet")
		if p.DstMAC != learned {
			t.Errorf("dst MAC %x, want the learned %x", p.DstMAC, learned)
		}
	})
}

// A flow judged while its destination pod had no port (so only the
// source's egress was judged) must have the destination's ingress judged
// once the pod's port exists, even with KeepEstablished.
func TestSideThatBecomesLocalIsJudged(t *testing.T) {
	for _, keep := range []bool{false, true} {
		r := newRig(t, articleTable(t), func(c *Config) { c.KeepEstablished = keep })
		if err := r.e.removePort("db"); err != nil {
			t.Fatal(err)
		}
		// apipod's egress allows the backend namespace on any port: the
		// flow goes to the kernel leg, tracked.
		r.expectOne(r.send("api", syn(t, wire("api"), dbIP, 5432)), "kernel")
		db := wire("db")
		r.add(PortSpec{Name: "db", Kind: PodPort, MAC: db.gwMAC, PeerMAC: db.podMAC, PodIPs: []netip.Addr{dbIP}})
		// dbpod's ingress allows TCP 80 from apipod only.
		s, d := fromPod(wire("api"))
		before := r.e.Stats()
		r.expectDrop(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 40000, 5432, tcpOpt{ack: true, payload: []byte("x")})), DropDeniedIngress, before)
		// The flow was cut: its tombstone drops dbpod's answer too.
		ds, dd := fromPod(db)
		before = r.e.Stats()
		r.expectDrop(r.send("db", tcpFrame(t, ds, dd, dbIP, apiIP, 5432, 40000, tcpOpt{syn: true, ack: true})), DropDeniedIngress, before)
		if st := r.e.Stats(); st.FlowsCut != 1 {
			t.Errorf("keep=%v: flows cut %d, want 1", keep, st.FlowsCut)
		}
	}
}

// A pod may send ICMP errors only about packets addressed to it.
func TestICMPErrorFromUninvolvedPod(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		api := wire("api")
		r.expectOne(r.send("api", syn(t, api, dbIP, 80)), "db")
		inner := syn(t, api, dbIP, 80)[14:]
		// apppod forges dbpod's port-unreachable about apipod's flow.
		app := wire("app")
		s, d := fromPod(app)
		ip, _, et := ipLayer(appIP, apiIP, layers.IPProtocolICMPv4, 0)
		forged := serialize(t, &layers.Ethernet{SrcMAC: mac(s), DstMAC: mac(d), EthernetType: et}, ip,
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)},
			gopacket.Payload(inner[:28]))
		before := r.e.Stats()
		r.expectDrop(r.send("app", forged), DropICMPUnrelated, before)
	})
}

// After the pick-up window, a TCP segment without SYN never starts a
// flow, in either direction.
func TestNoPickupAfterTheWindow(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		r.clock += int64(3 * time.Minute)
		s, d := fromPod(wire("db"))
		before := r.e.Stats()
		r.expectDrop(r.send("db", tcpFrame(t, s, d, dbIP, apiIP, 80, 40100, tcpOpt{ack: true, payload: []byte("y")})), DropTCPNoFlow, before)
		s, d = fromPod(wire("api"))
		before = r.e.Stats()
		r.expectDrop(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 40100, 80, tcpOpt{ack: true})), DropTCPNoFlow, before)
		// A SYN opens the connection as usual.
		handshake(t, r, "api", "db", dbIP, 40100, 80)
	})
}

// TestServiceToLocalBackend follows a connection from the API pod to the
// article's db Service (10.1.0.100:80) that the kernel DNATs to the DB pod
// on the same node: the pod's packet to the ClusterIP is judged against
// the Service's backend and leaves on the kernel leg; the kernel sends the
// DNATed packet back (both sides judged again); the DB pod's answer must
// return through the kernel, which reverses the DNAT, not straight to the
// API pod (which would get it from the wrong address and reset).
func TestServiceToLocalBackend(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), nil)
		api, db := wire("api"), wire("db")
		svcIP := netip.MustParseAddr("10.1.0.100")
		ks, kd := fromKernel()
		as, ad := fromPod(api)
		ds, dd := fromPod(db)

		r.expectOne(r.send("api", tcpFrame(t, as, ad, apiIP, svcIP, 40000, 80, tcpOpt{syn: true})), "kernel")
		r.expectOne(r.send("kernel", tcpFrame(t, ks, kd, apiIP, dbIP, 40000, 80, tcpOpt{syn: true})), "db")
		r.expectOne(r.send("db", tcpFrame(t, ds, dd, dbIP, apiIP, 80, 40000, tcpOpt{syn: true, ack: true})), "kernel")
		r.expectOne(r.send("kernel", tcpFrame(t, ks, kd, svcIP, apiIP, 80, 40000, tcpOpt{syn: true, ack: true})), "api")
		r.expectOne(r.send("api", tcpFrame(t, as, ad, apiIP, svcIP, 40000, 80, tcpOpt{ack: true})), "kernel")
		r.expectOne(r.send("kernel", tcpFrame(t, ks, kd, apiIP, dbIP, 40000, 80, tcpOpt{ack: true})), "db")
		r.expectOne(r.send("db", tcpFrame(t, ds, dd, dbIP, apiIP, 80, 40000, tcpOpt{ack: true})), "kernel")

		// A direct connection between the same pods is still switched here.
		r.expectOne(r.send("api", tcpFrame(t, as, ad, apiIP, dbIP, 40001, 80, tcpOpt{syn: true})), "db")
		r.expectOne(r.send("db", tcpFrame(t, ds, dd, dbIP, apiIP, 80, 40001, tcpOpt{syn: true, ack: true})), "api")

		// The App pod's egress allows only the API pod: denied before the
		// DNAT, judged against the Service's backend.
		before := r.e.Stats()
		app := wire("app")
		ps, pd := fromPod(app)
		r.expectDrop(r.send("app", tcpFrame(t, ps, pd, appIP, svcIP, 40000, 80, tcpOpt{syn: true})), DropDeniedEgress, before)
	})
}

// A punted frame from a veth that is not a port is dropped.
func TestPuntFromUnknownVeth(t *testing.T) {
	r := newPuntRig(t, articleTable(t), nil)
	f := punted(t, r.e, "api", syn(t, wire("api"), dbIP, 80))
	f[5]++ // another ifindex
	before := r.e.Stats()
	r.expectDrop(r.send("kernel", f), DropNoPort, before)
}

// A pod may reach 169.254.169.254 (a cloud's instance metadata, routed by
// the node) when policy allows it; IPv6 link-local destinations are never
// routed.
func TestLinkLocalDestinations(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleWith(t, func(name string, s *networkingv1.NetworkPolicySpec) {
			if name == "apipod-policy" {
				s.Egress = append(s.Egress, networkingv1.NetworkPolicyEgressRule{
					To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "169.254.169.254/32"}}},
				})
			}
		}), nil)
		imds := netip.MustParseAddr("169.254.169.254")
		r.expectOne(r.send("api", syn(t, wire("api"), imds, 80)), "kernel")
		// apppod's egress allows only apipod.
		before := r.e.Stats()
		r.expectDrop(r.send("app", syn(t, wire("app"), imds, 80)), DropDeniedEgress, before)
		if !routable(imds) || routable(netip.MustParseAddr("fe80::1")) {
			t.Error("routable: want IPv4 link-local routed, IPv6 link-local not")
		}
	})
}
