package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath/xsk"
)

// dumpRetries bounds the retries of a netlink dump the kernel interrupted
// because the table changed meanwhile.
const dumpRetries = 5

// reconcile brings the node to the state the kernel and the state file
// call for. It is level-triggered and idempotent. retry is set when some
// pod port failed (already logged): the caller tries again soon.
func (n *Node) reconcile(ctx context.Context) (retry bool, err error) {
	snap, err := n.snapshot()
	if err != nil {
		return false, err
	}
	created, err := n.ensureKernelLeg(ctx, snap)
	if err != nil {
		return false, err
	}
	if created {
		if snap, err = n.snapshot(); err != nil {
			return false, err
		}
	}
	err = n.reconcilePods(ctx, snap)
	retry = len(n.failures) > 0
	if !n.swept {
		n.sweepStale(snap)
		n.swept = true
	}
	n.updateNodeAddrs(ctx, snap)
	if ctx.Err() == nil && !n.ready.Load() {
		n.log.Info("node ready", "ports", len(n.ports))
		n.ready.Store(true)
	}
	return retry, err
}

// podRoutes classifies the host routes of a snapshot.
type podRoutes struct {
	onVeth    map[netip.Addr]netlink.Route   // via a pod veth (lowest metric)
	onKernel  map[netip.Addr][]netlink.Route // via the kernel leg
	elsewhere map[netip.Addr]bool            // via any other device
}

func (n *Node) classify(snap *snapshot) podRoutes {
	pr := podRoutes{
		onVeth:    make(map[netip.Addr]netlink.Route),
		onKernel:  make(map[netip.Addr][]netlink.Route),
		elsewhere: make(map[netip.Addr]bool),
	}
	for _, hr := range snap.routes {
		switch {
		case hr.r.LinkIndex == n.kernel.kIndex:
			pr.onKernel[hr.dst] = append(pr.onKernel[hr.dst], hr.r)
		case n.isPodVeth(snap.links[hr.r.LinkIndex]):
			if old, ok := pr.onVeth[hr.dst]; !ok || hr.r.Priority < old.Priority {
				pr.onVeth[hr.dst] = hr.r
			}
		default:
			pr.elsewhere[hr.dst] = true
		}
	}
	return pr
}

// wanted computes which veth every pod address belongs to now: the kernel
// says so for a route on a pod veth; for a route already on the kernel
// leg, the previous assignment (memory or state file) does while its veth
// (same name and ifindex) exists.
func (n *Node) wanted(snap *snapshot, pr podRoutes) map[netip.Addr]assignment {
	want := make(map[netip.Addr]assignment, len(pr.onVeth)+len(n.assign))
	for ip, r := range pr.onVeth {
		want[ip] = assignment{
			name: snap.links[r.LinkIndex].Attrs().Name, ifindex: r.LinkIndex,
			route: saveRoute(&r, ip),
		}
	}
	for ip, a := range n.assign {
		if _, ok := want[ip]; ok {
			continue
		}
		l := snap.links[a.ifindex]
		if l == nil || l.Attrs().Name != a.name || !n.isPodVeth(l) {
			continue // the pod is gone
		}
		if pr.elsewhere[ip] && len(pr.onKernel[ip]) == 0 {
			continue // someone routed the address elsewhere
		}
		want[ip] = a
	}
	return want
}

