package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// Defaults of [Spec].
const (
	DefaultPrefix            = "pglab"
	DefaultMTU               = 1500
	DefaultProbeTimeout      = 3 * time.Second
	DefaultParallel          = 32
	DefaultAgentReadyTimeout = 60 * time.Second
	DefaultAgentStopTimeout  = 45 * time.Second
)

// Interface names in a node namespace.
const (
	// NodeIf is the interface that carries the node's addresses in a lab
	// of one node: the node namespace's loopback (the lab kernels have no
	// dummy driver). In a lab of several they are on UplinkIf.
	NodeIf = "lo"
	// UplinkIf is the node end of the link to the outside namespace (one
	// node) or to the underlay bridge (several).
	UplinkIf = "uplink0"
)

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

// Enforcer is what enforces policy in the lab, which decides what the
// probes are expected to observe.
type Enforcer string

// Enforcers.
const (
	// EnforcerPodgate: a podgate agent runs in every node namespace
	// ([Lab.StartAgent]); probes are expected to follow the policy table.
	EnforcerPodgate Enforcer = "podgate"
	// EnforcerNone: the kernel alone forwards; every probe is expected to
	// succeed. This is also the bench harness's baseline.
	EnforcerNone Enforcer = "none"
)

// Spec describes a lab. Only Manifests is required.
type Spec struct {
	// Manifests are manifest files or directories, as for [policy.Load]:
	// Namespaces, Pods (with status.podIPs and spec.nodeName; hostNetwork
	// pods too), NetworkPolicies, Services with their EndpointSlices, and
	// OutsideHosts.
	Manifests []string
	// NodeName, if set, builds this node alone, as a lab of one node:
	// pods of other nodes are left out (with a note) and pods without
	// spec.nodeName are placed on it. Empty means every node the pods
	// name (see Nodes).
	NodeName string
	// Nodes is how many nodes to build: 0 means as many as the pods name
	// in spec.nodeName, at least one. The nodes the pods do not name are
	// called lab-node-K; pods without spec.nodeName are spread over all
	// nodes round-robin. Fewer nodes than the pods name is an error.
	Nodes int
	// NodeIPs are the node's own addresses in a lab of one node, at most
	// one per family; empty means the first free address of the /24 (/64)
	// of the first pod address of each family.
	NodeIPs []netip.Addr
	// NodeSubnets are the underlay's subnets in a lab of several nodes, at
	// most one per family; the nodes get their first free addresses, in
	// node order. A family left out defaults to the first /24 (/64) from
	// [DefaultNodeSubnet4] ([DefaultNodeSubnet6]) on that holds no address
	// of the manifests (pods, outside hosts, ClusterIPs). A given subnet
	// may hold pod addresses, as with Azure CNI, where nodes and pods
	// share a subnet.
	NodeSubnets []netip.Prefix
	// Prefix starts every namespace and directory name of the lab
	// (default "pglab"); names are PREFIX-PID-XXXXXX[-...]. At most 12
	// bytes of letters, digits and dashes.
	Prefix string
	// MTU of every veth (default 1500).
	MTU int
	// Enforcer decides the expectations (default EnforcerPodgate).
	Enforcer Enforcer
	// AgentKubeconfig, when set, makes StartAgent run the agents against
	// the Kubernetes API of this kubeconfig instead of the lab's manifest
	// directory. The caller creates the objects in the API; the lab's
	// expectations still come from Manifests.
	AgentKubeconfig string
	// ProbeTimeout bounds each probe (default 3s, so that one TCP SYN
	// retransmission, after 1s, fits). A probe that is denied
	// by dropping takes this long.
	ProbeTimeout time.Duration
	// Parallel is how many probes [Lab.Matrix] runs at once (default 32).
	Parallel int
	// ProbeFromNode adds the nodes as probe sources to [Lab.Matrix]: a
	// node to its own pods is expected to be allowed (kubelet probes), to
	// the pods of other nodes as their policies say.
	ProbeFromNode bool
	// AgentOutput, if set, receives the agents' stdout and stderr besides
	// their log files ([Node.AgentLog]).
	AgentOutput io.Writer
	// AgentReadyTimeout bounds the wait for the agent's /readyz (default
	// 60s); AgentStopTimeout the wait for it to exit after a signal before
	// it is killed (default 45s).
	AgentReadyTimeout, AgentStopTimeout time.Duration
}

