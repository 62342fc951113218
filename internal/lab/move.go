package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// MovePod moves the pod name ("namespace/pod") to the node nodeName with
// the addresses ips, as a pod deleted and created again on another node
// with a new IP looks on the wire (CNI DEL on the old node, CNI ADD on
// the new one): the pod's veth is deleted, so that its old node loses its
// host routes to the pod (and its agent the pod's port); a new veth
// (same host-side name) links the pod's namespace to the new node and
// carries ips, with a host route to each on the new node, which its agent
// finds; the other nodes and the outside namespace route ips to the new
// node (per pod, unless ips lie in its pod CIDRs) and no longer route the
// old addresses. The pod keeps its network namespace; echo servers on the
// new addresses start on demand. nodeName may be the pod's own node (a
// new IP only).
//
// The lab's endpoints then place the pod on its new node with its new
// addresses; the policy expectations still come from the manifests: give
// the lab the moved pod's new manifest with [Lab.Apply] (and, for agents
// reading manifests, that is what tells them). The nodes' Service DNAT
// is not changed: do not move a Service's backend.
//
// MovePod changes the endpoint that probes, Matrix and streams read: it
// must not run while any of them runs.
func (l *Lab) MovePod(name, nodeName string, ips []netip.Addr) error {
	ep, ok := l.byName[name]
	if !ok || ep.Kind != KindPod {
		return fmt.Errorf("move pod %s: no such pod in the lab", name)
	}
	to, ok := l.nodeByName[nodeName]
	if !ok {
		return fmt.Errorf("move pod %s: no node %s in the lab", name, nodeName)
	}
	if len(ips) == 0 {
		return fmt.Errorf("move pod %s: no addresses", name)
	}
	ips = slices.Clone(ips)
	for i, a := range ips {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("move pod %s: bad address %v", name, a)
		}
		ips[i] = a.Unmap()
		if owner, taken := l.byAddr[ips[i]]; taken && owner != ep {
			return fmt.Errorf("move pod %s: %s is already %s's", name, a, owner.Name)
		}
		if _, taken := l.svcByAddr[ips[i]]; taken {
			return fmt.Errorf("move pod %s: %s is a Service's ClusterIP", name, a)
		}
	}
	for _, s := range l.services {
		for _, p := range s.Ports {
			for _, b := range p.Backends {
				if b.Endpoint == ep {
					return fmt.Errorf("move pod %s: it is a backend of Service %s, whose DNAT the lab does not move", name, s.Name)
				}
			}
		}
	}
	from := l.nodeByName[ep.Node]

	// CNI DEL: deleting the node end deletes the pod end, its addresses
	// and the host routes through it.
	if err := deleteLinkNamed(from, ep.HostIf); err != nil {
		return fmt.Errorf("move pod %s: %w", name, err)
	}
	old := ep.IPs
	for _, a := range old {
		delete(l.byAddr, a)
	}
	if from.multi {
		if err := l.unroutePod(from, old); err != nil {
			return fmt.Errorf("move pod %s: %w", name, err)
		}
	}
	ep.Node, ep.IPs = to.name, ips
	for _, a := range ep.IPs {
		l.byAddr[a] = ep
	}
	// CNI ADD on the new node.
	if err := l.wire(ep, to); err != nil {
		return fmt.Errorf("move pod %s: %w", name, err)
	}
	if to.multi {
		if err := l.routeToMoved(to); err != nil {
			return fmt.Errorf("move pod %s: %w", name, err)
		}
	}
	return nil
}

// deleteLinkNamed deletes the link called name in node n's namespace.
func deleteLinkNamed(n *Node, name string) error {
	h, err := n.ep.NS.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s on node %s: %w", name, n.name, err)
	}
	if err := h.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s on node %s: %w", name, n.name, err)
	}
	return nil
}

// outsideEndpoint returns the outside namespace as an endpoint (its NS
// only), or nil when the lab has no outside hosts.
func (l *Lab) outsideEndpoint() *Endpoint {
	for _, ep := range l.endpoints {
		if ep.Kind == KindOutside {
			return ep
		}
	}
	return nil
}

// unroutePod removes, on every node but from and in the outside
// namespace, the per-pod routes to addresses ips of a pod that was on
// node from (addresses in from's pod CIDRs have none).
func (l *Lab) unroutePod(from *Node, ips []netip.Addr) error {
	var dsts []netip.Addr
	for _, a := range ips {
		if !from.inPodCIDR(a) {
			dsts = append(dsts, a)
		}
	}
	if len(dsts) == 0 {
		return nil
	}
	var errs []error
	del := func(h *netlink.Handle, where string) {
		for _, a := range dsts {
			err := h.RouteDel(&netlink.Route{Dst: hostNet(a)})
			if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete route %s in %s: %w", a, where, err))
			}
		}
	}
	for _, n := range l.nodes {
		if n == from {
			continue
		}
		h, err := n.ep.NS.Handle()
		if err != nil {
			return err
		}
		del(h, "node "+n.name)
		h.Close()
	}
	if o := l.outsideEndpoint(); o != nil {
		h, err := o.NS.Handle()
		if err != nil {
			return err
		}
		del(h, "the outside namespace")
		h.Close()
	}
	return errors.Join(errs...)
}

// routeToMoved routes, on every node but to and in the outside namespace,
// to's pods (the moved one among them) via to.
func (l *Lab) routeToMoved(to *Node) error {
	for _, n := range l.nodes {
		if n == to {
			continue
		}
		h, up, err := n.uplink()
		if err != nil {
			return err
		}
		err = l.routeToNode(n.ep.NS, h, up.Attrs().Index, to, false)
		h.Close()
		if err != nil {
			return fmt.Errorf("node %s: %w", n.name, err)
		}
	}
	if o := l.outsideEndpoint(); o != nil {
		h, err := o.NS.Handle()
		if err != nil {
			return err
		}
		defer h.Close()
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("find eth0 in the outside namespace: %w", err)
		}
		if err := l.routeToNode(o.NS, h, eth.Attrs().Index, to, true); err != nil {
			return fmt.Errorf("outside: %w", err)
		}
	}
	return nil
}