// reconcilePods makes one port per pod veth with the addresses routed to
// it, and routes those addresses via the kernel leg.
func (n *Node) reconcilePods(ctx context.Context, snap *snapshot) error {
	for name := range n.failures {
		if snap.byName[name] == nil {
			delete(n.failures, name)
		}
	}
	pr := n.classify(snap)
	want := n.wanted(snap, pr)
	groups := make(map[int][]netip.Addr)
	for ip, a := range want {
		groups[a.ifindex] = append(groups[a.ifindex], ip)
	}
	for _, ips := range groups {
		slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	}
	var errs []error

	// 1. Ports whose veth is gone, or whose addresses changed, leave the
	// engine first, so their addresses are free for other ports.
	for idx, p := range n.ports {
		l := snap.links[idx]
		ips := groups[idx]
		switch {
		case l == nil || l.Attrs().Name != p.name || !n.isPodVeth(l):
			n.log.Info("pod veth gone; removing port", "port", p.name, "ips", p.ips)
			errs = append(errs, n.releasePort(ctx, p))
		case len(ips) == 0:
			n.log.Info("no pod address routed to veth any more; removing port", "port", p.name)
			errs = append(errs, n.releasePort(ctx, p))
		case l.Attrs().MTU != p.mtu:
			// The socket was sized for the old MTU; step 3 opens it again
			// (or gives the veth back to the kernel if frames no longer
			// fit). Its routes stay on the kernel leg meanwhile.
			n.log.Info("pod veth MTU changed; setting the port up again", "port", p.name, "old", p.mtu, "new", l.Attrs().MTU)
			errs = append(errs, n.releasePort(ctx, p))
		case !n.podIntact(p):
			// Its routes stay on the kernel leg; step 3 opens the port
			// again (or gives the veth back to the kernel).
			n.log.Warn("pod_ingress program of port removed; setting the port up again", "port", p.name)
			errs = append(errs, n.releasePort(ctx, p))
		default:
			peer := n.peerMAC(l)
			if slices.Equal(p.ips, ips) && (peer == nil || bytes.Equal(peer, p.peerMAC)) || !p.added {
				continue
			}
			n.log.Info("pod addresses or MAC changed", "port", p.name, "old", p.ips, "new", ips, "mac", peer)
			if err := engineErr(n.cfg.Engine.RemovePort(ctx, p.name)); err != nil {
				errs = append(errs, fmt.Errorf("remove port %s: %w", p.name, err))
				continue
			}
			n.mu.Lock()
			p.added = false
			if peer != nil {
				p.peerMAC = peer
			}
			n.mu.Unlock()
		}
	}

	// 2. Routes on the kernel leg to addresses no port will have. Deleted
	// only if the record (memory or state file) says that podgate moved
	// them there and their veth is gone: the pod is gone. A route that no
	// record explains (the state file was lost, or someone else put it
	// there) may belong to a live pod whose veth podgate cannot tell: it
	// stays, and that pod stays cut off (fail-closed) until its route is
	// moved back to its veth.
	for ip := range n.unexplained {
		if _, ok := pr.onKernel[ip]; !ok {
			delete(n.unexplained, ip)
		}
	}
	for ip, rs := range pr.onKernel {
		if _, ok := want[ip]; ok {
			continue
		}
		if _, recorded := n.assign[ip]; !recorded {
			if !n.unexplained[ip] {
				n.unexplained[ip] = true
				n.log.Error("route to a pod address on the kernel leg that no record explains; left in place (the pod, if any, is cut off until its route is back on its veth)",
					"ip", ip, "link", n.cfg.KernelLink)
			}
			continue
		}
		delete(n.unexplained, ip)
		for _, r := range rs {
			n.log.Info("deleting route of a gone pod from the kernel leg", "ip", ip)
			if err := n.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %v dev %s: %w", ip, n.cfg.KernelLink, err))
			}
		}
	}

	// 3. Every veth with addresses gets its port into the engine.
	var fresh []*podPort
	for idx, ips := range groups {
		p := n.ports[idx]
		if p != nil && p.added {
			continue
		}
		l := snap.links[idx]
		if p == nil {
			var err error
			p, err = n.openPort(l)
			if err != nil {
				n.portFailed(l.Attrs().Name, err)
				errs = append(errs, n.abandon(l, ips, pr, want))
				continue
			}
		}
		if err := n.cfg.Engine.AddPort(ctx, p.spec(ips)); err != nil {
			err = fmt.Errorf("add port %s: %w", p.name, err)
			n.portFailed(p.name, err)
			errs = append(errs, n.closePort(p), n.abandon(l, ips, pr, want))
			continue
		}
		n.setAdded(p, true, ips)
		n.portOK(p.name)
		fresh = append(fresh, p)
		n.log.Info("pod port added", "port", p.name, "ifindex", idx, "ips", ips)
	}

	// 4. Record the assignment before any route moves.
	next := make(map[netip.Addr]assignment, len(want))
	for ip, a := range want {
		if p := n.ports[a.ifindex]; p != nil && p.added {
			next[ip] = a
		}
	}
	if err := n.saveAssign(next); err != nil {
		// Without a record no route may move: take the new ports out
		// again (their routes are all still on their veths).
		for _, p := range fresh {
			if !n.anyOnKernel(p, pr) {
				errs = append(errs, n.releasePort(ctx, p))
			}
		}
		return errors.Join(append(errs, err)...)
	}

	// 5. Move routes to the kernel leg.
	for _, p := range n.ports {
		if !p.added {
			continue
		}
		moved, err := n.moveRoutes(p, pr, want)
		if err != nil {
			errs = append(errs, err)
		}
		if moved == 0 && slices.Contains(fresh, p) && err != nil {
			// Not one route moved: the port would only see the pod's
			// egress. Give the veth back to the kernel.
			errs = append(errs, n.releasePort(ctx, p))
		}
	}
	return errors.Join(errs...)
}

