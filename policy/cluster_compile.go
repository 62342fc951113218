package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/podgate/podgate/policy/table"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

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
	spec := b.spec
	b.cpSelected = make([][]int32, len(cps))
	b.cpCompiled = make([][2][]table.ClusterRule, len(cps))
	b.cpSubject = make([]int32, len(cps))
	b.cpPeers = make([][2][][]int32, len(cps))
	for pi := range cps {
		p := &cps[pi]
		spec.ClusterPolicies = append(spec.ClusterPolicies, table.ClusterPolicyInfo{Kind: p.kind, Name: p.name, Tier: p.tier, Priority: p.priority,
			NumIngress: len(p.rules[table.Ingress]), NumEgress: len(p.rules[table.Egress])})
		for _, w := range clusterPolicyWarnings(p) {
			spec.Warnings = append(spec.Warnings, fmt.Sprintf("%s: %s", p, w))
		}
		subject, set, err := b.selectorSet(p.subject)
		if err != nil {
			spec.Warnings = append(spec.Warnings, fmt.Sprintf("%s: spec.subject: %v: the policy selects no pod", p, err))
		}
		b.cpSubject[pi] = set
		for id := range spec.Identities {
			if subject.Has(int32(id)) {
				b.cpSelected[pi] = append(b.cpSelected[pi], int32(id))
			}
		}
		for dir := table.Ingress; dir <= table.Egress; dir++ {
			for ri := range p.rules[dir] {
				cr, sets := b.compileClusterRule(p, dir, ri)
				b.cpCompiled[pi][dir] = append(b.cpCompiled[pi][dir], cr)
				b.cpPeers[pi][dir] = append(b.cpPeers[pi][dir], sets)
			}
		}
	}
}

// selectorSet returns the identities a namespaces or pods selector
// matches, and its peer set (an index into b.psets), or -1 for a selector
// that selects nothing.
func (b *builder) selectorSet(s cselector) (table.Bitset, int32, error) {
	if s.ns == nil {
		return table.NewBitset(len(b.spec.Identities)), -1, nil
	}
	id, err := b.peerSet("", s.ns, s.pod)
	if err != nil {
		return nil, -1, err
	}
	return b.psets[id].bits, id, nil
}

// compileClusterRule compiles one rule of a cluster policy; it also
// returns the peer sets (indexes into b.psets) its Peers are the union of.
func (b *builder) compileClusterRule(p *cpolicy, dir table.Direction, ri int) (table.ClusterRule, []int32) {
	spec := b.spec
	r := &p.rules[dir][ri]
	info := table.ClusterRuleInfo{Kind: p.kind, Policy: p.name, Tier: p.tier, Priority: p.priority, Direction: dir, Index: ri, Name: r.name, Action: r.action}
	spec.ClusterRules = append(spec.ClusterRules, info)
	ruleIndex := len(spec.ClusterRules) - 1
	cr := table.ClusterRule{Ref: table.ClusterRuleRefAt(ruleIndex), Action: r.action}
	where := fmt.Sprintf("%s: spec.%s[%d]", p, dir, ri)
	// failClosed handles what podgate cannot evaluate: for an Accept rule
	// it matches nothing, a Deny or Pass rule becomes a Deny of everything.
	failClosed := func(what string) {
		if r.action == table.Accept {
			spec.Warnings = append(spec.Warnings, fmt.Sprintf("%s: %s: the Accept rule ignores it (fail closed)", where, what))
			return
		}
		if !cr.All {
			spec.Warnings = append(spec.Warnings, fmt.Sprintf("%s: %s: the %s rule denies every connection of its subject (fail closed)", where, what, r.action))
		}
		cr.All, cr.Action = true, table.Deny
		spec.ClusterRules[ruleIndex].Action = table.Deny
	}
	if r.ports == nil {
		cr.Ports.All = true
	}
	for _, pt := range r.ports {
		switch {
		case pt.name != "":
			n := b.portName(pt.name)
			for _, proto := range []table.Protocol{table.TCP, table.UDP, table.SCTP} {
				cr.Ports.Entries = append(cr.Ports.Entries, table.PortEntry{Proto: proto, Name: n})
			}
		case pt.proto.HasPorts():
			cr.Ports.Entries = append(cr.Ports.Entries, table.PortEntry{Proto: pt.proto, Lo: pt.lo, Hi: pt.hi, Name: -1})
		default:
			failClosed("a protocol entry without a field podgate knows")
			if r.action != table.Accept {
				cr.Ports.All = true
			}
		}
	}
	var sets []table.Bitset
	var ids []int32
	for j := range r.peers {
		peer := &r.peers[j]
		pw := fmt.Sprintf("%s[%d]", peersField(dir), j)
		switch {
		case peer.pods != nil:
			s, id, err := b.selectorSet(*peer.pods)
			if err != nil {
				failClosed(fmt.Sprintf("%s: %v", pw, err))
				continue
			}
			sets = append(sets, s)
			if id >= 0 {
				ids = append(ids, id)
			}
		case peer.nodes != nil:
			sel, err := metav1.LabelSelectorAsSelector(peer.nodes)
			if err != nil {
				failClosed(fmt.Sprintf("%s.nodes: %v", pw, err))
				continue
			}
			for _, n := range b.nodes {
				if sel.Matches(n.labels) {
					cr.Nodes = append(cr.Nodes, n.addrs...)
				}
			}
		case peer.networks != nil:
			for k, s := range peer.networks {
				pfx, err := parseNetwork(s)
				if err != nil {
					failClosed(fmt.Sprintf("%s.networks[%d]: %v", pw, k, err))
					continue
				}
				cr.Blocks = append(cr.Blocks, pfx)
			}
		case peer.domains != nil:
			// Warned about with the policy; an Accept rule's domain
			// names match nothing.
			if r.action != table.Accept {
				failClosed(pw + ".domainNames: podgate does not implement domainNames peers")
			}
		default:
			failClosed(pw + ": a peer without a field podgate knows")
		}
	}
	slices.SortFunc(cr.Nodes, netip.Addr.Compare)
	cr.Nodes = slices.Compact(cr.Nodes)
	switch len(sets) {
	case 0:
	case 1:
		cr.Peers = sets[0]
	default:
		cr.Peers = table.NewBitset(len(spec.Identities))
		for _, s := range sets {
			cr.Peers.Or(s)
		}
	}
	return cr, ids
}

