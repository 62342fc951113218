package policy

import (
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Cluster policies: ClusterNetworkPolicy (policy.networking.k8s.io
// v1beta1 and v1alpha2, sigs.k8s.io/network-policy-api) and its v1alpha1
// predecessors AdminNetworkPolicy and BaselineAdminNetworkPolicy. All three
// are read into one internal form, cpolicy, that the compiler uses.

// Tier is the precedence level of a cluster policy. The Admin tier is
// evaluated before NetworkPolicy, the Baseline tier after it and only for
// pods that no NetworkPolicy selects for the direction.
type Tier uint8

// The two tiers of cluster policies.
const (
	AdminTier Tier = iota
	BaselineTier
)

// String returns "Admin" or "Baseline".
func (t Tier) String() string {
	if t == BaselineTier {
		return "Baseline"
	}
	return "Admin"
}

// Action is what a cluster policy rule does with the connections it
// matches.
type Action uint8

// Rule actions. AdminNetworkPolicy's Allow is Accept.
const (
	// Accept allows the connection for this direction; no later rule of
	// any tier and no NetworkPolicy is consulted.
	Accept Action = iota
	// Deny denies the connection for this direction; nothing later is
	// consulted.
	Deny
	// Pass skips the rest of the tier: an Admin Pass hands the decision
	// to NetworkPolicy (and then the Baseline tier), a Baseline Pass to
	// the default, which allows.
	Pass
)

// String returns "Accept", "Deny" or "Pass".
func (a Action) String() string {
	switch a {
	case Deny:
		return "Deny"
	case Pass:
		return "Pass"
	}
	return "Accept"
}

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
	tier     Tier
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
	action Action
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

func (p *cpeer) unknown() bool {
	return p.pods == nil && p.nodes == nil && p.networks == nil && p.domains == nil
}

// cport is one entry of a rule's ports: a protocol with a port range, or a
// named container port of the destination pod (proto 0: the named port's
// own protocol).
type cport struct {
	proto  Protocol
	lo, hi uint16
	name   string
}

func (p *cpolicy) String() string { return p.kind + " " + p.name }

func fromNamespacedPod(np *npav1beta1.NamespacedPod) *cselector {
	return &cselector{ns: &np.NamespaceSelector, pod: &np.PodSelector}
}

// fromClusterNetworkPolicy reads a (validated) ClusterNetworkPolicy.
func fromClusterNetworkPolicy(cnp *npav1beta1.ClusterNetworkPolicy) cpolicy {
	p := cpolicy{kind: KindClusterNetworkPolicy, name: cnp.Name, priority: cnp.Spec.Priority}
	if cnp.Spec.Tier == npav1beta1.BaselineTier {
		p.tier = BaselineTier
	}
	switch s := cnp.Spec.Subject; {
	case s.Namespaces != nil:
		p.subject = cselector{ns: s.Namespaces}
	case s.Pods != nil:
		p.subject = *fromNamespacedPod(s.Pods)
	default:
		p.subject = cselector{ns: nothingSelector()}
	}
	for _, r := range cnp.Spec.Ingress {
		cr := crule{name: r.Name, action: actionOf(string(r.Action)), ports: fromProtocols(r.Protocols)}
		for _, peer := range r.From {
			var cp cpeer
			switch {
			case peer.Namespaces != nil:
				cp.pods = &cselector{ns: peer.Namespaces}
			case peer.Pods != nil:
				cp.pods = fromNamespacedPod(peer.Pods)
			}
			cr.peers = append(cr.peers, cp)
		}
		p.rules[Ingress] = append(p.rules[Ingress], cr)
	}
	for _, r := range cnp.Spec.Egress {
		cr := crule{name: r.Name, action: actionOf(string(r.Action)), ports: fromProtocols(r.Protocols)}
		for _, peer := range r.To {
			var cp cpeer
			switch {
			case peer.Namespaces != nil:
				cp.pods = &cselector{ns: peer.Namespaces}
			case peer.Pods != nil:
				cp.pods = fromNamespacedPod(peer.Pods)
			case peer.Nodes != nil:
				cp.nodes = peer.Nodes
			case peer.Networks != nil:
				cp.networks = cidrStrings(peer.Networks)
			case peer.DomainNames != nil:
				cp.domains = domainStrings(peer.DomainNames)
			}
			cr.peers = append(cr.peers, cp)
		}
		p.rules[Egress] = append(p.rules[Egress], cr)
	}
	return p
}

// nothingSelector matches no namespace: the subject of a policy whose
// subject has no field this version knows.
func nothingSelector() *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: namespaceNameLabel, Operator: metav1.LabelSelectorOpDoesNotExist},
	}}
}

func cidrStrings[T ~string](cs []T) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = string(c)
	}
	return out
}

func domainStrings[T ~string](ds []T) []string { return cidrStrings(ds) }

// actionOf maps both APIs' action names (Allow is v1alpha1's Accept).
// Unknown actions do not pass validation; a trusted one is read as Deny
// (fail closed).
func actionOf(a string) Action {
	switch a {
	case "Accept", "Allow":
		return Accept
	case "Pass":
		return Pass
	}
	return Deny
}

