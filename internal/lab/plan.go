package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy"
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

// DefaultNodeName is the node name used when no pod names a node.
const DefaultNodeName = "lab-node"

// ErrPlan is wrapped by the errors [Plan] returns for manifests the lab
// cannot build.
var ErrPlan = errors.New("cannot plan lab")

// Kind says what an [Endpoint] is.
type Kind uint8

// Endpoint kinds.
const (
	// KindPod is a pod of the lab's node, in its own namespace.
	KindPod Kind = iota
	// KindOutside is an address beyond the node (an OutsideHost), in the
	// outside namespace.
	KindOutside
	// KindNode is the node itself (its addresses on the node namespace's loopback).
	KindNode
	// KindService is a Service's ClusterIPs, as a probe destination: the
	// node DNATs connections to one of its backends ([Lab.Services]).
	KindService
)

// String returns "pod", "outside", "node" or "service".
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
	}
	return fmt.Sprintf("kind-%d", uint8(k))
}

// Endpoint is a probe source or destination of a lab: a pod, an outside
// host or the node.
type Endpoint struct {
	// Name is "namespace/name" for pods, the OutsideHost's name (or
	// "namespace/name" when it has a namespace) for outside hosts, and
	// [NodeEndpoint] for the node.
	Name string
	Kind Kind
	// IPs are the endpoint's addresses, the primary one (the first of its
	// family) first.
	IPs []netip.Addr
	// NS is the network namespace the endpoint's sockets live in: the
	// pod's, the outside one or the node's. It is nil in a [Layout].
	NS *netns.Namespace
	// HostIf is the interface in the node namespace that leads to the
	// endpoint: the host end of a pod's veth, or the outside link.
	HostIf string
	// Service is the Service of an endpoint of kind [KindService], and
	// nil for the others.
	Service *Service
}

// NodeEndpoint is the name of the node as a probe source.
const NodeEndpoint = "node"

// Layout is what a lab built from manifests consists of, decided without
// touching the kernel.
type Layout struct {
	// NodeName is the node the lab builds.
	NodeName string
	// Pods are the pods on the node that take part in policy, in the
	// table's order (namespace, name).
	Pods []Endpoint
	// Outside are the OutsideHosts, in manifest order.
	Outside []Endpoint
	// NodeIPs are the node's own addresses.
	NodeIPs []netip.Addr
	// Notes explain what was left out (pods on other nodes, pods without
	// addresses).
	Notes []string
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
// table: the node (nodeName, or the most common spec.nodeName among pods
// with addresses, ties broken by name), its pods, the outside hosts and the
// node's addresses (nodeIPs, or the first free address of each pod family's
// /24 or /64).
func Plan(m *policy.Manifests, t *policy.Table, nodeName string, nodeIPs []netip.Addr) (*Layout, error) {
	eps := t.Endpoints()
	l := &Layout{NodeName: nodeName}
	if l.NodeName == "" {
		l.NodeName = mostCommonNode(eps)
	}
	taken := map[netip.Addr]string{}
	for i := range eps {
		e := &eps[i]
		for _, a := range e.IPs {
			taken[a] = e.String()
		}
		switch {
		case e.NodeName == l.NodeName:
		case e.NodeName == "":
			l.Notes = append(l.Notes, fmt.Sprintf("pod %s has no spec.nodeName: placed on node %s", e, l.NodeName))
		default:
			l.Notes = append(l.Notes, fmt.Sprintf("pod %s is on node %s, not %s: skipped", e, e.NodeName, l.NodeName))
			continue
		}
		l.Pods = append(l.Pods, Endpoint{Name: e.String(), Kind: KindPod, IPs: slices.Clone(e.IPs)})
	}
	for _, p := range m.Pods {
		if !policy.PodTakesPart(p) {
			l.Notes = append(l.Notes, fmt.Sprintf("pod %s/%s takes no part in policy (no address, hostNetwork or terminated): skipped", p.Namespace, p.Name))
		}
	}
	if len(l.Pods) == 0 {
		return nil, fmt.Errorf("%w: no pods with addresses on node %q", ErrPlan, l.NodeName)
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
		l.Outside = append(l.Outside, ep)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	if len(nodeIPs) > 0 {
		seen := map[bool]bool{}
		for _, a := range nodeIPs {
			a = a.Unmap()
			if !a.IsValid() || a.Zone() != "" || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsUnspecified() {
				return nil, fmt.Errorf("%w: node address %v: want a unicast address", ErrPlan, a)
			}
			if seen[a.Is4()] {
				return nil, fmt.Errorf("%w: node addresses: at most one per IP family", ErrPlan)
			}
			seen[a.Is4()] = true
			if owner, dup := taken[a]; dup {
				return nil, fmt.Errorf("%w: node address %s is already %s's", ErrPlan, a, owner)
			}
			l.NodeIPs = append(l.NodeIPs, a)
		}
		return l, nil
	}
	for _, is4 := range []bool{true, false} {
		var first netip.Addr
		for _, p := range l.Pods {
			for _, a := range p.IPs {
				if a.Is4() == is4 {
					first = a
					break
				}
			}
			if first.IsValid() {
				break
			}
		}
		if !first.IsValid() {
			continue
		}
		a, ok := firstFree(first, taken)
		if !ok {
			return nil, fmt.Errorf("%w: no free node address next to %s; give one", ErrPlan, first)
		}
		l.NodeIPs = append(l.NodeIPs, a)
	}
	return l, nil
}

// mostCommonNode returns the most common non-empty nodeName among eps, ties
// broken by name, or DefaultNodeName.
func mostCommonNode(eps []policy.Endpoint) string {
	count := map[string]int{}
	for i := range eps {
		if eps[i].NodeName != "" {
			count[eps[i].NodeName]++
		}
	}
	names := make([]string, 0, len(count))
	for n := range count {
		names = append(names, n)
	}
	sort.Strings(names)
	best, bestN := DefaultNodeName, 0
	for _, n := range names {
		if count[n] > bestN { // names are sorted: ties go to the first
			best, bestN = n, count[n]
		}
	}
	return best
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
		if a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsUnspecified() {
			return fail("spec.ips[%d]: Invalid value: %q: must be a unicast address", i, s)
		}
		if slices.Contains(ep.IPs, a) {
			return fail("spec.ips[%d]: Duplicate value: %q", i, s)
		}
		ep.IPs = append(ep.IPs, a)
	}
	return ep, nil
}
