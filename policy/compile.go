package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/podgate/podgate/internal/addrmap"
	"github.com/podgate/podgate/policy/table"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Cluster holds the objects a [table.Table] is compiled from. Compile reads them
// and never modifies them; the table may keep references to their label
// maps, so callers must not modify those afterwards either (informer caches
// and [Load] results satisfy this).
type Cluster struct {
	Namespaces []*corev1.Namespace
	Pods       []*corev1.Pod
	Policies   []*networkingv1.NetworkPolicy
	// Services and EndpointSlices (optional) let egress to a Service's
	// ClusterIP be judged against the Service's ready backends, as after
	// kube-proxy's DNAT. EndpointSlices belong to the Service named by
	// their kubernetes.io/service-name label in their namespace.
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	// ClusterNetworkPolicies (policy.networking.k8s.io v1beta1; a v1alpha2
	// object converts with [ClusterNetworkPolicyFromV1alpha2]) and the
	// v1alpha1 AdminNetworkPolicies and BaselineAdminNetworkPolicies are
	// the cluster policies of the Admin and Baseline tiers (optional).
	ClusterNetworkPolicies       []*npav1beta1.ClusterNetworkPolicy
	AdminNetworkPolicies         []*npav1alpha1.AdminNetworkPolicy
	BaselineAdminNetworkPolicies []*npav1alpha1.BaselineAdminNetworkPolicy
	// Nodes (optional) are what the nodes peers of cluster policies
	// select: their labels and the IP addresses of their status.
	Nodes []*corev1.Node
}

// ErrInvalid is wrapped by the errors [Compile] and [Load] return for
// objects that fail validation.
var ErrInvalid = errors.New("invalid object")

// defaultNamespace is where objects without metadata.namespace live, as
// with kubectl's default context.
const defaultNamespace = "default"

func namespaceOf(m *metav1.ObjectMeta) string {
	if m.Namespace == "" {
		return defaultNamespace
	}
	return m.Namespace
}