// saveAssign makes next the assignment and writes it to the state file if
// it changed.
func (n *Node) saveAssign(next map[netip.Addr]assignment) error {
	if assignEqual(n.assign, next) {
		return nil
	}
	if err := writeState(n.cfg.StateDir, n.stateOf(next)); err != nil {
		return err
	}
	n.assign = next
	return nil
}

func assignEqual(a, b map[netip.Addr]assignment) bool {
	if len(a) != len(b) {
		return false
	}
	for ip, x := range a {
		if y, ok := b[ip]; !ok || x != y {
			return false
		}
	}
	return true
}

func (n *Node) stateOf(assign map[netip.Addr]assignment) state {
	st := state{GatewayLink: n.cfg.GatewayLink, KernelLink: n.cfg.KernelLink, Ports: []statePort{}}
	byIdx := make(map[int]int)
	for _, a := range assign {
		i, ok := byIdx[a.ifindex]
		if !ok {
			i = len(st.Ports)
			byIdx[a.ifindex] = i
			st.Ports = append(st.Ports, statePort{Name: a.name, Ifindex: a.ifindex})
		}
		st.Ports[i].Routes = append(st.Ports[i].Routes, a.route)
	}
	for i := range st.Ports {
		slices.SortFunc(st.Ports[i].Routes, func(a, b savedRoute) int { return a.Dst.Compare(b.Dst) })
	}
	return st
}

// abandon gives a veth whose port could not be set up back to the kernel:
// addresses whose routes are on the kernel leg (after a crash) go back on
// the veth, and a podgate program left there is removed, so the pod keeps
// its connectivity, without enforcement, until a later reconcile succeeds.
func (n *Node) abandon(l netlink.Link, ips []netip.Addr, pr podRoutes, want map[netip.Addr]assignment) error {
	var errs []error
	idx := l.Attrs().Index
	for _, ip := range ips {
		if len(pr.onKernel[ip]) == 0 {
			continue
		}
		if err := n.h.RouteReplace(want[ip].route.route(idx, 0)); err != nil {
			errs = append(errs, fmt.Errorf("restore route %v dev %s: %w", ip, l.Attrs().Name, err))
		}
	}
	if len(errs) > 0 {
		// The pod keeps a route via the kernel leg and its stale program:
		// unreachable rather than unenforced, until the next reconcile.
		return errors.Join(errs...)
	}
	if _, err := xsk.RemoveStale(idx); err != nil {
		errs = append(errs, fmt.Errorf("remove stale xdp from %s: %w", l.Attrs().Name, err))
	}
	if err := n.cfg.Offload.DetachPod(idx); err != nil {
		errs = append(errs, fmt.Errorf("remove stale pod_ingress from %s: %w", l.Attrs().Name, err))
	}
	return errors.Join(errs...)
}

