package lab

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// OutsideHost kind, as written in manifests:
//
//	apiVersion: lab.podgate.dev/v1alpha1
//	kind: OutsideHost
//	metadata:
//	  name: testvm
//	spec:
//	  ips: [10.0.0.4]
const (
	OutsideHostAPIVersion = "lab.podgate.dev/v1alpha1"
	OutsideHostKind       = "OutsideHost"
)

// DefaultNodeName is the node name used when no pod names a node and the
// lab has one node. The nodes a lab adds to those the pods name are called
// lab-node-K (K counting from 1 over all nodes).
const DefaultNodeName = "lab-node"

// Default node subnets of a lab of several nodes ([Spec.NodeSubnets]): the
// first /24 (/64) from these on that holds no address of the manifests.
var (
	DefaultNodeSubnet4 = netip.MustParsePrefix("172.18.0.0/24")
	DefaultNodeSubnet6 = netip.MustParsePrefix("fd00:18::/64")
)

// ErrPlan is wrapped by the errors [Plan] returns for manifests the lab
// cannot build.
var ErrPlan = errors.New("cannot plan lab")

// Kind says what an [Endpoint] is.
type Kind uint8

// Endpoint kinds.
const (
	// KindPod is a pod, in its own namespace.
	KindPod Kind = iota
	// KindOutside is an address beyond the nodes (an OutsideHost), in the
	// outside namespace.
	KindOutside
	// KindNode is a node itself (its namespace and addresses).
	KindNode
	// KindService is a Service's ClusterIPs, as a probe destination: the
	// node DNATs connections to one of its backends ([Lab.Services]).
	KindService
	// KindHostNetwork is a hostNetwork pod: it lives in its node's
	// namespace with its node's addresses, so policy sees it as that node.
	KindHostNetwork
)

// String returns "pod", "outside", "node", "service" or "hostnetwork".
func (k Kind) String() string {
	switch k {
	case KindPod:
		return "pod"
	case KindOutside:
		return "outside"
	case KindNode:
		return "node"
	case KindService:
		return "service"
	case KindHostNetwork:
		return "hostnetwork"
	}
	return fmt.Sprintf("kind-%d", uint8(k))
}

// host reports whether an endpoint of kind k sends from a node's own
// addresses (the node, or a hostNetwork pod).
func (k Kind) host() bool { return k == KindNode || k == KindHostNetwork }

// Endpoint is a probe source or destination of a lab: a pod, an outside
// host, a node or a hostNetwork pod.
type Endpoint struct {
	// Name is "namespace/name" for pods and hostNetwork pods, the
	// OutsideHost's name (or "namespace/name" when it has a namespace) for
	// outside hosts, and for a node [NodeEndpoint] in a lab of one node,
	// "Node NAME" in a lab of several.
	Name string
	Kind Kind
	// Node is the name of the node the endpoint runs on (pods,
	// hostNetwork pods, nodes); empty for outside hosts and Services.
	Node string
	// IPs are the endpoint's addresses, the primary one (the first of its
	// family) first.
	IPs []netip.Addr
	// NS is the network namespace the endpoint's sockets live in: the
	// pod's, the outside one or the node's. It is nil in a [Layout].
	NS *netns.Namespace
	// HostIf is the interface in the node namespace that leads to the
	// endpoint: the host end of a pod's veth, or the node's uplink.
	HostIf string
	// Service is the Service of an endpoint of kind [KindService], and
	// nil for the others.
	Service *Service
}

// NodeEndpoint is the name of the node as a probe source in a lab of one
// node; in a lab of several it names the first node.
const NodeEndpoint = "node"

// nodePrefix starts the endpoint name of a node in a lab of several nodes:
// "Node NAME".
const nodePrefix = "Node "

// PlanOptions say what to build besides the manifests (see [Spec]).
type PlanOptions struct {
	// NodeName, if set, builds this node alone: pods of other nodes are
	// left out, pods without spec.nodeName are placed on it.
	NodeName string
	// Nodes is how many nodes to build; 0 means as many as the pods name,
	// at least one. Pods without spec.nodeName are spread round-robin.
	Nodes int
	// NodeIPs are the addresses of the node of a lab of one node.
	NodeIPs []netip.Addr
	// NodeSubnets are the underlay subnets of a lab of several nodes, at
	// most one per family.
	NodeSubnets []netip.Prefix
}

