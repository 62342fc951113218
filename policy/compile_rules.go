package policy

import (
	"encoding/binary"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podgate/podgate/policy/table"
)

// NetworkPolicy rules compiled: each rule's ports and peers (selectors
// evaluated once into sets of identities, ipBlocks), then per identity and
// direction the group of the rules of the policies that select it.

func hasType(np *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	return slices.Contains(np.Spec.PolicyTypes, t)
}

func (b *builder) addPolicies(nps []*networkingv1.NetworkPolicy) error {
	spec := b.spec
	spec.Policies = make([]table.PolicyInfo, len(nps))
	b.selected = make([][]int32, len(nps))
	b.polSel = make([]labels.Selector, len(nps))
	b.polNS = make([]int32, len(nps))
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
		sel, err := b.selector(&np.Spec.PodSelector)
		if err != nil {
			return invalid("NetworkPolicy", np.Namespace, np.Name, fmt.Errorf("spec.podSelector: %w", err))
		}
		b.polSel[pi], b.polNS[pi] = sel, nsi
		for _, id := range b.nsIDs[nsi] {
			if sel.Matches(b.idLabels[id]) {
				b.selected[pi] = append(b.selected[pi], id)
			}
		}
	}
	// Rules are compiled per policy, then copied into the groups of the
	// identities the policy selects.
	compiled := make([][2][]table.Rule, len(nps))
	b.compiledPeers = make([][2][][]int32, len(nps))
	for pi, np := range nps {
		info := spec.Policies[pi]
		if info.Ingress {
			for ri, r := range np.Spec.Ingress {
				cr, sets, err := b.compileRule(np, table.RuleRef{Policy: int32(pi), Index: int32(ri)}, r.From, r.Ports)
				if err != nil {
					return invalid("NetworkPolicy", np.Namespace, np.Name, fmt.Errorf("spec.ingress[%d]: %w", ri, err))
				}
				compiled[pi][table.Ingress] = append(compiled[pi][table.Ingress], cr)
				b.compiledPeers[pi][table.Ingress] = append(b.compiledPeers[pi][table.Ingress], sets)
			}
		}
		if info.Egress {
			for ri, r := range np.Spec.Egress {
				cr, sets, err := b.compileRule(np, table.RuleRef{Policy: int32(pi), Index: int32(ri)}, r.To, r.Ports)
				if err != nil {
					return invalid("NetworkPolicy", np.Namespace, np.Name, fmt.Errorf("spec.egress[%d]: %w", ri, err))
				}
				compiled[pi][table.Egress] = append(compiled[pi][table.Egress], cr)
				b.compiledPeers[pi][table.Egress] = append(b.compiledPeers[pi][table.Egress], sets)
			}
		}
	}
	b.compiled = compiled
	return nil
}