func (s Spec) withDefaults() Spec {
	if s.Prefix == "" {
		s.Prefix = DefaultPrefix
	}
	if s.MTU == 0 {
		s.MTU = DefaultMTU
	}
	if s.Enforcer == "" {
		s.Enforcer = EnforcerPodgate
	}
	if s.ProbeTimeout == 0 {
		s.ProbeTimeout = DefaultProbeTimeout
	}
	if s.Parallel == 0 {
		s.Parallel = DefaultParallel
	}
	if s.AgentReadyTimeout == 0 {
		s.AgentReadyTimeout = DefaultAgentReadyTimeout
	}
	if s.AgentStopTimeout == 0 {
		s.AgentStopTimeout = DefaultAgentStopTimeout
	}
	return s
}

func (s Spec) validate() error {
	var errs []error
	if len(s.Manifests) == 0 {
		errs = append(errs, errors.New("manifests: required"))
	}
	if err := checkPrefix(s.Prefix); err != nil {
		errs = append(errs, err)
	}
	if s.Nodes < 0 {
		errs = append(errs, fmt.Errorf("nodes %d: must not be negative", s.Nodes))
	}
	if s.NodeName != "" && s.Nodes > 1 {
		errs = append(errs, fmt.Errorf("node name %q and %d nodes: a node name builds that node alone", s.NodeName, s.Nodes))
	}
	if s.MTU < 0 {
		errs = append(errs, fmt.Errorf("mtu %d: must not be negative", s.MTU))
	}
	if s.Enforcer != EnforcerPodgate && s.Enforcer != EnforcerNone {
		errs = append(errs, fmt.Errorf("enforcer %q: want %q or %q", s.Enforcer, EnforcerPodgate, EnforcerNone))
	}
	if s.ProbeTimeout < 0 || s.Parallel < 0 || s.AgentReadyTimeout < 0 || s.AgentStopTimeout < 0 {
		errs = append(errs, errors.New("timeouts and parallelism must not be negative"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab spec: %w", errors.Join(errs...))
	}
	return nil
}

func checkPrefix(p string) error {
	if p == "" || len(p) > netns.MaxPrefixLen {
		return fmt.Errorf("prefix %q: want 1 to %d bytes", p, netns.MaxPrefixLen)
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("prefix %q: only letters, digits and dashes", p)
		}
	}
	return nil
}

// Lab is a cluster of nodes built out of network namespaces. Create it
// with [Build] and release it with [Lab.Close].
//
// All methods except Close may be called from several goroutines at once.
type Lab struct {
	spec  Spec
	id    string
	dir   string
	notes []string

	nodes      []*Node
	nodeByName map[string]*Node
	subnets    []netip.Prefix
	endpoints  []*Endpoint // pods, hostNetwork pods, then outside hosts
	byName     map[string]*Endpoint
	byAddr     map[netip.Addr]*Endpoint
	created    []*netns.Namespace // in creation order

	services  []Service
	svcByAddr map[netip.Addr]*Service

	table atomic.Pointer[table.Table]
	// manifestMu serializes changes to the manifest directory.
	manifestMu sync.Mutex

	servers  *servers
	nextPort atomic.Uint32

	streamMu sync.Mutex
	streams  map[*Stream]struct{} // nil once closing

	closeOnce sync.Once
	closeErr  error
}

// Build creates the lab described by spec: it loads and compiles the
// manifests, plans the nodes ([Plan]) and creates, for each node, a node
// namespace (forwarding on), one namespace per pod of the node (a ptp veth
// to the node with the pod's addresses and default routes via 169.254.1.1
// and fe80::1), and an outside namespace with the OutsideHosts' addresses:
// behind the node's uplink0 in a lab of one node, on the underlay bridge
// with the nodes in a lab of several (see the package documentation).
// Build changes nothing in the caller's own namespace. On failure, or when
// ctx is done, everything made so far is removed.
func Build(ctx context.Context, spec Spec) (_ *Lab, err error) {
	spec = spec.withDefaults()
	if err := spec.validate(); err != nil {
		return nil, err
	}
	m, err := policy.Load(spec.Manifests...)
	if err != nil {
		return nil, fmt.Errorf("load manifests: %w", err)
	}
	t, err := policy.Compile(&m.Cluster)
	if err != nil {
		return nil, fmt.Errorf("compile manifests: %w", err)
	}
	layout, err := Plan(m, t, PlanOptions{NodeName: spec.NodeName, Nodes: spec.Nodes, NodeIPs: spec.NodeIPs, NodeSubnets: spec.NodeSubnets})
	if err != nil {
		return nil, err
	}

	l := &Lab{
		spec:       spec,
		notes:      append(append([]string(nil), m.Notes...), layout.Notes...),
		nodeByName: map[string]*Node{},
		subnets:    layout.NodeSubnets,
		byName:     map[string]*Endpoint{},
		byAddr:     map[netip.Addr]*Endpoint{},
		servers:    newServers(),
		streams:    map[*Stream]struct{}{},
	}
	l.table.Store(t)
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("build lab: %w", err)
	}
	l.nextPort.Store(uint32(b[0])<<8 | uint32(b[1]))
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()

	if err := l.makeDir(); err != nil {
		return nil, err
	}
	if _, err := copyManifests(spec.Manifests, l.ManifestDir()); err != nil {
		return nil, err
	}

	multi := len(layout.Nodes) > 1
	var underlay *netns.Namespace
	if multi {
		if underlay, err = l.newUnderlay(); err != nil {
			return nil, err
		}
	}
	for i, nl := range layout.Nodes {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("build lab: %w", err)
		}
		part, name, ifName := "node", NodeEndpoint, NodeIf
		if multi {
			part, name, ifName = "node-"+nsNamePart(nl.Name), nodePrefix+nl.Name, UplinkIf
		}
		ns, err := l.newNamespace(part)
		if err != nil {
			return nil, err
		}
		n := &Node{
			lab: l, name: nl.Name, index: i, multi: multi,
			ep:       &Endpoint{Name: name, Kind: KindNode, Node: nl.Name, IPs: nl.IPs, NS: ns, HostIf: ifName},
			podCIDRs: nl.PodCIDRs,
		}
		l.nodes = append(l.nodes, n)
		l.nodeByName[n.name] = n
		if err := l.setUpNode(n, layout.hasIPv6()); err != nil {
			return nil, err
		}
		if multi {
			if err := l.wireUplink(n, underlay); err != nil {
				return nil, err
			}
		}
		for _, a := range nl.IPs {
			l.byAddr[a] = n.ep
		}
	}

	for i := range layout.Pods {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("build lab: %w", err)
		}
		ep := layout.Pods[i]
		node := l.nodeByName[ep.Node]
		ns, err := l.newNamespace(nsNamePart(ep.Name))
		if err != nil {
			return nil, err
		}
		ep.NS = ns
		ep.HostIf = hostIfName(i, ep.Name)
		if err := l.wire(&ep, node); err != nil {
			return nil, err
		}
		l.addEndpoint(&ep)
	}
	for i := range layout.HostNetwork {
		ep := layout.HostNetwork[i]
		node := l.nodeByName[ep.Node]
		ep.NS, ep.HostIf = node.ep.NS, node.ep.HostIf
		l.endpoints = append(l.endpoints, &ep)
		l.byName[ep.Name] = &ep
	}
	var outside *Endpoint
	if len(layout.Outside) > 0 {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("build lab: %w", err)
		}
		ns, err := l.newNamespace("outside")
		if err != nil {
			return nil, err
		}
		outside = &Endpoint{Name: "outside", Kind: KindOutside, NS: ns, HostIf: UplinkIf}
		for _, o := range layout.Outside {
			outside.IPs = append(outside.IPs, o.IPs...)
		}
		if multi {
			err = l.wireOutsideUnderlay(outside, underlay)
		} else {
			err = l.wireOutside(outside)
		}
		if err != nil {
			return nil, err
		}
		for i := range layout.Outside {
			ep := layout.Outside[i]
			ep.NS, ep.HostIf = ns, UplinkIf
			l.addEndpoint(&ep)
		}
	}
	if multi {
		if err := l.routeUnderlay(outside); err != nil {
			return nil, err
		}
	}
	if err := l.setUpServices(ctx, m); err != nil {
		return nil, err
	}
	return l, nil
}