// NodeLayout is one node of a [Layout].
type NodeLayout struct {
	Name string
	// IPs are the node's own addresses, at most one per family.
	IPs []netip.Addr
	// PodCIDRs are the prefixes (one per family at most) that hold all of
	// the node's pods and nothing else of the lab: the other nodes route
	// them to this node. Pods outside them are routed one by one.
	PodCIDRs []netip.Prefix
}

// Layout is what a lab built from manifests consists of, decided without
// touching the kernel.
type Layout struct {
	// Nodes are the nodes the pods name, by name, then those no pod
	// names (lab-node-K).
	Nodes []NodeLayout
	// Pods are the pods that take part in policy, in the table's order
	// (namespace, name), each with its Node.
	Pods []Endpoint
	// HostNetwork are the hostNetwork pods, by namespace and name, each
	// with its Node and that node's addresses.
	HostNetwork []Endpoint
	// Outside are the OutsideHosts, in manifest order.
	Outside []Endpoint
	// NodeSubnets are the underlay's subnets (labs of several nodes).
	NodeSubnets []netip.Prefix
	// Notes explain what was placed or left out (pods on other nodes,
	// pods without addresses or node).
	Notes []string
}

// Node returns the node with the given name, or nil.
func (lay *Layout) Node(name string) *NodeLayout {
	for i := range lay.Nodes {
		if lay.Nodes[i].Name == name {
			return &lay.Nodes[i]
		}
	}
	return nil
}

// outsideHost is the manifest form of an OutsideHost.
type outsideHost struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   json.RawMessage `json:"metadata"`
	Spec       struct {
		IPs []string `json:"ips"`
	} `json:"spec"`
}

