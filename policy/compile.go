package policy

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/podgate/podgate/internal/addrmap"
	"github.com/podgate/podgate/policy/table"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
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
	start := time.Now()
	b := &builder{
		opts:      opts,
		spec:      &table.Spec{},
		nsIndex:   make(map[string]int32),
		idIndex:   make(map[string]int32),
		portNames: make(map[string]int32),
		nsSel:     make(map[string][]int32),
		peerSets:  make(map[string]table.Bitset),
	}
	var errs []error
	errs = append(errs, b.addNamespaces(c.Namespaces)...)
	errs = append(errs, b.addPods(c.Pods)...)
	errs = append(errs, b.addServices(c.Services, c.EndpointSlices)...)
	pols, perrs := b.defaultPolicies(c.Policies)
	errs = append(errs, perrs...)
	errs = append(errs, b.addNodes(c.Nodes)...)
	cps, cerrs := b.clusterPolicies(c)
	errs = append(errs, cerrs...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := b.addPolicies(pols); err != nil {
		return nil, err
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
	return table.New(spec), nil
}

type builder struct {
	spec *table.Spec
	opts Options

	nsNames  []string
	nsLabels []labels.Set
	nsIndex  map[string]int32
	nsIDs    [][]int32 // identities per namespace

	idIndex  map[string]int32
	idLabels []labels.Set

	portNames map[string]int32

	// selected[p] are the identities policy p selects.
	selected [][]int32

	nsSel    map[string][]int32      // namespace selector string -> namespaces
	peerSets map[string]table.Bitset // peer key -> identities

	// compiled[p][dir] are the rules of policy p.
	compiled [][2][]table.Rule

	nodes []nodeInfo
	// cpSelected[p] are the identities cluster policy p selects,
	// cpCompiled[p][dir] its rules.
	cpSelected [][]int32
	cpCompiled [][2][]table.ClusterRule
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

// canonicalLabels is a stable string form of a label set.
func canonicalLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	for _, k := range keys {
		sb.WriteString(k)
		sb.WriteByte(0)
		sb.WriteString(l[k])
		sb.WriteByte(0)
	}
	return sb.String()
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
		if el := b.validatePod(pc); len(el) > 0 {
			errs = append(errs, invalid("Pod", ns, p.Name, el.ToAggregate()))
			continue
		}
		if n := len(ok); n > 0 && ok[n-1].ns == ns && ok[n-1].pod.Name == p.Name {
			errs = append(errs, invalid("Pod", ns, p.Name, errors.New("declared more than once")))
			continue
		}
		ips, _ := podIPs(p)
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
	for _, pp := range ok {
		p, ns := pp.pod, pp.ns
		nsi := b.namespace(ns)
		key := ns + "\x00" + canonicalLabels(p.Labels)
		id, found := b.idIndex[key]
		if !found {
			id = int32(len(spec.Identities))
			b.idIndex[key] = id
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
				spec.Warnings = append(spec.Warnings, fmt.Sprintf("pods %s and %s/%s both have IP %s; the address belongs to %s",
					spec.Endpoints[prev].String(), ns, p.Name, a, spec.Endpoints[prev].String()))
				continue
			}
			ep.IPs = append(ep.IPs, a)
		}
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == "" {
					continue
				}
				proto := cp.Protocol
				ep.NamedPorts = append(ep.NamedPorts, table.NamedPort{
					Name:  b.portName(cp.Name),
					Proto: protocolOf(&proto),
					Port:  uint16(cp.ContainerPort),
				})
			}
		}
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
	var errs []error
	out := make([]*networkingv1.NetworkPolicy, 0, len(nps))
	for _, np := range nps {
		d := DefaultNetworkPolicy(np)
		if el := b.validatePolicy(d); len(el) > 0 {
			errs = append(errs, invalid("NetworkPolicy", d.Namespace, d.Name, el.ToAggregate()))
			continue
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(x, y *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
	})
	for i := 1; i < len(out); i++ {
		if out[i].Namespace == out[i-1].Namespace && out[i].Name == out[i-1].Name {
			errs = append(errs, invalid("NetworkPolicy", out[i].Namespace, out[i].Name, errors.New("declared more than once")))
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

func (b *builder) validatePod(p *corev1.Pod) field.ErrorList {
	if b.opts.Trusted {
		return validatePodPorts(p)
	}
	return validatePod(p)
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

func hasType(np *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	return slices.Contains(np.Spec.PolicyTypes, t)
}

func (b *builder) addPolicies(nps []*networkingv1.NetworkPolicy) error {
	spec := b.spec
	spec.Policies = make([]table.PolicyInfo, len(nps))
	b.selected = make([][]int32, len(nps))
	for pi, np := range nps {
		info := table.PolicyInfo{
			Namespace:  np.Namespace,
			Name:       np.Name,
			Ingress:    hasType(np, networkingv1.PolicyTypeIngress),
			Egress:     hasType(np, networkingv1.PolicyTypeEgress),
			NumIngress: len(np.Spec.Ingress),
			NumEgress:  len(np.Spec.Egress),
		}
		if !info.Ingress && len(np.Spec.Ingress) > 0 {
			spec.Warnings = append(spec.Warnings, fmt.Sprintf("NetworkPolicy %s: spec.ingress is ignored because spec.policyTypes does not include Ingress", info))
		}
		if !info.Egress && len(np.Spec.Egress) > 0 {
			spec.Warnings = append(spec.Warnings, fmt.Sprintf("NetworkPolicy %s: spec.egress is ignored because spec.policyTypes does not include Egress", info))
		}
		spec.Policies[pi] = info
		nsi := b.namespace(np.Namespace)
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			return invalid("NetworkPolicy", np.Namespace, np.Name, fmt.Errorf("spec.podSelector: %w", err))
		}
		for _, id := range b.nsIDs[nsi] {
			if sel.Matches(b.idLabels[id]) {
				b.selected[pi] = append(b.selected[pi], id)
			}
		}
	}
	// Rules are compiled per policy, then copied into the groups of the
	// identities the policy selects.
	compiled := make([][2][]table.Rule, len(nps))
	for pi, np := range nps {
		info := spec.Policies[pi]
		if info.Ingress {
			for ri, r := range np.Spec.Ingress {
				cr, err := b.compileRule(np, table.RuleRef{Policy: int32(pi), Index: int32(ri)}, r.From, r.Ports)
				if err != nil {
					return invalid("NetworkPolicy", np.Namespace, np.Name, fmt.Errorf("spec.ingress[%d]: %w", ri, err))
				}
				compiled[pi][table.Ingress] = append(compiled[pi][table.Ingress], cr)
			}
		}
		if info.Egress {
			for ri, r := range np.Spec.Egress {
				cr, err := b.compileRule(np, table.RuleRef{Policy: int32(pi), Index: int32(ri)}, r.To, r.Ports)
				if err != nil {
					return invalid("NetworkPolicy", np.Namespace, np.Name, fmt.Errorf("spec.egress[%d]: %w", ri, err))
				}
				compiled[pi][table.Egress] = append(compiled[pi][table.Egress], cr)
			}
		}
	}
	b.compiled = compiled
	return nil
}

func (b *builder) compileRule(np *networkingv1.NetworkPolicy, ref table.RuleRef, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (table.Rule, error) {
	r := table.Rule{Ref: ref}
	if len(ports) == 0 {
		r.Ports.All = true
	}
	for _, p := range ports {
		e := table.PortEntry{Proto: protocolOf(p.Protocol), Lo: 0, Hi: 65535, Name: -1}
		switch {
		case p.Port == nil:
		case p.Port.Type == intstr.String:
			e.Name = b.portName(p.Port.StrVal)
		default:
			e.Lo, e.Hi = uint16(p.Port.IntVal), uint16(p.Port.IntVal)
			if p.EndPort != nil {
				e.Hi = uint16(*p.EndPort)
			}
		}
		r.Ports.Entries = append(r.Ports.Entries, e)
	}
	if len(peers) == 0 {
		r.AllPeers = true
		return r, nil
	}
	var sets []table.Bitset
	for i, peer := range peers {
		if peer.IPBlock != nil {
			cidr, err := parseCIDR(peer.IPBlock.CIDR)
			if err != nil {
				return table.Rule{}, fmt.Errorf("peer %d: ipBlock.cidr: %w", i, err)
			}
			blk := table.IPBlock{CIDR: cidr}
			for _, e := range peer.IPBlock.Except {
				ex, err := parseCIDR(e)
				if err != nil {
					return table.Rule{}, fmt.Errorf("peer %d: ipBlock.except: %w", i, err)
				}
				blk.Except = append(blk.Except, ex)
			}
			r.Blocks = append(r.Blocks, blk)
			continue
		}
		set, err := b.peerSet(np.Namespace, peer.NamespaceSelector, peer.PodSelector)
		if err != nil {
			return table.Rule{}, fmt.Errorf("peer %d: %w", i, err)
		}
		sets = append(sets, set)
	}
	switch len(sets) {
	case 0:
	case 1:
		r.Peers = sets[0]
	default:
		r.Peers = table.NewBitset(len(b.spec.Identities))
		for _, s := range sets {
			r.Peers.Or(s)
		}
	}
	return r, nil
}

// peerSet returns the identities a pod/namespace selector peer of a policy
// in namespace ns matches. Results are shared between equal peers.
func (b *builder) peerSet(ns string, nsSel, podSel *metav1.LabelSelector) (table.Bitset, error) {
	var nsKey string
	var namespaces []int32
	if nsSel == nil {
		nsKey = "ns=" + ns
		namespaces = []int32{b.namespace(ns)}
	} else {
		sel, err := metav1.LabelSelectorAsSelector(nsSel)
		if err != nil {
			return nil, fmt.Errorf("namespaceSelector: %w", err)
		}
		nsKey = "sel=" + sel.String()
		var ok bool
		if namespaces, ok = b.nsSel[nsKey]; !ok {
			for i, l := range b.nsLabels {
				if sel.Matches(l) {
					namespaces = append(namespaces, int32(i))
				}
			}
			b.nsSel[nsKey] = namespaces
		}
	}
	var podMatch labels.Selector
	podKey := "*"
	if podSel != nil {
		sel, err := metav1.LabelSelectorAsSelector(podSel)
		if err != nil {
			return nil, fmt.Errorf("podSelector: %w", err)
		}
		podMatch, podKey = sel, sel.String()
	}
	key := nsKey + "\x00" + podKey
	if s, ok := b.peerSets[key]; ok {
		return s, nil
	}
	s := table.NewBitset(len(b.spec.Identities))
	for _, nsi := range namespaces {
		for _, id := range b.nsIDs[nsi] {
			if podMatch == nil || podMatch.Matches(b.idLabels[id]) {
				s.Set(id)
			}
		}
	}
	b.peerSets[key] = s
	return s, nil
}

// buildGroups gives each identity, per direction, the group of rules of
// the policies that select it; identities selected by the same policies
// share one group.
func (b *builder) buildGroups() {
	spec := b.spec
	perID := make([][2][]int32, len(spec.Identities))
	for pi, ids := range b.selected {
		for _, id := range ids {
			if spec.Policies[pi].Ingress {
				perID[id][table.Ingress] = append(perID[id][table.Ingress], int32(pi))
			}
			if spec.Policies[pi].Egress {
				perID[id][table.Egress] = append(perID[id][table.Egress], int32(pi))
			}
		}
	}
	groups := groupIndex{index: make(map[string]int32)}
	for id := range perID {
		for dir := table.Ingress; dir <= table.Egress; dir++ {
			pols := perID[id][dir]
			if len(pols) == 0 {
				continue
			}
			spec.Identities[id].Groups[dir] = groups.get(dir, pols, func() int32 {
				rules := concat(pols, func(p int32) []table.Rule { return b.compiled[p][dir] })
				spec.Groups = append(spec.Groups, table.Group{Policies: pols, Rules: rules})
				return int32(len(spec.Groups) - 1)
			})
		}
	}
}

// groupIndex numbers groups of rules by the list of policies (of one
// direction) they come from, so that identities selected by the same
// policies share one group.
type groupIndex struct {
	index map[string]int32
	key   []byte
}

// get returns the group of pols for dir, calling newGroup to make it (and
// return its number) the first time.
func (g *groupIndex) get(dir table.Direction, pols []int32, newGroup func() int32) int32 {
	g.key = append(g.key[:0], byte(dir))
	for _, p := range pols {
		g.key = binary.LittleEndian.AppendUint32(g.key, uint32(p))
	}
	if i, ok := g.index[string(g.key)]; ok {
		return i
	}
	i := newGroup()
	g.index[string(g.key)] = i
	return i
}

// concat joins the rules of the policies pols, in order.
func concat[T any](pols []int32, rulesOf func(p int32) []T) []T {
	var out []T
	for _, p := range pols {
		out = append(out, rulesOf(p)...)
	}
	return out
}

// protocolOf converts a Kubernetes protocol, which the caller has validated,
// defaulting an empty one to TCP as the API server does.
func protocolOf(p *corev1.Protocol) table.Protocol {
	if p == nil {
		return table.TCP
	}
	switch *p {
	case corev1.ProtocolUDP:
		return table.UDP
	case corev1.ProtocolSCTP:
		return table.SCTP
	}
	return table.TCP
}