// setUpServices plans the manifests' Services and programs their DNAT in
// every node namespace.
func (l *Lab) setUpServices(ctx context.Context, m *policy.Manifests) error {
	svcs, notes := planServices(m, func(a netip.Addr) *Endpoint {
		if ep := l.byAddr[a]; ep != nil && ep.Kind != KindNode {
			return ep
		}
		return nil
	})
	l.notes = append(l.notes, notes...)
	l.services = svcs
	l.svcByAddr = map[netip.Addr]*Service{}
	for i := range l.services {
		s := &l.services[i]
		for _, a := range s.ClusterIPs {
			if owner, taken := l.byAddr[a]; taken {
				return fmt.Errorf("%w: Service %s: ClusterIP %s is already %s's", ErrPlan, s.Name, a, owner.Name)
			}
			l.svcByAddr[a] = s
		}
	}
	for _, n := range l.nodes {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("build lab: %w", err)
		}
		if err := l.programServices(ctx, n); err != nil {
			return err
		}
		if err := l.routeClusterIPs(n); err != nil {
			return err
		}
	}
	return nil
}

// routeClusterIPs gives a node a route to every ClusterIP (out of its
// loopback), so that the node's own connections to a Service pass the
// routing decision that comes before the nat OUTPUT chain, as a real
// node's default route lets them; the DNAT then reroutes them to the
// backend. Packets from pods are DNATed before routing and never use it.
func (l *Lab) routeClusterIPs(n *Node) error {
	if len(l.svcByAddr) == 0 {
		return nil
	}
	h, err := n.ep.NS.Handle()
	if err != nil {
		return fmt.Errorf("route ClusterIPs: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("route ClusterIPs: find lo: %w", err)
	}
	for _, s := range l.services {
		for _, a := range s.ClusterIPs {
			r := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: hostNet(a), Scope: netlink.SCOPE_LINK}
			if err := h.RouteReplace(r); err != nil {
				return fmt.Errorf("route ClusterIP %s of Service %s on node %s: %w", a, s.Name, n.name, err)
			}
		}
	}
	return nil
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

func (l *Lab) addEndpoint(ep *Endpoint) {
	l.endpoints = append(l.endpoints, ep)
	l.byName[ep.Name] = ep
	for _, a := range ep.IPs {
		l.byAddr[a] = ep
	}
}

// makeDir creates the lab's directory PREFIX-PID-XXXXXX in os.TempDir(),
// which names the lab, and records the owner in it for [Cleanup].
func (l *Lab) makeDir() error {
	for range 10 {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("make lab name: %w", err)
		}
		id := fmt.Sprintf("%s-%d-%s", l.spec.Prefix, os.Getpid(), hex.EncodeToString(b[:]))
		dir := filepath.Join(os.TempDir(), id)
		err := os.Mkdir(dir, 0o700)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("create lab directory: %w", err)
		}
		l.id, l.dir = id, dir
		if err := writeOwner(dir); err != nil {
			return err
		}
		if err := os.Mkdir(l.ManifestDir(), 0o700); err != nil {
			return fmt.Errorf("create manifest directory: %w", err)
		}
		return nil
	}
	return errors.New("create lab directory: no free name after 10 tries")
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

