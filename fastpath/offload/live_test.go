package offload

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// Addresses of the live lab: pods A and B, and an outside host C.
var (
	ipA4, ipB4, ipC4 = netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("10.77.0.3")
	ipA6, ipB6       = netip.MustParseAddr("fd77::1"), netip.MustParseAddr("fd77::2")
)

// lab is a node namespace with two ptp pods A and B (host veths ofa, ofb),
// an outside host C (ofc) and the kernel leg pgw0/pgk0, as the agent's node
// plumbing builds it, without the agent.
type lab struct {
	node, a, b, c *netns.Namespace
	podA, podB    netns.Pod // Index, MAC: host veth; PeerIndex, PeerMAC: the pod's eth0
	podC          netns.Pod
	pgw, pgk      int
}

func newLab(t testing.TB) *lab {
	t.Helper()
	l := &lab{node: netns.RouterForTest(t, "ofnode")}
	for _, p := range []struct {
		ns   **netns.Namespace
		pod  *netns.Pod
		host string
		ips  []netip.Addr
	}{
		{&l.a, &l.podA, "ofa", []netip.Addr{ipA4, ipA6}},
		{&l.b, &l.podB, "ofb", []netip.Addr{ipB4, ipB6}},
		{&l.c, &l.podC, "ofc", []netip.Addr{ipC4}},
	} {
		*p.ns, *p.pod = netns.PodForTest(t, p.host, netns.PodConfig{
			Node: l.node, HostIf: p.host, IPs: p.ips, StaticGateway: true, NodeNeighbors: true,
		})
	}
	v, err := netns.AddVeth(netns.VethConfig{NS: l.node, Name: "pgw0", MAC: hw(macPGW), PeerNS: l.node, PeerName: "pgk0"})
	if err != nil {
		t.Fatal(err)
	}
	l.pgw, l.pgk = v.Index, v.PeerIndex
	return l
}

// do runs fn in the node namespace, where the offload attaches.
func (l *lab) do(t testing.TB, fn func() error) {
	t.Helper()
	if err := l.node.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func open(t testing.TB, cfg Config) *Offload {
	t.Helper()
	o, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %+v", err)
	}
	t.Cleanup(func() {
		if err := o.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return o
}

func mac(m net.HardwareAddr) [6]byte { return [6]byte(m) }

// peerFlow is the flow between (src, sport) in pod A and (dst, dport) in
// pod B, forwarded with ActPeer both ways, and the direction of A's
// packets.
func (l *lab) peerFlow(src, dst netip.Addr, proto uint8, sport, dport uint16, slot uint32) (Flow, Dir) {
	k, d := MakeKey(src, dst, proto, sport, dport)
	var v Value
	v.Slot = slot
	v.Dir[d] = FlowDir{
		InIfindex: uint32(l.podA.Index), OutIfindex: uint32(l.podB.Index),
		SrcMAC: mac(l.podA.PeerMAC), DstMAC: mac(l.podB.PeerMAC), GwMAC: mac(l.podB.MAC), Action: ActPeer,
	}
	v.Dir[1-d] = FlowDir{
		InIfindex: uint32(l.podB.Index), OutIfindex: uint32(l.podA.Index),
		SrcMAC: mac(l.podB.PeerMAC), DstMAC: mac(l.podA.PeerMAC), GwMAC: mac(l.podA.MAC), Action: ActPeer,
	}
	return Flow{Key: k, Value: v}, d
}

// udpConn opens a UDP socket bound to addr in ns, closed in Cleanup.
func udpConn(t *testing.T, ns *netns.Namespace, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := ns.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recvUDP reads datagrams from c until it has n or timeout passes, and
// returns how many it read.
func recvUDP(c *net.UDPConn, n int, timeout time.Duration) int {
	buf := make([]byte, 2048)
	got := 0
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	for got < n {
		if _, err := c.Read(buf); err != nil {
			break
		}
		got++
	}
	return got
}

// packetSock is an AF_PACKET socket capturing every frame of one interface.
type packetSock struct{ fd int }

func capture(t *testing.T, ns *netns.Namespace, ifindex int) *packetSock {
	t.Helper()
	// The protocol in network byte order: htons(ETH_P_ALL).
	proto := int(binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, unix.ETH_P_ALL)))
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifindex}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &packetSock{fd: fd}
}

