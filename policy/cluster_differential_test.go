package policy_test

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// The reference evaluator's cluster policy tiers, written from the API's
// documentation and sharing no code with the package: for each side, the
// Admin tier's policies by priority (then kind, ClusterNetworkPolicy
// first, then name, as podgate documents its choice for equal
// priorities), first matching rule wins (Accept and Deny decide, Pass goes
// on); then NetworkPolicy if any selects the pod for the direction; then
// the Baseline tier the same way (the BaselineAdminNetworkPolicy after the
// Baseline ClusterNetworkPolicies); then allow.

// refCP is a cluster policy of any kind, read by the reference.
type refCP struct {
	tier     string // Admin or Baseline
	priority int32
	kind     int // 0 ClusterNetworkPolicy, 1 AdminNetworkPolicy, 2 BaselineAdminNetworkPolicy
	name     string
	subNS    *metav1.LabelSelector
	subPod   *metav1.LabelSelector // nil: every pod
	ingress  []refCPRule
	egress   []refCPRule
}

type refCPRule struct {
	action string // Accept, Deny or Pass
	peers  []refCPPeer
	ports  []refCPPort // nil: all
}

type refCPPeer struct {
	ns, pod  *metav1.LabelSelector // namespaces (pod nil) or pods
	nodes    *metav1.LabelSelector
	networks []string
}

type refCPPort struct {
	proto  string // TCP, UDP, SCTP; "" for a named port
	lo, hi int32
	name   string
}

// refPeer reads one peer from its fields: namespaces, pods (namespace
// and pod selectors), nodes or networks.
func refPeer(namespaces, podsNS, podsPod, nodes *metav1.LabelSelector, networks []string) refCPPeer {
	switch {
	case namespaces != nil:
		return refCPPeer{ns: namespaces}
	case podsNS != nil:
		return refCPPeer{ns: podsNS, pod: podsPod}
	case nodes != nil:
		return refCPPeer{nodes: nodes}
	}
	return refCPPeer{networks: networks}
}

func refStrings[T ~string](xs []T) []string {
	var out []string
	for _, x := range xs {
		out = append(out, string(x))
	}
	return out
}

