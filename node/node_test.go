package node_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	ebpflink "github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/node"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) != "" {
		os.Exit(runAgent())
	}
	os.Exit(m.Run())
}

const aksExample = "../deploy/examples/aks-network-policies"

var (
	dbIP  = netip.MustParseAddr("10.0.1.10")
	appIP = netip.MustParseAddr("10.0.1.20")
	apiIP = netip.MustParseAddr("10.0.1.30")
)

// TestAKS plumbs the article's three pods and checks its policies with real
// TCP through the gateway (pod to pod) and through the kernel leg (node to
// pod).
func TestAKS(t *testing.T) {
	l := newLab(t)
	l.dynamicGateway = true
	db := l.addPod("dbpod", "azv10", 0, dbIP)
	app := l.addPod("apppod", "azv20", 0, appIP)
	api := l.addPod("apipod", "azv30", 0, apiIP)

	m, err := policy.Load(aksExample)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := policy.Compile(&m.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	store := &table.Store{}
	store.Publish(tab)
	e := newEngine(t, store)
	rn := l.startNode(e, func(c *node.Config) { c.PublishNodeAddrs = true })
	t.Logf("ready after %v", rn.waitReady(t))

	for _, p := range []*labPod{db, app, api} {
		l.expectPlumbed(rn, p)
	}
	if st := l.xdp(node.DefaultGatewayLink); st.Native == 0 {
		t.Errorf("no native XDP on %s: %+v", node.DefaultGatewayLink, st)
	}
	ports := rn.Ports()
	if len(ports) != 4 || ports[3].Kind != fastpath.KernelPort {
		t.Errorf("ports %+v, want 3 pod ports and the kernel port", ports)
	}
	if got, want := rn.NodeAddrs(), []netip.Addr{nodeIP4, nodeIP6}; !slices.Equal(got, want) {
		t.Errorf("node addrs %v, want %v", got, want)
	}

	// The article's criteria, on port 80.
	l.expectReach(api.ns, "api", dbIP, "dbpod")    // db accepts the API pod
	l.expectBlocked(app.ns, "app", dbIP)           // and nobody else
	l.expectBlocked(db.ns, "db", apiIP)            // db has no egress
	l.expectReach(app.ns, "app", apiIP, "apipod")  // app → api allowed
	l.expectBlocked(api.ns, "api", appIP)          // api egress only to backend
	l.expectReach(l.node, "node", apiIP, "apipod") // via the kernel leg
	l.expectReach(l.node, "node", dbIP, "dbpod")   // node addresses are allowed (kubelet probes)

	st := e.Stats()
	t.Logf("engine stats: %+v", st)
	// Every port's interface carried frames: the kernel port receives
	// them all (pods' frames punted to it, and the kernel's), pod ports
	// transmit.
	for _, p := range rn.Ports() {
		if p.Stats.RxFrames == 0 && p.Stats.TxFrames == 0 {
			t.Errorf("port %s carried no frames", p.Name)
		}
	}
}

// TestLifecycle follows pods coming and going without restart, the
// fail-closed window of a pod the policy table does not know yet, a CNI
// re-adding a route, and the graceful stop.
func TestLifecycle(t *testing.T) {
	l := newLab(t)
	ipA, ipB := netip.MustParseAddr("10.0.3.1"), netip.MustParseAddr("10.0.3.2")
	ipC, ipD := netip.MustParseAddr("10.0.3.3"), netip.MustParseAddr("10.0.3.4")
	a := l.addPod("a", "vetha", 0, ipA)
	b := l.addPod("b", "vethb", 0, ipB)
	known := map[string][]netip.Addr{"a": {ipA}, "b": {ipB}, "c": {ipC}}
	e, store := engineAllowing(t, known)
	rn := l.startNode(e, nil)
	rn.waitReady(t)
	l.expectPlumbed(rn, a)
	l.expectPlumbed(rn, b)
	l.expectReach(a.ns, "a", ipB, "b")
	l.expectReach(l.node, "node", ipA, "a")

	t.Log("pod added")
	{
		c := l.addPod("c", "vethc", 0, ipC)
		l.expectPlumbed(rn, c)
		l.expectReach(a.ns, "a", ipC, "c")
		l.expectReach(c.ns, "c", ipB, "b")
	}

	t.Log("pod the table does not know yet: fail-closed")
	{
		d := l.addPod("d", "vethd", 0, ipD)
		l.expectPlumbed(rn, d)
		l.expectBlocked(a.ns, "a", ipD)
		l.expectBlocked(l.node, "node", ipD)
		known["d"] = []netip.Addr{ipD}
		store.Publish(allowAll(t, known))
		l.expectReach(a.ns, "a", ipD, "d")
	}

	t.Log("pod removed")
	{
		l.removePod(l.pods["c"])
		testutil.Eventually(t, waitTimeout, "pod c cleaned up", func() error {
			if _, ok := rn.port("vethc"); ok {
				return errorf("port vethc still there")
			}
			if dev := l.routeDev(ipC); dev != "" {
				return errorf("route to %v via %s", ipC, dev)
			}
			if st := readState(t, l.stateDir); st["vethc"] != nil || st["vetha"] == nil {
				return errorf("state %v", st)
			}
			return nil
		})
	}

	t.Log("CNI puts the route back on the veth")
	{
		// A CNI (or its daemon) puts the route back on the veth.
		link, err := l.nh.LinkByName("vetha")
		if err != nil {
			t.Fatal(err)
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostNet(ipA), Scope: netlink.SCOPE_LINK}
		if err := l.nh.RouteReplace(r); err != nil {
			t.Fatal(err)
		}
		l.expectPlumbed(rn, a)
		l.expectReach(b.ns, "b", ipA, "a")
	}

	t.Log("kernel leg deleted by someone else")
	{
		gw, err := l.nh.LinkByName(node.DefaultGatewayLink)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.nh.LinkDel(gw); err != nil {
			t.Fatal(err)
		}
		l.expectPlumbed(rn, a)
		l.expectPlumbed(rn, b)
		l.expectReach(l.node, "node", ipA, "a")
		l.expectReach(a.ns, "a", ipB, "b")
	}

	t.Log("pod restarted with a new veth")
	{
		l.removePod(l.pods["d"])
		d2 := l.addPod("d", "vethd2", 0, ipD)
		l.expectPlumbed(rn, d2)
		if _, ok := rn.port("vethd"); ok {
			t.Error("port of the old veth still there")
		}
		l.expectReach(a.ns, "a", ipD, "d")
	}

	t.Log("graceful stop")
	{
		if err := rn.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		l.expectRestored(a, b, l.pods["d"])
		if n := len(rn.Ports()); n != 0 {
			t.Errorf("%d ports after stop", n)
		}
		// Pods reach each other and the node reaches them, through the
		// kernel, without enforcement.
		l.expectReach(a.ns, "a", ipB, "b")
		l.expectReach(b.ns, "b", ipD, "d")
		l.expectReach(l.node, "node", ipA, "a")
	}
}

// TestIPv6 checks dual-stack pods: IPv6 between pods through the gateway
// (the pods resolve fe80::1 through NDP answered by the engine) and from
// the node through the kernel leg.
func TestIPv6(t *testing.T) {
	l := newLab(t)
	l.dynamicGateway = true
	a4, a6 := netip.MustParseAddr("10.0.2.1"), netip.MustParseAddr("fd00:2::1")
	b4, b6 := netip.MustParseAddr("10.0.2.2"), netip.MustParseAddr("fd00:2::2")
	a := l.addPod("a", "veth6a", 0, a4, a6)
	b := l.addPod("b", "veth6b", 0, b4, b6)
	e, _ := engineAllowing(t, map[string][]netip.Addr{"a": {a4, a6}, "b": {b4, b6}})
	rn := l.startNode(e, nil)
	rn.waitReady(t)
	l.expectPlumbed(rn, a)
	l.expectPlumbed(rn, b)
	l.expectReach(a.ns, "a", b6, "b")
	l.expectReach(b.ns, "b", a6, "a")
	l.expectReach(a.ns, "a", b4, "b")
	l.expectReach(l.node, "node", a6, "a")
	l.expectReach(a.ns, "a", l.nodeListener(nodeIP6), "node")
	if st := e.Stats(); st.FwdPackets[fastpath.PodToPod] == 0 {
		t.Errorf("no pod-to-pod packets through the gateway: %+v", st)
	}
	if err := rn.stop(); err != nil {
		t.Fatal(err)
	}
	l.expectRestored(a, b)
}

// TestPortFailure checks that a veth whose port cannot be set up (MTU too
// large for the UMEM frames) keeps its kernel route, the other pods are
// plumbed, and the port comes once the MTU fits.
func TestPortFailure(t *testing.T) {
	l := newLab(t)
	ipA, ipBig := netip.MustParseAddr("10.0.4.1"), netip.MustParseAddr("10.0.4.2")
	ipSmall, ipMid := netip.MustParseAddr("10.0.4.3"), netip.MustParseAddr("10.0.4.4")
	a := l.addPod("a", "vetha", 0, ipA)
	big := l.addPod("big", "vethbig", 9000, ipBig)
	small := l.addPod("small", "vethsmall", 1400, ipSmall)
	e, _ := engineAllowing(t, map[string][]netip.Addr{"a": {ipA}, "big": {ipBig}, "small": {ipSmall}, "mid": {ipMid}})
	rn := l.startNode(e, nil)
	rn.waitReady(t)
	l.expectPlumbed(rn, a)
	if _, ok := rn.port("vethbig"); ok {
		t.Fatal("port for a veth with MTU 9000 and 2 KiB frames")
	}
	if dev := l.routeDev(ipBig); dev != "vethbig" {
		t.Errorf("route to the failed pod via %q, want vethbig", dev)
	}
	if st := l.xdp("vethbig"); st.Native != 0 || st.Generic != 0 {
		t.Errorf("XDP left on the failed veth: %+v", st)
	}
	if ids := l.tcx("vethbig"); len(ids) != 0 {
		t.Errorf("TCX programs left on the failed veth: %v", ids)
	}
	l.expectReach(l.node, "node", ipBig, "big")
	l.expectReach(a.ns, "a", ipBig, "big")

	// The operator fixes the MTU: the next reconcile picks the pod up.
	for _, side := range []struct {
		h    *netlink.Handle
		name string
	}{{big.handle(t), "eth0"}, {l.nh, "vethbig"}} {
		link, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := side.h.LinkSetMTU(link, 1500); err != nil {
			t.Fatal(err)
		}
	}
	l.expectPlumbed(rn, big)
	l.expectReach(a.ns, "a", ipBig, "big")

	// MTUs: a pod below the kernel leg's gets its MTU on its route; one
	// above (that fits the frames) raises the kernel leg's.
	l.expectPlumbed(rn, small)
	if mtu := l.routeMTU(ipSmall); mtu != 1400 {
		t.Errorf("route to the MTU 1400 pod has MTU %d", mtu)
	}
	mid := l.addPod("mid", "vethmid", 1700, ipMid)
	l.expectPlumbed(rn, mid)
	testutil.Eventually(t, waitTimeout, "kernel leg MTU raised", func() error {
		for _, name := range []string{node.DefaultGatewayLink, node.DefaultKernelLink} {
			link, err := l.nh.LinkByName(name)
			if err != nil {
				return err
			}
			if link.Attrs().MTU != 1700 {
				return errorf("%s MTU %d", name, link.Attrs().MTU)
			}
		}
		if mtu := l.routeMTU(ipA); mtu != 1500 {
			return errorf("route to the MTU 1500 pod has MTU %d", mtu)
		}
		return nil
	})
	l.expectReach(mid.ns, "mid", ipSmall, "small")
	l.expectReach(l.node, "node", ipMid, "mid")

	// An MTU raised beyond what the frames hold on a plumbed veth: the
	// port goes, its route goes back to the veth.
	link, err := l.nh.LinkByName("vethsmall")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.nh.LinkSetMTU(link, 9000); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitTimeout, "port of vethsmall given up", func() error {
		if _, ok := rn.port("vethsmall"); ok {
			return errorf("port still there")
		}
		if dev := l.routeDev(ipSmall); dev != "vethsmall" {
			return errorf("route via %q", dev)
		}
		if ids := l.tcx("vethsmall"); len(ids) != 0 {
			return errorf("pod_ingress still attached")
		}
		return nil
	})
	l.expectReach(l.node, "node", ipSmall, "small")
}

