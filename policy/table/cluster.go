package table

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
)

// Cluster policies (ClusterNetworkPolicy and its v1alpha1 predecessors)
// add two tiers around NetworkPolicy; see the package documentation.

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

// ClusterRuleRef names one rule of a cluster policy in a [Table] (see
// [Table.ClusterRule]). The zero value names no rule.
type ClusterRuleRef struct {
	id int32 // 1 + the rule's index in Spec.ClusterRules, 0 for none
}

// ClusterRuleRefAt names the rule with index i in [Spec.ClusterRules].
func ClusterRuleRefAt(i int) ClusterRuleRef { return ClusterRuleRef{id: int32(i + 1)} }

func (r ClusterRuleRef) index() int { return int(r.id) - 1 }

// Valid reports whether r names a rule.
func (r ClusterRuleRef) Valid() bool { return r.id > 0 }

// ClusterPolicyInfo identifies a compiled cluster policy.
type ClusterPolicyInfo struct {
	// Kind is ClusterNetworkPolicy, AdminNetworkPolicy or
	// BaselineAdminNetworkPolicy.
	Kind     string
	Name     string
	Tier     Tier
	Priority int32
	// NumIngress and NumEgress are the numbers of rules per direction.
	NumIngress, NumEgress int
}

// String returns "Kind name".
func (p ClusterPolicyInfo) String() string { return p.Kind + " " + p.Name }

// ClusterRuleInfo describes one rule of a cluster policy.
type ClusterRuleInfo struct {
	Kind      string    `json:"kind"`
	Policy    string    `json:"policy"`
	Tier      Tier      `json:"-"`
	Priority  int32     `json:"priority"`
	Direction Direction `json:"-"`
	Index     int       `json:"index"`
	// Name is the rule's name field, if it has one.
	Name   string `json:"name,omitempty"`
	Action Action `json:"-"`
}

// String returns, e.g., `ClusterNetworkPolicy deny-imds egress[0] "imds" (Admin tier, priority 10)`.
func (r ClusterRuleInfo) String() string {
	name := ""
	if r.Name != "" {
		name = fmt.Sprintf(" %q", r.Name)
	}
	return fmt.Sprintf("%s %s %s[%d]%s (%s tier, priority %d)", r.Kind, r.Policy, r.Direction, r.Index, name, r.Tier, r.Priority)
}

// MarshalJSON adds the tier, direction and action as words.
func (r ClusterRuleInfo) MarshalJSON() ([]byte, error) {
	type plain ClusterRuleInfo
	return json.Marshal(struct {
		plain
		Tier      string `json:"tier"`
		Direction string `json:"direction"`
		Action    string `json:"action"`
		Text      string `json:"text"`
	}{plain(r), r.Tier.String(), r.Direction.String(), r.Action.String(), r.String()})
}

func (r *ClusterRule) matches(t *Table, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) bool {
	if !r.Ports.matches(t, proto, port, dstEp) {
		return false
	}
	if r.All || r.Peers.Has(peer) {
		return true
	}
	for i := range r.Blocks {
		if r.Blocks[i].Contains(peerAddr) {
			return true
		}
	}
	if len(r.Nodes) > 0 {
		_, found := slices.BinarySearchFunc(r.Nodes, peerAddr, netip.Addr.Compare)
		return found
	}
	return false
}

// match returns the first rule that matches, or nil.
func (g *TierGroup) match(t *Table, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) *ClusterRule {
	for i := range g.Rules {
		if g.Rules[i].matches(t, peer, peerAddr, proto, port, dstEp) {
			return &g.Rules[i]
		}
	}
	return nil
}

// tierHot is, per endpoint, the tier groups that apply to it: indexes into
// Table.tierGroups by tier and direction, or -1.
type tierHot struct {
	groups [2][2]int32
}