func (w *refWorld) clusterPolicies() []refCP {
	var out []refCP
	for _, p := range w.c.ClusterNetworkPolicies {
		rp := refCP{tier: string(p.Spec.Tier), priority: p.Spec.Priority, name: p.Name}
		if p.Spec.Subject.Namespaces != nil {
			rp.subNS = p.Spec.Subject.Namespaces
		} else {
			rp.subNS, rp.subPod = &p.Spec.Subject.Pods.NamespaceSelector, &p.Spec.Subject.Pods.PodSelector
		}
		for _, r := range p.Spec.Ingress {
			rr := refCPRule{action: string(r.Action), ports: refProtocols(r.Protocols)}
			for _, pe := range r.From {
				var pns, ppod *metav1.LabelSelector
				if pe.Pods != nil {
					pns, ppod = &pe.Pods.NamespaceSelector, &pe.Pods.PodSelector
				}
				rr.peers = append(rr.peers, refPeer(pe.Namespaces, pns, ppod, nil, nil))
			}
			rp.ingress = append(rp.ingress, rr)
		}
		for _, r := range p.Spec.Egress {
			rr := refCPRule{action: string(r.Action), ports: refProtocols(r.Protocols)}
			for _, pe := range r.To {
				var pns, ppod *metav1.LabelSelector
				if pe.Pods != nil {
					pns, ppod = &pe.Pods.NamespaceSelector, &pe.Pods.PodSelector
				}
				rr.peers = append(rr.peers, refPeer(pe.Namespaces, pns, ppod, pe.Nodes, refStrings(pe.Networks)))
			}
			rp.egress = append(rp.egress, rr)
		}
		out = append(out, rp)
	}
	alphaAction := func(a string) string {
		if a == "Allow" {
			return "Accept"
		}
		return a
	}
	// The v1alpha1 kinds: their rules, taken apart by the caller.
	type alphaRule struct {
		action string
		ports  *[]npav1alpha1.AdminNetworkPolicyPort
		peers  []refCPPeer
	}
	alpha := func(kind int, name, tier string, prio int32, sub npav1alpha1.AdminNetworkPolicySubject, ingress, egress []alphaRule) refCP {
		rp := refCP{tier: tier, priority: prio, kind: kind, name: name}
		if sub.Namespaces != nil {
			rp.subNS = sub.Namespaces
		} else {
			rp.subNS, rp.subPod = &sub.Pods.NamespaceSelector, &sub.Pods.PodSelector
		}
		for _, r := range ingress {
			rp.ingress = append(rp.ingress, refCPRule{action: alphaAction(r.action), ports: refAlphaPorts(r.ports), peers: r.peers})
		}
		for _, r := range egress {
			rp.egress = append(rp.egress, refCPRule{action: alphaAction(r.action), ports: refAlphaPorts(r.ports), peers: r.peers})
		}
		return rp
	}
	alphaPods := func(np *npav1alpha1.NamespacedPod) (*metav1.LabelSelector, *metav1.LabelSelector) {
		if np == nil {
			return nil, nil
		}
		return &np.NamespaceSelector, &np.PodSelector
	}
	for _, p := range w.c.AdminNetworkPolicies {
		var in, eg []alphaRule
		for _, r := range p.Spec.Ingress {
			in = append(in, alphaRule{string(r.Action), r.Ports, refAlphaPeers(r.From)})
		}
		for _, r := range p.Spec.Egress {
			var ps []refCPPeer
			for _, pe := range r.To {
				pns, ppod := alphaPods(pe.Pods)
				ps = append(ps, refPeer(pe.Namespaces, pns, ppod, pe.Nodes, refStrings(pe.Networks)))
			}
			eg = append(eg, alphaRule{string(r.Action), r.Ports, ps})
		}
		out = append(out, alpha(1, p.Name, "Admin", p.Spec.Priority, p.Spec.Subject, in, eg))
	}
	for _, p := range w.c.BaselineAdminNetworkPolicies {
		var in, eg []alphaRule
		for _, r := range p.Spec.Ingress {
			in = append(in, alphaRule{string(r.Action), r.Ports, refAlphaPeers(r.From)})
		}
		for _, r := range p.Spec.Egress {
			var ps []refCPPeer
			for _, pe := range r.To {
				pns, ppod := alphaPods(pe.Pods)
				ps = append(ps, refPeer(pe.Namespaces, pns, ppod, pe.Nodes, refStrings(pe.Networks)))
			}
			eg = append(eg, alphaRule{string(r.Action), r.Ports, ps})
		}
		out = append(out, alpha(2, p.Name, "Baseline", 1000, p.Spec.Subject, in, eg))
	}
	slices.SortFunc(out, func(a, b refCP) int {
		return cmp.Or(cmp.Compare(a.priority, b.priority), cmp.Compare(a.kind, b.kind), cmp.Compare(a.name, b.name))
	})
	return out
}

func refProtocols(ps []npav1beta1.ClusterNetworkPolicyProtocol) []refCPPort {
	if ps == nil {
		return nil
	}
	out := []refCPPort{}
	for _, p := range ps {
		var proto string
		var dp *npav1beta1.Port
		switch {
		case p.TCP != nil:
			proto, dp = "TCP", p.TCP.DestinationPort
		case p.UDP != nil:
			proto, dp = "UDP", p.UDP.DestinationPort
		case p.SCTP != nil:
			proto, dp = "SCTP", p.SCTP.DestinationPort
		default:
			out = append(out, refCPPort{name: p.DestinationNamedPort})
			continue
		}
		if dp.Range != nil {
			out = append(out, refCPPort{proto: proto, lo: dp.Range.Start, hi: dp.Range.End})
		} else {
			out = append(out, refCPPort{proto: proto, lo: dp.Number, hi: dp.Number})
		}
	}
	return out
}

func refAlphaPorts(ps *[]npav1alpha1.AdminNetworkPolicyPort) []refCPPort {
	if ps == nil {
		return nil
	}
	out := []refCPPort{}
	for _, p := range *ps {
		proto := func(p corev1.Protocol) string {
			if p == "" {
				return "TCP"
			}
			return string(p)
		}
		switch {
		case p.PortNumber != nil:
			out = append(out, refCPPort{proto: proto(p.PortNumber.Protocol), lo: p.PortNumber.Port, hi: p.PortNumber.Port})
		case p.PortRange != nil:
			out = append(out, refCPPort{proto: proto(p.PortRange.Protocol), lo: p.PortRange.Start, hi: p.PortRange.End})
		default:
			out = append(out, refCPPort{name: *p.NamedPort})
		}
	}
	return out
}

