package xsk_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The lab: two ptp pods (A: 10.99.0.1, B: 10.99.0.2) whose host ends live
// in a "node" namespace. Pods resolve their gateway 169.254.1.1 with a
// static neighbour entry to their host end's MAC, so the test forwarder
// only has to move frames between the host ends and rewrite MACs.

var (
	ipA = netip.MustParseAddr("10.99.0.1")
	ipB = netip.MustParseAddr("10.99.0.2")
)

type lab struct {
	node, podA, podB *netns.Namespace
	a, b             netns.Pod
}

func newLab(t testing.TB, mtu int) *lab {
	t.Helper()
	l := &lab{node: netns.NewForTest(t, "pgx")}
	l.podA, l.a = netns.PodForTest(t, "pgx", netns.PodConfig{
		Node: l.node, HostIf: "vetha", IPs: []netip.Addr{ipA},
		MTU: mtu, StaticGateway: true, NodeNeighbors: true,
	})
	l.podB, l.b = netns.PodForTest(t, "pgx", netns.PodConfig{
		Node: l.node, HostIf: "vethb", IPs: []netip.Addr{ipB},
		MTU: mtu, StaticGateway: true, NodeNeighbors: true,
	})
	return l
}

// port is one forwarder port: socket, XDP program and the MACs to write
// into frames sent out of it.
type port struct {
	name    string
	sock    *xsk.Socket
	prog    *xsk.Program
	hostMAC net.HardwareAddr // source MAC of frames out of this port
	podMAC  net.HardwareAddr // destination MAC
}

// openPort opens a socket and attaches the XDP program on a host end in
// the node namespace, with cleanup (even if the test fails later).
func openPort(t testing.TB, l *lab, name string, ifindex int, hostMAC, podMAC net.HardwareAddr, mode xsk.AttachMode, cfg xsk.Config) *port {
	t.Helper()
	p := &port{name: name, hostMAC: hostMAC, podMAC: podMAC}
	cfg.Ifindex = ifindex
	err := l.node.Do(func() error {
		var err error
		p.sock, err = xsk.Open(cfg)
		if err != nil {
			return err
		}
		p.prog, err = xsk.NewProgram(xsk.ProgramConfig{})
		if err != nil {
			return err
		}
		if err := p.prog.Register(0, p.sock.FD()); err != nil {
			return err
		}
		return p.prog.Attach(ifindex, mode)
	})
	t.Cleanup(func() {
		if p.prog != nil {
			if err := l.node.Do(p.prog.Close); err != nil {
				t.Errorf("close program %s: %v", name, err)
			}
		}
		if p.sock != nil {
			if err := p.sock.Close(); err != nil {
				t.Errorf("close socket %s: %v", name, err)
			}
		}
	})
	if err != nil {
		t.Fatalf("open port %s: %v", name, err)
	}
	return p
}

// forwarder is the test's stand-in for the fastpath: it copies every frame
// from one port to the other, rewrites the MACs and completes partial
// TCP/UDP checksums. It answers nothing.
type forwarder struct {
	ports   [2]*port
	stop    atomic.Bool
	done    chan struct{}
	err     error
	dropped atomic.Uint64 // no free frame / ring full on the output port
	csumFix atomic.Uint64 // frames whose L4 checksum had to be completed
	maxLen  atomic.Uint64 // longest frame seen
}

func startForwarder(t testing.TB, a, b *port) *forwarder {
	t.Helper()
	f := &forwarder{ports: [2]*port{a, b}, done: make(chan struct{})}
	go f.run()
	t.Cleanup(f.close)
	return f
}

func (f *forwarder) close() {
	if f.stop.CompareAndSwap(false, true) {
		<-f.done
	}
}

func (f *forwarder) run() {
	defer close(f.done)
	// A fastpath worker keeps its OS thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	batch := make([]xsk.Frame, 64)
	poller := xsk.NewPoller(f.ports[0].sock, f.ports[1].sock)
	for !f.stop.Load() {
		moved := 0
		for i := range 2 {
			in, out := f.ports[i], f.ports[1-i]
			n := in.sock.Receive(batch)
			moved += n
			for _, fr := range batch[:n] {
				f.forward(in, out, fr)
			}
		}
		for _, p := range f.ports {
			if err := p.sock.Flush(); err != nil {
				f.err = err
				return
			}
		}
		if moved == 0 {
			if _, err := poller.Wait(20 * time.Millisecond); err != nil {
				f.err = err
				return
			}
		}
	}
}

