package node_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	ebpflink "github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/node"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// The lab: a node namespace with an uplink "eth0" carrying the node's
// addresses, ptp pods whose host ends live in the node namespace, an
// engine, and a Node running inside the node namespace.

var (
	nodeIP4 = netip.MustParseAddr("10.0.1.4")
	nodeIP6 = netip.MustParseAddr("fd00:1::4")
)

const (
	okTimeout   = 3 * time.Second        // a connection that must work
	denyTimeout = 600 * time.Millisecond // a connection that must fail
	waitTimeout = 10 * time.Second       // for the Node to converge
)

type lab struct {
	t        *testing.T
	node     *netns.Namespace
	nh       *netlink.Handle
	stateDir string
	// bpfDir is where the Nodes' offloads pin (a bpffs of the test's own).
	bpfDir string
	// dynamicGateway makes new pods resolve their gateway with ARP/NDP.
	dynamicGateway bool

	mu   sync.Mutex
	pods map[string]*labPod
}

type labPod struct {
	name   string
	ns     *netns.Namespace
	hostIf string
	ips    []netip.Addr
	pod    netns.Pod
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{t: t, node: netns.RouterForTest(t, "pgnode"), stateDir: t.TempDir(), pods: map[string]*labPod{}}
	l.nh = netns.HandleForTest(t, l.node)
	l.bpfDir = t.TempDir() + "/bpf/podgate"
	unmount, err := offload.PrepareBPFFS(l.bpfDir)
	if err != nil {
		t.Fatal(err)
	}
	if unmount != nil {
		t.Cleanup(func() {
			if err := unmount(); err != nil {
				t.Error(err)
			}
		})
	}
	// The node's uplink is a veth to an "outside" namespace, as a kind
	// node's eth0 is.
	outside := netns.NewForTest(t, "pgout")
	if _, err := netns.AddVeth(netns.VethConfig{NS: l.node, Name: "eth0", PeerNS: outside, PeerName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	eth0, err := l.nh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{nodeIP4, nodeIP6} {
		addr := &netlink.Addr{IPNet: hostNet(a), Flags: syscall.IFA_F_NODAD}
		if err := l.nh.AddrAdd(eth0, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.nh.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	return l
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// addPod adds a ptp pod with a TCP server on port 80 that answers with the
// pod's name. The pod has a static neighbour entry for its gateway, as if
// the host end answered ARP for it the way a CNI sets it up (the engine
// answers the same), unless the lab has dynamicGateway: then it resolves
// the gateway through ARP/NDP, which only the engine answers.
func (l *lab) addPod(name, hostIf string, mtu int, ips ...netip.Addr) *labPod {
	l.t.Helper()
	p := &labPod{name: name, ns: netns.NewForTest(l.t, "pgpod"), hostIf: hostIf, ips: ips}
	// Like a CNI ADD, which kubelet retries: it fails while the route of
	// a deleted pod with the same address is still on the kernel leg.
	testutil.Eventually(l.t, waitTimeout, "add pod "+name, func() error {
		var err error
		p.pod, err = netns.AddPod(netns.PodConfig{
			Pod: p.ns, Node: l.node, HostIf: hostIf, IPs: ips, MTU: mtu,
			StaticGateway: !l.dynamicGateway,
		})
		if err != nil && !errors.Is(err, syscall.EEXIST) {
			l.t.Fatal(err)
		}
		return err
	})
	serveName(l.t, p.ns, ":80", name)
	l.mu.Lock()
	l.pods[name] = p
	l.mu.Unlock()
	return p
}

// removePod deletes the pod's veth, as a CNI DEL does.
func (l *lab) removePod(p *labPod) {
	l.t.Helper()
	link, err := l.nh.LinkByName(p.hostIf)
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.nh.LinkDel(link); err != nil {
		l.t.Fatal(err)
	}
}

// dial connects from a namespace to addr:80 and returns the name the
// server answered with.
func dial(ns *netns.Namespace, to netip.Addr, timeout time.Duration) (string, error) {
	var got string
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(to, 80).String(), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("read banner: %w", err)
		}
		got = strings.TrimSpace(line)
		return nil
	})
	return got, err
}

// expectReach checks that a connection from ns to the pod at addr works.
func (l *lab) expectReach(from *netns.Namespace, what string, to netip.Addr, want string) {
	l.t.Helper()
	got, err := dial(from, to, okTimeout)
	if err != nil {
		l.t.Errorf("%s → %v (%s): %v, want a connection", what, to, want, err)
		return
	}
	if got != want {
		l.t.Errorf("%s → %v: reached %q, want %q", what, to, got, want)
	}
}

// expectBlocked checks that a connection from ns to addr fails.
func (l *lab) expectBlocked(from *netns.Namespace, what string, to netip.Addr) {
	l.t.Helper()
	if got, err := dial(from, to, denyTimeout); err == nil {
		l.t.Errorf("%s → %v: reached %q, want no connection", what, to, got)
	}
}

// routeDev returns the device of the main-table host route to a, or "".
func (l *lab) routeDev(a netip.Addr) string {
	l.t.Helper()
	rs, err := l.nh.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: hostNet(a)}, netlink.RT_FILTER_DST)
	if err != nil {
		l.t.Fatalf("list routes: %v", err)
	}
	for _, r := range rs {
		if r.Gw != nil {
			continue
		}
		link, err := l.nh.LinkByIndex(r.LinkIndex)
		if err != nil {
			l.t.Fatalf("find link %d: %v", r.LinkIndex, err)
		}
		return link.Attrs().Name
	}
	return ""
}

