package hostile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy/table"
)

// portSeries returns the keys of the agent's series that name an
// interface.
func portSeries(m Metrics, ifname string) []string {
	var out []string
	for _, name := range []string{
		"podgate_port_packets_total", "podgate_port_bytes_total", "podgate_xsk_rx_dropped_total",
		"podgate_xsk_fill_ring_empty_total", "podgate_xsk_tx_ring_full_total", "podgate_xsk_kicks_total",
	} {
		out = append(out, m.Matching(name, "interface", ifname)...)
	}
	return out
}

// stateFilePorts returns the names of the ports in the agent's state file.
func (n *node) stateFilePorts() []string {
	n.t.Helper()
	data, err := os.ReadFile(filepath.Join(n.l.Dir(), "agent-state", "ports.json"))
	if err != nil {
		n.t.Fatalf("state file: %v", err)
	}
	var st struct {
		Ports []struct {
			Name string `json:"name"`
		} `json:"ports"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		n.t.Fatalf("state file: %v", err)
	}
	var out []string
	for _, p := range st.Ports {
		out = append(out, p.Name)
	}
	return out
}

// routeDevs returns the devices of the node's routes to a.
func (n *node) routeDevs(h *netlink.Handle, a netip.Addr) []string {
	n.t.Helper()
	bits := a.BitLen()
	rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}}, netlink.RT_FILTER_DST)
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// deleteVeth deletes the host end of the endpoint's veth (and so the pod's
// eth0) in the node namespace.
func (n *node) deleteVeth(ep *lab.Endpoint) {
	n.t.Helper()
	h := n.nodeHandle()
	link, err := h.LinkByName(ep.HostIf)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := h.LinkDel(link); err != nil {
		n.t.Fatalf("delete %s: %v", ep.HostIf, err)
	}
}

// recreateVeth creates the endpoint's veth again, as the CNI would.
func (n *node) recreateVeth(ep *lab.Endpoint) error {
	_, err := netns.AddPod(netns.PodConfig{
		Pod: ep.NS, PodIf: "eth0", Node: n.l.Node().NS, HostIf: ep.HostIf,
		IPs: ep.IPs, MTU: lab.DefaultMTU, StaticGateway: true, NodeNeighbors: true,
	})
	return err
}

// waitPortBack waits until the agent has a port for the endpoint again
// (podPorts pod ports) and its routes are on the kernel leg.
func (n *node) waitPortBack(ep *lab.Endpoint, podPorts float64) {
	n.t.Helper()
	h := n.nodeHandle()
	testutil.Eventually(n.t, 10*time.Second, "the new veth of "+ep.Name+" plumbed", func() error {
		m, err := n.scrape()
		if err != nil {
			return err
		}
		if got := m.Get("podgate_ports", "kind", "pod"); got != podPorts {
			return fmt.Errorf("podgate_ports{kind=pod} = %v, want %v", got, podPorts)
		}
		for _, a := range ep.IPs {
			if devs := n.routeDevs(h, a); !slices.Equal(devs, []string{"pgk0"}) {
				return fmt.Errorf("routes to %s on %v", a, devs)
			}
		}
		return nil
	})
}

// waitPortGone waits until the agent no longer has a port for the
// endpoint: no series for its interface, one pod port less, no route to
// its addresses, no entry in the state file.
func (n *node) waitPortGone(ep *lab.Endpoint, podPorts float64) time.Duration {
	n.t.Helper()
	start := time.Now()
	h := n.nodeHandle()
	testutil.Eventually(n.t, 10*time.Second, "the port of "+ep.Name+" removed", func() error {
		m, err := n.scrape()
		if err != nil {
			return err
		}
		if s := portSeries(m, ep.HostIf); len(s) > 0 {
			return fmt.Errorf("series left: %v", s)
		}
		if got := m.Get("podgate_ports", "kind", "pod"); got != podPorts {
			return fmt.Errorf("podgate_ports{kind=pod} = %v, want %v", got, podPorts)
		}
		for _, a := range ep.IPs {
			if devs := n.routeDevs(h, a); len(devs) > 0 {
				return fmt.Errorf("routes to %s left on %v", a, devs)
			}
		}
		if slices.Contains(n.stateFilePorts(), ep.HostIf) {
			return fmt.Errorf("%s still in the state file", ep.HostIf)
		}
		return nil
	})
	return time.Since(start)
}

// TestPodDeletedMidFlow deletes pod b (its veth, its network namespace and
// its manifest, as kubelet, the runtime and the API would) while a
// connection from a to b is open and busy. The agent must stay up, drop
// b's port, its routes, its state and its per-port series, and keep
// enforcing for the others.
func TestPodDeletedMidFlow(t *testing.T) {
	n := newNode(t)
	conn := n.dial("app/a", "app/b", tcpPort(80))
	if err := echo(conn, time.Second); err != nil {
		t.Fatal(err)
	}
	watch := watchConn(conn, 10*time.Millisecond, 200*time.Millisecond)
	m := n.metrics()
	pods := m.Get("podgate_ports", "kind", "pod")
	if len(portSeries(m, n.b.HostIf)) == 0 || pods != 4 {
		t.Fatalf("before: %v pod ports, series of %s: %v", pods, n.b.HostIf, portSeries(m, n.b.HostIf))
	}
	time.Sleep(100 * time.Millisecond)

	n.deleteVeth(n.b)
	if err := n.b.NS.Delete(); err != nil {
		t.Fatal(err)
	}
	names, err := n.l.ManifestNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if strings.HasSuffix(name, "pod-b.yaml") {
			if err := n.l.RemoveManifest(name); err != nil {
				t.Fatal(err)
			}
		}
	}
	took := n.waitPortGone(n.b, pods-1)
	rounds, failures, _, lastErr := watch.finish()
	t.Logf("port removed %v after the veth; the open connection: %d echoes, %d failed (last: %v)", took.Round(time.Millisecond), rounds, failures, lastErr)
	if failures == 0 {
		t.Error("the connection to the deleted pod kept working")
	}
	n.checkHealthy("after the pod was deleted")
	testutil.Eventually(t, 5*time.Second, "b gone from the policy table", func() error {
		if got := n.metrics().Get("podgate_table_endpoints"); got != 3 {
			return fmt.Errorf("podgate_table_endpoints = %v, want 3", got)
		}
		return nil
	})
	for _, c := range []struct {
		from, to string
		p        table.PortSpec
	}{
		{"app/c", "app/a", tcpPort(81)}, {"ext", "app/a", tcpPort(80)}, {"fd00:31::4", "fd00:31::2", udpPort(5353)},
		{"app/a", "app/c", tcpPort(80)}, {"app/d", "app/a", tcpPort(80)}, {"ext", "app/c", tcpPort(80)},
	} {
		n.expect("after the pod was deleted", c.from, c.to, c.p)
	}
}

// TestVethRemovedUnderAgent removes pod b's veth while the pod stays in the
// policy, then creates it again as a CNI would for a restarted sandbox
// (same name and addresses, a new ifindex, the CNI's host routes). The
// agent must drop the port and take the new veth over; traffic to b must
// then follow the policy again. Frames that the outside host sends to b
// (denied) while the agent has not attached to the new veth yet are
// counted: that window is the CNI's, before any agent can see the veth.
func TestVethRemovedUnderAgent(t *testing.T) {
	n := newNode(t)
	conn := n.dial("app/a", "app/b", tcpPort(80))
	if err := echo(conn, time.Second); err != nil {
		t.Fatal(err)
	}
	pods := n.metrics().Get("podgate_ports", "kind", "pod")
	n.deleteVeth(n.b)
	took := n.waitPortGone(n.b, pods-1)
	t.Logf("port removed %v after the veth", took.Round(time.Millisecond))
	n.checkHealthy("after the veth was removed")
	if err := echo(conn, 300*time.Millisecond); err == nil {
		t.Error("the connection to the removed veth still works")
	}

	// The outside host sends denied frames to b, one per millisecond,
	// while the veth comes back.
	h := n.nodeHandle()
	uplink, err := h.LinkByName(lab.UplinkIf)
	if err != nil {
		t.Fatal(err)
	}
	w := wire{srcMAC: n.podMAC(n.ext), dstMAC: uplink.Attrs().HardwareAddr, src: n.ext.IPs[0], dst: n.b.IPs[0]}
	in := n.injector(n.ext)
	var frames [][]byte
	for i := range 1000 {
		frames = append(frames, w.udp(t, uint16(33000+i), 9, mark("while re-plumbing")))
	}
	stop, sent, wg := sendUntil(in, frames, time.Millisecond)
	created := time.Now()
	if err := n.recreateVeth(n.b); err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	sniff := n.sniffer(n.b, hasMarker)
	sniffStarted := time.Since(created)
	n.waitPortBack(n.b, pods)
	plumbed := time.Since(created)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	leaked := sniff.Count()
	t.Logf("new veth plumbed %v after the CNI created it; %d denied frames sent meanwhile, %d of them reached b after the sniffer started (%v after the veth)",
		plumbed.Round(time.Millisecond), sent.Load(), leaked, sniffStarted.Round(time.Millisecond))
	if leaked > 0 {
		t.Logf("NOTE: %d denied frames reached b between the CNI's route and the agent's takeover: the veth is the kernel's until the agent attaches", leaked)
	}
	// Denied frames after the takeover would be a bug.
	sniff.Reset()
	n.checkHealthy("after the veth came back")
	n.checkPolicy("after the veth came back")
	if _, err := in.SendAll(frames[:20], 0, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := sniff.Count(); got != 0 {
		t.Errorf("%d denied frames reached b after the agent took the new veth over", got)
	}
}

// stream is a deterministic byte stream for bulk transfers: byte i is
// byte i%8 of splitmix64(i/8), so that a reader can check chunks of any
// size.
type stream struct{ pos uint64 }

func newStream() *stream { return &stream{} }

// splitmix64 is a 64-bit mixing function (SplitMix64's finalizer).
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// fill fills b with the next bytes of the stream.
func (s *stream) fill(b []byte) {
	for i := 0; i < len(b); {
		w := splitmix64(s.pos / 8)
		for j := s.pos % 8; j < 8 && i < len(b); j++ {
			b[i] = byte(w >> (8 * j))
			i++
			s.pos++
		}
	}
}

// bulk sends size bytes of a stream over an echo connection and checks
// what comes back. It records when data last arrived, the longest gap
// between arrivals, and the progress.
type bulk struct {
	size     int64
	received atomic.Int64
	last     atomic.Int64 // unix nanoseconds of the last arrival
	done     chan struct{}
	err      error // once done is closed

	mu       sync.Mutex
	maxGap   time.Duration
	gapFrom  time.Time
	arrived  []time.Time // arrival times after mark() was called
	marked   bool
	firstErr error // what failed so far
}

// failed returns what failed so far.
func (b *bulk) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.firstErr
}

func startBulk(c net.Conn, size, rate int64) *bulk {
	b := &bulk{size: size, done: make(chan struct{})}
	b.last.Store(time.Now().UnixNano())
	errs := make(chan error, 2)
	fail := func(err error) {
		b.mu.Lock()
		b.firstErr = errors.Join(b.firstErr, err)
		b.mu.Unlock()
		errs <- err
	}
	go func() { // writer, at rate bytes per second (0: as fast as it can)
		s := newStream()
		buf := make([]byte, 64<<10)
		began := time.Now()
		for left := size; left > 0; {
			if rate > 0 {
				due := began.Add(time.Duration(float64(size-left) / float64(rate) * float64(time.Second)))
				time.Sleep(time.Until(due))
			}
			n := min(int64(len(buf)), left)
			s.fill(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				fail(fmt.Errorf("write: %w", err))
				return
			}
			left -= n
		}
		errs <- nil
	}()
	go func() { // reader
		s := newStream()
		buf := make([]byte, 64<<10)
		want := make([]byte, 64<<10)
		for b.received.Load() < size {
			n, err := c.Read(buf)
			if n > 0 {
				now := time.Now()
				s.fill(want[:n])
				if !bytes.Equal(buf[:n], want[:n]) {
					fail(fmt.Errorf("data differs after %d bytes (%d-byte read)", b.received.Load(), n))
					return
				}
				b.received.Add(int64(n))
				prev := time.Unix(0, b.last.Swap(now.UnixNano()))
				b.mu.Lock()
				if gap := now.Sub(prev); gap > b.maxGap {
					b.maxGap, b.gapFrom = gap, prev
				}
				if b.marked && len(b.arrived) < 1 {
					b.arrived = append(b.arrived, now)
				}
				b.mu.Unlock()
			}
			if err != nil {
				fail(fmt.Errorf("read after %d bytes: %w", b.received.Load(), err))
				return
			}
		}
		errs <- nil
	}()
	go func() {
		b.err = errors.Join(<-errs, <-errs)
		close(b.done)
	}()
	return b
}

// markNow starts recording the next arrival.
func (b *bulk) markNow() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.marked, b.arrived = true, nil
}

// firstArrival returns the first arrival after markNow, if any.
func (b *bulk) firstArrival() (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.arrived) == 0 {
		return time.Time{}, false
	}
	return b.arrived[0], true
}

// TestKillDuringBulkTransfer kills the agent with SIGKILL while 100 MB go
// from a to b and back at 16 MB/s, keeps it down until a second after the
// kernel's lease on the offloaded connection expired (the kernel forwards
// it on the dead agent's verdict until then), and starts it again.
// While it is down and while it starts, denied probes must fail and denied
// frames (a to b's TCP 81, a to c, the outside host to b) must not reach
// b or c; the transfer must resume and complete intact. It reports how
// long the transfer stalled and how soon it resumed.
func TestKillDuringBulkTransfer(t *testing.T) {
	const size = 100 << 20
	n := newNode(t)
	conn := n.dial("app/a", "app/b", tcpPort(80))
	start := time.Now()
	b := startBulk(conn, size, 16<<20)
	testutil.Eventually(t, 30*time.Second, "20 MB transferred", func() error {
		if got := b.received.Load(); got < 20<<20 {
			return fmt.Errorf("%d bytes", got)
		}
		return nil
	})

	// Denied traffic from now on, until the end.
	sniffB, sniffC := n.sniffer(n.b, hasMarker), n.sniffer(n.c, hasMarker)
	h := n.nodeHandle()
	uplink, err := h.LinkByName(lab.UplinkIf)
	if err != nil {
		t.Fatal(err)
	}
	fromA := wire{srcMAC: n.podMAC(n.a), dstMAC: n.gatewayMAC(n.a), src: n.a.IPs[0], dst: n.b.IPs[0]}
	toC := fromA
	toC.dst = n.c.IPs[0]
	fromExt := wire{srcMAC: n.podMAC(n.ext), dstMAC: uplink.Attrs().HardwareAddr, src: n.ext.IPs[0], dst: n.b.IPs[0]}
	inA, inExt := n.injector(n.a), n.injector(n.ext)
	var framesA, framesExt [][]byte
	for i := range 500 {
		p := uint16(35000 + i)
		framesA = append(framesA, fromA.tcp(t, p, 81, fSYN, mark("denied a->b:81")), toC.udp(t, p, 9, mark("denied a->c")))
		framesExt = append(framesExt, fromExt.tcp(t, p, 80, fSYN, mark("denied ext->b")))
	}
	stopA, sentA, wgA := sendUntil(inA, framesA, time.Millisecond)
	stopExt, sentExt, wgExt := sendUntil(inExt, framesExt, time.Millisecond)
	denied := func(when string) {
		for _, p := range [][2]string{{"ext", "app/b"}, {"app/a", "app/c"}} {
			r, err := n.l.ProbeResult(context.Background(), p[0], p[1], tcpPort(80))
			if err != nil {
				t.Errorf("%s: %v", when, err)
				continue
			}
			if r.Observed {
				t.Errorf("%s: denied probe got through: %s", when, r.String())
			}
		}
	}

	atKill := b.received.Load()
	rate := float64(atKill) / time.Since(start).Seconds()
	killed := time.Now()
	if err := n.l.StopAgent(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	denied("while the agent is down")
	if d := time.Until(killed.Add(fastpath.KernelLease + time.Second)); d > 0 {
		time.Sleep(d)
	}
	if b.received.Load() >= size {
		t.Fatalf("the transfer completed while the agent was down")
	}
	// Start again; probe denied pairs while it starts.
	b.markNow()
	restart := time.Now()
	started, probing := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(probing)
		for {
			denied("while the agent starts")
			select {
			case <-started:
				return
			default:
			}
		}
	}()
	ready := n.start()
	afterStart := n.metrics()
	close(started)
	<-probing
	down := restart.Sub(killed)
	select {
	case <-b.done:
	case <-time.After(20 * time.Second):
		if os.Getenv("HOLD") != "" {
			t.Logf("HOLDING %s", n.l.ID())
			time.Sleep(150 * time.Second)
		}
		t.Fatalf("the transfer did not complete within 120s of the restart (%d of %d bytes, errors: %v); drops since the restart: %v\nagent log:\n%s",
			b.received.Load(), size, b.failed(), dropDeltas(afterStart, n.metrics()), n.logTail())
	}
	close(stopA)
	close(stopExt)
	wgA.Wait()
	wgExt.Wait()
	total := time.Since(start)
	if b.err != nil {
		t.Errorf("transfer: %v", b.err)
	}
	resumed, ok := b.firstArrival()
	b.mu.Lock()
	maxGap, gapFrom := b.maxGap, b.gapFrom
	b.mu.Unlock()
	if !ok {
		t.Fatal("no data arrived after the restart")
	}
	t.Logf("100 MB echo a -> b -> a: %.0f MB/s before the kill; killed after %d MB; down %v; agent ready %v after its start; data again %v after the start (%v after ready); longest stall %v (from %v after the kill); transfer complete in %v",
		rate/1e6, atKill>>20, down.Round(time.Millisecond), ready.Round(time.Millisecond),
		resumed.Sub(restart).Round(time.Millisecond), resumed.Sub(restart.Add(ready)).Round(time.Millisecond),
		maxGap.Round(time.Millisecond), gapFrom.Sub(killed).Round(time.Millisecond), total.Round(time.Millisecond))
	if got := resumed.Sub(restart.Add(ready)); got > 10*time.Second {
		t.Errorf("the transfer resumed %v after the agent was ready, want within 10s", got)
	}
	time.Sleep(100 * time.Millisecond)
	t.Logf("%d denied frames sent while down, starting and after", sentA.Load()+sentExt.Load())
	leaked := false
	for name, s := range map[string]*Sniffer{"b": sniffB, "c": sniffC} {
		if d, err := s.Dropped(); err != nil || d > 0 {
			t.Errorf("the sniffer on %s dropped %d frames (%v): it cannot tell what arrived", name, d, err)
		}
		if got := s.Count(); got > 0 {
			cs := s.Captures()
			ttls := map[byte]int{}
			for _, c := range cs {
				if len(c.Frame) > 14+8 && c.Frame[12] == 0x08 && c.Frame[13] == 0 {
					ttls[c.Frame[14+8]]++
				}
			}
			t.Errorf("%d denied frames reached %s from %v to %v after the restart began (the agent was ready %v after it), e.g. %q; IPv4 TTLs on arrival %v "+
				"(a flow judged as pod-to-kernel while the destination had no port yet, see TestIngressJudgedWhenPortReturns: 61 = pod, gateway, kernel, gateway, pod; 63 = switched pod to pod on that flow's entry)",
				got, name, cs[0].At.Sub(restart).Round(time.Millisecond), cs[len(cs)-1].At.Sub(restart).Round(time.Millisecond),
				ready.Round(time.Millisecond), payloadAfterMarker(cs[0].Frame), ttls)
			leaked = true
		}
	}
	if leaked {
		t.Logf("restart began at %s; agent log without flow lines:\n%s", restart.UTC().Format(time.RFC3339Nano), n.logLines(`"flow denied"`))
	}
	n.checkHealthy("after the restart")
	n.checkPolicy("after the restart")
}

// sendUntil sends frames round and round, one every period, until stop is
// closed; sent counts what the kernel accepted, wg is done when it stopped.
func sendUntil(in *Injector, frames [][]byte, period time.Duration) (stop chan struct{}, sent *atomic.Int64, wg *sync.WaitGroup) {
	stop, sent, wg = make(chan struct{}), new(atomic.Int64), new(sync.WaitGroup)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if in.Send(frames[i%len(frames)]) == nil {
				sent.Add(1)
			}
			time.Sleep(period)
		}
	}()
	return stop, sent, wg
}