// DefaultNetworkPolicy returns a copy of np with the API server's defaults
// applied: the namespace defaults to "default", policyTypes to Ingress plus
// Egress when the policy has egress rules, and each port's protocol to TCP.
func DefaultNetworkPolicy(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	out := np.DeepCopy()
	out.Namespace = namespaceOf(&out.ObjectMeta)
	if len(out.Spec.PolicyTypes) == 0 {
		out.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(out.Spec.Egress) > 0 {
			out.Spec.PolicyTypes = append(out.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
	tcp := corev1.ProtocolTCP
	for i := range out.Spec.Ingress {
		for j := range out.Spec.Ingress[i].Ports {
			if out.Spec.Ingress[i].Ports[j].Protocol == nil {
				out.Spec.Ingress[i].Ports[j].Protocol = &tcp
			}
		}
	}
	for i := range out.Spec.Egress {
		for j := range out.Spec.Egress[i].Ports {
			if out.Spec.Egress[i].Ports[j].Protocol == nil {
				out.Spec.Egress[i].Ports[j].Protocol = &tcp
			}
		}
	}
	return out
}

// PodTakesPart reports whether policy applies to a pod at all: it has an
// address, is not hostNetwork (its traffic is the node's) and has not
// terminated.
func PodTakesPart(pod *corev1.Pod) bool {
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false
	}
	return pod.Status.PodIP != "" || len(pod.Status.PodIPs) > 0
}

// Options change how [CompileWith] works.
type Options struct {
	// Trusted says the objects were validated already, by the API server:
	// names, labels and selectors are then not checked again (the regular
	// expressions cost most of a compilation). Addresses, CIDRs, ports and
	// selectors are still parsed, and a malformed value is still an error,
	// never a panic. Cluster policies are not validated either: what
	// cannot be compiled in them (a selector, a CIDR, a peer or protocol
	// entry of a newer CRD) fails closed as the API asks (an Accept rule
	// ignores it, a Deny or Pass rule denies everything), with a warning,
	// so that one such object does not stop the table from following the
	// cluster.
	Trusted bool
}

// Compile validates and compiles a cluster into a table. Invalid objects
// make it fail with an error wrapping [ErrInvalid] that names every invalid
// object and field; problems that do not stop it (two pods with one IP,
// rules that policyTypes disables) are in [table.Table.Warnings].
func Compile(c *Cluster) (*table.Table, error) { return CompileWith(c, Options{}) }

// CompileWith is [Compile] with options.
func CompileWith(c *Cluster, opts Options) (*table.Table, error) {
	t, _, err := compile(c, opts)
	return t, err
}

// compile is [CompileWith]; it also returns the builder, which a
// [Compiler] keeps to derive later tables from.
func compile(c *Cluster, opts Options) (*table.Table, *builder, error) {
	start := time.Now()
	b := &builder{
		opts:      opts,
		spec:      &table.Spec{},
		nsIndex:   make(map[string]int32),
		idIndex:   make(map[string]int32),
		portNames: make(map[string]int32),
		nsSel:     make(map[string][]int32),
		peerSets:  make(map[string]int32),
	}
	var errs []error
	errs = append(errs, b.addNamespaces(c.Namespaces)...)
	b.declaredNS = int32(len(b.nsNames))
	errs = append(errs, b.addPods(c.Pods)...)
	errs = append(errs, b.addServices(c.Services, c.EndpointSlices)...)
	pols, perrs := b.defaultPolicies(c.Policies)
	errs = append(errs, perrs...)
	errs = append(errs, b.addNodes(c.Nodes)...)
	cps, cerrs := b.clusterPolicies(c)
	errs = append(errs, cerrs...)
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	if err := b.addPolicies(pols); err != nil {
		return nil, nil, err
	}
	b.addClusterPolicies(cps)
	b.buildGroups()
	b.buildTierGroups(cps)
	spec := b.spec
	spec.Namespaces = b.nsNames
	spec.Stats.Namespaces = len(b.nsNames)
	spec.Stats.Pods = len(c.Pods)
	spec.Stats.Endpoints = len(spec.Endpoints)
	spec.Stats.Identities = len(spec.Identities)
	spec.Stats.Policies = len(spec.Policies)
	spec.Stats.Groups = len(spec.Groups)
	spec.Stats.Duration = time.Since(start)
	for _, g := range spec.Groups {
		spec.Stats.Rules += len(g.Rules)
	}
	spec.Stats.ClusterPolicies = len(spec.ClusterPolicies)
	spec.Stats.ClusterRules = len(spec.ClusterRules)
	spec.Stats.Nodes = len(b.nodes)
	return table.New(spec), b, nil
}

type builder struct {
	spec *table.Spec
	opts Options

	nsNames  []string
	nsLabels []labels.Set
	nsIndex  map[string]int32
	nsIDs    [][]int32 // identities per namespace (while compiling)
	// declaredNS is the number of namespaces that Namespace objects
	// declare; they come first in nsNames.
	declaredNS int32

	idIndex  map[string]int32
	idLabels []labels.Set

	portNames map[string]int32

	// selected[p] are the identities policy p selects, polSel[p] its
	// pod selector and polNS[p] its namespace.
	selected [][]int32
	polSel   []labels.Selector
	polNS    []int32

	nsSel map[string][]int32 // namespace selector string -> namespaces
	// labelKeys and labelValues remember which label keys and values of
	// trusted selectors are valid.
	labelKeys, labelValues map[string]bool
	peerSets               map[string]int32 // peer key -> index into psets
	psets                  []peerSetInfo

	// compiled[p][dir] are the rules of policy p, compiledPeers[p][dir]
	// the peer sets that each rule's Peers are the union of.
	compiled      [][2][]table.Rule
	compiledPeers [][2][][]int32
	// groups numbers the rule groups (spec.Groups) by their policies;
	// groupDir is the direction of each.
	groups   groupIndex
	groupDir []table.Direction
	// podWarnings is set when pod addresses made warnings (two pods with
	// one address, a pod with a ClusterIP).
	podWarnings bool

	nodes []nodeInfo
	// cpSelected[p] are the identities cluster policy p selects,
	// cpCompiled[p][dir] its rules.
	cpSelected [][]int32
	cpCompiled [][2][]table.ClusterRule
	// cpSubject[p] is the peer set of cluster policy p's subject, or -1
	// when it selects no pod; cpPeers[p][dir] are the peer sets of each
	// of its rules.
	cpSubject []int32
	cpPeers   [][2][][]int32
	// tierGroups numbers spec.TierGroups; tierGroupDir is the direction
	// of each.
	tierGroups   groupIndex
	tierGroupDir []table.Direction
}

func invalid(kind, ns, name string, err error) error {
	if ns != "" {
		return fmt.Errorf("%s %s/%s: %w: %w", kind, ns, name, ErrInvalid, err)
	}
	return fmt.Errorf("%s %s: %w: %w", kind, name, ErrInvalid, err)
}

func (b *builder) namespace(name string) int32 {
	if i, ok := b.nsIndex[name]; ok {
		return i
	}
	i := int32(len(b.nsNames))
	b.nsIndex[name] = i
	b.nsNames = append(b.nsNames, name)
	b.nsLabels = append(b.nsLabels, labels.Set{namespaceNameLabel: name})
	b.nsIDs = append(b.nsIDs, nil)
	return i
}

func (b *builder) addNamespaces(nss []*corev1.Namespace) []error {
	var errs []error
	sorted := slices.Clone(nss)
	slices.SortFunc(sorted, func(a, b *corev1.Namespace) int { return cmp.Compare(a.Name, b.Name) })
	for _, ns := range sorted {
		if el := b.validateNamespace(ns); len(el) > 0 {
			errs = append(errs, invalid("Namespace", "", ns.Name, el.ToAggregate()))
			continue
		}
		if _, dup := b.nsIndex[ns.Name]; dup {
			errs = append(errs, invalid("Namespace", "", ns.Name, errors.New("declared more than once")))
			continue
		}
		i := b.namespace(ns.Name)
		set := make(labels.Set, len(ns.Labels)+1)
		for k, v := range ns.Labels {
			set[k] = v
		}
		// The API server always sets this label to the name.
		set[namespaceNameLabel] = ns.Name
		b.nsLabels[i] = set
	}
	return errs
}

// appendIdentityKey appends the identity key of a pod, its namespace and
// a stable form of its labels, to buf; keys is scratch space for sorting
// the label keys, returned for reuse.
func appendIdentityKey(buf []byte, keys []string, ns string, l map[string]string) ([]byte, []string) {
	keys = keys[:0]
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	buf = append(buf, ns...)
	buf = append(buf, 0)
	for _, k := range keys {
		buf = append(buf, k...)
		buf = append(buf, 0)
		buf = append(buf, l[k]...)
		buf = append(buf, 0)
	}
	return buf, keys
}

func (b *builder) addPods(pods []*corev1.Pod) []error {
	var errs []error
	sorted := make([]*corev1.Pod, 0, len(pods))
	for _, p := range pods {
		if PodTakesPart(p) {
			sorted = append(sorted, p)
		}
	}
	slices.SortFunc(sorted, func(x, y *corev1.Pod) int {
		return cmp.Or(cmp.Compare(namespaceOf(&x.ObjectMeta), namespaceOf(&y.ObjectMeta)), cmp.Compare(x.Name, y.Name))
	})
	// First pass: validate and parse addresses, to size the index.
	type parsed struct {
		pod *corev1.Pod
		ns  string
		ips []netip.Addr
	}
	ok := make([]parsed, 0, len(sorted))
	n4, n6 := 0, 0
	for _, p := range sorted {
		ns := namespaceOf(&p.ObjectMeta)
		pc := p
		if p.Namespace == "" {
			pc = p.DeepCopy()
			pc.Namespace = ns
		}
		ips, el := podIPs(p)
		if el = append(b.validatePod(pc), el...); len(el) > 0 {
			errs = append(errs, invalid("Pod", ns, p.Name, el.ToAggregate()))
			continue
		}
		if n := len(ok); n > 0 && ok[n-1].ns == ns && ok[n-1].pod.Name == p.Name {
			errs = append(errs, invalid("Pod", ns, p.Name, errors.New("declared more than once")))
			continue
		}
		for _, a := range ips {
			if a.Is4() {
				n4++
			} else {
				n6++
			}
		}
		ok = append(ok, parsed{p, ns, ips})
	}
	spec := b.spec
	spec.ByAddr = addrmap.New[int32](n4, n6)
	spec.Endpoints = make([]table.Endpoint, 0, len(ok))
	var keyBuf []byte
	var keys []string
	for _, pp := range ok {
		p, ns := pp.pod, pp.ns
		nsi := b.namespace(ns)
		keyBuf, keys = appendIdentityKey(keyBuf[:0], keys, ns, p.Labels)
		id, found := b.idIndex[string(keyBuf)]
		if !found {
			id = int32(len(spec.Identities))
			b.idIndex[string(keyBuf)] = id
			spec.Identities = append(spec.Identities, table.Identity{Groups: [2]int32{-1, -1}})
			b.idLabels = append(b.idLabels, labels.Set(p.Labels))
			b.nsIDs[nsi] = append(b.nsIDs[nsi], id)
		}
		ep := table.Endpoint{
			Namespace: ns,
			Name:      p.Name,
			NodeName:  p.Spec.NodeName,
			Labels:    p.Labels,
			Identity:  id,
		}
		idx := int32(len(spec.Endpoints))
		for _, a := range pp.ips {
			if !spec.ByAddr.Insert(a, idx) {
				prev, _ := spec.ByAddr.Get(a)
				b.podWarnings = true
				spec.Warnings = append(spec.Warnings, fmt.Sprintf("pods %s and %s/%s both have IP %s; the address belongs to %s",
					spec.Endpoints[prev].String(), ns, p.Name, a, spec.Endpoints[prev].String()))
				continue
			}
			ep.IPs = append(ep.IPs, a)
		}
		ep.NamedPorts = b.namedPorts(p, ep.NamedPorts)
		spec.Endpoints = append(spec.Endpoints, ep)
	}
	return errs
}

// resolve returns the index of the pod that owns a, or -1.
func (b *builder) resolve(a netip.Addr) int32 {
	if i, ok := b.spec.ByAddr.Get(a); ok {
		return i
	}
	return -1
}

// namedPorts appends the named container ports of pod p to ports.
func (b *builder) namedPorts(p *corev1.Pod, ports []table.NamedPort) []table.NamedPort {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == "" {
				continue
			}
			proto := cp.Protocol
			ports = append(ports, table.NamedPort{
				Name:  b.portName(cp.Name),
				Proto: protocolOf(&proto),
				Port:  uint16(cp.ContainerPort),
			})
		}
	}
	return ports
}

