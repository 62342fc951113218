package fastpath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/policytest"
	"github.com/podgate/podgate/policy/table"
)

// replayPort receives copies of template frames, round-robin, and frees
// whatever is transmitted at once. The copy (one frame of 60-70 bytes) is
// part of what the benchmarks measure, as an AF_XDP receive is.
type replayPort struct {
	frameSize int
	umem      []byte
	free      []uint32
	templates [][]byte
	next      int
	received  int
}

func newReplayPort(templates [][]byte) *replayPort {
	const frames, size = 256, 2048
	p := &replayPort{frameSize: size, umem: make([]byte, frames*size), templates: templates}
	for i := range frames {
		p.free = append(p.free, uint32(i))
	}
	return p
}

func (p *replayPort) Receive(batch []xsk.Frame) int {
	n := 0
	for n < len(batch) && len(p.free) > 0 && len(p.templates) > 0 {
		i := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		t := p.templates[p.next]
		p.next++
		if p.next == len(p.templates) {
			p.next = 0
		}
		off := int(i) * p.frameSize
		copy(p.umem[off:], t)
		batch[n] = xsk.Frame{Addr: uint64(off), Len: uint32(len(t))}
		n++
	}
	p.received += n
	return n
}

func (p *replayPort) Bytes(f xsk.Frame) []byte { return p.umem[f.Addr : f.Addr+uint64(f.Len)] }
func (p *replayPort) Release(f xsk.Frame) {
	p.free = append(p.free, uint32(f.Addr/uint64(p.frameSize)))
}
func (p *replayPort) Transmit(f xsk.Frame) bool { p.Release(f); return true }
func (p *replayPort) Flush() error              { return nil }
func (p *replayPort) Alloc() (xsk.Frame, bool) {
	if len(p.free) == 0 {
		return xsk.Frame{}, false
	}
	i := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	return xsk.Frame{Addr: uint64(i) * uint64(p.frameSize), Len: uint32(p.frameSize)}, true
}

// benchEngine is an engine with a table of 10,000 pods (1,000 namespaces)
// and the given number of policies, a local pod port for ns-0/pod-0
// (selected by np-0: ingress from its team's namespaces on TCP 80), and a
// kernel port replaying templates.
func benchEngine(b *testing.B, policies, flows int) (*Engine, *replayPort, netip.Addr, []netip.Addr) {
	b.Helper()
	tab, err := policy.Compile(policytest.ScaleCluster(1000, 10, policies))
	if err != nil {
		b.Fatal(err)
	}
	store := &table.Store{}
	store.Publish(tab)
	var clock int64 = 1e9
	e, err := New(Config{Store: store, Conntrack: conntrack.Config{Capacity: flows + flows/4, Seed: 1}, Now: func() int64 { return clock }})
	if err != nil {
		b.Fatal(err)
	}
	dst := netip.MustParseAddr(policytest.PodIP(0))
	// Sources: pods of team-0's other namespaces (ns-50, ns-100, ...).
	var srcs []netip.Addr
	for n := 50; n < 1000; n += 50 {
		for p := range 10 {
			srcs = append(srcs, netip.MustParseAddr(policytest.PodIP(n*10+p)))
		}
	}
	kernel := newReplayPort(nil)
	pod := newReplayPort(nil)
	if err := e.addPort(PortSpec{Name: "kernel", Kind: KernelPort, Port: kernel, MAC: kernelMAC, PeerMAC: kernelPeerMAC}); err != nil {
		b.Fatal(err)
	}
	if err := e.addPort(PortSpec{Name: "pod", Kind: PodPort, Port: pod, MAC: [6]byte{2, 0, 0, 1, 0, 1}, PeerMAC: [6]byte{2, 0, 0, 2, 0, 1}, PodIPs: []netip.Addr{dst}}); err != nil {
		b.Fatal(err)
	}
	return e, kernel, dst, srcs
}