// portFailed logs a port's setup error, at error level the first time and
// when it changes, at debug level while it repeats.
func (n *Node) portFailed(name string, err error) {
	msg := err.Error()
	if n.failures[name] == msg {
		n.log.Debug("pod port still failing; retrying on the next reconcile", "port", name, "err", err)
		return
	}
	n.failures[name] = msg
	n.log.Error("pod port failed; pod stays routed by the kernel without enforcement, retrying on the next reconcile",
		"port", name, "err", err)
}

func (n *Node) portOK(name string) { delete(n.failures, name) }

// sweepStale removes podgate programs left by a crashed run (or an older
// version's XDP programs) from veths that did not become ports (their pods
// are gone from the state file or cannot be set up), so no pod stays cut
// off.
func (n *Node) sweepStale(snap *snapshot) {
	pods, _ := n.cfg.Offload.Attachments()
	for _, idx := range pods {
		if n.ports[idx] != nil {
			continue
		}
		if err := n.cfg.Offload.DetachPod(idx); err != nil {
			n.log.Warn("detach stale pod_ingress", "ifindex", idx, "err", err)
			continue
		}
		n.log.Info("detached stale pod_ingress program", "ifindex", idx)
	}
	for idx, l := range snap.links {
		if !n.isVeth(l) || n.ports[idx] != nil {
			continue
		}
		st, err := xsk.QueryXDP(idx)
		if err != nil || (st.Native == 0 && st.Generic == 0) {
			continue
		}
		removed, err := xsk.RemoveStale(idx)
		switch {
		case errors.Is(err, xsk.ErrAttached):
			n.log.Debug("veth has a foreign xdp program", "link", l.Attrs().Name, "err", err)
		case err != nil:
			n.log.Warn("remove stale xdp", "link", l.Attrs().Name, "err", err)
		}
		if removed > 0 {
			n.log.Info("removed stale podgate xdp program", "link", l.Attrs().Name)
		}
	}
}

// podIntact reports whether the port's veth still runs pod_ingress.
func (n *Node) podIntact(p *podPort) bool {
	ok, err := n.cfg.Offload.PodAttached(p.ifindex)
	return ok || err != nil // cannot tell: the next reconcile looks again
}

// xdpIntact reports whether prog is still attached where it was.
func (n *Node) xdpIntact(prog *xsk.Program) bool {
	ok, err := prog.Attached()
	return ok || err != nil // cannot tell: the next reconcile looks again
}

// updateNodeAddrs recomputes the node's addresses (global unicast, not on
// the kernel leg or a pod veth; a kind node's own uplink is a veth too)
// and publishes them to the engine if configured to.
func (n *Node) updateNodeAddrs(ctx context.Context, snap *snapshot) {
	pod := make(map[int]bool, len(n.ports))
	for idx := range n.ports {
		pod[idx] = true
	}
	for _, hr := range snap.routes {
		if n.isPodVeth(snap.links[hr.r.LinkIndex]) {
			pod[hr.r.LinkIndex] = true
		}
	}
	var addrs []netip.Addr
	for _, a := range snap.addrs {
		l := snap.links[a.LinkIndex]
		if l == nil || pod[a.LinkIndex] || l.Attrs().Name == n.cfg.GatewayLink || l.Attrs().Name == n.cfg.KernelLink {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsGlobalUnicast() && !slices.Contains(addrs, ip) {
			addrs = append(addrs, ip)
		}
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	n.mu.Lock()
	n.nodeAddrs = addrs
	n.mu.Unlock()
	if !n.cfg.PublishNodeAddrs || (slices.Equal(addrs, n.published) && n.published != nil) {
		return
	}
	if err := n.cfg.Engine.SetNodeAddrs(ctx, addrs); err != nil {
		n.log.Warn("set node addresses", "err", err)
		return
	}
	n.published = append([]netip.Addr{}, addrs...)
}
