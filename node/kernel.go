package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/fastpath/xsk"
)

// minMTU is the kernel leg's MTU when no pod veth has a larger one.
const minMTU = 1500

// maxL2Overhead is what a frame may exceed the MTU by (Ethernet header and
// one VLAN tag), as package xsk counts it.
const maxL2Overhead = 18

// legMTU is the MTU the kernel leg needs: the largest MTU of a pod veth
// whose frames fit the sockets' UMEM frames, and at least 1500.
func (n *Node) legMTU(snap *snapshot) int {
	limit := min(n.cfg.Socket.MaxRxFrame(), n.cfg.KernelSocket.MaxRxFrame()) - maxL2Overhead
	mtu := minMTU
	for _, l := range snap.links {
		if n.isPodVeth(l) && l.Attrs().MTU > mtu && l.Attrs().MTU <= limit {
			mtu = l.Attrs().MTU
		}
	}
	return mtu
}

// ensureKernelLeg creates the kernel leg if missing (or reuses the one a
// crashed run left), keeps it up with the MTU it needs, and keeps its port
// in the engine. It reports whether it created the veth pair.
func (n *Node) ensureKernelLeg(ctx context.Context, snap *snapshot) (bool, error) {
	gw, k := snap.byName[n.cfg.GatewayLink], snap.byName[n.cfg.KernelLink]
	mtu := n.legMTU(snap)
	created := false
	switch {
	case gw == nil && k == nil:
		var err error
		if gw, k, err = n.createLeg(mtu); err != nil {
			return false, err
		}
		created = true
		n.log.Info("kernel leg created", "gateway", n.cfg.GatewayLink, "kernel", n.cfg.KernelLink, "mtu", mtu)
	case gw == nil || k == nil:
		return false, fmt.Errorf("check kernel leg: only one of %s, %s exists", n.cfg.GatewayLink, n.cfg.KernelLink)
	}
	if err := n.checkLeg(gw, k); err != nil {
		return false, err
	}
	if !created {
		if err := n.fixLeg(gw, k, mtu); err != nil {
			return false, err
		}
	}
	if err := n.ensureLinkLocal(k); err != nil {
		return false, err
	}
	if gw, err := n.unmarkMAC(gw); err != nil {
		return false, err
	} else {
		snap.byName[n.cfg.GatewayLink] = gw
	}
	gwIdx, kIdx := gw.Attrs().Index, k.Attrs().Index
	if kp := n.kernel; kp != nil {
		if kp.gwIndex == gwIdx && kp.kIndex == kIdx && kp.added && n.xdpIntact(kp.prog) && kp.tcAttached {
			n.mu.Lock()
			kp.mtu = max(mtu, k.Attrs().MTU)
			n.mu.Unlock()
			return created, nil
		}
		n.log.Warn("kernel port lost its link or XDP program; setting it up again")
		if err := n.releaseKernel(ctx); err != nil {
			return false, err
		}
	}
	x, err := n.openXSK(gwIdx, n.cfg.KernelSocket)
	if err != nil {
		return false, fmt.Errorf("set up kernel port %s: %w", n.cfg.GatewayLink, err)
	}
	kp := &kernelPort{
		gwIndex: gwIdx, kIndex: kIdx,
		gwMAC: slices.Clone(gw.Attrs().HardwareAddr), kMAC: slices.Clone(k.Attrs().HardwareAddr),
		mtu: max(mtu, k.Attrs().MTU), xskPort: x,
	}
	spec := fastpath.PortSpec{
		Name: n.cfg.GatewayLink, Kind: fastpath.KernelPort, Port: x.sock,
		MAC: mac6(kp.gwMAC), PeerMAC: mac6(kp.kMAC), Ifindex: kIdx,
	}
	if err := n.cfg.Engine.AddPort(ctx, spec); err != nil {
		_ = n.detach(x, n.cfg.GatewayLink)
		_ = x.sock.Close()
		return false, fmt.Errorf("add kernel port %s: %w", n.cfg.GatewayLink, err)
	}
	kp.added = true
	// Only now that the engine receives on pgw0 may pod_ingress punt
	// there (and kernel_egress forward the kernel's packets to pods).
	if err := n.cfg.Offload.AttachKernel(kIdx); err != nil {
		return false, errors.Join(fmt.Errorf("attach kernel_egress to %s: %w", n.cfg.KernelLink, err), n.releaseKernelPort(ctx, kp))
	}
	kp.tcAttached = true
	n.mu.Lock()
	n.kernel = kp
	n.mu.Unlock()
	n.log.Info("kernel port added", "port", n.cfg.GatewayLink, "ifindex", gwIdx)
	return created, nil
}

