package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/node"
	"github.com/podgate/podgate/policy/table"
)

func TestAcquireLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first, err := node.AcquireLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if first.Path() != filepath.Join(dir, node.LockFile) || first.Dir() != dir {
		t.Errorf("path %s, dir %s", first.Path(), first.Dir())
	}
	// flock conflicts between two opens of the file in one process too.
	_, err = node.AcquireLock(dir)
	if !errors.Is(err, node.ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	for _, want := range []string{first.Path(), fmt.Sprintf("(pid %d)", os.Getpid())} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	again, err := node.AcquireLock(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	defer again.Release()
	// The file stays; it holds the holder's PID.
	if b, err := os.ReadFile(first.Path()); err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(os.Getpid()) {
		t.Errorf("lock file: %q, %v", b, err)
	}
}

func TestConfigLockForOtherDir(t *testing.T) {
	lock, err := node.AcquireLock(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	_, err = node.New(node.Config{Engine: newEngine(t, &table.Store{}), Offload: new(offload.Offload), StateDir: t.TempDir(), Lock: lock})
	if err == nil || !strings.Contains(err.Error(), "not for state dir") {
		t.Errorf("New with a lock of another dir: %v", err)
	}
}

// TestRunLockedTouchesNothing: a Node whose state directory another
// process (here: another lock) holds fails at once and leaves the node as
// it was: no kernel leg, no program, routes on their veths, no state file.
func TestRunLockedTouchesNothing(t *testing.T) {
	l := newLab(t)
	ip := netip.MustParseAddr("10.0.8.1")
	a := l.addPod("a", "vetha", 0, ip)
	other, err := node.AcquireLock(l.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	n, err := node.New(node.Config{Engine: newEngine(t, &table.Store{}), Offload: l.openOffload(), StateDir: l.stateDir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Bounded, for a Run that does not check the lock and runs on.
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	err = l.node.Do(func() error { return n.Run(ctx) })
	if !errors.Is(err, node.ErrLocked) {
		t.Fatalf("Run: %v, want ErrLocked", err)
	}
	l.expectRestored(a)
}

// TestCrashStateLost: after a crash the state file is gone (as when a
// second agent removed it). The next Node cannot tell which veth the
// routes on the kernel leg belong to: it must leave them there (the pods
// stay cut off, fail-closed) rather than delete them, and take the pods
// over once their routes are back on their veths. Before the fix it
// deleted every pod's route ("deleting route of a gone pod").
func TestCrashStateLost(t *testing.T) {
	l := newLab(t)
	ipA, ipB := netip.MustParseAddr("10.0.9.1"), netip.MustParseAddr("10.0.9.2")
	ipA6 := netip.MustParseAddr("fd00:9::1")
	a := l.addPod("a", "vetha", 0, ipA, ipA6)
	b := l.addPod("b", "vethb", 0, ipB)
	ag := l.startAgent(a, b)
	ag.kill(t)
	if err := os.Remove(filepath.Join(l.stateDir, node.StateFile)); err != nil {
		t.Fatal(err)
	}
	e, store := engineAllowing(t, map[string][]netip.Addr{"a": {ipA, ipA6}, "b": {ipB}})
	rn := l.startNode(e, nil)
	rn.waitReady(t)
	for _, ip := range []netip.Addr{ipA, ipA6, ipB} {
		if dev := l.routeDev(ip); dev != node.DefaultKernelLink {
			t.Errorf("route to %v via %q after the restart without state, want it left on %s", ip, dev, node.DefaultKernelLink)
		}
	}

	// Restoring now would delete them with the kernel leg: the leg stays.
	rn.stopChecked = true
	err := rn.stop()
	if err == nil || !strings.Contains(err.Error(), "kernel leg kept") || !strings.Contains(err.Error(), ipB.String()) {
		t.Errorf("stop: %v, want the kernel leg kept for the routes to %v, %v and %v", err, ipA, ipA6, ipB)
	}
	for _, ip := range []netip.Addr{ipA, ipA6, ipB} {
		if dev := l.routeDev(ip); dev != node.DefaultKernelLink {
			t.Errorf("route to %v via %q after the stop, want it left on %s", ip, dev, node.DefaultKernelLink)
		}
	}
	if st := l.xdp(node.DefaultGatewayLink); st.Native != 0 || st.Generic != 0 {
		t.Errorf("%s keeps an XDP program after the stop: %+v", node.DefaultGatewayLink, st)
	}

	// The operator (or the CNI) puts the routes back on the veths; the
	// next Node takes the pods over.
	for _, p := range []*labPod{a, b} {
		link, err := l.nh.LinkByName(p.hostIf)
		if err != nil {
			t.Fatal(err)
		}
		for _, ip := range p.ips {
			r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostNet(ip)}
			if ip.Is4() {
				r.Scope = netlink.SCOPE_LINK
			}
			if err := l.nh.RouteReplace(r); err != nil {
				t.Fatalf("route %v dev %s: %v", ip, p.hostIf, err)
			}
		}
	}
	rn2 := l.startNode(newEngine(t, store), nil)
	rn2.waitReady(t)
	l.expectPlumbed(rn2, a)
	l.expectPlumbed(rn2, b)
	l.expectReach(l.node, "node", ipA, "a")
	l.expectReach(a.ns, "a", ipB, "b")
	if err := rn2.stop(); err != nil {
		t.Fatal(err)
	}
	l.expectRestored(a, b)
}
