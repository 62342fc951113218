package node

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// What the kernel says: links, host routes to pod addresses and addresses
// read in one snapshot per reconcile, and which links are pod veths.

// snapshot is the part of the namespace's network configuration the Node
// looks at, read in one pass.
type snapshot struct {
	links  map[int]netlink.Link
	byName map[string]netlink.Link
	routes []hostRoute // main-table host routes without gateway
	addrs  []netlink.Addr
}

// hostRoute is a main-table route to a single address (/32 or /128) out of
// a device, without gateway: the ptp CNI route to a pod.
type hostRoute struct {
	dst netip.Addr
	r   netlink.Route
}

func dump[T any](what string, fn func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpRetries {
		var v []T
		v, err = fn()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list %s: %w", what, err)
}

func (n *Node) snapshot() (*snapshot, error) {
	links, err := dump("links", n.h.LinkList)
	if err != nil {
		return nil, err
	}
	routes, err := dump("routes", func() ([]netlink.Route, error) { return n.h.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return n.h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	s := &snapshot{
		links:  make(map[int]netlink.Link, len(links)),
		byName: make(map[string]netlink.Link, len(links)),
		addrs:  addrs,
	}
	for _, l := range links {
		s.links[l.Attrs().Index] = l
		s.byName[l.Attrs().Name] = l
	}
	local := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			local[ip.Unmap()] = true
		}
	}
	for _, r := range routes {
		if dst, ok := podRouteDst(&r); ok && !local[dst] {
			s.routes = append(s.routes, hostRoute{dst: dst, r: r})
		}
	}
	return s, nil
}

// podRouteDst reports whether r looks like the route a ptp CNI installs to
// a pod address: main table, unicast, a single address, out of a device,
// no gateway, scope link for IPv4 (IPv6 routes have no scope), not made by
// the kernel for an address of the node (an IPv6 /128 on the uplink) —
// and returns the address.
func podRouteDst(r *netlink.Route) (netip.Addr, bool) {
	if r.Dst == nil || r.LinkIndex <= 0 || r.Gw != nil || len(r.MultiPath) > 0 || r.Via != nil ||
		r.Table != unix.RT_TABLE_MAIN || r.Type != unix.RTN_UNICAST || r.Encap != nil ||
		r.Protocol == unix.RTPROT_KERNEL {
		return netip.Addr{}, false
	}
	ones, bits := r.Dst.Mask.Size()
	if bits == 0 || ones != bits {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return netip.Addr{}, false
	}
	a = a.Unmap()
	if a.BitLen() != bits || !a.IsGlobalUnicast() {
		return netip.Addr{}, false
	}
	if a.Is4() && r.Scope != netlink.SCOPE_LINK {
		return netip.Addr{}, false
	}
	return a, true
}

// isVeth reports whether l is a veth that is not the kernel leg.
func (n *Node) isVeth(l netlink.Link) bool {
	if l == nil || l.Type() != "veth" {
		return false
	}
	name := l.Attrs().Name
	return name != n.cfg.GatewayLink && name != n.cfg.KernelLink
}

// isPodVeth reports whether l may be a pod port: a veth, not the kernel
// leg, not enslaved to a bridge or bond, with the configured prefix.
func (n *Node) isPodVeth(l netlink.Link) bool {
	return n.isVeth(l) && l.Attrs().MasterIndex == 0 && strings.HasPrefix(l.Attrs().Name, n.cfg.InterfacePrefix)
}