func (b *builder) portName(n string) int32 {
	if i, ok := b.portNames[n]; ok {
		return i
	}
	i := int32(len(b.spec.PortNames))
	b.portNames[n] = i
	b.spec.PortNames = append(b.spec.PortNames, n)
	return i
}

func (b *builder) defaultPolicies(nps []*networkingv1.NetworkPolicy) ([]*networkingv1.NetworkPolicy, []error) {
	return defaultAndSort("NetworkPolicy", nps, defaultedNetworkPolicy, b.validatePolicy)
}

// defaultedNetworkPolicy is [DefaultNetworkPolicy] without the copy when
// np needs no default, as objects from the API server never do: compiling
// only reads the policies it defaulted.
func defaultedNetworkPolicy(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	if np.Namespace == "" || len(np.Spec.PolicyTypes) == 0 {
		return DefaultNetworkPolicy(np)
	}
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Protocol == nil {
				return DefaultNetworkPolicy(np)
			}
		}
	}
	for _, r := range np.Spec.Egress {
		for _, p := range r.Ports {
			if p.Protocol == nil {
				return DefaultNetworkPolicy(np)
			}
		}
	}
	return np
}

// defaultAndSort applies the API server's defaults (def) to every object
// of a kind and validates it, and returns the valid ones sorted by
// namespace and name, with an error for every invalid object and every
// object declared more than once.
func defaultAndSort[T metav1.Object](kind string, objs []T, def func(T) T, validate func(T) field.ErrorList) ([]T, []error) {
	var errs []error
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		d := def(o)
		if el := validate(d); len(el) > 0 {
			errs = append(errs, invalid(kind, d.GetNamespace(), d.GetName(), el.ToAggregate()))
			continue
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(x, y T) int {
		return cmp.Or(cmp.Compare(x.GetNamespace(), y.GetNamespace()), cmp.Compare(x.GetName(), y.GetName()))
	})
	for i := 1; i < len(out); i++ {
		if out[i].GetNamespace() == out[i-1].GetNamespace() && out[i].GetName() == out[i-1].GetName() {
			errs = append(errs, invalid(kind, out[i].GetNamespace(), out[i].GetName(), errors.New("declared more than once")))
		}
	}
	return out, errs
}

