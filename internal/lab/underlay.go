package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/podgate/podgate/internal/netns"
)

// Interface names of the underlay of a lab of several nodes.
const (
	// UnderlayBridge is the bridge in the underlay namespace that joins
	// the nodes' uplinks and the outside namespace, like a VNET or a
	// kind Docker network.
	UnderlayBridge = "br0"
	// outsidePort is the underlay's end of the outside namespace's link.
	outsidePort = "outside"
)

// underlayPort names the underlay's end of node i's uplink.
func underlayPort(i int) string { return fmt.Sprintf("node%d", i) }

// newUnderlay creates the underlay namespace with its bridge. IPv6 is off
// in it: it only switches frames and should send none of its own.
func (l *Lab) newUnderlay() (*netns.Namespace, error) {
	ns, err := l.newNamespace("underlay")
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
		if err := ns.Sysctl(k, "1"); err != nil {
			return nil, fmt.Errorf("set up underlay: %w", err)
		}
	}
	h, err := ns.Handle()
	if err != nil {
		return nil, fmt.Errorf("set up underlay: %w", err)
	}
	defer h.Close()
	la := netlink.NewLinkAttrs()
	la.Name = UnderlayBridge
	la.MTU = l.spec.MTU
	br := &netlink.Bridge{LinkAttrs: la}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("set up underlay: add bridge %s: %w", UnderlayBridge, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("set up underlay: set %s up: %w", UnderlayBridge, err)
	}
	return ns, nil
}

// plugIntoBridge makes the underlay's end of a veth a port of the bridge.
func plugIntoBridge(underlay *netns.Namespace, port string) error {
	h, err := underlay.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	br, err := h.LinkByName(UnderlayBridge)
	if err != nil {
		return fmt.Errorf("find %s: %w", UnderlayBridge, err)
	}
	p, err := h.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find %s: %w", port, err)
	}
	if err := h.LinkSetMaster(p, br); err != nil {
		return fmt.Errorf("add %s to %s: %w", port, UnderlayBridge, err)
	}
	return nil
}

// wireUplink links node n to the underlay bridge with a veth (uplink0 in
// the node, nodeI on the bridge) and puts the node's addresses on uplink0
// with the node subnets' prefix lengths.
func (l *Lab) wireUplink(n *Node, underlay *netns.Namespace) error {
	v, err := netns.AddVeth(netns.VethConfig{
		NS: n.ep.NS, Name: UplinkIf,
		PeerNS: underlay, PeerName: underlayPort(n.index),
		MTU: l.spec.MTU,
	})
	if err != nil {
		return fmt.Errorf("wire node %s: %w", n.name, err)
	}
	n.uplinkMAC = v.MAC
	if err := plugIntoBridge(underlay, underlayPort(n.index)); err != nil {
		return fmt.Errorf("wire node %s: %w", n.name, err)
	}
	h, err := n.ep.NS.Handle()
	if err != nil {
		return fmt.Errorf("wire node %s: %w", n.name, err)
	}
	defer h.Close()
	up, err := h.LinkByIndex(v.Index)
	if err != nil {
		return fmt.Errorf("wire node %s: find %s: %w", n.name, UplinkIf, err)
	}
	for _, a := range n.ep.IPs {
		bits := a.BitLen()
		for _, s := range l.subnets {
			if s.Contains(a) {
				bits = s.Bits()
			}
		}
		if err := h.AddrAdd(up, nodeAddr(a, bits)); err != nil {
			return fmt.Errorf("wire node %s: add %s to %s: %w", n.name, a, UplinkIf, err)
		}
	}
	return nil
}

