package table

import (
	"net/netip"

	"github.com/podgate/podgate/internal/addrmap"
)

// Spec is a compiled policy as plain data: the pods and the identities
// they fall into, per identity and direction the group of compiled rules
// of the policies that select it, the Services' ClusterIPs with their
// ready backends, and the tiers of cluster policies. policy.Compile fills
// one from Kubernetes objects; [New] turns it into a [Table].
//
// Indexes between its parts (an endpoint's identity, an identity's groups,
// a rule's peers) must be in range, as Compile makes them: lookups trust
// them.
type Spec struct {
	// ByAddr maps every pod address to its index in Endpoints.
	ByAddr *addrmap.Map[int32]
	// Groups are the rule groups that [Identity.Groups] point at.
	Groups []Group
	// Endpoints are the pods, sorted by namespace and name.
	Endpoints []Endpoint
	// Identities group pods that policy cannot tell apart (same namespace,
	// same labels); [Endpoint.Identity] indexes it.
	Identities []Identity
	// Policies are the NetworkPolicies, sorted by namespace and name;
	// [RuleRef.Policy] indexes it.
	Policies []PolicyInfo
	// PortNames are the names of named ports; [NamedPort.Name] and
	// [PortEntry.Name] index it.
	PortNames []string
	// Namespaces are the names of the namespaces, declared or referenced.
	Namespaces []string

	// ServiceByAddr maps every ClusterIP to its index in ServiceAddrs; nil
	// when the cluster has no Service.
	ServiceByAddr *addrmap.Map[int32]
	// ServiceAddrs are the ClusterIPs of the Services with their ports.
	ServiceAddrs []ServiceAddr
	// Services are the Services with a ClusterIP, sorted by namespace and
	// name.
	Services []ServiceInfo

	// TierGroups are the rule groups of cluster policies that
	// IdentityTiers point at; the cluster policy part of a Spec is empty
	// when the cluster has none.
	TierGroups []TierGroup
	// IdentityTiers are, per identity, tier and direction, an index into
	// TierGroups or -1.
	IdentityTiers [][2][2]int32
	// ClusterPolicies are the cluster policies in precedence order.
	ClusterPolicies []ClusterPolicyInfo
	// ClusterRules describe every cluster policy rule; [ClusterRuleRef]
	// indexes it.
	ClusterRules []ClusterRuleInfo
	// ClusterSelected are, per cluster policy, the identities it selects;
	// CompiledClusterRules its compiled rules per direction.
	ClusterSelected      [][]int32
	CompiledClusterRules [][2][]ClusterRule

	// Warnings are the problems found while compiling that did not stop it.
	Warnings []string
	// Stats describes the compilation.
	Stats CompileStats
}

// Identity is a set of pods that policy cannot tell apart: same namespace,
// same labels.
type Identity struct {
	// Groups are, per Direction, the index into [Spec.Groups] of the rules
	// that apply to the identity, or -1 when no policy isolates it.
	Groups [2]int32
}

// Group is the union of the rules of one set of policies, for one
// direction. Identities selected by the same set of policies share a group.
type Group struct {
	Policies []int32 // indexes into Spec.Policies
	Rules    []Rule
}

// Rule is one compiled ingress or egress rule of a NetworkPolicy.
type Rule struct {
	Ref      RuleRef
	AllPeers bool   // no from/to: every peer
	Peers    Bitset // identities matched by the pod/namespace selector peers
	Blocks   []IPBlock
	Ports    PortMatch
}

// IPBlock is an ipBlock peer: CIDR without the Except prefixes.
type IPBlock struct {
	CIDR   netip.Prefix
	Except []netip.Prefix
}

// PortMatch is a rule's ports list. All is set when the rule has no ports
// (every protocol, every port, ICMP included).
type PortMatch struct {
	All     bool
	Entries []PortEntry
}

// PortEntry matches one protocol and either the port range Lo to Hi or,
// when Name >= 0, a named port ([Spec.PortNames]) resolved on the
// destination pod.
type PortEntry struct {
	Proto  Protocol
	Lo, Hi uint16
	Name   int32
}

// ClusterRule is one compiled rule of a cluster policy.
type ClusterRule struct {
	Ref    ClusterRuleRef
	Action Action
	// All: the rule matches every connection whatever its peers (the
	// fail-closed reading of a Deny or Pass rule with a peer that podgate
	// does not know).
	All    bool
	Peers  Bitset         // identities of the namespaces and pods peers
	Blocks []netip.Prefix // networks peers
	Nodes  []netip.Addr   // addresses of the nodes peers, sorted
	Ports  PortMatch
}

// TierGroup is the rules, in precedence order, of one set of cluster
// policies of one tier, for one direction. Identities selected by the same
// policies share a group.
type TierGroup struct {
	Policies []int32 // indexes into Spec.ClusterPolicies
	Rules    []ClusterRule
}

// New makes a table of s. The table keeps the slices and maps of s: the
// caller must not modify them afterwards.
func New(s *Spec) *Table {
	t := &Table{spec: *s, hot: make([]endpointHot, len(s.Endpoints))}
	for i := range s.Endpoints {
		id := s.Endpoints[i].Identity
		t.hot[i] = endpointHot{identity: id, groups: s.Identities[id].Groups}
	}
	if len(s.ClusterPolicies) > 0 {
		t.tiers = make([]tierHot, len(s.Endpoints))
		for i := range s.Endpoints {
			t.tiers[i] = tierHot{groups: s.IdentityTiers[s.Endpoints[i].Identity]}
		}
	}
	return t
}

// Spec returns what the table was made of. The caller must not modify
// it.
func (t *Table) Spec() *Spec { return &t.spec }
