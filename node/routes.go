package node

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Moving a pod's routes between its veth and the kernel leg, keeping the
// route's key and attributes.

// anyOnKernel reports whether any address of p has a route on the kernel
// leg in the snapshot.
func (n *Node) anyOnKernel(p *podPort, pr podRoutes) bool {
	for _, ip := range p.ips {
		if len(pr.onKernel[ip]) > 0 {
			return true
		}
	}
	return false
}

// kernelRoute is the route to a pod address via the kernel leg: the CNI's
// route with the device replaced, and the pod's MTU when it is below the
// kernel leg's.
func (n *Node) kernelRoute(p *podPort, a assignment) *netlink.Route {
	mtu := 0
	if p.mtu > 0 && p.mtu < n.kernel.mtu {
		mtu = p.mtu
	}
	return a.route.route(n.kernel.kIndex, mtu)
}

// moveRoutes makes sure every address of p is routed via the kernel leg
// with its saved attributes, and returns how many are.
func (n *Node) moveRoutes(p *podPort, pr podRoutes, want map[netip.Addr]assignment) (int, error) {
	var errs []error
	ok := 0
	for _, ip := range p.ips {
		a := want[ip]
		r := n.kernelRoute(p, a)
		cur := pr.onKernel[ip]
		_, onVeth := pr.onVeth[ip]
		if !onVeth && len(cur) == 1 && sameRoute(&cur[0], r) {
			ok++
			continue
		}
		if err := n.h.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("move route %v to %s: %w", ip, n.cfg.KernelLink, err))
			continue
		}
		ok++
		n.log.Debug("route moved to kernel leg", "ip", ip, "port", p.name)
		// Other routes to the address on the kernel leg (another metric
		// or TOS: a CNI that changed its route) would shadow or outlive
		// this one.
		for _, c := range cur {
			if !sameKey(&c, r) {
				if err := n.h.RouteDel(&c); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("delete old route %v dev %s: %w", ip, n.cfg.KernelLink, err))
				}
			}
		}
	}
	return ok, errors.Join(errs...)
}

// sameKey reports whether two routes have the same key in the kernel's
// table (replace replaces one by the other).
func sameKey(a, b *netlink.Route) bool {
	return a.Tos == b.Tos && normPriority(a) == normPriority(b)
}

// normPriority is a route's metric as the kernel stores it (IPv6 routes
// without one get 1024).
func normPriority(r *netlink.Route) int {
	if r.Priority == 0 && r.Dst != nil && r.Dst.IP.To4() == nil {
		return 1024
	}
	return r.Priority
}

// sameRoute reports whether an existing route matches the wanted one in
// the attributes the Node sets.
func sameRoute(have, want *netlink.Route) bool {
	return sameKey(have, want) && have.LinkIndex == want.LinkIndex && have.Scope == want.Scope &&
		have.MTU == want.MTU && have.AdvMSS == want.AdvMSS && have.Protocol == want.Protocol &&
		have.Src.Equal(want.Src)
}