// ID returns the lab's name, PREFIX-PID-XXXXXX, which starts the names of
// all its namespaces.
func (l *Lab) ID() string { return l.id }

// Dir returns the lab's directory (in os.TempDir()), removed by Close.
func (l *Lab) Dir() string { return l.dir }

// ManifestDir returns the directory the agents read their manifests from.
// Change it with [Lab.Apply], [Lab.WriteManifest] or [Lab.RemoveManifest].
func (l *Lab) ManifestDir() string { return filepath.Join(l.dir, "manifests") }

// NodeName returns the name of the lab's first node (its only one in a
// lab of one node).
func (l *Lab) NodeName() string { return l.nodes[0].name }

// Notes returns what the user should know: manifest notes, where pods
// without a node were placed and what was left out.
func (l *Lab) Notes() []string { return slices.Clone(l.notes) }

// Node returns the first node (the only one in a lab of one node) as an
// endpoint: its namespace and addresses. See [Lab.Nodes] for all of them.
func (l *Lab) Node() *Endpoint { return l.nodes[0].ep }

// Nodes returns the lab's nodes, in [Layout] order: those the pods name,
// by name, then lab-node-K.
func (l *Lab) Nodes() []*Node { return slices.Clone(l.nodes) }

// NodeNamed returns the node with the given name.
func (l *Lab) NodeNamed(name string) (*Node, bool) {
	n, ok := l.nodeByName[name]
	return n, ok
}