// decideTiers is [Table.decide] for tables with cluster policies: the
// Admin tier, then NetworkPolicy, then (for pods no NetworkPolicy selects
// for dir) the Baseline tier, then the default, which allows.
func (t *Table) decideTiers(dir Direction, self, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) Decision {
	peerID, port := t.tierArgs(peer, proto, port)
	th := &t.tiers[self]
	if g := th.groups[AdminTier][dir]; g >= 0 {
		if r := t.spec.TierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); r != nil {
			switch r.Action {
			case Accept:
				return Decision{Reason: AdminAccepted, Endpoint: self, Rule: noRule}
			case Deny:
				return Decision{Reason: AdminDenied, Endpoint: self, Rule: noRule}
			}
		}
	}
	if g := t.hot[self].groups[dir]; g >= 0 {
		rules := t.spec.Groups[g].Rules
		for i := range rules {
			if rules[i].matches(t, peerID, peerAddr, proto, port, dstEp) {
				return Decision{Reason: AllowedByRule, Endpoint: self, Rule: rules[i].Ref}
			}
		}
		return Decision{Reason: Denied, Endpoint: self, Rule: noRule}
	}
	if g := th.groups[BaselineTier][dir]; g >= 0 {
		if r := t.spec.TierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); r != nil {
			switch r.Action {
			case Accept:
				return Decision{Reason: BaselineAccepted, Endpoint: self, Rule: noRule}
			case Deny:
				return Decision{Reason: BaselineDenied, Endpoint: self, Rule: noRule}
			}
		}
	}
	return Decision{Reason: NotIsolated, Endpoint: self, Rule: noRule}
}

// tierArgs returns the identity of the peer (-1 when it is no pod) and
// the port a rule sees (0 for protocols without ports).
func (t *Table) tierArgs(peer int32, proto Protocol, port uint16) (int32, uint16) {
	peerID := int32(-1)
	if peer >= 0 {
		peerID = t.hot[peer].identity
	}
	if !proto.HasPorts() {
		port = 0
	}
	return peerID, port
}

// tierRule is the cluster policy rule behind [Table.decideTiers]'s
// decision for the same arguments: the rule that decided, or else the
// last Pass rule on the way, or the zero value.
func (t *Table) tierRule(dir Direction, self, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) ClusterRuleRef {
	if t.tiers == nil || self < 0 || self == peer {
		return ClusterRuleRef{}
	}
	peerID, port := t.tierArgs(peer, proto, port)
	th := &t.tiers[self]
	var passed ClusterRuleRef
	if g := th.groups[AdminTier][dir]; g >= 0 {
		if r := t.spec.TierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); r != nil {
			if r.Action != Pass {
				return r.Ref
			}
			passed = r.Ref
		}
	}
	if t.hot[self].groups[dir] >= 0 {
		return passed
	}
	if g := th.groups[BaselineTier][dir]; g >= 0 {
		if r := t.spec.TierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); r != nil {
			return r.Ref
		}
	}
	return passed
}

// ClusterRuleOf names the cluster policy rule behind the decision for
// direction dir of a connection from src to dst (what [Table.Ingress] or
// [Table.Egress] decide for the same arguments): for the reasons
// AdminAccepted, AdminDenied, BaselineAccepted and BaselineDenied the
// rule that decided; for other reasons the last rule whose Pass action
// handed the decision on (an Admin Pass before NetworkPolicy or the
// Baseline tier, a Baseline Pass before the default), if any. For egress to
// a Service's ClusterIP it is the rule of the backend whose decision
// Egress returned. It repeats the lookup (the tiers' part of it), does not
// allocate, and returns false when no cluster policy rule was involved.
func (t *Table) ClusterRuleOf(dir Direction, src, dst netip.Addr, proto Protocol, port uint16) (ClusterRuleRef, bool) {
	if t.tiers == nil {
		return ClusterRuleRef{}, false
	}
	s, d := t.resolve(src), t.resolve(dst)
	var ref ClusterRuleRef
	switch {
	case dir == Ingress:
		ref = t.tierRule(Ingress, d, s, src, proto, port, d)
	case s < 0:
	case d < 0 && t.judgedOnBackends(s) && t.servicePort(dst, proto, port) != nil:
		sp := t.servicePort(dst, proto, port)
		chosen := -1
		for i := range sp.Backends {
			b := &sp.Backends[i]
			dec := t.decide(Egress, s, b.Endpoint, b.Addr, proto, b.Port, b.Endpoint)
			if !dec.Allowed() {
				chosen = i
				break
			}
			if chosen < 0 && dec.Reason != Loopback {
				chosen = i
			}
		}
		if chosen >= 0 {
			b := &sp.Backends[chosen]
			ref = t.tierRule(Egress, s, b.Endpoint, b.Addr, proto, b.Port, b.Endpoint)
		}
	default:
		ref = t.tierRule(Egress, s, d, dst, proto, port, d)
	}
	return ref, ref.Valid()
}

