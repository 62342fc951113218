package lab

import (
	"fmt"
	"net/netip"
	"slices"
)

// Addresses of a plan: the underlay subnet and the nodes' addresses on it,
// the pod CIDRs the nodes route to each other, and the search for free
// prefixes and addresses.

// planUnderlay chooses the node subnets of a lab of several nodes, the
// nodes' addresses in them and the nodes' pod CIDRs. The families are
// those of the pods and of the given subnets.
func (lay *Layout) planUnderlay(names []string, given []netip.Prefix, taken map[netip.Addr]string) error {
	lay.Nodes = make([]NodeLayout, len(names))
	for i, n := range names {
		lay.Nodes[i].Name = n
	}
	for _, is4 := range []bool{true, false} {
		var subnet netip.Prefix
		for _, p := range given {
			if p.Addr().Is4() != is4 {
				continue
			}
			if subnet.IsValid() {
				return fmt.Errorf("%w: node subnets: at most one per IP family", ErrPlan)
			}
			if !p.IsValid() || p != p.Masked() || !unicast(p.Addr().Next()) {
				return fmt.Errorf("%w: node subnet %v: want a unicast network address with its prefix length, like %v", ErrPlan, p, DefaultNodeSubnet4)
			}
			subnet = p
		}
		if !subnet.IsValid() {
			if !firstOfFamily(lay.Pods, is4).IsValid() {
				continue
			}
			def := DefaultNodeSubnet4
			if !is4 {
				def = DefaultNodeSubnet6
			}
			var ok bool
			if subnet, ok = freeSubnet(def, taken); !ok {
				return fmt.Errorf("%w: no free node subnet from %v on; give one", ErrPlan, def)
			}
		}
		lay.NodeSubnets = append(lay.NodeSubnets, subnet)
		c := subnet.Addr()
		for i := range lay.Nodes {
			for c = c.Next(); c.IsValid() && subnet.Contains(c); c = c.Next() {
				if _, dup := taken[c]; !dup && !(is4 && c == lastAddr(subnet)) {
					break
				}
			}
			if !c.IsValid() || !subnet.Contains(c) || (is4 && c == lastAddr(subnet)) {
				return fmt.Errorf("%w: node subnet %v: no room for %d nodes", ErrPlan, subnet, len(lay.Nodes))
			}
			lay.Nodes[i].IPs = append(lay.Nodes[i].IPs, c)
			taken[c] = nodePrefix + lay.Nodes[i].Name
		}
	}
	lay.planPodCIDRs(taken)
	return nil
}

// planPodCIDRs gives each node, per family, the /24 (/64) of its first
// pod if that prefix holds all of the node's pods of the family, no other
// address of the lab and no part of a node subnet.
func (lay *Layout) planPodCIDRs(taken map[netip.Addr]string) {
	for i := range lay.Nodes {
		n := &lay.Nodes[i]
		for _, is4 := range []bool{true, false} {
			var mine []netip.Addr
			for _, p := range lay.Pods {
				if p.Node != n.Name {
					continue
				}
				for _, a := range p.IPs {
					if a.Is4() == is4 {
						mine = append(mine, a)
					}
				}
			}
			if len(mine) == 0 {
				continue
			}
			bits := 24
			if !is4 {
				bits = 64
			}
			cidr := netip.PrefixFrom(mine[0], bits).Masked()
			ok := !slices.ContainsFunc(lay.NodeSubnets, cidr.Overlaps)
			for a := range taken {
				if ok && cidr.Contains(a) && !slices.Contains(mine, a) {
					ok = false
				}
			}
			for _, a := range mine {
				ok = ok && cidr.Contains(a)
			}
			if ok {
				n.PodCIDRs = append(n.PodCIDRs, cidr)
			}
		}
	}
}

// freeSubnet returns p or the first prefix of its length after it that
// holds no address of taken, trying 256.
func freeSubnet(p netip.Prefix, taken map[netip.Addr]string) (netip.Prefix, bool) {
	for range 256 {
		free := true
		for a := range taken {
			if p.Contains(a) {
				free = false
				break
			}
		}
		if free {
			return p, true
		}
		next, ok := nextPrefix(p)
		if !ok {
			return netip.Prefix{}, false
		}
		p = next
	}
	return netip.Prefix{}, false
}

// nextPrefix returns the prefix of p's length right after p.
func nextPrefix(p netip.Prefix) (netip.Prefix, bool) {
	b := p.Addr().AsSlice()
	bit := p.Bits() - 1 // the last bit of the prefix
	for i := bit / 8; i >= 0; i-- {
		inc := byte(1)
		if i == bit/8 {
			inc = 1 << (7 - bit%8)
		}
		old := b[i]
		b[i] += inc
		if b[i] > old {
			a, _ := netip.AddrFromSlice(b)
			return netip.PrefixFrom(a, p.Bits()), true
		}
	}
	return netip.Prefix{}, false
}

// lastAddr returns the last address of p (IPv4: its broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// firstFree returns the first usable address of the /24 (IPv4) or /64
// (IPv6) that holds a, skipping addresses in taken.
func firstFree(a netip.Addr, taken map[netip.Addr]string) (netip.Addr, bool) {
	bits := 24
	if a.Is6() {
		bits = 64
	}
	p := netip.PrefixFrom(a, bits).Masked()
	for c, i := p.Addr().Next(), 0; c.IsValid() && p.Contains(c) && i < 1024; c, i = c.Next(), i+1 {
		if _, dup := taken[c]; !dup && !(a.Is4() && c.As4()[3] == 255) {
			return c, true
		}
	}
	return netip.Addr{}, false
}