// createLeg creates the veth pair down, turns off IPv6 address generation
// on both ends (the gateway end must not speak NDP; the kernel end gets a
// link-local address without duplicate address detection from
// ensureLinkLocal) and brings it up.
func (n *Node) createLeg(mtu int) (gw, k netlink.Link, err error) {
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU = n.cfg.GatewayLink, mtu
	v := &netlink.Veth{LinkAttrs: la, PeerName: n.cfg.KernelLink, PeerMTU: uint32(mtu)}
	if err := n.h.LinkAdd(v); err != nil {
		return nil, nil, fmt.Errorf("create kernel leg %s/%s: %w", n.cfg.GatewayLink, n.cfg.KernelLink, err)
	}
	defer func() {
		if err != nil {
			if l, lerr := n.h.LinkByName(n.cfg.GatewayLink); lerr == nil {
				_ = n.h.LinkDel(l)
			}
		}
	}()
	if gw, err = n.h.LinkByName(n.cfg.GatewayLink); err != nil {
		return nil, nil, fmt.Errorf("find link %s: %w", n.cfg.GatewayLink, err)
	}
	if k, err = n.h.LinkByName(n.cfg.KernelLink); err != nil {
		return nil, nil, fmt.Errorf("find link %s: %w", n.cfg.KernelLink, err)
	}
	for _, l := range []netlink.Link{gw, k} {
		if err := n.h.LinkSetIP6AddrGenMode(l, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
			// IPv6 disabled on the node: nothing to generate anyway.
			n.log.Debug("set addrgenmode none", "link", l.Attrs().Name, "err", err)
		}
	}
	for _, l := range []netlink.Link{k, gw} {
		if err := n.h.LinkSetUp(l); err != nil {
			return nil, nil, fmt.Errorf("set link %s up: %w", l.Attrs().Name, err)
		}
	}
	return gw, k, nil
}

// checkLeg refuses links with the kernel leg's names that are not a veth
// pair of each other: podgate never takes over somebody else's links.
func (n *Node) checkLeg(gw, k netlink.Link) error {
	if gw.Type() != "veth" || k.Type() != "veth" || gw.Attrs().ParentIndex != k.Attrs().Index {
		return fmt.Errorf("check kernel leg: %s (%s) and %s (%s) are not a veth pair",
			n.cfg.GatewayLink, gw.Type(), n.cfg.KernelLink, k.Type())
	}
	return nil
}

// fixLeg brings a reused kernel leg up and raises its MTU if a pod needs
// more: the gateway end first, as a veth drops frames above the receiving
// end's MTU.
func (n *Node) fixLeg(gw, k netlink.Link, mtu int) error {
	if k.Attrs().MTU < mtu {
		for _, l := range []netlink.Link{gw, k} {
			if l.Attrs().MTU >= mtu {
				continue
			}
			if err := n.h.LinkSetMTU(l, mtu); err != nil {
				// The kernel leg keeps its MTU; larger frames of that pod
				// are dropped, which the route MTU mostly prevents.
				n.log.Warn("raise kernel leg MTU", "link", l.Attrs().Name, "mtu", mtu, "err", err)
				break
			}
			l.Attrs().MTU = mtu
		}
	}
	for _, l := range []netlink.Link{k, gw} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := n.h.LinkSetUp(l); err != nil {
				return fmt.Errorf("set link %s up: %w", l.Attrs().Name, err)
			}
		}
	}
	return nil
}

// ensureLinkLocal gives the kernel end an IPv6 link-local address (EUI-64
// from its MAC, without duplicate address detection, so it is usable at
// once) unless it has one: the kernel needs it to resolve pod IPv6
// addresses on the kernel leg.
func (n *Node) ensureLinkLocal(k netlink.Link) error {
	addrs, err := n.h.AddrList(k, netlink.FAMILY_V6)
	if err != nil {
		return nil // IPv6 disabled
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			return nil
		}
	}
	ll := eui64LinkLocal(k.Attrs().HardwareAddr)
	if !ll.IsValid() {
		return nil
	}
	addr := &netlink.Addr{
		IPNet: &net.IPNet{IP: ll.AsSlice(), Mask: net.CIDRMask(64, 128)},
		Flags: unix.IFA_F_NODAD, Scope: unix.RT_SCOPE_LINK,
	}
	if err := n.h.AddrReplace(k, addr); err != nil {
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPERM) {
			n.log.Debug("no IPv6 link-local on kernel leg", "err", err)
			return nil
		}
		return fmt.Errorf("add link-local address to %s: %w", n.cfg.KernelLink, err)
	}
	return nil
}