// NodeSubnets returns the underlay's subnets (empty in a lab of one node,
// which has no underlay).
func (l *Lab) NodeSubnets() []netip.Prefix { return slices.Clone(l.subnets) }

// Endpoints returns the lab's pods (in the policy table's order), its
// hostNetwork pods and then its outside hosts (in manifest order). The
// caller must not modify them.
func (l *Lab) Endpoints() []*Endpoint { return slices.Clone(l.endpoints) }

// Endpoint returns the endpoint with the given name ("namespace/pod", an
// OutsideHost's name, "node" for the first node, "Node NAME" for any
// node), or the one that owns the given address (a node's address gives
// the node). A Service's ClusterIP, or "Service namespace/name", gives the
// Service as an endpoint of kind [KindService] (a probe destination only).
func (l *Lab) Endpoint(name string) (*Endpoint, bool) {
	if name == NodeEndpoint {
		return l.nodes[0].ep, true
	}
	if n, ok := strings.CutPrefix(name, nodePrefix); ok {
		if node, ok := l.nodeByName[n]; ok {
			return node.ep, true
		}
	}
	if ep, ok := l.byName[name]; ok {
		return ep, true
	}
	if n, ok := strings.CutPrefix(name, "Service "); ok {
		name = n
	} else if a, err := netip.ParseAddr(name); err == nil {
		if ep, ok := l.byAddr[a.Unmap()]; ok {
			return ep, true
		}
	}
	if s, ok := l.Service(name); ok {
		return &Endpoint{Name: s.String(), Kind: KindService, IPs: s.ClusterIPs, Service: s}, true
	}
	return nil, false
}

// Namespaces returns the names of the lab's namespaces, in creation order:
// the underlay (several nodes), the nodes, the pods, the outside.
func (l *Lab) Namespaces() []string {
	out := make([]string, 0, len(l.created))
	for _, ns := range l.created {
		out = append(out, ns.Name())
	}
	return out
}

// Table returns the policy table compiled from the agents' current
// manifests.
func (l *Lab) Table() *table.Table { return l.table.Load() }

// Close stops every agent (SIGTERM, then SIGKILL after the stop timeout),
// closes every server and stream, deletes every namespace and removes the
// lab's directory. It returns all errors, keeps going after each, and is
// safe to call more than once.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		var errs []error
		if err := l.StopAgent(unix.SIGTERM); err != nil && !errors.Is(err, ErrNoAgent) {
			errs = append(errs, err)
		}
		l.closeStreams()
		if err := l.servers.close(); err != nil {
			errs = append(errs, err)
		}
		for i := len(l.created) - 1; i >= 0; i-- {
			if err := l.created[i].Delete(); err != nil {
				errs = append(errs, err)
			}
		}
		if l.dir != "" {
			if err := unmountUnder(l.dir); err != nil {
				errs = append(errs, err)
			}
			if err := os.RemoveAll(l.dir); err != nil {
				errs = append(errs, fmt.Errorf("remove lab directory: %w", err))
			}
		}
		if len(errs) > 0 {
			l.closeErr = fmt.Errorf("close lab %s: %w", l.id, errors.Join(errs...))
		}
	})
	return l.closeErr
}