// xdp returns the XDP programs attached to a link of the node.
func (l *lab) xdp(name string) xsk.XDPState {
	l.t.Helper()
	link, err := l.nh.LinkByName(name)
	if err != nil {
		l.t.Fatalf("find link %s: %v", name, err)
	}
	var st xsk.XDPState
	if err := l.node.Do(func() error {
		var err error
		st, err = xsk.QueryXDP(link.Attrs().Index)
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	return st
}

// tcx returns the programs on the TCX ingress of a link of the node.
func (l *lab) tcx(name string) []ebpf.ProgramID {
	l.t.Helper()
	link, err := l.nh.LinkByName(name)
	if err != nil {
		l.t.Fatalf("find link %s: %v", name, err)
	}
	var ids []ebpf.ProgramID
	if err := l.node.Do(func() error {
		res, err := ebpflink.QueryPrograms(ebpflink.QueryOptions{Target: link.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
		return nil
	}); err != nil {
		l.t.Fatal(err)
	}
	return ids
}

// openOffload opens an offload pinned in the lab's bpffs, closed (and,
// after a graceful stop of the Node, unpinned) in cleanup.
func (l *lab) openOffload() *offload.Offload {
	l.t.Helper()
	o, err := offload.Open(offload.Config{MaxFlows: 4096, PinDir: l.bpfDir})
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := o.Clear(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		if err := o.Close(); err != nil {
			l.t.Error(err)
		}
	})
	return o
}

// linkExists reports whether the node has a link with the name.
func (l *lab) linkExists(name string) bool {
	_, err := l.nh.LinkByName(name)
	return err == nil
}

// table compiles a cluster of the given pods (namespace default, no
// policies: everything allowed among known endpoints).
func allowAll(t testing.TB, ips map[string][]netip.Addr) *table.Table {
	t.Helper()
	c := &policy.Cluster{Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "default"}}}}
	for name, as := range ips {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: as[0].String()},
		}
		for _, a := range as {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: a.String()})
		}
		c.Pods = append(c.Pods, pod)
	}
	tab, err := policy.Compile(c)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// engineAllowing returns a running engine whose table knows the pods of
// ips and allows everything among them, and the store it reads.
func engineAllowing(t *testing.T, ips map[string][]netip.Addr) (*fastpath.Engine, *table.Store) {
	t.Helper()
	store := &table.Store{}
	store.Publish(allowAll(t, ips))
	return newEngine(t, store), store
}

// newEngine starts an engine on the store, stopped in cleanup (after the
// Node, whose cleanup is registered later).
func newEngine(t *testing.T, store *table.Store) *fastpath.Engine {
	t.Helper()
	e, err := fastpath.New(fastpath.Config{
		Store:          store,
		Conntrack:      conntrack.Config{Capacity: 4096},
		AllowNodeToPod: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine: %v", err)
		}
	})
	return e
}

// runningNode is a Node running in the lab's node namespace.
type runningNode struct {
	*node.Node
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
	// stopChecked: the test checked stop's error itself; the cleanup
	// does not report it again.
	stopChecked bool
}

func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