// Plan decides the lab's layout from loaded manifests and their compiled
// table (see [PlanOptions]):
//
//   - the nodes: the one o.NodeName names, or every node the pods name
//     (spec.nodeName of pods that take part in policy and of hostNetwork
//     pods) plus lab-node-K up to o.Nodes;
//   - the pods of each node: by spec.nodeName, and those without one
//     round-robin over the nodes in [Layout.Nodes] order;
//   - the hostNetwork pods (on their node, with its addresses) and the
//     outside hosts;
//   - the nodes' addresses: with one node o.NodeIPs, or the first free
//     address of each pod family's /24 or /64 (the node has no underlay);
//     with several, the first free addresses of the node subnets
//     (o.NodeSubnets, or from [DefaultNodeSubnet4] and [DefaultNodeSubnet6]
//     on, the first /24 or /64 that holds no address of the manifests), in
//     node order;
//   - with several nodes, each node's pod CIDRs.
func Plan(m *policy.Manifests, t *table.Table, o PlanOptions) (*Layout, error) {
	if o.Nodes < 0 {
		return nil, fmt.Errorf("%w: %d nodes: must not be negative", ErrPlan, o.Nodes)
	}
	if o.NodeName != "" && o.Nodes > 1 {
		return nil, fmt.Errorf("%w: node name %q builds one node, not %d", ErrPlan, o.NodeName, o.Nodes)
	}
	eps := t.Endpoints()
	hostPods := hostNetworkPods(m)
	names, err := nodeNames(eps, hostPods, o)
	if err != nil {
		return nil, err
	}
	single := o.NodeName != ""
	lay := &Layout{}
	rr := 0
	// place returns the node of a pod, or false when it is left out.
	place := func(what, node string) (string, bool) {
		switch {
		case node == "":
			n := names[rr%len(names)]
			rr++
			lay.Notes = append(lay.Notes, fmt.Sprintf("pod %s has no spec.nodeName: placed on node %s", what, n))
			return n, true
		case !single || node == names[0]:
			return node, true
		}
		lay.Notes = append(lay.Notes, fmt.Sprintf("pod %s is on node %s, not %s: skipped", what, node, names[0]))
		return "", false
	}

	taken := map[netip.Addr]string{}
	for i := range eps {
		e := &eps[i]
		for _, a := range e.IPs {
			taken[a] = e.String()
		}
		node, ok := place(e.String(), e.NodeName)
		if !ok {
			continue
		}
		lay.Pods = append(lay.Pods, Endpoint{Name: e.String(), Kind: KindPod, Node: node, IPs: slices.Clone(e.IPs)})
	}
	for _, p := range m.Pods {
		if !policy.PodTakesPart(p) && !slices.Contains(hostPods, p) {
			lay.Notes = append(lay.Notes, fmt.Sprintf("pod %s/%s takes no part in policy (no address, or terminated): skipped", p.Namespace, p.Name))
		}
	}
	for _, p := range hostPods {
		name := p.Namespace + "/" + p.Name
		if node, ok := place(name, p.Spec.NodeName); ok {
			lay.HostNetwork = append(lay.HostNetwork, Endpoint{Name: name, Kind: KindHostNetwork, Node: node})
		}
	}
	if len(lay.Pods) == 0 {
		if len(names) == 1 {
			return nil, fmt.Errorf("%w: no pods with addresses on node %q", ErrPlan, names[0])
		}
		return nil, fmt.Errorf("%w: no pods with addresses", ErrPlan)
	}

	var errs []error
	for _, o := range m.Other {
		if o.Kind != OutsideHostKind {
			continue
		}
		ep, err := parseOutsideHost(o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, a := range ep.IPs {
			if owner, dup := taken[a]; dup {
				errs = append(errs, fmt.Errorf("%w: %s: OutsideHost %s: address %s is already %s's", ErrPlan, o.Source, ep.Name, a, owner))
			}
			taken[a] = ep.Name
		}
		lay.Outside = append(lay.Outside, ep)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	if len(names) == 1 {
		if len(o.NodeSubnets) > 0 {
			return nil, fmt.Errorf("%w: node subnets: a lab of one node has no underlay (give node addresses)", ErrPlan)
		}
		ips, err := singleNodeIPs(lay.Pods, o.NodeIPs, taken)
		if err != nil {
			return nil, err
		}
		lay.Nodes = []NodeLayout{{Name: names[0], IPs: ips}}
	} else {
		if len(o.NodeIPs) > 0 {
			return nil, fmt.Errorf("%w: node addresses: only for a lab of one node (give node subnets)", ErrPlan)
		}
		for _, s := range m.Services {
			for _, ip := range s.Spec.ClusterIPs {
				if a, err := netip.ParseAddr(ip); err == nil {
					if _, dup := taken[a.Unmap()]; !dup {
						taken[a.Unmap()] = "Service " + s.Namespace + "/" + s.Name
					}
				}
			}
		}
		if err := lay.planUnderlay(names, o.NodeSubnets, taken); err != nil {
			return nil, err
		}
	}
	for i := range lay.HostNetwork {
		h := &lay.HostNetwork[i]
		h.IPs = slices.Clone(lay.Node(h.Node).IPs)
		if p := hostPods[slices.IndexFunc(hostPods, func(p *corev1.Pod) bool { return p.Namespace+"/"+p.Name == h.Name })]; len(p.Status.PodIPs) > 0 {
			var given []netip.Addr
			for _, ip := range p.Status.PodIPs {
				if a, err := netip.ParseAddr(ip.IP); err == nil {
					given = append(given, a.Unmap())
				}
			}
			if !sameAddrs(given, h.IPs) {
				lay.Notes = append(lay.Notes, fmt.Sprintf("hostNetwork pod %s: status.podIPs %v are not its node's addresses: it has %v, those of node %s", h.Name, given, h.IPs, h.Node))
			}
		}
	}
	return lay, nil
}

// sameAddrs reports whether a and b hold the same addresses.
func sameAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// hostNetworkPods returns the hostNetwork pods of m that are not
// terminated, by namespace and name.
func hostNetworkPods(m *policy.Manifests) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range m.Pods {
		if p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *corev1.Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// nodeNames returns the lab's nodes: o.NodeName alone, or the nodes the
// pods name, by name, and then lab-node-K up to o.Nodes; DefaultNodeName
// for a lab of one node that no pod names.
func nodeNames(eps []table.Endpoint, hostPods []*corev1.Pod, o PlanOptions) ([]string, error) {
	if o.NodeName != "" {
		return []string{o.NodeName}, nil
	}
	var names []string
	add := func(n string) {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	for i := range eps {
		add(eps[i].NodeName)
	}
	for _, p := range hostPods {
		add(p.Spec.NodeName)
	}
	slices.Sort(names)
	n := o.Nodes
	if n == 0 {
		n = max(len(names), 1)
	}
	if n < len(names) {
		return nil, fmt.Errorf("%w: the pods are on %d nodes (%s): cannot build them on %d (or build one of them alone by name)", ErrPlan, len(names), strings.Join(names, ", "), n)
	}
	if len(names) == 0 && n == 1 {
		return []string{DefaultNodeName}, nil
	}
	for k := len(names) + 1; len(names) < n; k++ {
		if name := fmt.Sprintf("%s-%d", DefaultNodeName, k); !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// singleNodeIPs returns the addresses of the node of a lab of one node:
// the given ones (checked), or the first free address of the /24 (/64) of
// the first pod address of each family.
func singleNodeIPs(pods []Endpoint, given []netip.Addr, taken map[netip.Addr]string) ([]netip.Addr, error) {
	var out []netip.Addr
	if len(given) > 0 {
		seen := map[bool]bool{}
		for _, a := range given {
			a = a.Unmap()
			if !unicast(a) {
				return nil, fmt.Errorf("%w: node address %v: want a unicast address", ErrPlan, a)
			}
			if seen[a.Is4()] {
				return nil, fmt.Errorf("%w: node addresses: at most one per IP family", ErrPlan)
			}
			seen[a.Is4()] = true
			if owner, dup := taken[a]; dup {
				return nil, fmt.Errorf("%w: node address %s is already %s's", ErrPlan, a, owner)
			}
			out = append(out, a)
		}
		return out, nil
	}
	for _, is4 := range []bool{true, false} {
		first := firstOfFamily(pods, is4)
		if !first.IsValid() {
			continue
		}
		a, ok := firstFree(first, taken)
		if !ok {
			return nil, fmt.Errorf("%w: no free node address next to %s; give one", ErrPlan, first)
		}
		out = append(out, a)
	}
	return out, nil
}

// unicast reports whether a can be a host's address.
func unicast(a netip.Addr) bool {
	return a.IsValid() && a.Zone() == "" && !a.IsLoopback() && !a.IsMulticast() && !a.IsLinkLocalUnicast() && !a.IsUnspecified()
}

// firstOfFamily returns the first address of the family among eps.
func firstOfFamily(eps []Endpoint, is4 bool) netip.Addr {
	for _, p := range eps {
		for _, a := range p.IPs {
			if a.Is4() == is4 {
				return a
			}
		}
	}
	return netip.Addr{}
}

func parseOutsideHost(o policy.Object) (Endpoint, error) {
	name := o.Name
	if o.Namespace != "" {
		name = o.Namespace + "/" + o.Name
	}
	fail := func(format string, args ...any) (Endpoint, error) {
		return Endpoint{}, fmt.Errorf("%w: %s: OutsideHost %s: %s", ErrPlan, o.Source, name, fmt.Sprintf(format, args...))
	}
	if o.APIVersion != OutsideHostAPIVersion {
		return fail("apiVersion: Unsupported value: %q: supported values: %q", o.APIVersion, OutsideHostAPIVersion)
	}
	if o.Name == "" {
		return fail("metadata.name: Required value")
	}
	var h outsideHost
	dec := json.NewDecoder(bytes.NewReader(o.JSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return fail("%v", err)
	}
	if len(h.Spec.IPs) == 0 {
		return fail("spec.ips: Required value")
	}
	ep := Endpoint{Name: name, Kind: KindOutside}
	for i, s := range h.Spec.IPs {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return fail("spec.ips[%d]: Invalid value: %q: must be an IP address", i, s)
		}
		a = a.Unmap()
		if err := checkOutsideAddr(a); err != nil {
			return fail("spec.ips[%d]: Invalid value: %q: %v", i, s, err)
		}
		if slices.Contains(ep.IPs, a) {
			return fail("spec.ips[%d]: Duplicate value: %q", i, s)
		}
		ep.IPs = append(ep.IPs, a)
	}
	return ep, nil
}