func refAlphaPeers(ps []npav1alpha1.AdminNetworkPolicyIngressPeer) []refCPPeer {
	var out []refCPPeer
	for _, pe := range ps {
		if pe.Namespaces != nil {
			out = append(out, refCPPeer{ns: pe.Namespaces})
		} else {
			out = append(out, refCPPeer{ns: &pe.Pods.NamespaceSelector, pod: &pe.Pods.PodSelector})
		}
	}
	return out
}

func (w *refWorld) refSelects(ns, pod *metav1.LabelSelector, p *corev1.Pod) bool {
	if p == nil {
		return false
	}
	nsName := p.Namespace
	if nsName == "" {
		nsName = "default"
	}
	return refSelectorMatches(ns, w.namespaceLabels(nsName)) && (pod == nil || refSelectorMatches(pod, p.Labels))
}

func refCPPortMatches(ports []refCPPort, proto table.Protocol, port uint16, dst *corev1.Pod) bool {
	if ports == nil {
		return true
	}
	for _, pp := range ports {
		if pp.name == "" {
			if pp.proto == proto.String() && int32(port) >= pp.lo && int32(port) <= pp.hi {
				return true
			}
			continue
		}
		if dst == nil {
			continue
		}
		for _, c := range dst.Spec.Containers {
			for _, cp := range c.Ports {
				cproto := "TCP"
				if cp.Protocol != "" {
					cproto = string(cp.Protocol)
				}
				if cp.Name == pp.name && cproto == proto.String() && cp.ContainerPort == int32(port) {
					return true
				}
			}
		}
	}
	return false
}

func (w *refWorld) refCPPeerMatches(pe refCPPeer, addr netip.Addr, peer *corev1.Pod) bool {
	switch {
	case pe.ns != nil:
		return w.refSelects(pe.ns, pe.pod, peer)
	case pe.nodes != nil:
		for _, n := range w.c.Nodes {
			if !refSelectorMatches(pe.nodes, n.Labels) {
				continue
			}
			for _, a := range n.Status.Addresses {
				if a.Address == addr.String() {
					return true
				}
			}
		}
		return false
	}
	for _, n := range pe.networks {
		if refCIDR(n, addr) {
			return true
		}
	}
	return false
}

// refTier runs the rules of one tier for pod self; it returns "Accept",
// "Deny", "Pass" or "" (no rule matched).
func (w *refWorld) refTier(tier string, egress bool, self *corev1.Pod, peerAddr netip.Addr, peer, dst *corev1.Pod, proto table.Protocol, port uint16) string {
	if !proto.HasPorts() {
		port = 0
	}
	for _, cp := range w.clusterPolicies() {
		if cp.tier != tier || !w.refSelects(cp.subNS, cp.subPod, self) {
			continue
		}
		rules := cp.ingress
		if egress {
			rules = cp.egress
		}
		for _, r := range rules {
			if !refCPPortMatches(r.ports, proto, port, dst) {
				continue
			}
			for _, pe := range r.peers {
				if w.refCPPeerMatches(pe, peerAddr, peer) {
					return r.action
				}
			}
		}
	}
	return ""
}

// refSelectedByNetworkPolicy reports whether a NetworkPolicy selects the
// pod for the direction.
func (w *refWorld) refSelectedByNetworkPolicy(egress bool, self *corev1.Pod) bool {
	for _, np := range w.c.Policies {
		in, eg := refTypes(np)
		if (egress && !eg) || (!egress && !in) {
			continue
		}
		ns := np.Namespace
		if ns == "" {
			ns = "default"
		}
		if ns == self.Namespace && refSelectorMatches(&np.Spec.PodSelector, self.Labels) {
			return true
		}
	}
	return false
}