// tWriter sends log lines to t.Log (safe until the test ends: the Node
// stops in cleanup).
type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// startNode runs a Node in the node namespace; it is stopped (gracefully)
// in cleanup unless the test stopped it.
func (l *lab) startNode(e *fastpath.Engine, tweak func(*node.Config)) *runningNode {
	l.t.Helper()
	cfg := node.Config{
		Engine:         e,
		Offload:        l.openOffload(),
		StateDir:       l.stateDir,
		Logger:         testLogger(l.t),
		ResyncInterval: 2 * time.Second,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	n, err := node.New(cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rn := &runningNode{Node: n, cancel: cancel, done: make(chan error, 1)}
	go func() { rn.done <- l.node.Do(func() error { return n.Run(ctx) }) }()
	l.t.Cleanup(func() {
		if err := rn.stop(); err != nil && !rn.stopChecked {
			l.t.Errorf("node run: %v", err)
		}
	})
	return rn
}

// stop cancels the Node and waits for its restore.
func (rn *runningNode) stop() error {
	rn.once.Do(func() {
		rn.cancel()
		select {
		case rn.err = <-rn.done:
		case <-time.After(time.Minute):
			rn.err = errors.New("node did not stop within a minute")
		}
	})
	return rn.err
}

func (rn *runningNode) waitReady(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	testutil.Eventually(t, waitTimeout, "node ready", func() error {
		select {
		case err := <-rn.done:
			rn.done <- err
			return fmt.Errorf("node stopped: %v", err)
		default:
		}
		if !rn.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	return time.Since(start)
}

// port returns the node's port with the name, if any.
func (rn *runningNode) port(name string) (node.PortInfo, bool) {
	for _, p := range rn.Ports() {
		if p.Name == name {
			return p, true
		}
	}
	return node.PortInfo{}, false
}

// expectPlumbed waits until the pod has a port with exactly its addresses
// and every address is routed via the kernel leg.
func (l *lab) expectPlumbed(rn *runningNode, p *labPod) {
	l.t.Helper()
	testutil.Eventually(l.t, waitTimeout, "pod "+p.name+" plumbed", func() error {
		pi, ok := rn.port(p.hostIf)
		if !ok {
			return fmt.Errorf("no port %s", p.hostIf)
		}
		if fmt.Sprint(pi.PodIPs) != fmt.Sprint(sorted(p.ips)) {
			return fmt.Errorf("port %s has %v, want %v", p.hostIf, pi.PodIPs, p.ips)
		}
		for _, a := range p.ips {
			if dev := l.routeDev(a); dev != node.DefaultKernelLink {
				return fmt.Errorf("route to %v via %q", a, dev)
			}
		}
		if len(l.tcx(p.hostIf)) == 0 {
			return fmt.Errorf("no pod_ingress on %s", p.hostIf)
		}
		return nil
	})
}

func sorted(as []netip.Addr) []netip.Addr {
	out := append([]netip.Addr(nil), as...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].Less(out[i]) {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// expectRestored checks a node without podgate: routes on the veths, no
// XDP anywhere, no kernel leg, no state file.
func (l *lab) expectRestored(pods ...*labPod) {
	l.t.Helper()
	for _, p := range pods {
		for _, a := range p.ips {
			if dev := l.routeDev(a); dev != p.hostIf {
				l.t.Errorf("route to %v via %q, want %s", a, dev, p.hostIf)
			}
		}
	}
	links, err := l.nh.LinkList()
	if err != nil {
		l.t.Fatal(err)
	}
	for _, link := range links {
		if st := l.xdp(link.Attrs().Name); st != (xsk.XDPState{}) {
			l.t.Errorf("link %s still has XDP %+v", link.Attrs().Name, st)
		}
		if ids := l.tcx(link.Attrs().Name); len(ids) != 0 {
			l.t.Errorf("link %s still has TCX programs %v", link.Attrs().Name, ids)
		}
	}
	for _, name := range []string{node.DefaultGatewayLink, node.DefaultKernelLink} {
		if l.linkExists(name) {
			l.t.Errorf("link %s still exists", name)
		}
	}
	if _, err := os.Stat(l.stateDir + "/" + node.StateFile); !errors.Is(err, os.ErrNotExist) {
		l.t.Errorf("state file: %v, want it removed", err)
	}
}

// agent is a podgate Node and engine in a child process (this test binary
// in agent mode), for crashing it.
type agent struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

const agentEnv = "PODGATE_NODE_TEST_AGENT"

// startAgent starts the child in the node namespace with an allow-all
// table of the given pods and waits until its Node is ready.
func (l *lab) startAgent(pods ...*labPod) *agent {
	l.t.Helper()
	var spec []string
	for _, p := range pods {
		var ips []string
		for _, a := range p.ips {
			ips = append(ips, a.String())
		}
		spec = append(spec, p.name+"="+strings.Join(ips, "+"))
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), agentEnv+"="+strings.Join(spec, ","), "PODGATE_NODE_TEST_STATE="+l.stateDir, "PODGATE_NODE_TEST_BPF="+l.bpfDir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.node.Start(cmd); err != nil {
		l.t.Fatal(err)
	}
	a := &agent{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	l.t.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		_ = a.cmd.Wait()
	})
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			a.lines <- s.Text()
		}
		close(a.lines)
	}()
	select {
	case line, ok := <-a.lines:
		if !ok || line != "ready" {
			l.t.Fatalf("agent: %q, want ready", line)
		}
	case <-time.After(waitTimeout):
		l.t.Fatal("agent not ready")
	}
	return a
}

// kill crashes the agent.
func (a *agent) kill(t *testing.T) {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Wait()
}

// runAgent is the child's side: engine and Node on an allow-all table,
// "ready" on stdout once the Node is, graceful stop when stdin closes.
func runAgent() int {
	ips := map[string][]netip.Addr{}
	for _, spec := range strings.Split(os.Getenv(agentEnv), ",") {
		name, list, _ := strings.Cut(spec, "=")
		for _, s := range strings.Split(list, "+") {
			ips[name] = append(ips[name], netip.MustParseAddr(s))
		}
	}
	tab := allowAll(fatalTB{}, ips)
	store := &table.Store{}
	store.Publish(tab)
	e, err := fastpath.New(fastpath.Config{Store: store, Conntrack: conntrack.Config{Capacity: 4096}, AllowNodeToPod: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ectx, ecancel := context.WithCancel(context.Background())
	defer ecancel()
	go func() { _ = e.Run(ectx) }()
	o, err := offload.Open(offload.Config{MaxFlows: 4096, PinDir: os.Getenv("PODGATE_NODE_TEST_BPF")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer o.Close()
	n, err := node.New(node.Config{
		Engine:   e,
		Offload:  o,
		StateDir: os.Getenv("PODGATE_NODE_TEST_STATE"),
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	for !n.Ready() {
		select {
		case err := <-done:
			fmt.Fprintln(os.Stderr, "node:", err)
			return 1
		case <-time.After(10 * time.Millisecond):
		}
	}
	fmt.Println("ready")
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	return 0
}

// fatalTB is a testing.TB stand-in for the agent process: Fatal exits.
type fatalTB struct{ testing.TB }

func (fatalTB) Helper() {}
func (fatalTB) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, args...)
	os.Exit(1)
}

// nodeListener starts a TCP server on addr:80 in the node namespace that
// answers "node", and returns addr.
func (l *lab) nodeListener(addr netip.Addr) netip.Addr {
	l.t.Helper()
	serveName(l.t, l.node, netip.AddrPortFrom(addr, 80).String(), "node")
	return addr
}

// serveName starts a TCP server on addr in ns that answers every
// connection with name and closes it, until the test ends.
func serveName(t *testing.T, ns *netns.Namespace, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, name+"\n")
			_ = c.Close()
		}
	}()
}

// handle returns a netlink handle in the pod's namespace.
func (p *labPod) handle(t *testing.T) *netlink.Handle {
	t.Helper()
	return netns.HandleForTest(t, p.ns)
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// routeMTU returns the MTU metric of the host route to a (0: none).
func (l *lab) routeMTU(a netip.Addr) int {
	l.t.Helper()
	rs, err := l.nh.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: hostNet(a)}, netlink.RT_FILTER_DST)
	if err != nil || len(rs) == 0 {
		l.t.Fatalf("route to %v: %v", a, err)
	}
	return rs[0].MTU
}

// watchUnchecked floods UDP from the pod to port 9 of the node's address
// to, and counts the datagrams that reach the node's stack through the
// pod's veth, which only unchecked frames do (checked ones come from the
// kernel leg): a UDP socket in the node namespace reads each datagram's
// arrival interface. It runs until the returned function is called, which
// returns the datagrams sent and those that arrived unchecked.
func (l *lab) watchUnchecked(p *labPod, to netip.Addr) func() (sent, unchecked int) {
	l.t.Helper()
	link, err := l.nh.LinkByName(p.hostIf)
	if err != nil {
		l.t.Fatal(err)
	}
	var pc *ipv4.PacketConn
	if err := l.node.Do(func() error {
		c, err := net.ListenPacket("udp4", netip.AddrPortFrom(to, 9).String())
		if err != nil {
			return err
		}
		pc = ipv4.NewPacketConn(c)
		return pc.SetControlMessage(ipv4.FlagInterface, true)
	}); err != nil {
		l.t.Fatal(err)
	}
	var conn net.Conn
	if err := p.ns.Do(func() error {
		var err error
		conn, err = net.Dial("udp", netip.AddrPortFrom(to, 9).String())
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	var stop atomic.Bool
	var sent, seen atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			for range 8 {
				if _, err := conn.Write([]byte("probe")); err == nil {
					sent.Add(1)
				}
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for !stop.Load() {
			_ = pc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			_, cm, _, err := pc.ReadFrom(buf)
			if err == nil && cm != nil && cm.IfIndex == link.Attrs().Index {
				seen.Add(1)
			}
		}
	}()
	var once sync.Once
	finish := func() (int, int) {
		once.Do(func() {
			stop.Store(true)
			wg.Wait()
			conn.Close()
			pc.Close()
		})
		return int(sent.Load()), int(seen.Load())
	}
	l.t.Cleanup(func() { finish() })
	return finish
}
