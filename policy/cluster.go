package policy

import (
	"encoding/json"
	"fmt"

	"github.com/podgate/podgate/policy/table"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Cluster policies: ClusterNetworkPolicy (policy.networking.k8s.io
// v1beta1 and v1alpha2, sigs.k8s.io/network-policy-api) and its v1alpha1
// predecessors AdminNetworkPolicy and BaselineAdminNetworkPolicy. All three
// are read into one internal form, cpolicy, that the compiler uses.

// Kinds of cluster policies, as in manifests.
const (
	KindClusterNetworkPolicy       = "ClusterNetworkPolicy"
	KindAdminNetworkPolicy         = "AdminNetworkPolicy"
	KindBaselineAdminNetworkPolicy = "BaselineAdminNetworkPolicy"
)

// baselineAdminPriority is where the BaselineAdminNetworkPolicy, which has
// no priority field, sits among Baseline-tier ClusterNetworkPolicies: after
// all of them (the highest priority value; at equal priority,
// ClusterNetworkPolicies come first).
const baselineAdminPriority = 1000

// kindOrder breaks priority ties between kinds: ClusterNetworkPolicy
// first.
func kindOrder(kind string) int {
	switch kind {
	case KindClusterNetworkPolicy:
		return 0
	case KindAdminNetworkPolicy:
		return 1
	}
	return 2
}

// cpolicy is a cluster policy of any of the three kinds, in the form the
// compiler reads.
type cpolicy struct {
	kind     string
	name     string
	tier     table.Tier
	priority int32
	subject  cselector
	rules    [2][]crule // per Direction
}

// cselector selects pods: those matching pod (every pod when nil) in the
// namespaces matching ns.
type cselector struct {
	ns, pod *metav1.LabelSelector
}

// crule is one ingress or egress rule of a cluster policy.
type crule struct {
	name   string
	action table.Action
	peers  []cpeer
	// ports is nil when the rule has no ports/protocols: it matches every
	// protocol and port, ICMP included.
	ports []cport
}

// cpeer is one peer of a rule; exactly one field is set, or none (unknown:
// a peer type this version does not know, which fails closed).
type cpeer struct {
	pods     *cselector
	nodes    *metav1.LabelSelector
	networks []string
	domains  []string
}

// cport is one entry of a rule's ports: a protocol with a port range, or a
// named container port of the destination pod (proto 0: the named port's
// own protocol).
type cport struct {
	proto  table.Protocol
	lo, hi uint16
	name   string
}

func (p *cpolicy) String() string { return p.kind + " " + p.name }

// peerFields are the fields of a peer of any kind and version; at most one
// is set in a valid peer. networks and domains are nil when absent.
type peerFields struct {
	namespaces *metav1.LabelSelector
	pods       *cselector
	nodes      *metav1.LabelSelector
	networks   []string
	domains    []string
}

// peer reads the fields as a cpeer: the first one set, or none.
func (f peerFields) peer() cpeer {
	switch {
	case f.namespaces != nil:
		return cpeer{pods: &cselector{ns: f.namespaces}}
	case f.pods != nil:
		return cpeer{pods: f.pods}
	case f.nodes != nil:
		return cpeer{nodes: f.nodes}
	case f.networks != nil:
		return cpeer{networks: f.networks}
	case f.domains != nil:
		return cpeer{domains: f.domains}
	}
	return cpeer{}
}

// address reports whether the peer names addresses rather than pods
// (networks, nodes, domainNames), with which named ports cannot be used.
func (f peerFields) address() bool {
	return f.networks != nil || f.nodes != nil || f.domains != nil
}

func cnpPods(np *npav1beta1.NamespacedPod) *cselector {
	if np == nil {
		return nil
	}
	return &cselector{ns: &np.NamespaceSelector, pod: &np.PodSelector}
}

func alphaPods(np *npav1alpha1.NamespacedPod) *cselector {
	if np == nil {
		return nil
	}
	return &cselector{ns: &np.NamespaceSelector, pod: &np.PodSelector}
}

func cnpIngressPeer(p *npav1beta1.ClusterNetworkPolicyIngressPeer) peerFields {
	return peerFields{namespaces: p.Namespaces, pods: cnpPods(p.Pods)}
}

func cnpEgressPeer(p *npav1beta1.ClusterNetworkPolicyEgressPeer) peerFields {
	return peerFields{namespaces: p.Namespaces, pods: cnpPods(p.Pods), nodes: p.Nodes, networks: cidrStrings(p.Networks), domains: cidrStrings(p.DomainNames)}
}

func alphaIngressPeer(p *npav1alpha1.AdminNetworkPolicyIngressPeer) peerFields {
	return peerFields{namespaces: p.Namespaces, pods: alphaPods(p.Pods)}
}

func anpEgressPeer(p *npav1alpha1.AdminNetworkPolicyEgressPeer) peerFields {
	return peerFields{namespaces: p.Namespaces, pods: alphaPods(p.Pods), nodes: p.Nodes, networks: cidrStrings(p.Networks), domains: cidrStrings(p.DomainNames)}
}

func banpEgressPeer(p *npav1alpha1.BaselineAdminNetworkPolicyEgressPeer) peerFields {
	return peerFields{namespaces: p.Namespaces, pods: alphaPods(p.Pods), nodes: p.Nodes, networks: cidrStrings(p.Networks)}
}

// peers reads a list of peers with the function that gives their fields.
func peers[T any](ps []T, fields func(*T) peerFields) []cpeer {
	out := make([]cpeer, len(ps))
	for i := range ps {
		out[i] = fields(&ps[i]).peer()
	}
	return out
}

// fromClusterNetworkPolicy reads a (validated) ClusterNetworkPolicy.
func fromClusterNetworkPolicy(cnp *npav1beta1.ClusterNetworkPolicy) cpolicy {
	p := cpolicy{kind: KindClusterNetworkPolicy, name: cnp.Name, priority: cnp.Spec.Priority}
	if cnp.Spec.Tier == npav1beta1.BaselineTier {
		p.tier = table.BaselineTier
	}
	p.subject = subjectOf(cnp.Spec.Subject.Namespaces, cnpPods(cnp.Spec.Subject.Pods))
	for i := range cnp.Spec.Ingress {
		r := &cnp.Spec.Ingress[i]
		p.rules[table.Ingress] = append(p.rules[table.Ingress], crule{name: r.Name, action: actionOf(string(r.Action)), ports: fromProtocols(r.Protocols), peers: peers(r.From, cnpIngressPeer)})
	}
	for i := range cnp.Spec.Egress {
		r := &cnp.Spec.Egress[i]
		p.rules[table.Egress] = append(p.rules[table.Egress], crule{name: r.Name, action: actionOf(string(r.Action)), ports: fromProtocols(r.Protocols), peers: peers(r.To, cnpEgressPeer)})
	}
	return p
}

// subjectOf reads a subject: namespaces or pods, or, with neither (a
// subject this version does not know), no pod.
func subjectOf(namespaces *metav1.LabelSelector, pods *cselector) cselector {
	switch {
	case namespaces != nil:
		return cselector{ns: namespaces}
	case pods != nil:
		return *pods
	}
	return cselector{ns: nothingSelector()}
}

// nothingSelector matches no namespace: the subject of a policy whose
// subject has no field this version knows.
func nothingSelector() *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: namespaceNameLabel, Operator: metav1.LabelSelectorOpDoesNotExist},
	}}
}