// ClusterPolicies returns the compiled cluster policies in precedence
// order: Admin tier first, lower priority first, then by kind
// (ClusterNetworkPolicy first) and name.
func (t *Table) ClusterPolicies() []ClusterPolicyInfo { return t.spec.ClusterPolicies }

// ClusterRule describes ref, which must be valid and come from this
// table.
func (t *Table) ClusterRule(ref ClusterRuleRef) ClusterRuleInfo {
	return t.spec.ClusterRules[ref.index()]
}

// ClusterSelecting returns the indexes (into [Table.ClusterPolicies]) of
// the cluster policies of tier that select the pod with index ep and have
// rules for dir, in precedence order. The caller must not modify it.
func (t *Table) ClusterSelecting(ep int32, tier Tier, dir Direction) []int32 {
	if t.tiers == nil || t.Endpoint(ep) == nil {
		return nil
	}
	g := t.tiers[ep].groups[tier][dir]
	if g < 0 {
		return nil
	}
	return t.spec.TierGroups[g].Policies
}

// subjectOfTiers reports whether a cluster policy of either tier has rules
// for dir and selects the pod with index ep.
func (t *Table) subjectOfTiers(ep int32, dir Direction) bool {
	if t.tiers == nil {
		return false
	}
	g := &t.tiers[ep].groups
	return g[AdminTier][dir] >= 0 || g[BaselineTier][dir] >= 0
}

// MatchesNothing reports whether the rule's peers match no connection.
func (r *ClusterRule) MatchesNothing() bool {
	if r.All || len(r.Blocks) > 0 || len(r.Nodes) > 0 {
		return false
	}
	for _, w := range r.Peers {
		if w != 0 {
			return false
		}
	}
	return true
}

// Covers reports whether r matches every connection that o matches (for
// the pods, nodes and named ports of the table it was compiled for).
func (r *ClusterRule) Covers(o *ClusterRule) bool {
	if !r.Ports.Covers(&o.Ports) {
		return false
	}
	if r.All {
		return true
	}
	if o.All || !o.Peers.SubsetOf(r.Peers) {
		return false
	}
	for _, b := range o.Blocks {
		if !r.containsPrefix(b) {
			return false
		}
	}
	for _, n := range o.Nodes {
		if !r.containsPrefix(netip.PrefixFrom(n, n.BitLen())) {
			return false
		}
	}
	return true
}

func (r *ClusterRule) containsPrefix(p netip.Prefix) bool {
	for _, b := range r.Blocks {
		if b.Bits() <= p.Bits() && b.Contains(p.Addr()) {
			return true
		}
	}
	if p.IsSingleIP() {
		for _, n := range r.Nodes {
			if n == p.Addr() {
				return true
			}
		}
	}
	return false
}

// Covers reports whether m admits every protocol and port that o admits.
func (m *PortMatch) Covers(o *PortMatch) bool {
	if m.All {
		return true
	}
	if o.All {
		return false
	}
	for _, oe := range o.Entries {
		covered := false
		for _, e := range m.Entries {
			if e.Proto != oe.Proto {
				continue
			}
			if oe.Name >= 0 {
				covered = covered || e.Name == oe.Name || (e.Name < 0 && e.Lo == 1 && e.Hi == 65535)
			} else {
				covered = covered || (e.Name < 0 && e.Lo <= oe.Lo && oe.Hi <= e.Hi)
			}
		}
		if !covered {
			return false
		}
	}
	return true
}