// wireOutsideUnderlay links the outside namespace to the underlay bridge
// (eth0 there, "outside" on the bridge) and puts the outside hosts'
// addresses on eth0, as host addresses: they are not in a node subnet,
// as the article's test VM is in a subnet of its own.
func (l *Lab) wireOutsideUnderlay(ep *Endpoint, underlay *netns.Namespace) error {
	v, err := netns.AddVeth(netns.VethConfig{
		NS: ep.NS, Name: "eth0",
		PeerNS: underlay, PeerName: outsidePort,
		MTU: l.spec.MTU,
	})
	if err != nil {
		return fmt.Errorf("wire outside: %w", err)
	}
	if err := plugIntoBridge(underlay, outsidePort); err != nil {
		return fmt.Errorf("wire outside: %w", err)
	}
	h, err := ep.NS.Handle()
	if err != nil {
		return fmt.Errorf("wire outside: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("wire outside: find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("wire outside: set lo up: %w", err)
	}
	eth, err := h.LinkByIndex(v.Index)
	if err != nil {
		return fmt.Errorf("wire outside: find eth0: %w", err)
	}
	for _, a := range ep.IPs {
		if err := h.AddrAdd(eth, nodeAddr(a, a.BitLen())); err != nil {
			return fmt.Errorf("wire outside: add %s to eth0: %w", a, err)
		}
	}
	return nil
}

// routeUnderlay installs the routes and permanent neighbour entries of a
// lab of several nodes, once every node and the outside are wired:
//
//   - on each node, every other node's address resolves to that node's
//     uplink MAC; every other node's pod CIDRs, and its pods outside them
//     one by one (/32, /128), are routed via that node's address; the
//     outside hosts are routed via 169.254.0.2 (fe80::2) onlink, resolved
//     to the outside namespace's MAC (gateway routes, which an agent does
//     not take for a pod's);
//   - in the outside namespace, the node subnets are on eth0, every node
//     address resolves to its uplink MAC, and every node's pods are routed
//     via that node.
//
// Nothing depends on ARP or NDP.
func (l *Lab) routeUnderlay(outside *Endpoint) error {
	var outsideMAC net.HardwareAddr
	if outside != nil {
		var err error
		if outsideMAC, err = linkMAC(outside.NS, "eth0"); err != nil {
			return fmt.Errorf("route underlay: %w", err)
		}
	}
	for _, n := range l.nodes {
		if err := l.routeNode(n); err != nil {
			return fmt.Errorf("route underlay: node %s: %w", n.name, err)
		}
		if outside != nil {
			if err := routeOutside(n, outside.IPs, outsideMAC); err != nil {
				return fmt.Errorf("route underlay: node %s: %w", n.name, err)
			}
		}
	}
	if outside != nil {
		if err := l.routeFromOutside(outside); err != nil {
			return fmt.Errorf("route underlay: outside: %w", err)
		}
	}
	return nil
}

// uplink returns a netlink handle in node n's namespace (the caller
// closes it) and n's uplink.
func (n *Node) uplink() (*netlink.Handle, netlink.Link, error) {
	h, err := n.ep.NS.Handle()
	if err != nil {
		return nil, nil, err
	}
	up, err := h.LinkByName(UplinkIf)
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("find %s: %w", UplinkIf, err)
	}
	return h, up, nil
}

// routeNode routes the other nodes and their pods on node n.
func (l *Lab) routeNode(n *Node) error {
	h, up, err := n.uplink()
	if err != nil {
		return err
	}
	defer h.Close()
	for _, o := range l.nodes {
		if o == n {
			continue
		}
		if err := l.routeToNode(n.ep.NS, h, up.Attrs().Index, o, false); err != nil {
			return err
		}
	}
	return nil
}

// routeToNode adds, through the link with index idx of namespace ns (h is
// a handle in it), the neighbour entries of node o's addresses and routes to o's pod CIDRs and
// to its pods outside them via o. onlink marks the routes onlink (for a
// namespace with no address in the node subnets).
func (l *Lab) routeToNode(ns *netns.Namespace, h *netlink.Handle, idx int, o *Node, onlink bool) error {
	for _, a := range o.ep.IPs {
		if err := netns.AddNeighbor(ns, idx, a, o.uplinkMAC); err != nil {
			return err
		}
	}
	via := func(is4 bool) netip.Addr {
		for _, a := range o.ep.IPs {
			if a.Is4() == is4 {
				return a
			}
		}
		return netip.Addr{}
	}
	route := func(dst *net.IPNet, gw netip.Addr) error {
		r := &netlink.Route{LinkIndex: idx, Dst: dst, Gw: gw.AsSlice()}
		if onlink {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via %s (node %s): %w", dst, gw, o.name, err)
		}
		return nil
	}
	for _, c := range o.podCIDRs {
		if err := route(prefixNet(c), via(c.Addr().Is4())); err != nil {
			return err
		}
	}
	for _, p := range o.Pods() {
		for _, a := range p.IPs {
			if o.inPodCIDR(a) {
				continue
			}
			gw := via(a.Is4())
			if !gw.IsValid() {
				return fmt.Errorf("node %s has no address of the family of %s's %s", o.name, p.Name, a)
			}
			if err := route(hostNet(a), gw); err != nil {
				return err
			}
		}
	}
	return nil
}

// routeFromOutside routes the node subnets and every node's pods in the
// outside namespace.
func (l *Lab) routeFromOutside(outside *Endpoint) error {
	h, err := outside.NS.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0: %w", err)
	}
	for _, s := range l.subnets {
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: prefixNet(s), Scope: netlink.SCOPE_LINK}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s: %w", s, err)
		}
	}
	for _, n := range l.nodes {
		if err := l.routeToNode(outside.NS, h, eth.Attrs().Index, n, true); err != nil {
			return err
		}
	}
	return nil
}