// refTiered decides one direction with the tiers around NetworkPolicy.
func (w *refWorld) refTiered(egress bool, self *corev1.Pod, peerAddr netip.Addr, peer, dst *corev1.Pod, proto table.Protocol, port uint16) bool {
	if self == nil || peer == self {
		return true
	}
	switch w.refTier("Admin", egress, self, peerAddr, peer, dst, proto, port) {
	case "Accept":
		return true
	case "Deny":
		return false
	}
	if w.refSelectedByNetworkPolicy(egress, self) {
		return w.refSide(egress, self, peerAddr, peer, dst, proto, port)
	}
	return w.refTier("Baseline", egress, self, peerAddr, peer, dst, proto, port) != "Deny"
}

// --- random cluster policies ---

func (g gen) cpSelector() *metav1.LabelSelector {
	if g.r.IntN(3) == 0 {
		return &metav1.LabelSelector{}
	}
	return g.selector()
}

func (g gen) cpAction(baseline, alpha bool) string {
	actions := []string{"Accept", "Deny", "Pass"}
	if alpha {
		actions[0] = "Allow"
	}
	if baseline && alpha {
		actions = actions[:2]
	}
	return actions[g.r.IntN(len(actions))]
}

var cpNets = map[bool][]string{
	true:  {"10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/24", "10.1.1.0/24", "10.1.0.4/30", "192.0.2.0/24", "0.0.0.0/0", "10.9.9.9/32"},
	false: {"fd00::/8", "fd00:1::/32", "fd00:1::/120", "fd00:1::100/120", "fd00:1::4/126", "2001:db8::/32", "::/0", "fd00:2::1/128"},
}

// cpPorts returns nil (every protocol and port) or protocol entries; named
// ports only when allowed (not with networks or nodes peers).
func (g gen) cpPorts(named bool) []npav1beta1.ClusterNetworkPolicyProtocol {
	if g.r.IntN(3) == 0 {
		return nil
	}
	var out []npav1beta1.ClusterNetworkPolicyProtocol
	for range 1 + g.r.IntN(3) {
		if named && g.r.IntN(4) == 0 {
			out = append(out, npav1beta1.ClusterNetworkPolicyProtocol{DestinationNamedPort: g.pick("http", "dns", "metrics")})
			continue
		}
		dp := &npav1beta1.Port{Number: int32(80 + g.r.IntN(4))}
		if g.r.IntN(3) == 0 {
			start := int32(79 + g.r.IntN(4))
			dp = &npav1beta1.Port{Range: &npav1beta1.PortRange{Start: start, End: start + 1 + int32(g.r.IntN(3))}}
		}
		var p npav1beta1.ClusterNetworkPolicyProtocol
		switch g.r.IntN(3) {
		case 0:
			p.TCP = &npav1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: dp}
		case 1:
			p.UDP = &npav1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: dp}
		default:
			p.SCTP = &npav1beta1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: dp}
		}
		out = append(out, p)
	}
	return out
}