func (f *forwarder) forward(in, out *port, fr xsk.Frame) {
	src := in.sock.Bytes(fr)
	if uint64(len(src)) > f.maxLen.Load() {
		f.maxLen.Store(uint64(len(src)))
	}
	o, ok := out.sock.Alloc()
	if !ok || len(src) > int(o.Len) || len(src) < 14 {
		in.sock.Release(fr)
		f.dropped.Add(1)
		if ok {
			out.sock.Release(o)
		}
		return
	}
	dst := out.sock.Bytes(o)
	n := copy(dst, src)
	in.sock.Release(fr)
	o.Len = uint32(n)
	dst = dst[:n]
	copy(dst[0:6], out.podMAC)
	copy(dst[6:12], out.hostMAC)
	if completeChecksum(dst) {
		f.csumFix.Add(1)
	}
	if !out.sock.Transmit(o) {
		out.sock.Release(o)
		f.dropped.Add(1)
	}
}

// completeChecksum verifies the TCP/UDP checksum of an IPv4 frame and, if it
// is wrong, recomputes it. A frame sent by a pod with checksum offload
// carries only the pseudo-header sum; this turns it into a real checksum.
// It reports whether it changed the frame.
func completeChecksum(fr []byte) bool {
	if len(fr) < 34 || binary.BigEndian.Uint16(fr[12:14]) != 0x0800 {
		return false
	}
	ip := fr[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ihl < 20 || total < ihl || total > len(ip) || binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 {
		return false // not a whole first fragment
	}
	var off int
	switch ip[9] {
	case unix.IPPROTO_TCP:
		off = 16
	case unix.IPPROTO_UDP:
		off = 6
	default:
		return false
	}
	l4 := ip[ihl:total]
	if len(l4) < off+2 {
		return false
	}
	if ip[9] == unix.IPPROTO_UDP && l4[6] == 0 && l4[7] == 0 {
		return false // no checksum
	}
	pseudo := sum(ip[12:20], 0) + uint32(ip[9]) + uint32(len(l4))
	if fold(sum(l4, pseudo)) == 0xffff {
		return false
	}
	l4[off], l4[off+1] = 0, 0
	c := ^fold(sum(l4, pseudo))
	if c == 0 && ip[9] == unix.IPPROTO_UDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], c)
	return true
}

func sum(b []byte, acc uint32) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// startLabForwarder opens both ports in the given mode and starts the
// forwarder.
func startLabForwarder(t testing.TB, l *lab, mode xsk.AttachMode, cfg xsk.Config) (*forwarder, *port, *port) {
	t.Helper()
	pa := openPort(t, l, "A", l.a.Index, l.a.MAC, l.a.PeerMAC, mode, cfg)
	pb := openPort(t, l, "B", l.b.Index, l.b.MAC, l.b.PeerMAC, mode, cfg)
	return startForwarder(t, pa, pb), pa, pb
}

// inNS runs fn in ns, failing the test on error.
func inNS(t testing.TB, ns *netns.Namespace, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

// linkStats reads an interface's counters in ns.
func linkStats(t testing.TB, ns *netns.Namespace, name string) netlink.LinkStatistics {
	t.Helper()
	h := netns.HandleForTest(t, ns)
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return *l.Attrs().Statistics
}

// dialUDP opens a connected UDP socket in ns and returns its raw fd (the
// caller closes it).
func dialUDP(t testing.TB, ns *netns.Namespace, from, to netip.AddrPort) int {
	t.Helper()
	var fd int
	inNS(t, ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: from.Addr().As4(), Port: int(from.Port())}); err != nil {
			return errors.Join(err, unix.Close(fd))
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: to.Addr().As4(), Port: int(to.Port())}); err != nil {
			return errors.Join(err, unix.Close(fd))
		}
		return nil
	})
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}