// TestCrash kills an agent process and checks that the pods are cut off
// while it is down (fail-closed), and that a new Node recovers from the
// state file.
func TestCrash(t *testing.T) {
	l := newLab(t)
	ipA, ipB := netip.MustParseAddr("10.0.5.1"), netip.MustParseAddr("10.0.5.2")
	ipA6 := netip.MustParseAddr("fd00:5::1")
	a := l.addPod("a", "vetha", 0, ipA, ipA6)
	b := l.addPod("b", "vethb", 0, ipB)
	ag := l.startAgent(a, b)
	l.expectReach(a.ns, "a", ipB, "b")
	l.expectReach(l.node, "node", ipA, "a")
	oldProg := l.tcx("vetha")

	ag.kill(t)
	// Fail-closed: stale programs whose sockets died drop everything.
	for _, p := range []*labPod{a, b} {
		if len(l.tcx(p.hostIf)) == 0 {
			t.Errorf("%s: no pod_ingress after the crash", p.hostIf)
		}
		for _, ip := range p.ips {
			if dev := l.routeDev(ip); dev != node.DefaultKernelLink {
				t.Errorf("route to %v via %q after the crash, want %s", ip, dev, node.DefaultKernelLink)
			}
		}
	}
	st := readState(t, l.stateDir)
	if len(st["vetha"]) != 2 || len(st["vethb"]) != 1 {
		t.Errorf("state after the crash: %v", st)
	}
	l.expectBlocked(a.ns, "a", ipB)
	l.expectBlocked(l.node, "node", ipA)

	e, _ := engineAllowing(t, map[string][]netip.Addr{"a": {ipA, ipA6}, "b": {ipB}})
	// Pod a floods while the new Node takes over: the stale program must
	// be replaced in one step, never letting a frame reach the kernel
	// unchecked.
	watch := l.watchUnchecked(a, nodeIP4)
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	rn := l.startNode(e, nil)
	ready := rn.waitReady(t)
	l.expectPlumbed(rn, a)
	time.Sleep(50 * time.Millisecond)
	sent, unchecked := watch()
	if unchecked > 0 || sent < 100 {
		t.Errorf("during recovery pod a sent %d frames, %d reached the kernel unchecked", sent, unchecked)
	} else {
		t.Logf("during recovery pod a sent %d frames, none reached the kernel unchecked", sent)
	}
	var flowing time.Duration
	testutil.Eventually(t, waitTimeout, "traffic after restart", func() error {
		_, err := dial(a.ns, ipB, 200*time.Millisecond)
		flowing = time.Since(start)
		return err
	})
	t.Logf("recovery: ready after %v, a→b flowing after %v", ready, flowing)
	l.expectPlumbed(rn, a)
	l.expectPlumbed(rn, b)
	if ids := l.tcx("vetha"); fmt.Sprint(ids) == fmt.Sprint(oldProg) {
		t.Errorf("stale program %v still attached", ids)
	}
	l.expectReach(l.node, "node", ipA, "a")
	l.expectReach(l.node, "node", ipA6, "a")

	if err := rn.stop(); err != nil {
		t.Fatal(err)
	}
	l.expectRestored(a, b)
	l.expectReach(a.ns, "a", ipB, "b")
}