// run processes n frames from the kernel port.
func run(e *Engine, in *replayPort, n int) {
	start := in.received
	for in.received-start < n {
		e.runOnce()
	}
}

func flowFrames(b *testing.B, srcs []netip.Addr, dst netip.Addr, n int, o tcpOpt) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		s, d := fromKernel()
		out[i] = tcpFrame(b, s, d, srcs[i%len(srcs)], dst, uint16(1024+i/len(srcs)), 80, o)
	}
	return out
}

// BenchmarkEstablished forwards packets of established connections (from
// the kernel leg to a local pod). With burst=1 each packet belongs to a
// random one of the tracked flows, the worst case for the caches; with
// burst=8 flows send 8 packets in a row, as TCP streams do.
func BenchmarkEstablished(b *testing.B) {
	for _, flows := range []int{1000, 100000} {
		for _, pols := range []int{0, 2000} {
			for _, burst := range []int{1, 8} {
				b.Run(fmt.Sprintf("flows=%d/pods=10000/policies=%d/burst=%d", flows, pols, burst), func(b *testing.B) {
					benchEstablished(b, flows, pols, burst)
				})
			}
		}
	}
}

func benchEstablished(b *testing.B, flows, pols, burst int) {
	{
		{
			{
				e, kernel, dst, srcs := benchEngine(b, pols, flows)
				// Open the flows with SYNs; the pod's answers are not needed
				// for UDP-like accounting, but TCP wants the handshake, so
				// pick the flows up with ACKs (mid-stream pickup).
				kernel.templates = flowFrames(b, srcs, dst, flows, tcpOpt{ack: true, payload: make([]byte, 10)})
				run(e, kernel, flows)
				if got := e.Stats().FlowsNew; got != uint64(flows) {
					b.Fatalf("tracked %d flows, want %d; drops %v", got, flows, e.Stats().Drops)
				}
				rand.New(rand.NewPCG(1, 2)).Shuffle(len(kernel.templates), func(i, j int) {
					kernel.templates[i], kernel.templates[j] = kernel.templates[j], kernel.templates[i]
				})
				if burst > 1 {
					bursts := make([][]byte, 0, len(kernel.templates)*burst)
					for _, t := range kernel.templates {
						for range burst {
							bursts = append(bursts, t)
						}
					}
					kernel.templates = bursts
				}
				before := e.Stats()
				b.ReportAllocs()
				b.ResetTimer()
				run(e, kernel, b.N)
				b.StopTimer()
				after := e.Stats()
				if fwd := after.FwdPackets[KernelToPod] - before.FwdPackets[KernelToPod]; fwd < uint64(b.N) || after.FlowsNew != before.FlowsNew {
					b.Fatalf("forwarded %d of %d, new flows %d: drops %v", fwd, b.N, after.FlowsNew-before.FlowsNew, after.Drops)
				}
			}
		}
	}
}

// BenchmarkNewFlows forwards the first packet (a SYN) of new connections:
// a policy decision and a flow insert each, evicting the oldest flow once
// the table is full.
func BenchmarkNewFlows(b *testing.B) {
	for _, pols := range []int{0, 2000} {
		b.Run(fmt.Sprintf("flows=100000/pods=10000/policies=%d", pols), func(b *testing.B) {
			e, kernel, dst, srcs := benchEngine(b, pols, 100000)
			kernel.templates = flowFrames(b, srcs, dst, 190*1024, tcpOpt{syn: true})
			run(e, kernel, 150000) // fill the table
			before := e.Stats()
			b.ReportAllocs()
			b.ResetTimer()
			run(e, kernel, b.N)
			b.StopTimer()
			after := e.Stats()
			if n := after.FlowsNew - before.FlowsNew; n < uint64(b.N) {
				b.Fatalf("%d new flows for %d packets: drops %v", n, b.N, after.Drops)
			}
		})
	}
}