func fromProtocols(ps []npav1beta1.ClusterNetworkPolicyProtocol) []cport {
	if len(ps) == 0 {
		return nil
	}
	out := make([]cport, 0, len(ps))
	for _, p := range ps {
		var proto Protocol
		var dp *npav1beta1.Port
		switch {
		case p.TCP != nil:
			proto, dp = TCP, p.TCP.DestinationPort
		case p.UDP != nil:
			proto, dp = UDP, p.UDP.DestinationPort
		case p.SCTP != nil:
			proto, dp = SCTP, p.SCTP.DestinationPort
		case p.DestinationNamedPort != "":
			out = append(out, cport{name: p.DestinationNamedPort})
			continue
		default:
			// No field this version knows: match nothing (the entry is
			// dropped; a rule whose entries are all dropped keeps an
			// empty, non-nil list, which matches nothing).
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

func fromAlphaNamespacedPod(np *npav1alpha1.NamespacedPod) *cselector {
	return &cselector{ns: &np.NamespaceSelector, pod: &np.PodSelector}
}

func fromAlphaSubject(s npav1alpha1.AdminNetworkPolicySubject) cselector {
	switch {
	case s.Namespaces != nil:
		return cselector{ns: s.Namespaces}
	case s.Pods != nil:
		return *fromAlphaNamespacedPod(s.Pods)
	}
	return cselector{ns: nothingSelector()}
}

func fromAlphaIngressPeers(peers []npav1alpha1.AdminNetworkPolicyIngressPeer) []cpeer {
	out := make([]cpeer, len(peers))
	for i, peer := range peers {
		switch {
		case peer.Namespaces != nil:
			out[i].pods = &cselector{ns: peer.Namespaces}
		case peer.Pods != nil:
			out[i].pods = fromAlphaNamespacedPod(peer.Pods)
		}
	}
	return out
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
		}
	}
	return out
}

// alphaProtocol reads a v1alpha1 port protocol, which defaults to TCP.
// Protocols other than TCP, UDP and SCTP fail validation; a trusted one
// becomes ICMP, which no port entry matches.
func alphaProtocol(p string) Protocol {
	switch p {
	case "", "TCP":
		return TCP
	case "UDP":
		return UDP
	case "SCTP":
		return SCTP
	}
	return ICMP
}

// fromAdminNetworkPolicy reads a (validated) v1alpha1 AdminNetworkPolicy
// into the Admin tier.
func fromAdminNetworkPolicy(anp *npav1alpha1.AdminNetworkPolicy) cpolicy {
	p := cpolicy{kind: KindAdminNetworkPolicy, name: anp.Name, tier: AdminTier, priority: anp.Spec.Priority, subject: fromAlphaSubject(anp.Spec.Subject)}
	for _, r := range anp.Spec.Ingress {
		p.rules[Ingress] = append(p.rules[Ingress], crule{name: r.Name, action: actionOf(string(r.Action)), peers: fromAlphaIngressPeers(r.From), ports: fromAlphaPorts(r.Ports)})
	}
	for _, r := range anp.Spec.Egress {
		cr := crule{name: r.Name, action: actionOf(string(r.Action)), ports: fromAlphaPorts(r.Ports)}
		for _, peer := range r.To {
			var cp cpeer
			switch {
			case peer.Namespaces != nil:
				cp.pods = &cselector{ns: peer.Namespaces}
			case peer.Pods != nil:
				cp.pods = fromAlphaNamespacedPod(peer.Pods)
			case peer.Nodes != nil:
				cp.nodes = peer.Nodes
			case peer.Networks != nil:
				cp.networks = cidrStrings(peer.Networks)
			case peer.DomainNames != nil:
				cp.domains = domainStrings(peer.DomainNames)
			}
			cr.peers = append(cr.peers, cp)
		}
		p.rules[Egress] = append(p.rules[Egress], cr)
	}
	return p
}

// fromBaselineAdminNetworkPolicy reads a (validated) v1alpha1
// BaselineAdminNetworkPolicy into the Baseline tier.
func fromBaselineAdminNetworkPolicy(banp *npav1alpha1.BaselineAdminNetworkPolicy) cpolicy {
	p := cpolicy{kind: KindBaselineAdminNetworkPolicy, name: banp.Name, tier: BaselineTier, priority: baselineAdminPriority, subject: fromAlphaSubject(banp.Spec.Subject)}
	for _, r := range banp.Spec.Ingress {
		p.rules[Ingress] = append(p.rules[Ingress], crule{name: r.Name, action: actionOf(string(r.Action)), peers: fromAlphaIngressPeers(r.From), ports: fromAlphaPorts(r.Ports)})
	}
	for _, r := range banp.Spec.Egress {
		cr := crule{name: r.Name, action: actionOf(string(r.Action)), ports: fromAlphaPorts(r.Ports)}
		for _, peer := range r.To {
			var cp cpeer
			switch {
			case peer.Namespaces != nil:
				cp.pods = &cselector{ns: peer.Namespaces}
			case peer.Pods != nil:
				cp.pods = fromAlphaNamespacedPod(peer.Pods)
			case peer.Nodes != nil:
				cp.nodes = peer.Nodes
			case peer.Networks != nil:
				cp.networks = cidrStrings(peer.Networks)
			}
			cr.peers = append(cr.peers, cp)
		}
		p.rules[Egress] = append(p.rules[Egress], cr)
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