// eui64LinkLocal returns fe80::/64 with the modified EUI-64 interface
// identifier of a 48-bit MAC (RFC 4291 appendix A).
func eui64LinkLocal(mac net.HardwareAddr) netip.Addr {
	if len(mac) != 6 {
		return netip.Addr{}
	}
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	b[8], b[9], b[10] = mac[0]^0x02, mac[1], mac[2]
	b[11], b[12] = 0xff, 0xfe
	b[13], b[14], b[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(b)
}

// unmarkMAC gives the gateway end of the kernel leg a new MAC if its MAC
// starts with the punt marker's bytes, which would make the engine take
// the kernel's frames to it for punted frames of a pod.
func (n *Node) unmarkMAC(gw netlink.Link) (netlink.Link, error) {
	mac := gw.Attrs().HardwareAddr
	if len(mac) != 6 {
		return gw, nil
	}
	if _, punted := offload.PuntedFrom([6]byte(mac)); !punted {
		return gw, nil
	}
	fresh := slices.Clone(mac)
	fresh[0], fresh[1] = 0x02, 0x50
	if err := n.h.LinkSetHardwareAddr(gw, fresh); err != nil {
		return nil, fmt.Errorf("change MAC of %s (it looks like the punt marker): %w", n.cfg.GatewayLink, err)
	}
	l, err := n.h.LinkByIndex(gw.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("find link %s: %w", n.cfg.GatewayLink, err)
	}
	return l, nil
}

// releaseKernel unsets the punt interface and detaches kernel_egress (pod
// frames that no offloaded flow takes go to the kernel unchecked from
// then on: only for a graceful stop, after the pods' routes went back),
// then releases the kernel port.
func (n *Node) releaseKernel(ctx context.Context) error {
	kp := n.kernel
	if kp == nil {
		return nil
	}
	var err error
	if kp.tcAttached {
		if derr := n.cfg.Offload.DetachKernel(); derr != nil {
			err = fmt.Errorf("detach kernel_egress: %w", derr)
		}
		kp.tcAttached = false
	}
	return errors.Join(err, n.releaseKernelPort(ctx, kp))
}

// releaseKernelPort detaches the kernel port's XDP program, takes the port
// out of the engine and closes its socket.
func (n *Node) releaseKernelPort(ctx context.Context, kp *kernelPort) error {
	err := n.detach(kp.xskPort, n.cfg.GatewayLink)
	if kp.added {
		if rerr := engineErr(n.cfg.Engine.RemovePort(ctx, n.cfg.GatewayLink)); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove kernel port: %w", rerr))
		}
	}
	n.mu.Lock()
	if cerr := kp.sock.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close kernel socket: %w", cerr))
	}
	n.kernel = nil
	n.mu.Unlock()
	return err
}

