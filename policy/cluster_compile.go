package policy

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ClusterRuleRef names one rule of a cluster policy in a [Table] (see
// [Table.ClusterRule]). The zero value names no rule.
type ClusterRuleRef struct {
	id int32 // 1 + the rule's index in Table.clusterRules, 0 for none
}

func clusterRuleRef(i int) ClusterRuleRef { return ClusterRuleRef{id: int32(i + 1)} }

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

// clusterRule is one compiled rule of a cluster policy.
type clusterRule struct {
	ref    ClusterRuleRef
	action Action
	// all: the rule matches every connection whatever its peers (the
	// fail-closed reading of a Deny or Pass rule with a peer that podgate
	// does not know).
	all    bool
	peers  bitset         // identities of the namespaces and pods peers
	blocks []netip.Prefix // networks peers
	nodes  []netip.Addr   // addresses of the nodes peers, sorted
	ports  portMatch
}

func (r *clusterRule) matches(t *Table, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) bool {
	if !r.ports.matches(t, proto, port, dstEp) {
		return false
	}
	if r.all || r.peers.has(peer) {
		return true
	}
	for i := range r.blocks {
		if r.blocks[i].Contains(peerAddr) {
			return true
		}
	}
	if len(r.nodes) > 0 {
		_, found := slices.BinarySearchFunc(r.nodes, peerAddr, netip.Addr.Compare)
		return found
	}
	return false
}

// tierGroup is the rules, in precedence order, of one set of cluster
// policies of one tier, for one direction. Identities selected by the same
// policies share a group.
type tierGroup struct {
	policies []int32
	rules    []clusterRule
}

// match returns the first rule that matches, or nil.
func (g *tierGroup) match(t *Table, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) *clusterRule {
	for i := range g.rules {
		if g.rules[i].matches(t, peer, peerAddr, proto, port, dstEp) {
			return &g.rules[i]
		}
	}
	return nil
}

// tierHot is, per endpoint, the tier groups that apply to it: indexes into
// Table.tierGroups by tier and direction, or -1.
type tierHot struct {
	groups [2][2]int32
}

// clusterInputs are the cluster policies of a [Cluster] after validation,
// in precedence order: tier, priority, kind, name.
func (b *builder) clusterPolicies(c *Cluster) ([]cpolicy, []error) {
	var errs []error
	var out []cpolicy
	check := func(kind, name string, el field.ErrorList) bool {
		if len(el) > 0 {
			errs = append(errs, invalid(kind, "", name, el.ToAggregate()))
			return false
		}
		return true
	}
	for _, p := range c.ClusterNetworkPolicies {
		if b.opts.Trusted || check(KindClusterNetworkPolicy, p.Name, ValidateClusterNetworkPolicy(p)) {
			out = append(out, fromClusterNetworkPolicy(p))
		}
	}
	for _, p := range c.AdminNetworkPolicies {
		if b.opts.Trusted || check(KindAdminNetworkPolicy, p.Name, ValidateAdminNetworkPolicy(p)) {
			out = append(out, fromAdminNetworkPolicy(p))
		}
	}
	for _, p := range c.BaselineAdminNetworkPolicies {
		if b.opts.Trusted || check(KindBaselineAdminNetworkPolicy, p.Name, ValidateBaselineAdminNetworkPolicy(p)) {
			out = append(out, fromBaselineAdminNetworkPolicy(p))
		}
	}

	slices.SortFunc(out, func(x, y cpolicy) int {
		return cmp.Or(cmp.Compare(x.tier, y.tier), cmp.Compare(x.priority, y.priority),
			cmp.Compare(kindOrder(x.kind), kindOrder(y.kind)), cmp.Compare(x.name, y.name))
	})
	seen := map[string]bool{}
	for _, p := range out {
		if seen[p.String()] {
			errs = append(errs, invalid(p.kind, "", p.name, errors.New("declared more than once")))
		}
		seen[p.String()] = true
	}
	return out, errs
}

// addNodes indexes the nodes' labels and addresses for nodes peers.
func (b *builder) addNodes(nodes []*corev1.Node) []error {
	var errs []error
	for _, n := range nodes {
		if !b.opts.Trusted {
			if el := validateNode(n); len(el) > 0 {
				errs = append(errs, invalid("Node", "", n.Name, el.ToAggregate()))
				continue
			}
		}
		b.nodes = append(b.nodes, nodeInfo{labels: labels.Set(n.Labels), addrs: NodeAddresses(n)})
	}
	return errs
}

type nodeInfo struct {
	labels labels.Set
	addrs  []netip.Addr
}

// NodeAddresses returns the IP addresses in a node's status.addresses (of
// any type), without duplicates: what a nodes peer of a cluster policy
// matches.
func NodeAddresses(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || ip.Zone() != "" {
			continue
		}
		if ip = ip.Unmap(); !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

// validateNode checks a Node's name and labels, and that its InternalIP
// and ExternalIP addresses are IP addresses.
func validateNode(n *corev1.Node) field.ErrorList {
	allErrs := validateClusterMeta(&n.ObjectMeta)
	for i, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err != nil || ip.Zone() != "" {
			allErrs = append(allErrs, field.Invalid(field.NewPath("status", "addresses").Index(i).Child("address"), a.Address, "must be a valid IP address"))
		}
	}
	return allErrs
}

// addClusterPolicies compiles the cluster policies (in precedence order)
// and records which identities each selects.
func (b *builder) addClusterPolicies(cps []cpolicy) {
	t := b.t
	b.cpSelected = make([][]int32, len(cps))
	b.cpCompiled = make([][2][]clusterRule, len(cps))
	for pi := range cps {
		p := &cps[pi]
		t.clusterPolicies = append(t.clusterPolicies, ClusterPolicyInfo{Kind: p.kind, Name: p.name, Tier: p.tier, Priority: p.priority,
			NumIngress: len(p.rules[Ingress]), NumEgress: len(p.rules[Egress])})
		for _, w := range clusterPolicyWarnings(p) {
			t.warnings = append(t.warnings, fmt.Sprintf("%s: %s", p, w))
		}
		subject, err := b.selectorSet(p.subject)
		if err != nil {
			t.warnings = append(t.warnings, fmt.Sprintf("%s: spec.subject: %v: the policy selects no pod", p, err))
		}
		for id := range t.identities {
			if subject.has(int32(id)) {
				b.cpSelected[pi] = append(b.cpSelected[pi], int32(id))
			}
		}
		for dir := Ingress; dir <= Egress; dir++ {
			for ri := range p.rules[dir] {
				b.cpCompiled[pi][dir] = append(b.cpCompiled[pi][dir], b.compileClusterRule(p, dir, ri))
			}
		}
	}
}

// selectorSet returns the identities a namespaces or pods selector
// matches.
func (b *builder) selectorSet(s cselector) (bitset, error) {
	if s.ns == nil {
		return newBitset(len(b.t.identities)), nil
	}
	return b.peerSet("", s.ns, s.pod)
}

func (b *builder) compileClusterRule(p *cpolicy, dir Direction, ri int) clusterRule {
	t := b.t
	r := &p.rules[dir][ri]
	info := ClusterRuleInfo{Kind: p.kind, Policy: p.name, Tier: p.tier, Priority: p.priority, Direction: dir, Index: ri, Name: r.name, Action: r.action}
	t.clusterRules = append(t.clusterRules, info)
	cr := clusterRule{ref: clusterRuleRef(len(t.clusterRules) - 1), action: r.action}
	where := fmt.Sprintf("%s: spec.%s[%d]", p, dir, ri)
	// failClosed handles what podgate cannot evaluate: for an Accept rule
	// it matches nothing, a Deny or Pass rule becomes a Deny of everything.
	failClosed := func(what string) {
		if r.action == Accept {
			t.warnings = append(t.warnings, fmt.Sprintf("%s: %s: the Accept rule ignores it (fail closed)", where, what))
			return
		}
		if !cr.all {
			t.warnings = append(t.warnings, fmt.Sprintf("%s: %s: the %s rule denies every connection of its subject (fail closed)", where, what, r.action))
		}
		cr.all, cr.action = true, Deny
		t.clusterRules[cr.ref.index()].Action = Deny
	}
	if r.ports == nil {
		cr.ports.all = true
	}
	for _, pt := range r.ports {
		switch {
		case pt.name != "":
			n := b.portName(pt.name)
			for _, proto := range []Protocol{TCP, UDP, SCTP} {
				cr.ports.entries = append(cr.ports.entries, portEntry{proto: proto, name: n})
			}
		case pt.proto.HasPorts():
			cr.ports.entries = append(cr.ports.entries, portEntry{proto: pt.proto, lo: pt.lo, hi: pt.hi, name: -1})
		default:
			failClosed("a protocol entry without a field podgate knows")
			if r.action != Accept {
				cr.ports.all = true
			}
		}
	}
	var sets []bitset
	for j := range r.peers {
		peer := &r.peers[j]
		pw := fmt.Sprintf("%s[%d]", peersField(dir), j)
		switch {
		case peer.pods != nil:
			s, err := b.selectorSet(*peer.pods)
			if err != nil {
				failClosed(fmt.Sprintf("%s: %v", pw, err))
				continue
			}
			sets = append(sets, s)
		case peer.nodes != nil:
			sel, err := metav1.LabelSelectorAsSelector(peer.nodes)
			if err != nil {
				failClosed(fmt.Sprintf("%s.nodes: %v", pw, err))
				continue
			}
			for _, n := range b.nodes {
				if sel.Matches(n.labels) {
					cr.nodes = append(cr.nodes, n.addrs...)
				}
			}
		case peer.networks != nil:
			for k, s := range peer.networks {
				pfx, err := parseNetwork(s)
				if err != nil {
					failClosed(fmt.Sprintf("%s.networks[%d]: %v", pw, k, err))
					continue
				}
				cr.blocks = append(cr.blocks, pfx)
			}
		case peer.domains != nil:
			// Warned about with the policy; an Accept rule's domain
			// names match nothing.
			if r.action != Accept {
				failClosed(pw + ".domainNames: podgate does not implement domainNames peers")
			}
		default:
			failClosed(pw + ": a peer without a field podgate knows")
		}
	}
	slices.SortFunc(cr.nodes, netip.Addr.Compare)
	cr.nodes = slices.Compact(cr.nodes)
	switch len(sets) {
	case 0:
	case 1:
		cr.peers = sets[0]
	default:
		cr.peers = newBitset(len(t.identities))
		for _, s := range sets {
			cr.peers.or(s)
		}
	}
	return cr
}

// buildTierGroups gives each identity, per tier and direction, the group
// of rules of the cluster policies that select it, in precedence order.
// Only tables with cluster policies have tiers.
func (b *builder) buildTierGroups(cps []cpolicy) {
	t := b.t
	if len(cps) == 0 {
		return
	}
	perID := make([][2][2][]int32, len(t.identities))
	for pi, ids := range b.cpSelected {
		for _, id := range ids {
			for dir := Ingress; dir <= Egress; dir++ {
				if len(cps[pi].rules[dir]) > 0 {
					tier := cps[pi].tier
					perID[id][tier][dir] = append(perID[id][tier][dir], int32(pi))
				}
			}
		}
	}
	groups := groupIndex{index: make(map[string]int32)}
	idGroups := make([][2][2]int32, len(t.identities))
	for id := range perID {
		for tier := AdminTier; tier <= BaselineTier; tier++ {
			for dir := Ingress; dir <= Egress; dir++ {
				pols := perID[id][tier][dir]
				idGroups[id][tier][dir] = -1
				if len(pols) == 0 {
					continue
				}
				idGroups[id][tier][dir] = groups.get(dir, pols, func() int32 {
					rules := concat(pols, func(p int32) []clusterRule { return b.cpCompiled[p][dir] })
					t.tierGroups = append(t.tierGroups, tierGroup{policies: pols, rules: rules})
					return int32(len(t.tierGroups) - 1)
				})
			}
		}
	}
	t.cpSelected, t.cpRules = b.cpSelected, b.cpCompiled
	t.tiers = make([]tierHot, len(t.endpoints))
	for i := range t.endpoints {
		t.tiers[i] = tierHot{groups: idGroups[t.endpoints[i].identity]}
	}
}

// decideTiers is [Table.decide] for tables with cluster policies: the
// Admin tier, then NetworkPolicy, then (for pods no NetworkPolicy selects
// for dir) the Baseline tier, then the default, which allows.
func (t *Table) decideTiers(dir Direction, self, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) Decision {
	peerID, port := t.tierArgs(peer, proto, port)
	th := &t.tiers[self]
	if g := th.groups[AdminTier][dir]; g >= 0 {
		if r := t.tierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); r != nil {
			switch r.action {
			case Accept:
				return Decision{Reason: AdminAccepted, Endpoint: self, Rule: noRule}
			case Deny:
				return Decision{Reason: AdminDenied, Endpoint: self, Rule: noRule}
			}
		}
	}
	if g := t.hot[self].groups[dir]; g >= 0 {
		rules := t.groups[g].rules
		for i := range rules {
			if rules[i].matches(t, peerID, peerAddr, proto, port, dstEp) {
				return Decision{Reason: AllowedByRule, Endpoint: self, Rule: rules[i].ref}
			}
		}
		return Decision{Reason: Denied, Endpoint: self, Rule: noRule}
	}
	if g := th.groups[BaselineTier][dir]; g >= 0 {
		if r := t.tierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); r != nil {
			switch r.action {
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
		if r := t.tierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); r != nil {
			if r.action != Pass {
				return r.ref
			}
			passed = r.ref
		}
	}
	if t.hot[self].groups[dir] >= 0 {
		return passed
	}
	if g := th.groups[BaselineTier][dir]; g >= 0 {
		if r := t.tierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); r != nil {
			return r.ref
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
		for i := range sp.backends {
			b := &sp.backends[i]
			dec := t.decide(Egress, s, b.ep, b.addr, proto, b.port, b.ep)
			if !dec.Allowed() {
				chosen = i
				break
			}
			if chosen < 0 && dec.Reason != Loopback {
				chosen = i
			}
		}
		if chosen >= 0 {
			b := &sp.backends[chosen]
			ref = t.tierRule(Egress, s, b.ep, b.addr, proto, b.port, b.ep)
		}
	default:
		ref = t.tierRule(Egress, s, d, dst, proto, port, d)
	}
	return ref, ref.Valid()
}

// ClusterPolicies returns the compiled cluster policies in precedence
// order: Admin tier first, lower priority first, then by kind
// (ClusterNetworkPolicy first) and name.
func (t *Table) ClusterPolicies() []ClusterPolicyInfo { return t.clusterPolicies }

// ClusterRule describes ref, which must be valid and come from this
// table.
func (t *Table) ClusterRule(ref ClusterRuleRef) ClusterRuleInfo { return t.clusterRules[ref.index()] }

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
	return t.tierGroups[g].policies
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

// ClusterNetworkPolicyKinds are the apiVersions [Load] reads for each
// cluster policy kind.
var clusterKinds = map[string][]string{
	KindClusterNetworkPolicy:       {npav1beta1.GroupVersion.String(), "policy.networking.k8s.io/v1alpha2"},
	KindAdminNetworkPolicy:         {npav1alpha1.GroupVersion.String()},
	KindBaselineAdminNetworkPolicy: {npav1alpha1.GroupVersion.String()},
}
