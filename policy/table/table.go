package table

import (
	"fmt"
	"net/netip"
	"time"
)

// Direction is the side of a connection a policy governs.
type Direction uint8

// The two policy directions.
const (
	Ingress Direction = iota
	Egress
)

// String returns "ingress" or "egress".
func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// PolicyType returns the direction as spec.policyTypes spells it:
// "Ingress" or "Egress".
func (d Direction) PolicyType() string {
	if d == Egress {
		return "Egress"
	}
	return "Ingress"
}

// Reason says how one side of a connection was decided.
type Reason uint8

// Reasons for a [Decision]. [Denied], [AdminDenied] and [BaselineDenied]
// deny; the others allow. The last four occur only in tables compiled
// with cluster policies (ClusterNetworkPolicy).
const (
	// NotPod: the address on this side is not a pod's (outside the
	// cluster, the node, a hostNetwork pod), so no policy applies to it.
	NotPod Reason = iota
	// NotIsolated: the pod is selected by no policy of this direction.
	NotIsolated
	// AllowedByRule: the pod is isolated and [Decision.Rule] allows it.
	AllowedByRule
	// Denied: the pod is isolated and no rule of the policies that select
	// it allows the connection.
	Denied
	// Loopback: a pod talking to itself; this never leaves the pod's
	// network namespace, so policy does not apply.
	Loopback
	// AdminAccepted: a rule of the Admin tier ([Table.ClusterRuleOf])
	// accepts the connection; NetworkPolicy is not consulted.
	AdminAccepted
	// AdminDenied: a rule of the Admin tier ([Table.ClusterRuleOf])
	// denies the connection; NetworkPolicy is not consulted.
	AdminDenied
	// BaselineAccepted: no NetworkPolicy selects the pod for this
	// direction and a rule of the Baseline tier ([Table.ClusterRuleOf])
	// accepts the connection.
	BaselineAccepted
	// BaselineDenied: no NetworkPolicy selects the pod for this direction
	// and a rule of the Baseline tier ([Table.ClusterRuleOf]) denies the
	// connection.
	BaselineDenied
)

// denies has a bit set for each Reason that denies.
const denies = 1<<Denied | 1<<AdminDenied | 1<<BaselineDenied