// compileRule compiles one rule of np; it also returns the peer sets
// (indexes into builder.psets) that the rule's peers are the union of.
func (b *builder) compileRule(np *networkingv1.NetworkPolicy, ref table.RuleRef, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (table.Rule, []int32, error) {
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
		return r, nil, nil
	}
	var sets []table.Bitset
	var ids []int32
	for i, peer := range peers {
		if peer.IPBlock != nil {
			cidr, err := parseCIDR(peer.IPBlock.CIDR)
			if err != nil {
				return table.Rule{}, nil, fmt.Errorf("peer %d: ipBlock.cidr: %w", i, err)
			}
			blk := table.IPBlock{CIDR: cidr}
			for _, e := range peer.IPBlock.Except {
				ex, err := parseCIDR(e)
				if err != nil {
					return table.Rule{}, nil, fmt.Errorf("peer %d: ipBlock.except: %w", i, err)
				}
				blk.Except = append(blk.Except, ex)
			}
			r.Blocks = append(r.Blocks, blk)
			continue
		}
		id, err := b.peerSet(np.Namespace, peer.NamespaceSelector, peer.PodSelector)
		if err != nil {
			return table.Rule{}, nil, fmt.Errorf("peer %d: %w", i, err)
		}
		sets = append(sets, b.psets[id].bits)
		ids = append(ids, id)
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
	return r, ids, nil
}

// selector parses a label selector. A trusted selector of matchLabels
// only is built from keys and values validated once per compile (the
// regular expressions of that validation were the largest part of
// compiling the policies, and policies share a few keys and values); it
// matches and prints exactly as one that metav1.LabelSelectorAsSelector
// builds, and an invalid key or value is still an error.
func (b *builder) selector(s *metav1.LabelSelector) (labels.Selector, error) {
	if !b.opts.Trusted || s == nil || len(s.MatchExpressions) > 0 {
		return metav1.LabelSelectorAsSelector(s)
	}
	for k, v := range s.MatchLabels {
		if !b.validLabel(k, v) {
			return metav1.LabelSelectorAsSelector(s)
		}
	}
	return labels.SelectorFromValidatedSet(s.MatchLabels), nil
}

// validLabel reports whether k is a valid label key and v a valid label
// value, as labels.NewRequirement checks them, remembering the answers.
func (b *builder) validLabel(k, v string) bool {
	if b.labelKeys == nil {
		b.labelKeys, b.labelValues = make(map[string]bool), make(map[string]bool)
	}
	ok, seen := b.labelKeys[k]
	if !seen {
		ok = len(content.IsLabelKey(k)) == 0
		b.labelKeys[k] = ok
	}
	if !ok {
		return false
	}
	ok, seen = b.labelValues[v]
	if !seen {
		ok = len(validation.IsValidLabelValue(v)) == 0
		b.labelValues[v] = ok
	}
	return ok
}

// peerSetInfo is a pod/namespace selector peer: the namespaces it
// selects, its pod selector, and the identities it matches.
type peerSetInfo struct {
	namespaces []int32
	pod        labels.Selector // nil: every pod of the namespaces
	bits       table.Bitset
}

// peerSet returns the peer set (an index into b.psets) of a pod/namespace
// selector peer of a policy in namespace ns: the identities it matches.
// Equal peers share one set.
func (b *builder) peerSet(ns string, nsSel, podSel *metav1.LabelSelector) (int32, error) {
	var nsKey string
	var namespaces []int32
	if nsSel == nil {
		nsKey = "ns=" + ns
		namespaces = []int32{b.namespace(ns)}
	} else {
		sel, err := b.selector(nsSel)
		if err != nil {
			return -1, fmt.Errorf("namespaceSelector: %w", err)
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
		sel, err := b.selector(podSel)
		if err != nil {
			return -1, fmt.Errorf("podSelector: %w", err)
		}
		podMatch, podKey = sel, sel.String()
	}
	key := nsKey + "\x00" + podKey
	if id, ok := b.peerSets[key]; ok {
		return id, nil
	}
	s := table.NewBitset(len(b.spec.Identities))
	for _, nsi := range namespaces {
		for _, id := range b.nsIDs[nsi] {
			if podMatch == nil || podMatch.Matches(b.idLabels[id]) {
				s.Set(id)
			}
		}
	}
	id := int32(len(b.psets))
	b.psets = append(b.psets, peerSetInfo{namespaces: namespaces, pod: podMatch, bits: s})
	b.peerSets[key] = id
	return id, nil
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
	b.groups = groupIndex{index: make(map[string]int32)}
	for id := range perID {
		for dir := table.Ingress; dir <= table.Egress; dir++ {
			if pols := perID[id][dir]; len(pols) > 0 {
				spec.Identities[id].Groups[dir] = b.group(dir, pols)
			}
		}
	}
}

// group returns the group of the rules of the policies pols (ascending)
// for dir, making it the first time.
func (b *builder) group(dir table.Direction, pols []int32) int32 {
	return b.groups.get(dir, pols, func() int32 {
		rules := concat(pols, func(p int32) []table.Rule { return b.compiled[p][dir] })
		b.spec.Groups = append(b.spec.Groups, table.Group{Policies: pols, Rules: rules})
		b.groupDir = append(b.groupDir, dir)
		return int32(len(b.spec.Groups) - 1)
	})
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
