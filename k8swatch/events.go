package k8swatch

import (
	"cmp"
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/cache"

	"github.com/podgate/podgate/policy"
)

// Informer events: which changes of which objects change the table (the
// rest, such as status-only updates, do not trigger a rebuild), and the
// node's own addresses.

// policyHandler returns the event handler of an informer whose objects
// make up the table: it counts the change, records it (which pod, or
// that a full compile is needed: [APISource.changed]) and triggers a
// rebuild, nothing more. Objects that are not in the table (present false: a pod without
// an address) and updates that do not change what the table is compiled
// from (status conditions, annotations, resyncs) are ignored. A deletion
// may arrive as a cache.DeletedFinalStateUnknown tombstone (the watch
// missed it and a relist found the object gone); its Obj is the last state
// the cache had, so the table was compiled from it.
func (s *APISource) policyHandler(kind string, present func(obj any) bool, changed func(old, cur any) bool) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if present(obj) {
				s.changed(kind, "added", obj)
			} else if kind == "pod" {
				// Not in the table, but counted in its Stats.Pods:
				// noted for the next rebuild, not worth one.
				s.pending.pod(obj)
			}
		},
		UpdateFunc: func(old, cur any) {
			if changed(old, cur) {
				s.changed(kind, "updated", cur)
			}
		},
		DeleteFunc: func(obj any) {
			last := obj
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				last = t.Obj
			}
			if last == nil || present(last) {
				s.changed(kind, "deleted", obj)
			} else if kind == "pod" {
				s.pending.pod(obj)
			}
		},
	}
}

// always is the present function of kinds that are always in the table.
func always(any) bool { return true }

// podPresent reports whether a pod is in the table; objects of other types
// count as present, to be safe.
func podPresent(obj any) bool {
	p, ok := obj.(*corev1.Pod)
	return !ok || policy.PodTakesPart(p)
}

// changed records a change of an object of kind and triggers a rebuild:
// for a pod, which pod, so that the rebuild can update the last table
// for it; for every other kind, that the rebuild must compile everything.
func (s *APISource) changed(kind, what string, obj any) {
	s.pub.event()
	if kind == "pod" {
		s.pending.pod(obj)
	} else {
		s.pending.other()
	}
	s.runner.trigger()
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		key, _ := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		s.log.Debug("policy input changed", "kind", kind, "change", what, "object", key)
	}
}

// maxPendingPods is the number of changed pods beyond which a rebuild
// compiles everything instead of updating the last table pod by pod (a
// relist, a mass rollout): each new identity costs a pass over the
// selectors of its namespace and the peer sets, and copies the groups
// they touch, and the full compile does that once for all.
const maxPendingPods = 1000

// pendingChanges is what changed since a rebuild last read the informer
// caches: the keys of the pods that changed, or that something else
// did, which needs a full compile. Safe for concurrent use.
type pendingChanges struct {
	mu   sync.Mutex
	full bool
	pods map[cache.ObjectName]struct{}
}

func newPendingChanges() *pendingChanges {
	// The first rebuild compiles everything.
	return &pendingChanges{full: true, pods: make(map[cache.ObjectName]struct{})}
}

// pod records a change of the pod obj (or a tombstone of it).
func (p *pendingChanges) pod(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	name, err2 := cache.ParseObjectName(key)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.full:
		// The full compile reads every pod.
	case err != nil || err2 != nil || len(p.pods) >= maxPendingPods:
		p.full = true
		clear(p.pods)
	default:
		p.pods[name] = struct{}{}
	}
}

// other records a change that needs a full compile.
func (p *pendingChanges) other() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.full = true
	clear(p.pods)
}

// take returns what changed and forgets it: full, or the pods that
// changed (sorted). The caller must read the caches after take, so that
// it sees at least the changes it was told about; later ones are
// recorded again.
func (p *pendingChanges) take() (full bool, pods []cache.ObjectName) {
	p.mu.Lock()
	defer p.mu.Unlock()
	full, p.full = p.full, false
	if !full {
		pods = slices.SortedFunc(maps.Keys(p.pods), func(a, b cache.ObjectName) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
	}
	clear(p.pods)
	return full, pods
}

// sameVersion reports whether an update is a resync of an unchanged
// object.
func sameVersion(old, cur any) bool {
	o, err1 := meta.Accessor(old)
	c, err2 := meta.Accessor(cur)
	return err1 == nil && err2 == nil && o.GetResourceVersion() != "" && o.GetResourceVersion() == c.GetResourceVersion()
}

// podChanged reports whether an update changes what [policy.Compile]
// reads of a pod: whether it takes part, its labels, node, addresses and
// named ports.
func podChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*corev1.Pod)
	c, ok2 := cur.(*corev1.Pod)
	if !ok1 || !ok2 {
		return true
	}
	takesPart := policy.PodTakesPart(o)
	if takesPart != policy.PodTakesPart(c) {
		return true
	}
	if !takesPart {
		return false
	}
	return !maps.Equal(o.Labels, c.Labels) ||
		o.Spec.NodeName != c.Spec.NodeName ||
		o.Status.PodIP != c.Status.PodIP ||
		!slices.Equal(o.Status.PodIPs, c.Status.PodIPs) ||
		!slices.EqualFunc(o.Spec.Containers, c.Spec.Containers, func(a, b corev1.Container) bool {
			return slices.Equal(a.Ports, b.Ports)
		})
}

func namespaceChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*corev1.Namespace)
	c, ok2 := cur.(*corev1.Namespace)
	return !ok1 || !ok2 || !maps.Equal(o.Labels, c.Labels)
}

func networkPolicyChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*networkingv1.NetworkPolicy)
	c, ok2 := cur.(*networkingv1.NetworkPolicy)
	return !ok1 || !ok2 || !apiequality.Semantic.DeepEqual(o.Spec, c.Spec)
}

// serviceChanged reports whether an update changes what [policy.Compile]
// reads of a Service: its type, cluster addresses and ports.
func serviceChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*corev1.Service)
	c, ok2 := cur.(*corev1.Service)
	if !ok1 || !ok2 {
		return true
	}
	return o.Spec.Type != c.Spec.Type ||
		o.Spec.ClusterIP != c.Spec.ClusterIP ||
		!slices.Equal(o.Spec.ClusterIPs, c.Spec.ClusterIPs) ||
		!slices.EqualFunc(o.Spec.Ports, c.Spec.Ports, func(a, b corev1.ServicePort) bool {
			return a.Name == b.Name && a.Protocol == b.Protocol && a.Port == b.Port
		})
}

// endpointSlicePresent reports whether an EndpointSlice belongs to a
// Service (the kubernetes.io/service-name label); objects of other types
// count as present, to be safe.
func endpointSlicePresent(obj any) bool {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	return !ok || es.Labels[discoveryv1.LabelServiceName] != ""
}

// endpointSliceChanged reports whether an update changes what
// [policy.Compile] reads of an EndpointSlice: its Service, address type,
// ports, and its endpoints' addresses and readiness (not their other
// conditions, hints, node names or zones).
func endpointSliceChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*discoveryv1.EndpointSlice)
	c, ok2 := cur.(*discoveryv1.EndpointSlice)
	if !ok1 || !ok2 {
		return true
	}
	if !endpointSlicePresent(o) && !endpointSlicePresent(c) {
		return false
	}
	return o.Labels[discoveryv1.LabelServiceName] != c.Labels[discoveryv1.LabelServiceName] ||
		o.AddressType != c.AddressType ||
		!apiequality.Semantic.DeepEqual(o.Ports, c.Ports) ||
		!slices.EqualFunc(o.Endpoints, c.Endpoints, func(a, b discoveryv1.Endpoint) bool {
			return slices.Equal(a.Addresses, b.Addresses) && policy.EndpointReady(&a) == policy.EndpointReady(&b)
		})
}

// nodeHandler follows the agent's own node. Nodes do not take part in the
// table; only the addresses are updated.
func (s *APISource) nodeHandler() cache.ResourceEventHandler {
	mine := func(obj any) bool {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
			if obj == nil {
				_, name, err := cache.SplitMetaNamespaceKey(t.Key)
				return err == nil && name == s.cfg.NodeName
			}
		}
		m, err := meta.Accessor(obj)
		return err == nil && m.GetName() == s.cfg.NodeName
	}
	// With cluster policies, nodes are in the table (nodes peers): a
	// node's labels and addresses matter.
	table := func(kind string, obj any) {
		if s.cluster != nil {
			s.changed("node", kind, obj)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if mine(obj) {
				s.updateNodeAddrs()
			}
			table("added", obj)
		},
		UpdateFunc: func(old, cur any) {
			if mine(cur) {
				s.updateNodeAddrs()
			}
			if nodeChanged(old, cur) {
				table("updated", cur)
			}
		},
		DeleteFunc: func(obj any) {
			if mine(obj) {
				s.updateNodeAddrs()
			}
			table("deleted", obj)
		},
	}
}

// nodeChanged reports whether an update changes what [policy.Compile]
// reads of a node: its labels and addresses.
func nodeChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*corev1.Node)
	c, ok2 := cur.(*corev1.Node)
	return !ok1 || !ok2 || !maps.Equal(o.Labels, c.Labels) || !slices.Equal(o.Status.Addresses, c.Status.Addresses)
}

// updateNodeAddrs reads the node from the cache and publishes its
// addresses if they changed.
func (s *APISource) updateNodeAddrs() {
	if s.cfg.NodeName == "" {
		return
	}
	s.nodeMu.Lock()
	defer s.nodeMu.Unlock()
	var addrs []netip.Addr
	node, err := s.nodes.Get(s.cfg.NodeName)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		s.log.Error("read node from cache", "node", s.cfg.NodeName, "error", err)
		return
	default:
		addrs = nodeAddrs(node)
	}
	if slices.Equal(addrs, s.NodeAddrs()) && s.nodeAddrs.Load() != nil {
		return
	}
	s.nodeAddrs.Store(&addrs)
	s.log.Info("node addresses", "node", s.cfg.NodeName, "addresses", addrs)
	if s.cfg.OnNodeAddrs != nil {
		s.cfg.OnNodeAddrs(addrs)
	}
}

// nodeAddrs returns a node's InternalIP and ExternalIP addresses, without
// duplicates, in the order of its status.
func nodeAddrs(node *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || ip.Zone() != "" {
			continue
		}
		ip = ip.Unmap()
		if !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}