// TestCrashOlderVersion: a podgate version before BPF links left its XDP
// program attached to pgw0 with netlink; the next start removes it and
// attaches its own, pinned.
func TestCrashOlderVersion(t *testing.T) {
	l := newLab(t)
	ipA := netip.MustParseAddr("10.0.7.1")
	a := l.addPod("a", "vetha", 0, ipA)
	ag := l.startAgent(a)
	ag.kill(t)
	// Turn the crashed agent's pinned link into what an older version
	// left: the same program attached with netlink.
	pin := filepath.Join(l.bpfDir, "gateway_xdp")
	gw, err := l.nh.LinkByName(node.DefaultGatewayLink)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.node.Do(func() error {
		pinned, err := ebpflink.LoadPinnedLink(pin, nil)
		if err != nil {
			return err
		}
		info, err := pinned.Info()
		if err != nil {
			return err
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			return err
		}
		defer prog.Close()
		if err := errors.Join(pinned.Unpin(), pinned.Detach(), pinned.Close()); err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(gw, prog.FD(), unix.XDP_FLAGS_DRV_MODE)
	}); err != nil {
		t.Fatal(err)
	}
	old := l.xdp(node.DefaultGatewayLink).Native
	if old == 0 {
		t.Fatal("no netlink-attached program on pgw0")
	}
	e, _ := engineAllowing(t, map[string][]netip.Addr{"a": {ipA}})
	rn := l.startNode(e, nil)
	rn.waitReady(t)
	l.expectPlumbed(rn, a)
	if now := l.xdp(node.DefaultGatewayLink).Native; now == 0 || now == old {
		t.Errorf("pgw0's program %d after the start, want a new one instead of %d", now, old)
	}
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("the new program's link is not pinned: %v", err)
	}
	l.expectReach(l.node, "node", ipA, "a")
	if err := rn.stop(); err != nil {
		t.Fatal(err)
	}
	l.expectRestored(a)
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin after a graceful stop: %v", err)
	}
}

