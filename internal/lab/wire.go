package lab

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// Wiring the namespaces: a node's set-up, a pod's veth to its node, the
// outside hosts' links, and the addresses and routes on them.

// outsideGateway returns the gateway of the link to the outside namespace
// for an address family, as the node sees it: 169.254.0.2 or fe80::2. The
// outside namespace does not own these addresses: permanent neighbour
// entries on the node resolve them to its MAC.
func outsideGateway(is4 bool) netip.Addr {
	if is4 {
		return netip.AddrFrom4([4]byte{169, 254, 0, 2})
	}
	return netip.AddrFrom16([16]byte{0: 0xfe, 1: 0x80, 15: 2})
}

// hostNet returns a as a /32 or /128 network.
func hostNet(a netip.Addr) *net.IPNet {
	bits := a.BitLen()
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}
}

// prefixNet returns p as a network.
func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// newNamespace creates the namespace ID-part and records it for Close.
func (l *Lab) newNamespace(part string) (*netns.Namespace, error) {
	name := l.id + "-" + part
	if len(name) > 200 {
		name = name[:200]
	}
	ns, err := netns.New(name)
	if err != nil {
		return nil, fmt.Errorf("build lab: %w", err)
	}
	l.created = append(l.created, ns)
	return ns, nil
}

// nsNamePart turns "namespace/name" into a namespace file name part.
func nsNamePart(name string) string {
	return strings.NewReplacer("/", ".", "\x00", "").Replace(name)
}

// hostIfName names the host end of pod i's veth: "veth" with the pod's
// index and name, cut to 15 bytes.
func hostIfName(i int, name string) string {
	if _, n, ok := strings.Cut(name, "/"); ok {
		name = n
	}
	s := fmt.Sprintf("veth%d-%s", i, name)
	if len(s) > netns.MaxIfNameLen {
		s = s[:netns.MaxIfNameLen]
	}
	return s
}

// setUpNode turns forwarding on in a node's namespace and brings lo up.
// In a lab of one node the node's addresses go on lo; in a lab of several
// they go on its uplink ([Lab.wireUplink]).
func (l *Lab) setUpNode(n *Node, ipv6 bool) error {
	ns := n.ep.NS
	if err := ns.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return fmt.Errorf("set up node %s: %w", n.name, err)
	}
	if ipv6 {
		if err := ns.Sysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
			return fmt.Errorf("set up node %s: %w", n.name, err)
		}
	}
	h, err := ns.Handle()
	if err != nil {
		return fmt.Errorf("set up node %s: %w", n.name, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("set up node %s: find lo: %w", n.name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set up node %s: set lo up: %w", n.name, err)
	}
	if n.multi {
		return nil
	}
	for _, a := range n.ep.IPs {
		if err := h.AddrAdd(lo, nodeAddr(a, a.BitLen())); err != nil {
			return fmt.Errorf("set up node %s: add %s to %s: %w", n.name, a, NodeIf, err)
		}
	}
	return nil
}

// nodeAddr returns a with the given prefix length as an interface address
// (IPv6 without duplicate address detection).
func nodeAddr(a netip.Addr, bits int) *netlink.Addr {
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}}
	if a.Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}

// hasIPv6 reports whether any address of the layout is IPv6.
func (lay *Layout) hasIPv6() bool {
	for _, eps := range [][]Endpoint{lay.Pods, lay.Outside} {
		for _, ep := range eps {
			for _, a := range ep.IPs {
				if a.Is6() {
					return true
				}
			}
		}
	}
	for _, n := range lay.Nodes {
		for _, a := range n.IPs {
			if a.Is6() {
				return true
			}
		}
	}
	return false
}

// wire links ep's namespace to its node with a ptp veth (ep.HostIf on the
// node, eth0 in ep's namespace) carrying ep's addresses, with permanent
// neighbour entries on both sides so that nobody has to answer ARP or NDP
// for the link-local gateways.
func (l *Lab) wire(ep *Endpoint, n *Node) error {
	_, err := netns.AddPod(netns.PodConfig{
		Pod: ep.NS, PodIf: "eth0",
		Node: n.ep.NS, HostIf: ep.HostIf,
		IPs:           ep.IPs,
		MTU:           l.spec.MTU,
		StaticGateway: true,
		NodeNeighbors: true,
	})
	if err != nil {
		return fmt.Errorf("wire %s: %w", ep.Name, err)
	}
	return nil
}

// wireOutside links the outside namespace to the node of a lab of one
// node. The outside end (eth0) is wired like a pod: the outside hosts'
// addresses, default routes via 169.254.1.1 and fe80::1 onlink. The node
// end (uplink0) is wired like a node's uplink rather than a pod's veth: a
// route per outside address via a gateway (169.254.0.2, fe80::2, onlink),
// not a host route out of the device, so that an agent looking for pod
// veths by their host routes does not take the uplink for one.
func (l *Lab) wireOutside(ep *Endpoint) error {
	node := l.nodes[0]
	_, err := netns.AddPod(netns.PodConfig{
		Pod: ep.NS, PodIf: "eth0",
		Node: node.ep.NS, HostIf: UplinkIf,
		IPs:           ep.IPs,
		MTU:           l.spec.MTU,
		StaticGateway: true,
	})
	if err != nil {
		return fmt.Errorf("wire outside: %w", err)
	}
	peerMAC, err := linkMAC(ep.NS, "eth0")
	if err != nil {
		return fmt.Errorf("wire outside: %w", err)
	}
	// AddPod installed host routes for the addresses on the node: replace
	// them with gateway routes.
	if err := routeOutside(node, ep.IPs, peerMAC); err != nil {
		return fmt.Errorf("wire outside: %w", err)
	}
	return nil
}

// routeOutside routes the outside addresses ips on node n via the
// link-local gateways of [outsideGateway], out of its uplink, which
// permanent neighbour entries resolve to mac.
func routeOutside(n *Node, ips []netip.Addr, mac net.HardwareAddr) error {
	h, up, err := n.uplink()
	if err != nil {
		return err
	}
	defer h.Close()
	for _, a := range ips {
		gw := outsideGateway(a.Is4())
		if err := netns.AddNeighbor(n.ep.NS, up.Attrs().Index, gw, mac); err != nil {
			return err
		}
		r := &netlink.Route{
			LinkIndex: up.Attrs().Index,
			Dst:       hostNet(a),
			Gw:        gw.AsSlice(),
			Flags:     int(netlink.FLAG_ONLINK),
		}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via %s on node %s: %w", a, gw, n.name, err)
		}
	}
	return nil
}

// linkMAC returns the MAC of the named link in ns.
func linkMAC(ns *netns.Namespace, name string) (net.HardwareAddr, error) {
	h, err := ns.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", name, ns.Name(), err)
	}
	return l.Attrs().HardwareAddr, nil
}
