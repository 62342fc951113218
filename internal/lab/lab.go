package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

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
		for _, n := range l.nodes {
			if err := n.closeRelay(); err != nil {
				errs = append(errs, err)
			}
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