// wait reads frames until match accepts one (true) or timeout passes.
func (p *packetSock) wait(timeout time.Duration, match func([]byte) bool) bool {
	buf := make([]byte, 65536)
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		_ = unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, _, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return false
		}
		if match(buf[:n]) {
			return true
		}
	}
}

// udpFrame reports whether b is an IPv4 or IPv6 UDP frame with the given
// ports (no IPv4 options, no IPv6 extension headers).
func udpFrame(b []byte, sport, dport uint16) bool {
	var l4 int
	switch {
	case len(b) >= 14+20+8 && binary.BigEndian.Uint16(b[12:]) == 0x0800 && b[14] == 0x45 && b[14+9] == ProtoUDP:
		l4 = 14 + 20
	case len(b) >= 14+40+8 && binary.BigEndian.Uint16(b[12:]) == 0x86dd && b[14+6] == ProtoUDP:
		l4 = 14 + 40
	default:
		return false
	}
	return binary.BigEndian.Uint16(b[l4:]) == sport && binary.BigEndian.Uint16(b[l4+2:]) == dport
}

// TestLivePeerAndPunt: with a UDP flow installed (ActPeer both ways), A's
// datagrams reach B and B's reach A through bpf_redirect_peer, and the
// counters count them; a flow that is not installed is punted and arrives
// on pgw0 with the marker.
func TestLivePeerAndPunt(t *testing.T) {
	l := newLab(t)
	o := open(t, Config{MaxFlows: 64})
	l.do(t, func() error {
		return errors.Join(o.AttachPod(l.podA.Index), o.AttachPod(l.podB.Index), o.AttachKernel(l.pgk))
	})
	pgw := capture(t, l.node, l.pgw)
	for i, fam := range []struct {
		name   string
		ia, ib netip.Addr
	}{{"v4", ipA4, ipB4}, {"v6", ipA6, ipB6}} {
		t.Run(fam.name, func(t *testing.T) {
			slot := uint32(i)
			flow, dA := l.peerFlow(fam.ia, fam.ib, ProtoUDP, 5000, 6000, slot)
			if _, err := o.Install([]Flow{flow}); err != nil {
				t.Fatal(err)
			}
			a := udpConn(t, l.a, netip.AddrPortFrom(fam.ia, 5000))
			b := udpConn(t, l.b, netip.AddrPortFrom(fam.ib, 6000))
			payload := bytes.Repeat([]byte("podgate"), 10)
			const n = 10
			for range n {
				if _, err := a.WriteToUDPAddrPort(payload, netip.AddrPortFrom(fam.ib, 6000)); err != nil {
					t.Fatal(err)
				}
			}
			if got := recvUDP(b, n, 5*time.Second); got != n {
				t.Fatalf("B received %d of %d datagrams", got, n)
			}
			for range n {
				if _, err := b.WriteToUDPAddrPort(payload, netip.AddrPortFrom(fam.ia, 5000)); err != nil {
					t.Fatal(err)
				}
			}
			if got := recvUDP(a, n, 5*time.Second); got != n {
				t.Fatalf("A received %d of %d replies", got, n)
			}
			hdr := 14 + 20 + 8
			if fam.ia.Is6() {
				hdr = 14 + 40 + 8
			}
			want := Counter{Packets: n, Bytes: uint64(n * (hdr + len(payload)))}
			for _, d := range []Dir{dA, 1 - dA} {
				c := o.Counters(slot, d)
				if c.Packets != want.Packets || c.Bytes != want.Bytes || c.LastSeenNS == 0 {
					t.Errorf("Counters(%d, %d) = %+v, want %+v and a time", slot, d, c, want)
				}
			}
			taken := o.Take(slot)
			for _, d := range []Dir{dA, 1 - dA} {
				if taken[d].Packets != want.Packets || taken[d].Bytes != want.Bytes {
					t.Errorf("Take(%d)[%d] = %+v, want %+v", slot, d, taken[d], want)
				}
				if c := o.Counters(slot, d); c.Packets != 0 || c.LastSeenNS != taken[d].LastSeenNS {
					t.Errorf("after Take: Counters(%d, %d) = %+v", slot, d, c)
				}
			}

			// Another port: not installed, punted.
			before, _ := o.Stats()
			a2 := udpConn(t, l.a, netip.AddrPortFrom(fam.ia, 5001))
			if _, err := a2.WriteToUDPAddrPort(payload, netip.AddrPortFrom(fam.ib, 6000)); err != nil {
				t.Fatal(err)
			}
			marker := PuntMarker(l.podA.Index)
			seen := pgw.wait(5*time.Second, func(f []byte) bool {
				return bytes.Equal(f[:6], marker[:]) && bytes.Equal(f[6:12], l.podA.PeerMAC) && udpFrame(f, 5001, 6000)
			})
			if !seen {
				t.Errorf("punted datagram not seen on pgw0 with marker % x", marker)
			}
			if got := recvUDP(b, 1, 300*time.Millisecond); got != 0 {
				t.Errorf("B received the punted datagram")
			}
			after, _ := o.Stats()
			if after.Punt[ReasonMiss] <= before.Punt[ReasonMiss] {
				t.Errorf("Punt[miss] %d -> %d", before.Punt[ReasonMiss], after.Punt[ReasonMiss])
			}
			// A redirect from a pod's TC ingress to pgk0's egress runs
			// pgk0's TCX egress: kernel_egress sees punted frames (and
			// lets them pass by their marker).
			if after.EgressMarked <= before.EgressMarked {
				t.Errorf("EgressMarked %d -> %d: kernel_egress did not see the punt", before.EgressMarked, after.EgressMarked)
			}
		})
	}
}