// buildTierGroups gives each identity, per tier and direction, the group
// of rules of the cluster policies that select it, in precedence order.
// Only tables with cluster policies have tiers.
func (b *builder) buildTierGroups(cps []cpolicy) {
	spec := b.spec
	if len(cps) == 0 {
		return
	}
	perID := make([][2][2][]int32, len(spec.Identities))
	for pi, ids := range b.cpSelected {
		for _, id := range ids {
			for dir := table.Ingress; dir <= table.Egress; dir++ {
				if len(cps[pi].rules[dir]) > 0 {
					tier := cps[pi].tier
					perID[id][tier][dir] = append(perID[id][tier][dir], int32(pi))
				}
			}
		}
	}
	b.tierGroups = groupIndex{index: make(map[string]int32)}
	idGroups := make([][2][2]int32, len(spec.Identities))
	for id := range perID {
		for tier := table.AdminTier; tier <= table.BaselineTier; tier++ {
			for dir := table.Ingress; dir <= table.Egress; dir++ {
				idGroups[id][tier][dir] = b.tierGroup(dir, perID[id][tier][dir])
			}
		}
	}
	spec.ClusterSelected, spec.CompiledClusterRules = b.cpSelected, b.cpCompiled
	spec.IdentityTiers = idGroups
}

// tierGroup returns the tier group of the rules of the cluster policies
// pols (in precedence order, all of one tier) for dir, making it the
// first time, or -1 when pols is empty.
func (b *builder) tierGroup(dir table.Direction, pols []int32) int32 {
	if len(pols) == 0 {
		return -1
	}
	return b.tierGroups.get(dir, pols, func() int32 {
		rules := concat(pols, func(p int32) []table.ClusterRule { return b.cpCompiled[p][dir] })
		b.spec.TierGroups = append(b.spec.TierGroups, table.TierGroup{Policies: pols, Rules: rules})
		b.tierGroupDir = append(b.tierGroupDir, dir)
		return int32(len(b.spec.TierGroups) - 1)
	})
}

// ClusterNetworkPolicyKinds are the apiVersions [Load] reads for each
// cluster policy kind.
var clusterKinds = map[string][]string{
	KindClusterNetworkPolicy:       {npav1beta1.GroupVersion.String(), "policy.networking.k8s.io/v1alpha2"},
	KindAdminNetworkPolicy:         {npav1alpha1.GroupVersion.String()},
	KindBaselineAdminNetworkPolicy: {npav1alpha1.GroupVersion.String()},
}