// restore undoes everything after Run's context is done: per pod port,
// its routes go back on its veth (route replace: the address is never
// without a route) before its program is detached and its port removed;
// then the kernel leg goes and the state file with it. If a route cannot
// be put back, that port, the kernel leg and the state file stay, so the
// next start recovers it.
func (n *Node) restore(ctx context.Context) error {
	ctx, cancel := restoreContext(ctx)
	defer cancel()
	var errs []error
	kIdx := -1
	if l, err := n.h.LinkByName(n.cfg.KernelLink); err == nil {
		kIdx = l.Attrs().Index
	}
	ports := make([]*podPort, 0, len(n.ports))
	for _, p := range n.ports {
		ports = append(ports, p)
	}
	slices.SortFunc(ports, func(a, b *podPort) int { return a.ifindex - b.ifindex })
	left := make(map[netip.Addr]assignment)
	for ip, a := range n.assign {
		left[ip] = a
	}
	kept := false
	for _, p := range ports {
		ok := true
		for ip, a := range left {
			if a.ifindex != p.ifindex {
				continue
			}
			if err := n.putBack(ip, a, kIdx); err != nil {
				errs = append(errs, err)
				ok = false
				continue
			}
			delete(left, ip)
		}
		if !ok {
			kept = true
			continue
		}
		if err := n.releasePort(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	// Addresses recorded without a port (the start was cut short, or a
	// port was lost): put back too, and free their veths of stale
	// programs.
	for ip, a := range left {
		if n.ports[a.ifindex] != nil {
			continue
		}
		if err := n.putBack(ip, a, kIdx); err != nil {
			errs = append(errs, err)
			kept = true
			continue
		}
		delete(left, ip)
		if l, err := n.h.LinkByIndex(a.ifindex); err == nil && l.Attrs().Name == a.name {
			if _, err := xsk.RemoveStale(a.ifindex); err != nil {
				errs = append(errs, fmt.Errorf("remove stale xdp from %s: %w", a.name, err))
			}
			if err := n.cfg.Offload.DetachPod(a.ifindex); err != nil {
				errs = append(errs, fmt.Errorf("remove stale pod_ingress from %s: %w", a.name, err))
			}
		}
	}
	if kept {
		if err := writeState(n.cfg.StateDir, n.stateOf(left)); err != nil {
			errs = append(errs, err)
		}
		return fmt.Errorf("restore node (state kept for the next start): %w", errors.Join(errs...))
	}
	if err := n.releaseKernel(ctx); err != nil {
		errs = append(errs, err)
	}
	// Deleting the kernel leg would delete routes on it that no record
	// explains: keep it then (without its program) for the next start.
	if unexplained, err := n.routesOnLeg(kIdx); err != nil || len(unexplained) > 0 {
		if err == nil {
			err = fmt.Errorf("routes to %v on %s are in no record: kernel leg kept", unexplained, n.cfg.KernelLink)
		}
		errs = append(errs, err)
		if err := removeState(n.cfg.StateDir); err != nil {
			errs = append(errs, err)
		}
		return fmt.Errorf("restore node: %w", errors.Join(errs...))
	}
	if err := n.deleteLeg(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := removeState(n.cfg.StateDir); err != nil {
			errs = append(errs, err)
		}
		n.log.Info("node restored; pods are routed by the kernel without enforcement")
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore node: %w", err)
	}
	return nil
}

// routesOnLeg returns the pod addresses still routed via the kernel leg
// (the link with index kIdx, none if negative).
func (n *Node) routesOnLeg(kIdx int) ([]netip.Addr, error) {
	if kIdx < 0 {
		return nil, nil
	}
	rs, err := dump("routes", func() ([]netlink.Route, error) {
		return n.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: kIdx}, netlink.RT_FILTER_OIF)
	})
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, r := range rs {
		if ip, ok := podRouteDst(&r); ok && r.LinkIndex == kIdx {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out, nil
}

// putBack moves the route to a pod address from the kernel leg back to
// its veth, or deletes it if the veth is gone.
func (n *Node) putBack(ip netip.Addr, a assignment, kIdx int) error {
	if l, err := n.h.LinkByIndex(a.ifindex); err == nil && l.Attrs().Name == a.name {
		if err := n.h.RouteReplace(a.route.route(a.ifindex, 0)); err != nil {
			return fmt.Errorf("restore route %v dev %s: %w", ip, a.name, err)
		}
		return nil
	}
	if kIdx < 0 {
		return nil
	}
	if err := n.h.RouteDel(a.route.route(kIdx, 0)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %v dev %s: %w", ip, n.cfg.KernelLink, err)
	}
	return nil
}

// deleteLeg deletes the kernel leg (both ends go with one) if it is ours.
func (n *Node) deleteLeg() error {
	gw, err := n.h.LinkByName(n.cfg.GatewayLink)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", n.cfg.GatewayLink, err)
	}
	k, err := n.h.LinkByName(n.cfg.KernelLink)
	if err != nil {
		return fmt.Errorf("find link %s: %w", n.cfg.KernelLink, err)
	}
	if err := n.checkLeg(gw, k); err != nil {
		return err
	}
	if err := n.h.LinkDel(gw); err != nil {
		return fmt.Errorf("delete kernel leg %s: %w", n.cfg.GatewayLink, err)
	}
	return nil
}