// cidrStrings converts a list of CIDRs or domain names; nil stays nil.
func cidrStrings[T ~string](cs []T) []string {
	if cs == nil {
		return nil
	}
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = string(c)
	}
	return out
}

// actionOf maps both APIs' action names (Allow is v1alpha1's Accept).
// Unknown actions do not pass validation; a trusted one is read as Deny
// (fail closed).
func actionOf(a string) table.Action {
	switch a {
	case "Accept", "Allow":
		return table.Accept
	case "Pass":
		return table.Pass
	}
	return table.Deny
}

// unknownProtocol marks a protocol entry without a field this version
// knows.
const unknownProtocol table.Protocol = 255

func fromProtocols(ps []npav1beta1.ClusterNetworkPolicyProtocol) []cport {
	if len(ps) == 0 {
		return nil
	}
	out := make([]cport, 0, len(ps))
	for _, p := range ps {
		var proto table.Protocol
		var dp *npav1beta1.Port
		switch {
		case p.TCP != nil:
			proto, dp = table.TCP, p.TCP.DestinationPort
		case p.UDP != nil:
			proto, dp = table.UDP, p.UDP.DestinationPort
		case p.SCTP != nil:
			proto, dp = table.SCTP, p.SCTP.DestinationPort
		case p.DestinationNamedPort != "":
			out = append(out, cport{name: p.DestinationNamedPort})
			continue
		default:
			out = append(out, cport{proto: unknownProtocol})
			continue
		}
		e := cport{proto: proto, lo: 1, hi: 65535}
		switch {
		case dp == nil:
		case dp.Range != nil:
			e.lo, e.hi = clampPort(dp.Range.Start), clampPort(dp.Range.End)
		default:
			e.lo, e.hi = clampPort(dp.Number), clampPort(dp.Number)
		}
		out = append(out, e)
	}
	return out
}