// String returns a short lower-case name, usable as a metric label.
func (r Reason) String() string {
	switch r {
	case NotPod:
		return "not-pod"
	case NotIsolated:
		return "not-isolated"
	case AllowedByRule:
		return "allowed-by-rule"
	case Denied:
		return "denied"
	case Loopback:
		return "loopback"
	case AdminAccepted:
		return "admin-accepted"
	case AdminDenied:
		return "admin-denied"
	case BaselineAccepted:
		return "baseline-accepted"
	case BaselineDenied:
		return "baseline-denied"
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// RuleRef names one rule of one policy in a [Table]: Policy indexes
// [Table.Policy], Index is the rule's position in the policy's ingress or
// egress list (the direction is the decision's).
type RuleRef struct {
	Policy int32
	Index  int32
}

// noRule is the RuleRef of decisions that no rule made.
var noRule = RuleRef{Policy: -1, Index: -1}

// Decision is the outcome for one direction of a connection.
type Decision struct {
	Reason Reason
	// Endpoint is the pod on the side being decided (the destination for
	// ingress, the source for egress), or -1.
	Endpoint int32
	// Rule is the first rule that allowed the connection when Reason is
	// AllowedByRule, and {-1, -1} otherwise. It is always a
	// NetworkPolicy's rule; [Table.ClusterRuleOf] names the cluster policy
	// rule behind the Admin and Baseline reasons.
	Rule RuleRef
	// Decision has no field for the cluster policy rule on purpose: a
	// Verdict of two Decisions must stay within 32 bytes and 9 integer
	// words, or Go passes it through memory (not SSA-able, not in result
	// registers), which made Table.Lookup 12-35% slower in BenchmarkLookup
	// for every table, also without cluster policies.
}

// Allowed reports whether this side lets the connection through.
func (d Decision) Allowed() bool { return denies&(1<<d.Reason) == 0 }

// Verdict is the outcome for a connection: both sides must allow it.
type Verdict struct {
	Egress  Decision // the source's egress side
	Ingress Decision // the destination's ingress side
}

// Allowed reports whether both sides allow the connection.
func (v Verdict) Allowed() bool { return v.Egress.Allowed() && v.Ingress.Allowed() }

// Endpoint is a pod that takes part in policy: it has an IP, is not
// hostNetwork and has not terminated.
type Endpoint struct {
	Namespace string
	Name      string
	NodeName  string
	Labels    map[string]string
	// IPs are the pod's addresses, primary first (one per family).
	IPs []netip.Addr
	// Identity indexes [Spec.Identities]: the pods that policy cannot tell
	// apart from this one.
	Identity int32
	// NamedPorts are the pod's named container ports, which resolve named
	// ports in rules.
	NamedPorts []NamedPort
}

// String returns "namespace/name".
func (e *Endpoint) String() string { return e.Namespace + "/" + e.Name }

// NamedPort is a container port with a name. Name indexes
// [Spec.PortNames].
type NamedPort struct {
	Name  int32
	Proto Protocol
	Port  uint16
}

// endpointHot is the part of an endpoint that lookups read, kept apart so
// that it is dense in memory.
type endpointHot struct {
	identity int32
	groups   [2]int32 // per Direction: index into Spec.Groups, or -1 if not isolated
}

// PolicyInfo identifies a compiled NetworkPolicy.
type PolicyInfo struct {
	Namespace string
	Name      string
	// Types are the effective policy types after defaulting.
	Ingress, Egress bool
	// NumIngress and NumEgress are the numbers of rules per direction.
	NumIngress, NumEgress int
}

// String returns "namespace/name".
func (p PolicyInfo) String() string { return p.Namespace + "/" + p.Name }

// matches reports whether the ports admit proto and port to the pod dstEp
// (or -1), whose container ports resolve named ports.
func (m *PortMatch) matches(t *Table, proto Protocol, port uint16, dstEp int32) bool {
	if m.All {
		return true
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Proto != proto {
			continue
		}
		if e.Name < 0 {
			if port >= e.Lo && port <= e.Hi {
				return true
			}
			continue
		}
		if dstEp < 0 {
			continue
		}
		for _, np := range t.spec.Endpoints[dstEp].NamedPorts {
			if np.Name == e.Name && np.Proto == proto && np.Port == port {
				return true
			}
		}
	}
	return false
}

func (r *Rule) matches(t *Table, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) bool {
	if !r.Ports.matches(t, proto, port, dstEp) {
		return false
	}
	if r.AllPeers || r.Peers.Has(peer) {
		return true
	}
	for i := range r.Blocks {
		if r.Blocks[i].contains(peerAddr) {
			return true
		}
	}
	return false
}

func (b *IPBlock) contains(a netip.Addr) bool {
	if !b.CIDR.Contains(a) {
		return false
	}
	for _, e := range b.Except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}

// CompileStats describes a compilation.
type CompileStats struct {
	Namespaces, Pods, Endpoints, Identities, Policies, Groups, Rules int
	// Services counts the Services with a ClusterIP, ServiceBackends the
	// ready backends over all their ClusterIPs and ports.
	Services, ServiceBackends int
	// ClusterPolicies and ClusterRules count the cluster policies
	// (ClusterNetworkPolicy and the v1alpha1 kinds) and their rules,
	// Nodes the nodes that nodes peers can select.
	ClusterPolicies, ClusterRules, Nodes int
	Duration                             time.Duration
}

// Table is a compiled, immutable policy snapshot, made by [New] from a
// [Spec]. All methods are safe for concurrent use; lookups do not allocate
// or lock.
type Table struct {
	// What lookups read comes first, in one cache line with the spec's
	// address index and rule groups.
	hot []endpointHot // per endpoint
	// tiers is per endpoint and nil when the table has no cluster
	// policy, which lookups test to skip the tiers.
	tiers      []tierHot
	spec       Spec
	generation uint64
}

// Generation is the number the [Store] gave the table when it was
// published, or 0 for a table that was never published.
func (t *Table) Generation() uint64 { return t.generation }

// Warnings are the problems found while compiling that did not stop it, such
// as two pods claiming the same IP.
func (t *Table) Warnings() []string { return t.spec.Warnings }

// Stats describes the compilation that produced the table.
func (t *Table) Stats() CompileStats { return t.spec.Stats }

// Endpoints returns the pods of the table, sorted by namespace and name. The
// caller must not modify them.
func (t *Table) Endpoints() []Endpoint { return t.spec.Endpoints }

// Endpoint returns the pod with index i, or nil when i is out of range.
func (t *Table) Endpoint(i int32) *Endpoint {
	if i < 0 || int(i) >= len(t.spec.Endpoints) {
		return nil
	}
	return &t.spec.Endpoints[i]
}

// EndpointByAddr returns the index of the pod that owns addr.
func (t *Table) EndpointByAddr(addr netip.Addr) (int32, bool) {
	i, ok := t.spec.ByAddr.Get(addr)
	if !ok {
		return -1, false
	}
	return i, true
}

// EndpointByName returns the index of the pod namespace/name.
func (t *Table) EndpointByName(namespace, name string) (int32, bool) {
	// Endpoints are sorted by namespace and name: binary search.
	lo, hi := 0, len(t.spec.Endpoints)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		e := &t.spec.Endpoints[m]
		if e.Namespace < namespace || (e.Namespace == namespace && e.Name < name) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(t.spec.Endpoints) && t.spec.Endpoints[lo].Namespace == namespace && t.spec.Endpoints[lo].Name == name {
		return int32(lo), true
	}
	return -1, false
}

// Policies returns the compiled policies, sorted by namespace and name.
func (t *Table) Policies() []PolicyInfo { return t.spec.Policies }

// Policy returns the policy with index i; i must come from a [RuleRef] or
// an index below len(Policies()).
func (t *Table) Policy(i int32) PolicyInfo { return t.spec.Policies[i] }

// Isolated reports whether the pod with index ep is isolated for dir.
func (t *Table) Isolated(ep int32, dir Direction) bool {
	return t.Endpoint(ep) != nil && t.hot[ep].groups[dir] >= 0
}

// Selecting returns the indexes of the policies that select the pod with
// index ep for dir (they make it isolated). The caller must not modify it.
func (t *Table) Selecting(ep int32, dir Direction) []int32 {
	if t.Endpoint(ep) == nil {
		return nil
	}
	g := t.hot[ep].groups[dir]
	if g < 0 {
		return nil
	}
	return t.spec.Groups[g].Policies
}

func (t *Table) resolve(a netip.Addr) int32 {
	if i, ok := t.spec.ByAddr.Get(a); ok {
		return i
	}
	return -1
}

// Lookup decides a connection from src to dst with protocol proto and
// destination port dport (ignored for protocols without ports). Both sides
// are decided; the fastpath enforces only the sides that are local to its
// node.
//
// When dst is no pod's address but a Service's ClusterIP and the Service
// has the port proto/dport with ready backends, the egress side is judged
// against every ready backend (address and target port) and allows only
// if each does (see [Table.Egress]); the ingress side is NotPod (the
// backend's node judges it after kube-proxy's DNAT).
func (t *Table) Lookup(src, dst netip.Addr, proto Protocol, dport uint16) Verdict {
	s, d := t.resolve(src), t.resolve(dst)
	eg := Decision{Reason: NotPod, Endpoint: -1, Rule: noRule}
	if s >= 0 {
		eg = t.egress(s, d, dst, proto, dport)
	}
	return Verdict{
		Egress:  eg,
		Ingress: t.decide(Ingress, d, s, src, proto, dport, d),
	}
}

// Ingress decides only the destination's ingress side of a connection.
func (t *Table) Ingress(src, dst netip.Addr, proto Protocol, dport uint16) Decision {
	d := t.resolve(dst)
	if d < 0 {
		return Decision{Reason: NotPod, Endpoint: -1, Rule: noRule}
	}
	return t.decide(Ingress, d, t.resolve(src), src, proto, dport, d)
}

// Egress decides only the source's egress side of a connection.
//
// A destination that is no pod's address but a Service's ClusterIP, with a
// Service port proto/dport that has ready backends, stands for those
// backends, since kube-proxy DNATs the packet to one of them after the
// gateway: the source's egress is judged for each backend's address and
// target port (named ports resolve on the backend pod), and the decision
// is AllowedByRule (with the first backend's rule) only if every backend
// is allowed, Denied otherwise. A ClusterIP without ready backends for the
// port, or a port the Service does not have, is judged as an address
// (ipBlocks only). The cost is one rule scan per ready backend instead of
// one; lookups to other destinations do not change.
func (t *Table) Egress(src, dst netip.Addr, proto Protocol, dport uint16) Decision {
	s := t.resolve(src)
	if s < 0 {
		return Decision{Reason: NotPod, Endpoint: -1, Rule: noRule}
	}
	return t.egress(s, t.resolve(dst), dst, proto, dport)
}

// decide judges direction dir for the pod self (or -1) against peer (pod
// index or -1) at peerAddr; dstEp is the destination pod whose named ports
// resolve named port rules. Tables with cluster policies go through the
// tiers; the others cost one nil test more than NetworkPolicy alone (a
// wrapper would cost a call: decide is too big to inline).
func (t *Table) decide(dir Direction, self, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) Decision {
	if self < 0 {
		return Decision{Reason: NotPod, Endpoint: -1, Rule: noRule}
	}
	if self == peer {
		return Decision{Reason: Loopback, Endpoint: self, Rule: noRule}
	}
	if t.tiers != nil {
		return t.decideTiers(dir, self, peer, peerAddr, proto, port, dstEp)
	}
	g := t.hot[self].groups[dir]
	if g < 0 {
		return Decision{Reason: NotIsolated, Endpoint: self, Rule: noRule}
	}
	peerID := int32(-1)
	if peer >= 0 {
		peerID = t.hot[peer].identity
	}
	if !proto.HasPorts() {
		port = 0
	}
	rules := t.spec.Groups[g].Rules
	for i := range rules {
		if rules[i].matches(t, peerID, peerAddr, proto, port, dstEp) {
			return Decision{Reason: AllowedByRule, Endpoint: self, Rule: rules[i].Ref}
		}
	}
	return Decision{Reason: Denied, Endpoint: self, Rule: noRule}
}
