package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// StateFile is the name of the state file inside [Config.StateDir].
const StateFile = "ports.json"

// stateVersion is the format version of the state file.
const stateVersion = 1

// state is what the Node changed, written before the change: for every pod
// port, the routes it moved from the pod's veth to the kernel leg, with
// their original attributes. Once a route is moved the kernel no longer
// says which veth a pod address belongs to; after a crash this file does.
type state struct {
	Version     int         `json:"version"`
	GatewayLink string      `json:"gatewayLink"`
	KernelLink  string      `json:"kernelLink"`
	Ports       []statePort `json:"ports"`
}

// statePort is one pod port: its veth (name and ifindex, both must match
// for the record to apply) and its routes.
type statePort struct {
	Name    string       `json:"name"`
	Ifindex int          `json:"ifindex"`
	Routes  []savedRoute `json:"routes"`
}

// savedRoute is a host route to a pod address as the CNI made it, minus
// the device: enough to put it back on the veth, and to replace it
// in place (same key: table, destination, TOS, metric) with one via the
// kernel leg.
type savedRoute struct {
	Dst      netip.Addr `json:"dst"`
	Table    int        `json:"table,omitempty"`
	Scope    uint8      `json:"scope,omitempty"`
	Protocol int        `json:"protocol,omitempty"`
	Priority int        `json:"priority,omitempty"`
	Tos      int        `json:"tos,omitempty"`
	Src      netip.Addr `json:"src,omitzero"`
	MTU      int        `json:"mtu,omitempty"`
	AdvMSS   int        `json:"advmss,omitempty"`
	Onlink   bool       `json:"onlink,omitempty"`
}

// saveRoute records the attributes of r, a host route to a pod address.
func saveRoute(r *netlink.Route, dst netip.Addr) savedRoute {
	s := savedRoute{
		Dst:      dst,
		Table:    r.Table,
		Scope:    uint8(r.Scope),
		Protocol: int(r.Protocol),
		Priority: r.Priority,
		Tos:      r.Tos,
		MTU:      r.MTU,
		AdvMSS:   r.AdvMSS,
		Onlink:   r.Flags&int(netlink.FLAG_ONLINK) != 0,
	}
	if a, ok := netip.AddrFromSlice(r.Src); ok {
		s.Src = a.Unmap()
	}
	return s
}

// route returns the saved route via the link with the given index. mtu, if
// positive and the saved route has no MTU of its own, becomes the route's
// MTU (the pod's MTU on a route via the kernel leg).
func (s savedRoute) route(linkIndex, mtu int) *netlink.Route {
	bits := s.Dst.BitLen()
	r := &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       &net.IPNet{IP: s.Dst.AsSlice(), Mask: net.CIDRMask(bits, bits)},
		Table:     s.Table,
		Scope:     netlink.Scope(s.Scope),
		Protocol:  netlink.RouteProtocol(s.Protocol),
		Priority:  s.Priority,
		Tos:       s.Tos,
		Type:      unix.RTN_UNICAST,
		MTU:       s.MTU,
		AdvMSS:    s.AdvMSS,
	}
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	if s.Dst.Is4() {
		r.Family = netlink.FAMILY_V4
	} else {
		r.Family = netlink.FAMILY_V6
	}
	if s.Src.IsValid() {
		r.Src = s.Src.AsSlice()
	}
	if s.Onlink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	if r.MTU == 0 && mtu > 0 {
		r.MTU = mtu
	}
	return r
}

func statePath(dir string) string { return filepath.Join(dir, StateFile) }

// readState reads the state file; a missing file is an empty state.
func readState(dir string) (state, error) {
	b, err := os.ReadFile(statePath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return state{Version: stateVersion}, nil
	}
	if err != nil {
		return state{}, fmt.Errorf("read state: %w", err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return state{}, fmt.Errorf("parse state %s: %w", statePath(dir), err)
	}
	if s.Version != stateVersion {
		return state{}, fmt.Errorf("parse state %s: version %d, want %d", statePath(dir), s.Version, stateVersion)
	}
	return s, nil
}

// writeState replaces the state file atomically: a temporary file in the
// same directory, synced, renamed over the old one, and the directory
// synced, so a crash leaves either the old or the new content.
func writeState(dir string, s state) error {
	s.Version = stateVersion
	s.Ports = slices.Clone(s.Ports)
	slices.SortFunc(s.Ports, func(a, b statePort) int { return a.Ifindex - b.Ifindex })
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	f, err := os.CreateTemp(dir, StateFile+".tmp*")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, statePath(dir))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write state: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// removeState removes the state file (after a complete restore).
func removeState(dir string) error {
	if err := os.Remove(statePath(dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