// clusterPolicies adds nodes and random cluster policies of every kind.
func (g gen) clusterPolicies(c *policy.Cluster) {
	node := func(name string, ips ...string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: g.labels(2)}}
		for _, ip := range ips {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
		}
		return n
	}
	// Node addresses are among the differential test's outside addresses.
	c.Nodes = append(c.Nodes, node("node-a", "192.0.2.7", "2001:db8::7"), node("node-b", "10.9.9.9", "fd00:2::1"))
	for i := range g.r.IntN(5) {
		p := &npav1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cnp%d", i)}}
		p.Spec.Tier = npav1beta1.AdminTier
		if g.r.IntN(2) == 0 {
			p.Spec.Tier = npav1beta1.BaselineTier
		}
		p.Spec.Priority = int32(g.r.IntN(3))
		if g.r.IntN(2) == 0 {
			p.Spec.Subject.Namespaces = g.cpSelector()
		} else {
			p.Spec.Subject.Pods = &npav1beta1.NamespacedPod{NamespaceSelector: *g.cpSelector(), PodSelector: *g.cpSelector()}
		}
		for range g.r.IntN(4) {
			r := npav1beta1.ClusterNetworkPolicyIngressRule{Action: npav1beta1.ClusterNetworkPolicyRuleAction(g.cpAction(false, false)), Protocols: g.cpPorts(true)}
			for range 1 + g.r.IntN(2) {
				var pe npav1beta1.ClusterNetworkPolicyIngressPeer
				if g.r.IntN(2) == 0 {
					pe.Namespaces = g.cpSelector()
				} else {
					pe.Pods = &npav1beta1.NamespacedPod{NamespaceSelector: *g.cpSelector(), PodSelector: *g.cpSelector()}
				}
				r.From = append(r.From, pe)
			}
			p.Spec.Ingress = append(p.Spec.Ingress, r)
		}
		for range g.r.IntN(4) {
			r := npav1beta1.ClusterNetworkPolicyEgressRule{Action: npav1beta1.ClusterNetworkPolicyRuleAction(g.cpAction(false, false))}
			address := false
			for range 1 + g.r.IntN(2) {
				var pe npav1beta1.ClusterNetworkPolicyEgressPeer
				switch g.r.IntN(4) {
				case 0:
					pe.Namespaces = g.cpSelector()
				case 1:
					pe.Pods = &npav1beta1.NamespacedPod{NamespaceSelector: *g.cpSelector(), PodSelector: *g.cpSelector()}
				case 2:
					pe.Nodes, address = g.cpSelector(), true
				default:
					v4 := g.r.IntN(2) == 0
					for _, n := range cpNets[v4] {
						if g.r.IntN(3) == 0 {
							pe.Networks = append(pe.Networks, npav1beta1.CIDR(n))
						}
					}
					if len(pe.Networks) == 0 {
						pe.Networks = []npav1beta1.CIDR{npav1beta1.CIDR(cpNets[v4][0])}
					}
					address = true
				}
				r.To = append(r.To, pe)
			}
			r.Protocols = g.cpPorts(!address)
			p.Spec.Egress = append(p.Spec.Egress, r)
		}
		c.ClusterNetworkPolicies = append(c.ClusterNetworkPolicies, p)
	}
	// Now and then the v1alpha1 kinds, with the same shapes.
	alphaPorts := func() *[]npav1alpha1.AdminNetworkPolicyPort {
		if g.r.IntN(2) == 0 {
			return nil
		}
		var out []npav1alpha1.AdminNetworkPolicyPort
		for range 1 + g.r.IntN(2) {
			proto := corev1.Protocol(g.pick("TCP", "UDP", "SCTP", ""))
			switch g.r.IntN(3) {
			case 0:
				out = append(out, npav1alpha1.AdminNetworkPolicyPort{PortNumber: &npav1alpha1.Port{Protocol: proto, Port: int32(80 + g.r.IntN(4))}})
			case 1:
				start := int32(79 + g.r.IntN(4))
				out = append(out, npav1alpha1.AdminNetworkPolicyPort{PortRange: &npav1alpha1.PortRange{Protocol: proto, Start: start, End: start + 1 + int32(g.r.IntN(2))}})
			default:
				name := g.pick("http", "dns")
				out = append(out, npav1alpha1.AdminNetworkPolicyPort{NamedPort: &name})
			}
		}
		return &out
	}
	alphaSubject := func() npav1alpha1.AdminNetworkPolicySubject {
		if g.r.IntN(2) == 0 {
			return npav1alpha1.AdminNetworkPolicySubject{Namespaces: g.cpSelector()}
		}
		return npav1alpha1.AdminNetworkPolicySubject{Pods: &npav1alpha1.NamespacedPod{NamespaceSelector: *g.cpSelector(), PodSelector: *g.cpSelector()}}
	}
	alphaPeers := func() []npav1alpha1.AdminNetworkPolicyIngressPeer {
		var out []npav1alpha1.AdminNetworkPolicyIngressPeer
		for range 1 + g.r.IntN(2) {
			if g.r.IntN(2) == 0 {
				out = append(out, npav1alpha1.AdminNetworkPolicyIngressPeer{Namespaces: g.cpSelector()})
			} else {
				out = append(out, npav1alpha1.AdminNetworkPolicyIngressPeer{Pods: &npav1alpha1.NamespacedPod{NamespaceSelector: *g.cpSelector(), PodSelector: *g.cpSelector()}})
			}
		}
		return out
	}
	if g.r.IntN(3) == 0 {
		p := &npav1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "anp"}}
		p.Spec.Priority, p.Spec.Subject = int32(g.r.IntN(3)), alphaSubject()
		for range 1 + g.r.IntN(2) {
			p.Spec.Ingress = append(p.Spec.Ingress, npav1alpha1.AdminNetworkPolicyIngressRule{
				Action: npav1alpha1.AdminNetworkPolicyRuleAction(g.cpAction(false, true)), From: alphaPeers(), Ports: alphaPorts()})
			eg := npav1alpha1.AdminNetworkPolicyEgressRule{Action: npav1alpha1.AdminNetworkPolicyRuleAction(g.cpAction(false, true)), Ports: alphaPorts()}
			if eg.Ports == nil && g.r.IntN(2) == 0 {
				eg.To = []npav1alpha1.AdminNetworkPolicyEgressPeer{{Networks: []npav1alpha1.CIDR{npav1alpha1.CIDR(g.pick(cpNets[true]...))}}}
			} else {
				eg.To = []npav1alpha1.AdminNetworkPolicyEgressPeer{{Namespaces: g.cpSelector()}}
			}
			p.Spec.Egress = append(p.Spec.Egress, eg)
		}
		c.AdminNetworkPolicies = append(c.AdminNetworkPolicies, p)
	}
	if g.r.IntN(3) == 0 {
		p := &npav1alpha1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
		p.Spec.Subject = alphaSubject()
		for range 1 + g.r.IntN(2) {
			p.Spec.Ingress = append(p.Spec.Ingress, npav1alpha1.BaselineAdminNetworkPolicyIngressRule{
				Action: npav1alpha1.BaselineAdminNetworkPolicyRuleAction(g.cpAction(true, true)), From: alphaPeers(), Ports: alphaPorts()})
			eg := npav1alpha1.BaselineAdminNetworkPolicyEgressRule{Action: npav1alpha1.BaselineAdminNetworkPolicyRuleAction(g.cpAction(true, true)), Ports: alphaPorts()}
			if eg.Ports == nil && g.r.IntN(2) == 0 {
				eg.To = []npav1alpha1.BaselineAdminNetworkPolicyEgressPeer{{Nodes: g.cpSelector()}}
			} else {
				eg.To = []npav1alpha1.BaselineAdminNetworkPolicyEgressPeer{{Pods: &npav1alpha1.NamespacedPod{NamespaceSelector: *g.cpSelector(), PodSelector: *g.cpSelector()}}}
			}
			p.Spec.Egress = append(p.Spec.Egress, eg)
		}
		c.BaselineAdminNetworkPolicies = append(c.BaselineAdminNetworkPolicies, p)
	}
}

