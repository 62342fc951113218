package netns_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/podgate/podgate/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const helperEnv = "PODGATE_NETNS_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "run-dir" {
		if err := runDirScenario(os.Args[len(os.Args)-1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(helperEnv) == "print-netns" {
		l, err := os.Readlink("/proc/self/ns/net")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(l)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// hostState is what the tests promise never to change in the caller's own
// network namespace.
type hostState struct {
	Links     []string
	Forward   string
	ThreadNSs []string
}

func snapshotHost(t *testing.T) hostState {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list host links: %v", err)
	}
	var s hostState
	for _, l := range links {
		s.Links = append(s.Links, fmt.Sprintf("%d:%s", l.Attrs().Index, l.Attrs().Name))
	}
	fw, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatalf("read ip_forward: %v", err)
	}
	s.Forward = strings.TrimSpace(string(fw))
	// Every thread of the process must still be in the same namespace.
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatalf("list threads: %v", err)
	}
	seen := map[string]bool{}
	for _, task := range tasks {
		l, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if err != nil {
			continue // thread exited meanwhile
		}
		seen[l] = true
	}
	for l := range seen {
		s.ThreadNSs = append(s.ThreadNSs, l)
	}
	slices.Sort(s.ThreadNSs)
	return s
}

// checkHostUnchanged fails the test if the caller's namespace changed.
func checkHostUnchanged(t *testing.T) {
	t.Helper()
	before := snapshotHost(t)
	if len(before.ThreadNSs) != 1 {
		t.Fatalf("threads already in several namespaces: %v", before.ThreadNSs)
	}
	t.Cleanup(func() {
		after := snapshotHost(t)
		if diff := cmp.Diff(before, after); diff != "" {
			t.Errorf("host network namespace changed (-before +after):\n%s", diff)
		}
	})
}

func nsInode(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func TestUniqueName(t *testing.T) {
	a, err := netns.UniqueName("pgt")
	if err != nil {
		t.Fatal(err)
	}
	b, err := netns.UniqueName("pgt")
	if err != nil {
		t.Fatal(err)
	}
	if a == b || !strings.HasPrefix(a, "pgt-") || len(a) != len("pgt-")+8 {
		t.Errorf("UniqueName = %q, %q; want distinct pgt-XXXXXXXX", a, b)
	}
	if len("abcdef-01234567") > netns.MaxIfNameLen {
		t.Errorf("6-byte prefix does not give an interface name")
	}
	for _, bad := range []string{"", "much-too-long-prefix"} {
		if _, err := netns.UniqueName(bad); !errors.Is(err, netns.ErrInvalidName) {
			t.Errorf("UniqueName(%q) error = %v, want ErrInvalidName", bad, err)
		}
	}
}

func TestInvalidNames(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "x\x00"} {
		if _, err := netns.New(name); !errors.Is(err, netns.ErrInvalidName) {
			t.Errorf("New(%q) error = %v, want ErrInvalidName", name, err)
		}
		if _, err := netns.Open(name); !errors.Is(err, netns.ErrInvalidName) {
			t.Errorf("Open(%q) error = %v, want ErrInvalidName", name, err)
		}
	}
}

func TestNewDoDelete(t *testing.T) {
	requireRoot(t)
	checkHostUnchanged(t)
	hostNS := nsInode(t, "/proc/self/ns/net")

	name, err := netns.UniqueName("pgt")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New(name)
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = ns.Delete()
		}
	})
	if ns.Name() != name || ns.Path() != filepath.Join(netns.RunDir, name) {
		t.Errorf("Name, Path = %q, %q", ns.Name(), ns.Path())
	}
	inner := nsInode(t, ns.Path())
	if inner == hostNS {
		t.Fatalf("new namespace is the host namespace")
	}
	if _, err := netns.New(name); !errors.Is(err, os.ErrExist) {
		t.Errorf("second New(%q) error = %v, want ErrExist", name, err)
	}

	// Do runs on a thread inside the namespace; many concurrent calls never
	// leak the namespace to other threads (checked by checkHostUnchanged).
	errs := make(chan error, 20)
	for range cap(errs) {
		go func() {
			errs <- ns.Do(func() error {
				got, err := os.Readlink("/proc/thread-self/ns/net")
				if err != nil {
					return err
				}
				if got != inner {
					return fmt.Errorf("inside Do: thread netns %s, want %s", got, inner)
				}
				runtime.Gosched()
				return nil
			})
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	sentinel := errors.New("boom")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do error = %v, want wrapped sentinel", err)
	}

	// A panic inside Do reaches the caller; the thread was restored first.
	func() {
		defer func() {
			if v := recover(); v != "inside" {
				t.Errorf("recovered %v, want the panic from fn", v)
			}
		}()
		_ = ns.Do(func() error { panic("inside") })
	}()

	// Open finds the same namespace by name.
	again, err := netns.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	if got := nsInode(t, fmt.Sprintf("/proc/self/fd/%d", again.FD())); got != inner {
		t.Errorf("Open: namespace %s, want %s", got, inner)
	}
	if err := again.Close(); err != nil {
		t.Error(err)
	}

	if err := ns.Delete(); err != nil {
		t.Fatal(err)
	}
	deleted = true
	if _, err := os.Stat(ns.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Delete: stat %s: %v", ns.Path(), err)
	}
	if err := ns.Do(func() error { return nil }); !errors.Is(err, netns.ErrClosed) {
		t.Errorf("Do after Delete error = %v, want ErrClosed", err)
	}
	if err := ns.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

func TestOpenNotNamespace(t *testing.T) {
	requireRoot(t)
	name, err := netns.UniqueName("pgt")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(netns.RunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(netns.RunDir, name)
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(path) })
	if _, err := netns.Open(name); err == nil {
		t.Errorf("Open of a plain file succeeded")
	}
}

