package node

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/policy/table"
)

func ipnet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestPodRouteDst(t *testing.T) {
	cni4 := netlink.Route{LinkIndex: 3, Dst: ipnet("10.0.1.10/32"), Scope: netlink.SCOPE_LINK,
		Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT}
	cni6 := netlink.Route{LinkIndex: 3, Dst: ipnet("fd00::10/128"), Table: unix.RT_TABLE_MAIN,
		Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT, Priority: 1024}
	with := func(r netlink.Route, f func(*netlink.Route)) netlink.Route { f(&r); return r }
	tests := []struct {
		name string
		r    netlink.Route
		want string // "" when not a pod route
	}{
		{"ipv4 ptp", cni4, "10.0.1.10"},
		{"ipv6 ptp", cni6, "fd00::10"},
		{"ipv4 subnet", with(cni4, func(r *netlink.Route) { r.Dst = ipnet("10.0.1.0/24") }), ""},
		{"ipv4 scope universe", with(cni4, func(r *netlink.Route) { r.Scope = netlink.SCOPE_UNIVERSE }), ""},
		{"gateway", with(cni4, func(r *netlink.Route) { r.Gw = net.ParseIP("10.0.0.1") }), ""},
		{"other table", with(cni4, func(r *netlink.Route) { r.Table = 100 }), ""},
		{"blackhole", with(cni4, func(r *netlink.Route) { r.Type = unix.RTN_BLACKHOLE }), ""},
		{"kernel route of a node address", with(cni6, func(r *netlink.Route) { r.Protocol = unix.RTPROT_KERNEL }), ""},
		{"link-local", with(cni6, func(r *netlink.Route) { r.Dst = ipnet("fe80::1/128") }), ""},
		{"multicast", with(cni4, func(r *netlink.Route) { r.Dst = ipnet("224.0.0.1/32") }), ""},
		{"default", with(cni4, func(r *netlink.Route) { r.Dst = nil }), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok := podRouteDst(&tt.r)
			got := ""
			if ok {
				got = a.String()
			}
			if got != tt.want {
				t.Errorf("podRouteDst = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEUI64LinkLocal(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	if got, want := eui64LinkLocal(mac), netip.MustParseAddr("fe80::5054:ff:fe12:3456"); got != want {
		t.Errorf("eui64LinkLocal = %v, want %v", got, want)
	}
	if got := eui64LinkLocal(nil); got.IsValid() {
		t.Errorf("eui64LinkLocal(nil) = %v", got)
	}
}

func TestSavedRouteRoundTrip(t *testing.T) {
	orig := netlink.Route{
		LinkIndex: 7, Dst: ipnet("fd00::10/128"), Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST,
		Protocol: unix.RTPROT_STATIC, Priority: 1024, Src: net.ParseIP("fd00::1"), AdvMSS: 1400,
		Family: netlink.FAMILY_V6,
	}
	s := saveRoute(&orig, netip.MustParseAddr("fd00::10"))
	back := s.route(7, 0)
	if diff := cmp.Diff(orig.String(), back.String()); diff != "" {
		t.Errorf("route back on the veth (-want +got):\n%s", diff)
	}
	via := s.route(9, 1400)
	if via.LinkIndex != 9 || via.MTU != 1400 || !sameKey(&orig, via) {
		t.Errorf("route via the kernel leg: %v", via)
	}
	// The pod's MTU never overrides one the CNI set.
	s.MTU = 1300
	if got := s.route(9, 1400).MTU; got != 1300 {
		t.Errorf("MTU %d, want the CNI's 1300", got)
	}
}

func TestSameKey(t *testing.T) {
	v6 := &netlink.Route{Dst: ipnet("fd00::1/128")}
	v6m := &netlink.Route{Dst: ipnet("fd00::1/128"), Priority: 1024}
	v4 := &netlink.Route{Dst: ipnet("10.0.0.1/32")}
	v4m := &netlink.Route{Dst: ipnet("10.0.0.1/32"), Priority: 1024}
	if !sameKey(v6, v6m) {
		t.Error("IPv6 metric 0 and 1024 differ")
	}
	if sameKey(v4, v4m) {
		t.Error("IPv4 metric 0 and 1024 are the same")
	}
}

func TestState(t *testing.T) {
	dir := t.TempDir()
	st, err := readState(dir)
	if err != nil || len(st.Ports) != 0 {
		t.Fatalf("missing state file: %+v, %v", st, err)
	}
	want := state{
		Version: stateVersion, GatewayLink: "pgw0", KernelLink: "pgk0",
		Ports: []statePort{
			{Name: "veth1", Ifindex: 4, Routes: []savedRoute{{Dst: netip.MustParseAddr("10.0.1.10"), Table: 254, Scope: 253, Protocol: 3}}},
			{Name: "veth0", Ifindex: 3, Routes: []savedRoute{{Dst: netip.MustParseAddr("fd00::1"), Table: 254, Priority: 1024, Src: netip.MustParseAddr("fd00::2")}}},
		},
	}
	if err := writeState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := readState(dir)
	if err != nil {
		t.Fatal(err)
	}
	want.Ports[0], want.Ports[1] = want.Ports[1], want.Ports[0] // sorted by ifindex
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("files in state dir: %v, want only %s", entries, StateFile)
	}
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readState(dir); err == nil {
		t.Error("corrupt state file read without error")
	}
	if err := removeState(dir); err != nil {
		t.Fatal(err)
	}
	if err := removeState(dir); err != nil {
		t.Errorf("removing a missing state file: %v", err)
	}
}

func TestConfig(t *testing.T) {
	e, err := fastpath.New(fastpath.Config{Store: &table.Store{}})
	if err != nil {
		t.Fatal(err)
	}
	// Validate only checks that an Offload is given; it opens nothing.
	c := Config{Engine: e, Offload: new(offload.Offload)}.WithDefaults()
	if c.GatewayLink != "pgw0" || c.KernelLink != "pgk0" || c.StateDir != "/run/podgate" ||
		c.AttachMode != xsk.Native || c.Socket.FrameSize != xsk.DefaultFrameSize || c.Socket.NumFrames != 256 ||
		c.Socket.FillFrames != 1 || c.KernelSocket.NumFrames != xsk.DefaultNumFrames || c.Logger == nil {
		t.Errorf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
	bad := Config{GatewayLink: "x", KernelLink: "x", AttachMode: 7, Socket: xsk.Config{FrameSize: 1000}}.WithDefaults()
	err = bad.Validate()
	for _, want := range []string{"engine", "offload", "both \"x\"", "attach mode", "frame size"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want an error about %s", err, want)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without engine succeeded")
	}
}

func TestIsPodVeth(t *testing.T) {
	n := &Node{cfg: Config{GatewayLink: "pgw0", KernelLink: "pgk0", InterfacePrefix: "cali"}}
	veth := func(name string, master int) netlink.Link {
		la := netlink.NewLinkAttrs()
		la.Name, la.MasterIndex = name, master
		return &netlink.Veth{LinkAttrs: la}
	}
	la := netlink.NewLinkAttrs()
	la.Name = "cali0"
	for _, tt := range []struct {
		l    netlink.Link
		want bool
	}{
		{veth("cali123", 0), true},
		{veth("veth123", 0), false}, // prefix
		{veth("cali123", 5), false}, // enslaved
		{veth("pgk0", 0), false},
		{&netlink.Dummy{LinkAttrs: la}, false},
		{nil, false},
	} {
		if got := n.isPodVeth(tt.l); got != tt.want {
			t.Errorf("isPodVeth(%v) = %v, want %v", tt.l, got, tt.want)
		}
	}
}