// checkClusterRule checks that ClusterRuleOf names a rule of the tier and
// action that a decision's reason says decided.
func checkClusterRule(t *testing.T, tab *table.Table, dir table.Direction, d table.Decision, src, dst netip.Addr, proto table.Protocol, port uint16) {
	t.Helper()
	want := map[table.Reason]struct {
		tier   table.Tier
		action table.Action
	}{
		table.AdminAccepted: {table.AdminTier, table.Accept}, table.AdminDenied: {table.AdminTier, table.Deny},
		table.BaselineAccepted: {table.BaselineTier, table.Accept}, table.BaselineDenied: {table.BaselineTier, table.Deny},
	}
	ref, ok := tab.ClusterRuleOf(dir, src, dst, proto, port)
	w, decided := want[d.Reason]
	switch {
	case decided && !ok:
		t.Fatalf("%s -> %s %s/%d %s: %s but ClusterRuleOf names no rule", src, dst, proto, port, dir, d.Reason)
	case decided:
		if r := tab.ClusterRule(ref); r.Tier != w.tier || r.Action != w.action || r.Direction != dir {
			t.Fatalf("%s -> %s %s/%d %s: %s but ClusterRuleOf names %s (%s)", src, dst, proto, port, dir, d.Reason, r, r.Action)
		}
	case ok:
		if r := tab.ClusterRule(ref); r.Action != table.Pass {
			t.Fatalf("%s -> %s %s/%d %s: %s but ClusterRuleOf names %s (%s), not a Pass rule", src, dst, proto, port, dir, d.Reason, r, r.Action)
		}
	}
}
