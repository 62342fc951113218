package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// MaxIfNameLen is the longest interface name the kernel accepts (IFNAMSIZ-1).
const MaxIfNameLen = 15

// VethConfig describes a veth pair with one end in each of two namespaces.
type VethConfig struct {
	// NS and Name are the first end; NS is required.
	NS   *Namespace
	Name string
	// MAC of the first end; nil lets the kernel choose.
	MAC net.HardwareAddr
	// PeerNS and PeerName are the second end. PeerNS may equal NS.
	PeerNS   *Namespace
	PeerName string
	PeerMAC  net.HardwareAddr
	// MTU of both ends; 0 keeps the kernel default (1500).
	MTU int
}

// Veth is a veth pair created by [AddVeth].
type Veth struct {
	Index, PeerIndex int
	MAC, PeerMAC     net.HardwareAddr
}

// AddVeth creates a veth pair with its ends directly in cfg.NS and
// cfg.PeerNS (no end ever passes through the caller's namespace), sets the
// MTU and MACs and brings both ends up. On failure the pair is removed.
func AddVeth(cfg VethConfig) (Veth, error) {
	if cfg.NS == nil || cfg.PeerNS == nil {
		return Veth{}, errors.New("add veth: both namespaces are required")
	}
	for _, n := range []string{cfg.Name, cfg.PeerName} {
		if n == "" || len(n) > MaxIfNameLen {
			return Veth{}, fmt.Errorf("add veth: bad interface name %q (1..%d bytes)", n, MaxIfNameLen)
		}
	}
	if cfg.MTU < 0 {
		return Veth{}, fmt.Errorf("add veth: bad MTU %d", cfg.MTU)
	}
	h, err := cfg.NS.Handle()
	if err != nil {
		return Veth{}, fmt.Errorf("add veth %s: %w", cfg.Name, err)
	}
	defer h.Close()
	ph := h
	if cfg.PeerNS != cfg.NS {
		ph, err = cfg.PeerNS.Handle()
		if err != nil {
			return Veth{}, fmt.Errorf("add veth %s: %w", cfg.Name, err)
		}
		defer ph.Close()
	}

	la := netlink.NewLinkAttrs()
	la.Name = cfg.Name
	la.MTU = cfg.MTU
	la.HardwareAddr = cfg.MAC
	v := &netlink.Veth{LinkAttrs: la, PeerName: cfg.PeerName, PeerHardwareAddr: cfg.PeerMAC, PeerMTU: uint32(cfg.MTU)}
	if cfg.PeerNS != cfg.NS {
		if cfg.PeerNS.fd < 0 {
			return Veth{}, fmt.Errorf("add veth %s: peer %w", cfg.Name, ErrClosed)
		}
		v.PeerNamespace = netlink.NsFd(cfg.PeerNS.fd)
	}
	if err := h.LinkAdd(v); err != nil {
		return Veth{}, fmt.Errorf("add veth %s/%s: %w", cfg.Name, cfg.PeerName, err)
	}
	res, err := func() (Veth, error) {
		l, err := h.LinkByName(cfg.Name)
		if err != nil {
			return Veth{}, fmt.Errorf("find link %s: %w", cfg.Name, err)
		}
		p, err := ph.LinkByName(cfg.PeerName)
		if err != nil {
			return Veth{}, fmt.Errorf("find link %s: %w", cfg.PeerName, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return Veth{}, fmt.Errorf("set link %s up: %w", cfg.Name, err)
		}
		if err := ph.LinkSetUp(p); err != nil {
			return Veth{}, fmt.Errorf("set link %s up: %w", cfg.PeerName, err)
		}
		return Veth{
			Index: l.Attrs().Index, PeerIndex: p.Attrs().Index,
			MAC: l.Attrs().HardwareAddr, PeerMAC: p.Attrs().HardwareAddr,
		}, nil
	}()
	if err != nil {
		if l, lerr := h.LinkByName(cfg.Name); lerr == nil {
			if derr := h.LinkDel(l); derr != nil {
				err = errors.Join(err, fmt.Errorf("delete link %s: %w", cfg.Name, derr))
			}
		}
		return Veth{}, fmt.Errorf("add veth %s: %w", cfg.Name, err)
	}
	return res, nil
}

// PodConfig describes a point-to-point ("ptp") pod interface in the style of
// Calico, kindnet-ptp and the CNI ptp plugin: the pod end carries the pod IPs
// as host routes (/32, /128) and a default route via a link-local gateway
// marked onlink; the node end has no address, only a host route
// "podIP dev HostIf" per pod IP.
type PodConfig struct {
	// Pod is the pod's namespace; PodIf is its interface name ("eth0" if empty).
	Pod   *Namespace
	PodIf string
	// Node is the namespace holding the host end, named HostIf.
	Node   *Namespace
	HostIf string
	// IPs are the pod addresses (IPv4 and/or IPv6), at least one.
	IPs []netip.Addr
	// MTU of both ends; 0 keeps 1500.
	MTU int
	// PodMAC and HostMAC fix the MACs; nil lets the kernel choose.
	PodMAC, HostMAC net.HardwareAddr
	// Gateway4 and Gateway6 are the pod's default gateways; zero values
	// mean 169.254.1.1 and fe80::1.
	Gateway4, Gateway6 netip.Addr
	// StaticGateway adds a permanent neighbour entry in the pod resolving
	// the gateway to the host end's MAC, so nobody has to answer ARP/NDP.
	StaticGateway bool
	// NodeNeighbors adds permanent neighbour entries on the node resolving
	// each pod IP on HostIf to the pod end's MAC (the host end has no
	// address to send ARP from).
	NodeNeighbors bool
}

// Pod is the result of [AddPod].
type Pod struct {
	Veth               // Index/MAC: host end in Node; PeerIndex/PeerMAC: pod end.
	Gateway4, Gateway6 netip.Addr
}

// AddPod creates and configures a ptp pod interface as described by cfg.
// On failure the veth pair is removed again.
func AddPod(cfg PodConfig) (Pod, error) {
	if cfg.PodIf == "" {
		cfg.PodIf = "eth0"
	}
	if !cfg.Gateway4.IsValid() {
		cfg.Gateway4 = netip.AddrFrom4([4]byte{169, 254, 1, 1})
	}
	if !cfg.Gateway6.IsValid() {
		cfg.Gateway6 = netip.MustParseAddr("fe80::1")
	}
	if !cfg.Gateway4.Is4() || !cfg.Gateway6.Is6() {
		return Pod{}, fmt.Errorf("add pod: gateways %v, %v are not IPv4, IPv6", cfg.Gateway4, cfg.Gateway6)
	}
	if len(cfg.IPs) == 0 {
		return Pod{}, errors.New("add pod: no pod IPs")
	}
	for _, ip := range cfg.IPs {
		if !ip.IsValid() || ip.Zone() != "" {
			return Pod{}, fmt.Errorf("add pod: bad pod IP %v", ip)
		}
	}
	v, err := AddVeth(VethConfig{
		NS: cfg.Node, Name: cfg.HostIf, MAC: cfg.HostMAC,
		PeerNS: cfg.Pod, PeerName: cfg.PodIf, PeerMAC: cfg.PodMAC,
		MTU: cfg.MTU,
	})
	if err != nil {
		return Pod{}, fmt.Errorf("add pod %s: %w", cfg.HostIf, err)
	}
	p := Pod{Veth: v, Gateway4: cfg.Gateway4, Gateway6: cfg.Gateway6}
	if err := configurePod(cfg, p); err != nil {
		if derr := deleteLink(cfg.Node, v.Index); derr != nil {
			err = errors.Join(err, derr)
		}
		return Pod{}, fmt.Errorf("add pod %s: %w", cfg.HostIf, err)
	}
	return p, nil
}

func configurePod(cfg PodConfig, p Pod) error {
	ph, err := cfg.Pod.Handle()
	if err != nil {
		return err
	}
	defer ph.Close()
	nh, err := cfg.Node.Handle()
	if err != nil {
		return err
	}
	defer nh.Close()

	lo, err := ph.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := ph.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	podLink, err := ph.LinkByIndex(p.PeerIndex)
	if err != nil {
		return fmt.Errorf("find link %s: %w", cfg.PodIf, err)
	}
	has4, has6 := false, false
	for _, ip := range cfg.IPs {
		ip = ip.Unmap()
		host := hostPrefix(ip)
		addr := &netlink.Addr{IPNet: host}
		if ip.Is6() {
			has6 = true
			addr.Flags = unix.IFA_F_NODAD
		} else {
			has4 = true
		}
		if err := ph.AddrAdd(podLink, addr); err != nil {
			return fmt.Errorf("add address %v to %s: %w", ip, cfg.PodIf, err)
		}
		route := &netlink.Route{LinkIndex: p.Index, Dst: host, Scope: netlink.SCOPE_LINK}
		if err := nh.RouteAdd(route); err != nil {
			return fmt.Errorf("add route %v dev %s: %w", ip, cfg.HostIf, err)
		}
		if cfg.NodeNeighbors {
			if err := addPermanentNeighbor(nh, p.Index, ip, p.PeerMAC); err != nil {
				return err
			}
		}
	}
	for _, gw := range []struct {
		use  bool
		addr netip.Addr
	}{{has4, cfg.Gateway4}, {has6, cfg.Gateway6}} {
		if !gw.use {
			continue
		}
		route := &netlink.Route{
			LinkIndex: p.PeerIndex,
			Gw:        gw.addr.AsSlice(),
			Flags:     int(netlink.FLAG_ONLINK),
		}
		if gw.addr.Is6() {
			route.Family = netlink.FAMILY_V6
		} else {
			route.Family = netlink.FAMILY_V4
		}
		if err := ph.RouteAdd(route); err != nil {
			return fmt.Errorf("add default route via %v: %w", gw.addr, err)
		}
		if cfg.StaticGateway {
			if err := addPermanentNeighbor(ph, p.PeerIndex, gw.addr, p.MAC); err != nil {
				return err
			}
		}
	}
	return nil
}

// hostPrefix returns ip as a /32 or /128 network.
func hostPrefix(ip netip.Addr) *net.IPNet {
	bits := ip.BitLen()
	return &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, bits)}
}

// AddNeighbor adds a permanent neighbour entry ip → mac on the link with the
// given index inside ns, like `ip neigh add IP lladdr MAC dev LINK nud
// permanent`.
func AddNeighbor(ns *Namespace, index int, ip netip.Addr, mac net.HardwareAddr) error {
	h, err := ns.Handle()
	if err != nil {
		return fmt.Errorf("add neighbor %v: %w", ip, err)
	}
	defer h.Close()
	return addPermanentNeighbor(h, index, ip, mac)
}

func addPermanentNeighbor(h *netlink.Handle, index int, ip netip.Addr, mac net.HardwareAddr) error {
	family := netlink.FAMILY_V4
	if ip.Unmap().Is6() {
		family = netlink.FAMILY_V6
	}
	n := &netlink.Neigh{
		LinkIndex:    index,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           ip.Unmap().AsSlice(),
		HardwareAddr: mac,
	}
	if err := h.NeighSet(n); err != nil {
		return fmt.Errorf("add neighbor %v lladdr %v: %w", ip, mac, err)
	}
	return nil
}

func deleteLink(ns *Namespace, index int) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByIndex(index)
	if err != nil {
		return fmt.Errorf("find link %d: %w", index, err)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %d: %w", index, err)
	}
	return nil
}
