package lab

import (
	"fmt"
	"net/netip"
)

// Link-local outside hosts. Clouds serve their instance metadata at an
// IPv4 link-local address (169.254.169.254 on Azure, AWS and GCP) that every
// node routes, and cluster policies are written against it, so an
// OutsideHost may have an IPv4 link-local address. The lab routes it like
// any other outside address: from the nodes via the outside gateway
// 169.254.0.2 onlink, from the outside namespace back via 169.254.1.1.
// Those two, the lab's own link-local gateways, cannot be an outside
// host's, and IPv6 link-local addresses (fe80::/10) are the link's alone:
// nothing routes them.

// podGateway4 is the IPv4 gateway of a pod's (and the outside
// namespace's) default route, as netns.AddPod sets it.
var podGateway4 = netip.AddrFrom4([4]byte{169, 254, 1, 1})

// checkOutsideAddr reports why a cannot be an OutsideHost's address, or nil
// if it can.
func checkOutsideAddr(a netip.Addr) error {
	switch {
	case a.IsLoopback() || a.IsMulticast() || a.IsUnspecified() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("must be a unicast address")
	case a.Is6() && a.IsLinkLocalUnicast():
		return fmt.Errorf("must not be IPv6 link-local: the lab routes outside addresses, and fe80::/10 is never routed")
	case a == podGateway4 || a == outsideGateway(true):
		return fmt.Errorf("is a gateway of the lab's links (%s, %s)", podGateway4, outsideGateway(true))
	}
	return nil
}