// TestLiveTCPBulk sends 100 MB over TCP from A to B with the flow
// installed after the handshake and no punt interface (misses, here the
// handshake and the FIN, are routed by the kernel): the data arrives
// intact, most of it through the offload, in GSO super-frames.
func TestLiveTCPBulk(t *testing.T) {
	l := newLab(t)
	o := open(t, Config{MaxFlows: 64})
	l.do(t, func() error { return errors.Join(o.AttachPod(l.podA.Index), o.AttachPod(l.podB.Index)) })

	const total = 100 << 20
	srv := netip.AddrPortFrom(ipB4, 5201)
	var ln net.Listener
	if err := l.b.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", srv.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	type result struct {
		n   int64
		sum []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		done <- result{n, h.Sum(nil), err}
	}()

	var conn *net.TCPConn
	if err := l.a.Do(func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(ipA4, 40001)), Timeout: 10 * time.Second}
		c, err := d.Dial("tcp", srv.String())
		if err != nil {
			return err
		}
		conn = c.(*net.TCPConn)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	flow, dA := l.peerFlow(ipA4, ipB4, ProtoTCP, 40001, 5201, 7)
	if _, err := o.Install([]Flow{flow}); err != nil {
		t.Fatal(err)
	}

	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), total), h)
	start := time.Now()
	if n, err := io.CopyBuffer(conn, src, make([]byte, 256<<10)); err != nil || n != total {
		t.Fatalf("sent %d of %d bytes: %v", n, total, err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	elapsed := time.Since(start)
	if r.err != nil || r.n != total || !bytes.Equal(r.sum, h.Sum(nil)) {
		t.Fatalf("B received %d of %d bytes (%v), digest match %v", r.n, total, r.err, bytes.Equal(r.sum, h.Sum(nil)))
	}
	c, back := o.Counters(7, dA), o.Counters(7, 1-dA)
	st, _ := o.Stats()
	t.Logf("100 MB in %v (%.1f Gbit/s); offloaded A->B %+v (%d B/packet), B->A %+v; stats hits %v, punts %v",
		elapsed, float64(total)*8/elapsed.Seconds()/1e9, c, c.Bytes/max(c.Packets, 1), back, st.Hit, st.Punt)
	if c.Bytes < total*9/10 {
		t.Errorf("only %d of %d bytes went through the offload", c.Bytes, total)
	}
	if c.Packets == 0 || c.Bytes/c.Packets <= 1500 {
		t.Errorf("%d bytes in %d packets: no GSO super-frames (MTU 1500)", c.Bytes, c.Packets)
	}
	if back.Packets == 0 {
		t.Errorf("no ACKs went through the offload")
	}
}

// TestLiveKernelEgress: the kernel routes a datagram from the outside host
// toward pod B through pgk0; with an ActRedirect flow kernel_egress sends
// it to B's host veth and B gets it with the right MACs. A flow without an
// entry continues to pgw0.
func TestLiveKernelEgress(t *testing.T) {
	l := newLab(t)
	// B's route moves to the kernel leg, as the node plumbing does.
	h := netns.HandleForTest(t, l.node)
	if err := h.RouteReplace(&netlink.Route{LinkIndex: l.pgk, Dst: &net.IPNet{IP: ipB4.AsSlice(), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	if err := netns.AddNeighbor(l.node, l.pgk, ipB4, hw(macPGW)); err != nil {
		t.Fatal(err)
	}
	o := open(t, Config{MaxFlows: 64})
	l.do(t, func() error { return errors.Join(o.AttachKernel(l.pgk), o.AttachPod(l.podB.Index)) })
	k, d := MakeKey(ipC4, ipB4, ProtoUDP, 7001, 7000)
	var v Value
	v.Slot = 9
	v.Dir[d] = FlowDir{InIfindex: uint32(l.pgk), OutIfindex: uint32(l.podB.Index),
		DstMAC: mac(l.podB.PeerMAC), GwMAC: mac(l.podB.MAC), Action: ActRedirect}
	if _, err := o.Install([]Flow{{Key: k, Value: v}}); err != nil {
		t.Fatal(err)
	}
	b := udpConn(t, l.b, netip.AddrPortFrom(ipB4, 7000))
	c1 := udpConn(t, l.c, netip.AddrPortFrom(ipC4, 7001))
	c2 := udpConn(t, l.c, netip.AddrPortFrom(ipC4, 7002))
	atB := capture(t, l.b, l.podB.PeerIndex)
	pgw := capture(t, l.node, l.pgw)

	if _, err := c1.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(ipB4, 7000)); err != nil {
		t.Fatal(err)
	}
	if got := recvUDP(b, 1, 5*time.Second); got != 1 {
		// Seen once under heavy load, not reproduced in 30 runs: say
		// where the datagram went.
		st, err := o.Stats()
		toPGW := pgw.wait(100*time.Millisecond, func(f []byte) bool { return udpFrame(f, 7001, 7000) })
		t.Fatalf("B did not receive the redirected datagram (stats %+v, %v; on pgw0 instead: %v)", st, err, toPGW)
	}
	seen := atB.wait(2*time.Second, func(f []byte) bool {
		return udpFrame(f, 7001, 7000) && bytes.Equal(f[:6], l.podB.PeerMAC) && bytes.Equal(f[6:12], l.podB.MAC)
	})
	if !seen {
		t.Errorf("datagram not seen on B's eth0 from %v to %v", l.podB.MAC, l.podB.PeerMAC)
	}
	if c := o.Counters(9, d); c.Packets != 1 || c.Bytes != 14+20+8+5 {
		t.Errorf("Counters = %+v", c)
	}

	if _, err := c2.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(ipB4, 7000)); err != nil {
		t.Fatal(err)
	}
	if !pgw.wait(5*time.Second, func(f []byte) bool { return udpFrame(f, 7002, 7000) && bytes.Equal(f[:6], macPGW[:]) }) {
		t.Errorf("the datagram of a flow without entry did not continue to pgw0")
	}
	if got := recvUDP(b, 1, 300*time.Millisecond); got != 0 {
		t.Errorf("B received the datagram of a flow without entry")
	}
	st, _ := o.Stats()
	if st.Hit[ActRedirect] != 1 || st.Pass[ReasonMiss] == 0 {
		t.Errorf("stats: Hit[redirect] %d, Pass[miss] %d", st.Hit[ActRedirect], st.Pass[ReasonMiss])
	}
}

// mountBPF mounts a bpffs on a temporary directory for the test.
func mountBPF(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// tcxPrograms returns the programs on an interface's TCX ingress.
func tcxPrograms(t *testing.T, l *lab, ifindex int) []link.AttachedProgram {
	t.Helper()
	var progs []link.AttachedProgram
	l.do(t, func() error {
		r, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		progs = r.Programs
		return nil
	})
	return progs
}

// TestLivePinning: with PinDir, Close leaves the programs forwarding; the
// next Open reuses the maps (flows, counters) and takes the links over,
// updating them in place; links of interfaces that went away meanwhile are
// dropped; Unpin and Close remove everything. (TestLiveReplaceIncompatible
// opens with pinned maps that do not fit.)
func TestLivePinning(t *testing.T) {
	l := newLab(t)
	// A directory in the bpffs: its root has files of its own (progs.debug).
	dir := filepath.Join(mountBPF(t), "podgate")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := Config{MaxFlows: 64, PinDir: dir}
	o1, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A third pod port that goes away while no podgate runs.
	gone, err := netns.AddVeth(netns.VethConfig{NS: l.node, Name: "ofgone", PeerNS: l.node, PeerName: "ofgone1"})
	if err != nil {
		t.Fatal(err)
	}
	l.do(t, func() error {
		return errors.Join(o1.AttachPod(l.podA.Index), o1.AttachPod(l.podB.Index), o1.AttachPod(gone.Index), o1.AttachKernel(l.pgk))
	})
	flow, dA := l.peerFlow(ipA4, ipB4, ProtoUDP, 5000, 6000, 3)
	if _, err := o1.Install([]Flow{flow}); err != nil {
		t.Fatal(err)
	}
	linkA := o1.pods[l.podA.Index].link
	infoA, err := linkA.Info()
	if err != nil {
		t.Fatal(err)
	}
	a := udpConn(t, l.a, netip.AddrPortFrom(ipA4, 5000))
	b := udpConn(t, l.b, netip.AddrPortFrom(ipB4, 6000))
	send := func(what string) {
		t.Helper()
		if _, err := a.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(ipB4, 6000)); err != nil {
			t.Fatal(err)
		}
		if recvUDP(b, 1, 5*time.Second) != 1 {
			t.Fatalf("%s: B did not receive", what)
		}
	}
	send("first run")
	if err := o1.Close(); err != nil {
		t.Fatal(err)
	}
	send("no podgate running")
	if progs := tcxPrograms(t, l, l.podA.Index); len(progs) != 1 {
		t.Fatalf("after Close: %d programs on A's TCX ingress, want the pinned one", len(progs))
	}
	h := netns.HandleForTest(t, l.node)
	if err := h.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: gone.Index}}); err != nil {
		t.Fatal(err)
	}

	o2, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o2.Close() })
	pods, kernel := o2.Attachments()
	if want := []int{l.podA.Index, l.podB.Index}; fmt.Sprint(pods) != fmt.Sprint(want) || kernel != l.pgk {
		t.Errorf("Attachments = %v, %d; want %v, %d", pods, kernel, want, l.pgk)
	}
	if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("%s%d", pinPodPrefix, gone.Index))); !os.IsNotExist(err) {
		t.Errorf("pin of the link of a deleted interface: %v", err)
	}
	var got []Flow
	if err := o2.Range(func(k Key, v Value) bool { got = append(got, Flow{k, v}); return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != flow {
		t.Errorf("flows after reopening: %+v, want %+v", got, flow)
	}
	if c := o2.Counters(3, dA); c.Packets != 2 {
		t.Errorf("Counters = %+v, want the 2 datagrams of both runs", c)
	}

	// Attaching again updates the pinned link in place.
	l.do(t, func() error { return errors.Join(o2.AttachPod(l.podA.Index), o2.AttachKernel(l.pgk)) })
	infoA2, err := o2.pods[l.podA.Index].link.Info()
	if err != nil {
		t.Fatal(err)
	}
	progInfo, err := o2.objs.PodIngress.Info()
	if err != nil {
		t.Fatal(err)
	}
	progID, _ := progInfo.ID()
	if infoA2.ID != infoA.ID || infoA2.Program != progID || infoA.Program == progID {
		t.Errorf("link %d runs program %d; want link %d (the pinned one) running this run's %d (was %d)",
			infoA2.ID, infoA2.Program, infoA.ID, progID, infoA.Program)
	}
	send("second run")
	if c := o2.Counters(3, dA); c.Packets != 3 {
		t.Errorf("Counters = %+v, want 3 packets", c)
	}

	if err := o2.Unpin(); err != nil {
		t.Fatal(err)
	}
	if err := o2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := o2.Install([]Flow{flow}); !errors.Is(err, ErrClosed) {
		t.Errorf("Install after Close = %v, want ErrClosed", err)
	}
	if err := o2.Remove([]Key{flow.Key}); !errors.Is(err, ErrClosed) {
		t.Errorf("Remove after Close = %v, want ErrClosed", err)
	}
	if c := o2.Take(3); c != [2]Counter{} {
		t.Errorf("Take after Close = %+v", c)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("pin dir after Unpin: %v, %v", entries, err)
	}
	for _, idx := range []int{l.podA.Index, l.podB.Index} {
		if progs := tcxPrograms(t, l, idx); len(progs) != 0 {
			t.Errorf("after Unpin and Close: ifindex %d still has %d TCX programs", idx, len(progs))
		}
	}
	// Kernel routing delivers again.
	send("after Unpin")
}

// TestLiveDetach: DetachPod and DetachKernel remove the programs, and
// attaching twice is a no-op.
func TestLiveDetach(t *testing.T) {
	l := newLab(t)
	o := open(t, Config{MaxFlows: 8})
	l.do(t, func() error {
		return errors.Join(o.AttachPod(l.podA.Index), o.AttachPod(l.podA.Index), o.AttachKernel(l.pgk), o.AttachKernel(l.pgk))
	})
	if progs := tcxPrograms(t, l, l.podA.Index); len(progs) != 1 {
		t.Fatalf("%d programs on A after attaching twice", len(progs))
	}
	var cfgv config
	if err := o.objs.Config.Lookup(uint32(0), &cfgv); err != nil || cfgv.PuntIfindex != uint32(l.pgk) {
		t.Errorf("config %+v, %v; want punt ifindex %d", cfgv, err, l.pgk)
	}
	l.do(t, func() error {
		return errors.Join(o.DetachPod(l.podA.Index), o.DetachPod(l.podA.Index), o.DetachKernel(), o.DetachKernel())
	})
	if progs := tcxPrograms(t, l, l.podA.Index); len(progs) != 0 {
		t.Errorf("%d programs on A after DetachPod", len(progs))
	}
	if err := o.objs.Config.Lookup(uint32(0), &cfgv); err != nil || cfgv.PuntIfindex != 0 {
		t.Errorf("config %+v, %v after DetachKernel", cfgv, err)
	}
	if pods, kernel := o.Attachments(); len(pods) != 0 || kernel != 0 {
		t.Errorf("Attachments = %v, %d", pods, kernel)
	}
	l.do(t, func() error {
		if err := o.AttachPod(0); err == nil {
			return errors.New("AttachPod(0) succeeded")
		}
		if err := o.AttachPod(1 << 30); err == nil {
			return errors.New("AttachPod of a missing interface succeeded")
		}
		return nil
	})
}

// TestLiveReplaceIncompatible: maps pinned by a run with another MaxFlows,
// or by a build with other map layouts (an upgrade), do not stop Open: it
// replaces them, says why (Replaced), and keeps the previous run's links,
// so that the pods stay behind a program until attached again.
func TestLiveReplaceIncompatible(t *testing.T) {
	l := newLab(t)
	dir := filepath.Join(mountBPF(t), "podgate")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	o1, err := Open(Config{MaxFlows: 64, PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if o1.Replaced() != nil {
		t.Errorf("first Open: Replaced() = %v", o1.Replaced())
	}
	l.do(t, func() error { return errors.Join(o1.AttachPod(l.podA.Index), o1.AttachKernel(l.pgk)) })
	flow, _ := l.peerFlow(ipA4, ipB4, ProtoUDP, 5000, 6000, 3)
	if _, err := o1.Install([]Flow{flow}); err != nil {
		t.Fatal(err)
	}
	if err := o1.Close(); err != nil {
		t.Fatal(err)
	}

	reopen := func(what string, maxFlows int) *Offload {
		t.Helper()
		o, err := Open(Config{MaxFlows: maxFlows, PinDir: dir})
		if err != nil {
			t.Fatalf("%s: Open = %v, want the pinned maps replaced", what, err)
		}
		t.Cleanup(func() { o.Close() })
		if err := o.Replaced(); !errors.Is(err, ebpf.ErrMapIncompatible) {
			t.Errorf("%s: Replaced() = %v, want ErrMapIncompatible", what, err)
		}
		if pods, kernel := o.Attachments(); fmt.Sprint(pods) != fmt.Sprint([]int{l.podA.Index}) || kernel != l.pgk {
			t.Errorf("%s: Attachments = %v, %d; want the pinned links [%d], %d", what, pods, kernel, l.podA.Index, l.pgk)
		}
		if progs := tcxPrograms(t, l, l.podA.Index); len(progs) != 1 {
			t.Errorf("%s: %d programs on A's TCX ingress, want the pinned one", what, len(progs))
		}
		n := 0
		if err := o.Range(func(Key, Value) bool { n++; return true }); err != nil || n != 0 {
			t.Errorf("%s: %d flows in the new maps (%v), want none", what, n, err)
		}
		return o
	}

	// Another MaxFlows.
	o2 := reopen("another MaxFlows", 32)
	if err := o2.Close(); err != nil {
		t.Fatal(err)
	}

	// The config map of the build before the punt budget (16 bytes).
	if err := os.Remove(filepath.Join(dir, "config")); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "config", Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, "config")); err != nil {
		t.Fatal(err)
	}
	old.Close()
	o3 := reopen("an older layout", 32)
	if got, want := o3.objs.Config.ValueSize(), uint32(binary.Size(config{})); got != want {
		t.Errorf("config map value size %d, want %d", got, want)
	}
	l.do(t, func() error { return errors.Join(o3.AttachPod(l.podA.Index), o3.AttachKernel(l.pgk)) })
	if err := errors.Join(o3.Unpin(), o3.Close()); err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("pin dir after Unpin: %v, %v", entries, err)
	}
}