func TestStart(t *testing.T) {
	checkHostUnchanged(t)
	ns := netns.NewForTest(t, "pgt")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=print-netns")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v: %s", err, out.String())
	}
	if got, want := strings.TrimSpace(out.String()), nsInode(t, ns.Path()); got != want {
		t.Errorf("child netns = %s, want %s", got, want)
	}
}

func TestSysctl(t *testing.T) {
	checkHostUnchanged(t) // includes the host's ip_forward
	ns := netns.NewForTest(t, "pgt")
	host, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	want := "1"
	if strings.TrimSpace(string(host)) == "1" {
		want = "0"
	}
	if err := ns.Sysctl("net.ipv4.ip_forward", want); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := ns.Do(func() error {
		got, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != want {
		t.Errorf("ip_forward inside = %q, want %q", got, want)
	}
	for _, bad := range []string{"kernel.hostname", "net/../kernel/hostname", "vm.swappiness"} {
		if err := ns.Sysctl(bad, "x"); err == nil {
			t.Errorf("Sysctl(%q) succeeded", bad)
		}
	}
}

// TestPods builds two ptp pods behind a node namespace and lets the node's
// kernel route UDP between them.
func TestPods(t *testing.T) {
	checkHostUnchanged(t)
	node := netns.NewForTest(t, "pgt")
	podA := netns.NewForTest(t, "pgt")
	podB := netns.NewForTest(t, "pgt")
	ipA := netip.MustParseAddr("10.99.0.1")
	ipB := netip.MustParseAddr("10.99.0.2")
	a, err := netns.AddPod(netns.PodConfig{
		Pod: podA, Node: node, HostIf: "vetha", IPs: []netip.Addr{ipA},
		MTU: 1400, StaticGateway: true, NodeNeighbors: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := netns.AddPod(netns.PodConfig{
		Pod: podB, Node: node, HostIf: "vethb", IPs: []netip.Addr{ipB},
		HostMAC: net.HardwareAddr{0x02, 0, 0, 0, 0xb, 1}, PodMAC: net.HardwareAddr{0x02, 0, 0, 0, 0xb, 2},
		StaticGateway: true, NodeNeighbors: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if b.MAC.String() != "02:00:00:00:0b:01" || b.PeerMAC.String() != "02:00:00:00:0b:02" {
		t.Errorf("pod B MACs = %v / %v", b.MAC, b.PeerMAC)
	}

	ha := netns.HandleForTest(t, podA)
	eth0, err := ha.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().MTU != 1400 || eth0.Attrs().Index != a.PeerIndex {
		t.Errorf("pod A eth0: mtu %d index %d, want 1400 %d", eth0.Attrs().MTU, eth0.Attrs().Index, a.PeerIndex)
	}
	addrs, err := ha.AddrList(eth0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.99.0.1/32" {
		t.Errorf("pod A addresses = %v", addrs)
	}
	routes, err := ha.RouteList(eth0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].Dst != nil && routes[0].Dst.String() != "0.0.0.0/0" ||
		routes[0].Gw.String() != "169.254.1.1" || routes[0].Flags&int(netlink.FLAG_ONLINK) == 0 {
		t.Errorf("pod A routes = %v, want default via 169.254.1.1 onlink", routes)
	}
	neighs, err := ha.NeighList(a.PeerIndex, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(neighs) != 1 || neighs[0].HardwareAddr.String() != a.MAC.String() || neighs[0].State != netlink.NUD_PERMANENT {
		t.Errorf("pod A neighbours = %v, want gateway -> %v permanent", neighs, a.MAC)
	}
	hn := netns.HandleForTest(t, node)
	vethb, err := hn.LinkByIndex(b.Index)
	if err != nil {
		t.Fatal(err)
	}
	nroutes, err := hn.RouteList(vethb, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(nroutes) != 1 || nroutes[0].Dst.String() != "10.99.0.2/32" {
		t.Errorf("node routes on vethb = %v", nroutes)
	}
	if err := node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}

	var rx, tx *net.UDPConn
	if err := podB.Do(func() error {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ipB.AsSlice(), Port: 7777})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close() })
	if err := podA.Do(func() error {
		tx, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: ipB.AsSlice(), Port: 7777})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Close() })
	// The sockets stay in their namespaces; use them from this goroutine.
	if _, err := tx.Write([]byte("hello pod B")); err != nil {
		t.Fatal(err)
	}
	if err := rx.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, from, err := rx.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("pod B did not receive: %v", err)
	}
	if string(buf[:n]) != "hello pod B" || !from.IP.Equal(ipA.AsSlice()) {
		t.Errorf("pod B got %q from %v", buf[:n], from)
	}
}

func TestAddVethErrors(t *testing.T) {
	requireRoot(t)
	checkHostUnchanged(t)
	ns := netns.NewForTest(t, "pgt")
	if _, err := netns.AddVeth(netns.VethConfig{NS: ns, Name: "abcdefghijklmnop", PeerNS: ns, PeerName: "x"}); err == nil {
		t.Errorf("AddVeth with a 16-byte name succeeded")
	}
	if _, err := netns.AddVeth(netns.VethConfig{NS: ns, Name: "a"}); err == nil {
		t.Errorf("AddVeth without peer namespace succeeded")
	}
	if _, err := netns.AddVeth(netns.VethConfig{NS: ns, Name: "va", PeerNS: ns, PeerName: "vb"}); err != nil {
		t.Fatal(err)
	}
	// A clash fails and leaves the first pair alone.
	if _, err := netns.AddVeth(netns.VethConfig{NS: ns, Name: "va", PeerNS: ns, PeerName: "vc"}); err == nil {
		t.Errorf("duplicate AddVeth succeeded")
	}
	if _, err := netns.AddPod(netns.PodConfig{
		Pod: ns, Node: ns, HostIf: "vh", PodIf: "vp",
		IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}, Gateway4: netip.MustParseAddr("fe80::9"),
	}); err == nil {
		t.Errorf("AddPod with an IPv6 Gateway4 succeeded")
	}
	// A pod whose configuration fails half-way is rolled back (the same
	// address twice).
	ip := netip.MustParseAddr("10.1.0.1")
	if _, err := netns.AddPod(netns.PodConfig{
		Pod: ns, Node: ns, HostIf: "vh", PodIf: "vp", IPs: []netip.Addr{ip, ip},
	}); err == nil {
		t.Errorf("AddPod with a duplicate address succeeded")
	}
	h := netns.HandleForTest(t, ns)
	if _, err := h.LinkByName("vh"); err == nil {
		t.Errorf("failed AddPod left vh behind")
	}
	if _, err := h.LinkByName("vb"); err != nil {
		t.Errorf("first pair gone: %v", err)
	}
}

func TestPodDualStack(t *testing.T) {
	checkHostUnchanged(t)
	node := netns.NewForTest(t, "pgt")
	pod := netns.NewForTest(t, "pgt")
	ip4, ip6 := netip.MustParseAddr("10.99.1.1"), netip.MustParseAddr("fd00:99::1")
	p, err := netns.AddPod(netns.PodConfig{
		Pod: pod, Node: node, HostIf: "vethd", IPs: []netip.Addr{ip4, ip6},
		StaticGateway: true, NodeNeighbors: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := netns.HandleForTest(t, pod)
	eth0, err := h.LinkByIndex(p.PeerIndex)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(eth0, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		found = found || a.IPNet.String() == "fd00:99::1/128"
	}
	if !found {
		t.Errorf("pod IPv6 addresses = %v, want fd00:99::1/128", addrs)
	}
	routes, err := h.RouteList(eth0, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	found = false
	for _, r := range routes {
		found = found || (r.Dst == nil || r.Dst.String() == "::/0") && r.Gw.String() == "fe80::1"
	}
	if !found {
		t.Errorf("pod IPv6 routes = %v, want default via fe80::1", routes)
	}
	neighs, err := h.NeighList(p.PeerIndex, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	found = false
	for _, n := range neighs {
		found = found || n.IP.String() == "fe80::1" && n.HardwareAddr.String() == p.MAC.String()
	}
	if !found {
		t.Errorf("pod IPv6 neighbours = %v, want fe80::1 -> %v", neighs, p.MAC)
	}
	nh := netns.HandleForTest(t, node)
	host, err := nh.LinkByIndex(p.Index)
	if err != nil {
		t.Fatal(err)
	}
	nroutes, err := nh.RouteList(host, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	found = false
	for _, r := range nroutes {
		found = found || r.Dst != nil && r.Dst.String() == "fd00:99::1/128"
	}
	if !found {
		t.Errorf("node IPv6 routes on vethd = %v, want fd00:99::1/128", nroutes)
	}
}

// TestRunDirSharedMount checks that a namespace made by New survives
// another program's `ip netns add` (which makes /run/netns a mount of its
// own) and can still be deleted, and that New leaves alone the namespace
// mounts of a program that mounted them on a plain /run/netns. Each case
// runs in a child process with a private mount namespace, whose /run/netns
// starts as a plain directory with nothing mounted in it, so the host's
// mounts are neither seen nor changed.
func TestRunDirSharedMount(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, scenario := range []string{"ip-netns-add", "foreign-mounts"} {
		t.Run(scenario, func(t *testing.T) {
			cmd := exec.Command(exe, "-test.run=^$", scenario)
			cmd.Env = append(os.Environ(), helperEnv+"=run-dir")
			// Go makes the child's mounts private (MS_REC|MS_PRIVATE on
			// /) after unsharing the mount namespace.
			cmd.SysProcAttr = &unix.SysProcAttr{Unshareflags: unix.CLONE_NEWNS}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", scenario, err, out)
			}
			t.Logf("%s", out)
		})
	}
}

// runDirScenario is the child's side of TestRunDirSharedMount.
func runDirScenario(scenario string) error {
	// Start from a plain /run/netns with nothing mounted in it (in this
	// private mount namespace only).
	if err := unmountAll(netns.RunDir); err != nil {
		return err
	}
	name, err := netns.UniqueName("pgrund")
	if err != nil {
		return err
	}
	switch scenario {
	case "ip-netns-add":
		ns, err := netns.New(name)
		if err != nil {
			return err
		}
		defer ns.Delete()
		var want unix.Stat_t
		if err := unix.Fstat(ns.FD(), &want); err != nil {
			return err
		}
		other, err := netns.UniqueName("pgrund")
		if err != nil {
			return err
		}
		if out, err := exec.Command("ip", "netns", "add", other).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add %s: %v: %s", other, err, out)
		}
		defer func() { _ = exec.Command("ip", "netns", "delete", other).Run() }()
		// The name still leads to the namespace...
		var got unix.Stat_t
		if err := unix.Stat(ns.Path(), &got); err != nil {
			return err
		}
		if got.Ino != want.Ino || got.Dev != want.Dev {
			return fmt.Errorf("after ip netns add, %s is inode %d, want the namespace's %d", ns.Path(), got.Ino, want.Ino)
		}
		// ...and deleting it removes every mount of it and its file.
		if err := ns.Delete(); err != nil {
			return fmt.Errorf("delete after ip netns add: %w", err)
		}
		if left, err := mountedAt(ns.Path()); err != nil || left > 0 {
			return fmt.Errorf("after delete, %d mounts left at %s (%v)", left, ns.Path(), err)
		}
		if _, err := os.Lstat(ns.Path()); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("after delete, %s: %v", ns.Path(), err)
		}
		fmt.Printf("%s survived ip netns add and was deleted\n", name)
	case "foreign-mounts":
		// A program that mounts namespace files on a plain /run/netns (as
		// podgate did): New must not bind /run/netns over them.
		foreign := filepath.Join(netns.RunDir, name+"-foreign")
		if err := os.WriteFile(foreign, nil, 0o444); err != nil {
			return err
		}
		defer os.Remove(foreign)
		if err := unix.Mount("/proc/self/ns/net", foreign, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mount %s: %w", foreign, err)
		}
		ns, err := netns.New(name)
		if err != nil {
			return err
		}
		if err := ns.Delete(); err != nil {
			return err
		}
		if err := unix.Unmount(foreign, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", foreign, err)
		}
		if err := os.Remove(foreign); err != nil {
			return fmt.Errorf("the other program's cleanup: %w", err)
		}
		fmt.Printf("the other program's namespace mount was left alone\n")
	default:
		return fmt.Errorf("unknown scenario %q", scenario)
	}
	return nil
}

// mountedAt returns how many mounts have path as their mount point.
func mountedAt(path string) (int, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 5 && f[4] == path {
			n++
		}
	}
	return n, nil
}

// unmountAll detaches every mount at or below dir, deepest first, until
// none is left.
func unmountAll(dir string) error {
	for range 100 {
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		var points []string
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 5 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
				points = append(points, f[4])
			}
		}
		if len(points) == 0 {
			return nil
		}
		slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
		for _, p := range points {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unmount %s: %w", p, err)
			}
		}
	}
	return fmt.Errorf("mounts at %s keep coming back", dir)
}