func (b *builder) validateNamespace(ns *corev1.Namespace) field.ErrorList {
	if b.opts.Trusted {
		return nil
	}
	return validateNamespace(ns)
}

// validatePod checks a pod but not its addresses, which the caller
// parses.
func (b *builder) validatePod(p *corev1.Pod) field.ErrorList {
	el := validateContainerPorts(p)
	if b.opts.Trusted {
		return el
	}
	return append(apimachineryvalidation.ValidateObjectMeta(&p.ObjectMeta, true,
		apimachineryvalidation.NameIsDNSSubdomain, field.NewPath("metadata")), el...)
}

// validatePolicy checks a defaulted policy. Trusted policies are checked
// only for what compiling cannot catch itself: port numbers and ranges,
// which it would otherwise truncate.
func (b *builder) validatePolicy(np *networkingv1.NetworkPolicy) field.ErrorList {
	if !b.opts.Trusted {
		return ValidateNetworkPolicy(np)
	}
	var el field.ErrorList
	spec := field.NewPath("spec")
	for i, r := range np.Spec.Ingress {
		for j := range r.Ports {
			el = append(el, validatePort(&r.Ports[j], spec.Child("ingress").Index(i).Child("ports").Index(j))...)
		}
	}
	for i, r := range np.Spec.Egress {
		for j := range r.Ports {
			el = append(el, validatePort(&r.Ports[j], spec.Child("egress").Index(i).Child("ports").Index(j))...)
		}
	}
	return el
}