// clampPort converts a validated port number; out-of-range values (only
// possible in trusted objects) become 0, which no packet carries.
func clampPort(n int32) uint16 {
	if n < 1 || n > 65535 {
		return 0
	}
	return uint16(n)
}

func fromAlphaPorts(ports *[]npav1alpha1.AdminNetworkPolicyPort) []cport {
	if ports == nil || len(*ports) == 0 {
		return nil
	}
	out := make([]cport, 0, len(*ports))
	for _, p := range *ports {
		switch {
		case p.PortNumber != nil:
			n := clampPort(p.PortNumber.Port)
			out = append(out, cport{proto: alphaProtocol(string(p.PortNumber.Protocol)), lo: n, hi: n})
		case p.PortRange != nil:
			out = append(out, cport{proto: alphaProtocol(string(p.PortRange.Protocol)), lo: clampPort(p.PortRange.Start), hi: clampPort(p.PortRange.End)})
		case p.NamedPort != nil:
			out = append(out, cport{name: *p.NamedPort})
		default:
			out = append(out, cport{proto: unknownProtocol})
		}
	}
	return out
}

// alphaProtocol reads a v1alpha1 port protocol, which defaults to TCP.
// Protocols other than TCP, UDP and SCTP fail validation; a trusted one
// becomes ICMP, which no port entry matches.
func alphaProtocol(p string) table.Protocol {
	switch p {
	case "", "TCP":
		return table.TCP
	case "UDP":
		return table.UDP
	case "SCTP":
		return table.SCTP
	}
	return table.ICMP
}

// alphaRule is a v1alpha1 rule of either kind.
func alphaRule(name, action string, ps []cpeer, ports *[]npav1alpha1.AdminNetworkPolicyPort) crule {
	return crule{name: name, action: actionOf(action), peers: ps, ports: fromAlphaPorts(ports)}
}

// fromAdminNetworkPolicy reads a (validated) v1alpha1 AdminNetworkPolicy
// into the Admin tier.
func fromAdminNetworkPolicy(anp *npav1alpha1.AdminNetworkPolicy) cpolicy {
	p := cpolicy{kind: KindAdminNetworkPolicy, name: anp.Name, tier: table.AdminTier, priority: anp.Spec.Priority,
		subject: subjectOf(anp.Spec.Subject.Namespaces, alphaPods(anp.Spec.Subject.Pods))}
	for _, r := range anp.Spec.Ingress {
		p.rules[table.Ingress] = append(p.rules[table.Ingress], alphaRule(r.Name, string(r.Action), peers(r.From, alphaIngressPeer), r.Ports))
	}
	for _, r := range anp.Spec.Egress {
		p.rules[table.Egress] = append(p.rules[table.Egress], alphaRule(r.Name, string(r.Action), peers(r.To, anpEgressPeer), r.Ports))
	}
	return p
}

// fromBaselineAdminNetworkPolicy reads a (validated) v1alpha1
// BaselineAdminNetworkPolicy into the Baseline tier.
func fromBaselineAdminNetworkPolicy(banp *npav1alpha1.BaselineAdminNetworkPolicy) cpolicy {
	p := cpolicy{kind: KindBaselineAdminNetworkPolicy, name: banp.Name, tier: table.BaselineTier, priority: baselineAdminPriority,
		subject: subjectOf(banp.Spec.Subject.Namespaces, alphaPods(banp.Spec.Subject.Pods))}
	for _, r := range banp.Spec.Ingress {
		p.rules[table.Ingress] = append(p.rules[table.Ingress], alphaRule(r.Name, string(r.Action), peers(r.From, alphaIngressPeer), r.Ports))
	}
	for _, r := range banp.Spec.Egress {
		p.rules[table.Egress] = append(p.rules[table.Egress], alphaRule(r.Name, string(r.Action), peers(r.To, banpEgressPeer), r.Ports))
	}
	return p
}

// ClusterNetworkPolicyFromV1alpha2 converts a v1alpha2 ClusterNetworkPolicy
// to v1beta1. The two versions have the same schema (the API server
// converts between them with strategy None), so the conversion copies
// every field.
func ClusterNetworkPolicyFromV1alpha2(in *npav1alpha2.ClusterNetworkPolicy) (*npav1beta1.ClusterNetworkPolicy, error) {
	data, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("convert ClusterNetworkPolicy %s from v1alpha2: %w", in.Name, err)
	}
	out := &npav1beta1.ClusterNetworkPolicy{}
	if errs := decodeStrict(data, out); len(errs) > 0 {
		return nil, fmt.Errorf("convert ClusterNetworkPolicy %s from v1alpha2: %w", in.Name, errs[0])
	}
	out.APIVersion = npav1beta1.GroupVersion.String()
	return out, nil
}