// TestCrashPodGone: a pod whose veth disappears while the agent is down
// loses its kernel-leg route at the next start; the other pod recovers.
func TestCrashPodGone(t *testing.T) {
	l := newLab(t)
	ipA, ipB := netip.MustParseAddr("10.0.6.1"), netip.MustParseAddr("10.0.6.2")
	a := l.addPod("a", "vetha", 0, ipA)
	b := l.addPod("b", "vethb", 0, ipB)
	ag := l.startAgent(a, b)
	ag.kill(t)
	l.removePod(b)
	if dev := l.routeDev(ipB); dev != node.DefaultKernelLink {
		t.Fatalf("route to the deleted pod via %q, want it left on %s", dev, node.DefaultKernelLink)
	}
	e, _ := engineAllowing(t, map[string][]netip.Addr{"a": {ipA}, "b": {ipB}})
	rn := l.startNode(e, nil)
	rn.waitReady(t)
	l.expectPlumbed(rn, a)
	if dev := l.routeDev(ipB); dev != "" {
		t.Errorf("route to the deleted pod via %q after recovery", dev)
	}
	if st := readState(t, l.stateDir); len(st) != 1 {
		t.Errorf("state %v, want only vetha", st)
	}
	l.expectReach(l.node, "node", ipA, "a")
}

// readState returns the state file as veth name → addresses.
func readState(t *testing.T, dir string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, node.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Ports []struct {
			Name   string
			Routes []struct{ Dst string }
		}
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, p := range st.Ports {
		for _, r := range p.Routes {
			out[p.Name] = append(out[p.Name], r.Dst)
		}
	}
	return out
}
