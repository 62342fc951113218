package policy_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// This file checks the compiled table against a reference evaluator written
// from the NetworkPolicy documentation, sharing no code with the package:
// its own defaulting, selector matching, CIDR matching and port matching,
// applied to the raw objects for every query.

type refWorld struct {
	c       *policy.Cluster
	nsLabel map[string]map[string]string
}

func newRefWorld(c *policy.Cluster) *refWorld {
	w := &refWorld{c: c, nsLabel: map[string]map[string]string{}}
	for _, ns := range c.Namespaces {
		l := map[string]string{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		l["kubernetes.io/metadata.name"] = ns.Name
		w.nsLabel[ns.Name] = l
	}
	return w
}

func (w *refWorld) namespaceLabels(ns string) map[string]string {
	if l, ok := w.nsLabel[ns]; ok {
		return l
	}
	return map[string]string{"kubernetes.io/metadata.name": ns}
}

// refPod finds the live pod that owns an address.
func (w *refWorld) refPod(a netip.Addr) *corev1.Pod {
	for _, p := range w.c.Pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if ip.IP == a.String() {
				return p
			}
		}
	}
	return nil
}

func refSelectorMatches(sel *metav1.LabelSelector, l map[string]string) bool {
	for k, v := range sel.MatchLabels {
		if got, ok := l[k]; !ok || got != v {
			return false
		}
	}
	for _, e := range sel.MatchExpressions {
		v, has := l[e.Key]
		in := false
		for _, x := range e.Values {
			if has && x == v {
				in = true
			}
		}
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			if !in {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			if in {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !has {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if has {
				return false
			}
		}
	}
	return true
}

func refTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		ingress = ingress || t == networkingv1.PolicyTypeIngress
		egress = egress || t == networkingv1.PolicyTypeEgress
	}
	return ingress, egress
}

func refCIDR(s string, a netip.Addr) bool {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n.Contains(net.IP(a.AsSlice()))
}

func (w *refWorld) peerMatches(np *networkingv1.NetworkPolicy, peer networkingv1.NetworkPolicyPeer, a netip.Addr, p *corev1.Pod) bool {
	if peer.IPBlock != nil {
		if !refCIDR(peer.IPBlock.CIDR, a) {
			return false
		}
		for _, e := range peer.IPBlock.Except {
			if refCIDR(e, a) {
				return false
			}
		}
		return true
	}
	if p == nil {
		return false
	}
	if peer.NamespaceSelector == nil {
		if p.Namespace != np.Namespace {
			return false
		}
	} else if !refSelectorMatches(peer.NamespaceSelector, w.namespaceLabels(p.Namespace)) {
		return false
	}
	return peer.PodSelector == nil || refSelectorMatches(peer.PodSelector, p.Labels)
}

func refPortMatches(ports []networkingv1.NetworkPolicyPort, proto table.Protocol, port uint16, dst *corev1.Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		want := "TCP"
		if pp.Protocol != nil {
			want = string(*pp.Protocol)
		}
		if want != proto.String() {
			continue
		}
		if pp.Port == nil {
			return true
		}
		if pp.Port.Type == intstr.Int {
			hi := pp.Port.IntVal
			if pp.EndPort != nil {
				hi = *pp.EndPort
			}
			if int32(port) >= pp.Port.IntVal && int32(port) <= hi {
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
				if cp.Name == pp.Port.StrVal && cproto == want && cp.ContainerPort == int32(port) {
					return true
				}
			}
		}
	}
	return false
}

// refSide decides one direction for pod self against the peer.
func (w *refWorld) refSide(egress bool, self *corev1.Pod, peerAddr netip.Addr, peer, dst *corev1.Pod, proto table.Protocol, port uint16) bool {
	if self == nil {
		return true
	}
	if peer == self {
		return true
	}
	isolated := false
	for _, np := range w.c.Policies {
		in, eg := refTypes(np)
		if (egress && !eg) || (!egress && !in) {
			continue
		}
		if np.Namespace != self.Namespace || !refSelectorMatches(&np.Spec.PodSelector, self.Labels) {
			continue
		}
		isolated = true
		if egress {
			for _, r := range np.Spec.Egress {
				if !refPortMatches(r.Ports, proto, port, dst) {
					continue
				}
				if len(r.To) == 0 {
					return true
				}
				for _, pe := range r.To {
					if w.peerMatches(np, pe, peerAddr, peer) {
						return true
					}
				}
			}
		} else {
			for _, r := range np.Spec.Ingress {
				if !refPortMatches(r.Ports, proto, port, dst) {
					continue
				}
				if len(r.From) == 0 {
					return true
				}
				for _, pe := range r.From {
					if w.peerMatches(np, pe, peerAddr, peer) {
						return true
					}
				}
			}
		}
	}
	return !isolated
}

func (w *refWorld) decide(src, dst netip.Addr, proto table.Protocol, port uint16) (egress, ingress bool) {
	s, d := w.refPod(src), w.refPod(dst)
	if d == nil && s != nil {
		// A Service's ClusterIP stands for its ready backends: each must
		// be allowed; nobody's ingress is judged here.
		if backends := w.refBackends(dst, proto, port); len(backends) > 0 {
			egress = true
			for _, b := range backends {
				bp := w.refPod(b.Addr())
				if !w.refTiered(true, s, b.Addr(), bp, bp, proto, b.Port()) {
					egress = false
				}
			}
			return egress, true
		}
	}
	return w.refTiered(true, s, dst, d, d, proto, port), w.refTiered(false, d, src, s, d, proto, port)
}

// refBackends returns the ready backends (address and port) that
// kube-proxy would DNAT a connection to dst, proto/port to: dst must be a
// ClusterIP of a Service with that port; the backends are the first
// addresses of the ready endpoints of the Service's EndpointSlices of
// dst's family, with the slice port of the same name and protocol.
func (w *refWorld) refBackends(dst netip.Addr, proto table.Protocol, port uint16) []netip.AddrPort {
	for _, svc := range w.c.Services {
		ns := svc.Namespace
		if ns == "" {
			ns = "default"
		}
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 {
			ips = []string{svc.Spec.ClusterIP}
		}
		mine := false
		for _, ip := range ips {
			if a, err := netip.ParseAddr(ip); err == nil && a == dst {
				mine = true
			}
		}
		if !mine {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			p := string(sp.Protocol)
			if p == "" {
				p = "TCP"
			}
			if p != proto.String() || sp.Port != int32(port) {
				continue
			}
			seen := map[netip.AddrPort]bool{}
			var out []netip.AddrPort
			for _, es := range w.c.EndpointSlices {
				family := discoveryv1.AddressTypeIPv6
				if dst.Is4() {
					family = discoveryv1.AddressTypeIPv4
				}
				if es.Namespace != ns || es.Labels["kubernetes.io/service-name"] != svc.Name || es.AddressType != family {
					continue
				}
				var target int32
				for _, ep := range es.Ports {
					name, eproto := "", "TCP"
					if ep.Name != nil {
						name = *ep.Name
					}
					if ep.Protocol != nil {
						eproto = string(*ep.Protocol)
					}
					if name == sp.Name && eproto == p && ep.Port != nil {
						target = *ep.Port
						break
					}
				}
				if target == 0 {
					continue
				}
				for _, e := range es.Endpoints {
					if e.Conditions.Ready != nil && !*e.Conditions.Ready {
						continue
					}
					ap := netip.AddrPortFrom(netip.MustParseAddr(e.Addresses[0]), uint16(target))
					if !seen[ap] {
						seen[ap] = true
						out = append(out, ap)
					}
				}
			}
			return out
		}
		return nil
	}
	return nil
}

// --- random clusters ---

type gen struct{ r *rand.Rand }

func (g gen) pick(xs ...string) string { return xs[g.r.IntN(len(xs))] }

func (g gen) labels(n int) map[string]string {
	l := map[string]string{}
	for range g.r.IntN(n + 1) {
		l[g.pick("app", "tier", "team", "env")] = g.pick("a", "b", "c")
	}
	return l
}

func (g gen) selector() *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	if g.r.IntN(2) == 0 {
		s.MatchLabels = g.labels(1)
	}
	for range g.r.IntN(2) {
		op := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}[g.r.IntN(4)]
		e := metav1.LabelSelectorRequirement{Key: g.pick("app", "tier", "team", "env"), Operator: op}
		if op == metav1.LabelSelectorOpIn || op == metav1.LabelSelectorOpNotIn {
			e.Values = []string{g.pick("a", "b", "c")}
			if g.r.IntN(2) == 0 {
				e.Values = append(e.Values, g.pick("a", "b", "c"))
			}
		}
		s.MatchExpressions = append(s.MatchExpressions, e)
	}
	return s
}

var genNets = map[bool][]string{
	true:  {"10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/24", "10.1.1.0/24", "10.1.0.4/30", "192.0.2.0/24", "0.0.0.0/0"},
	false: {"fd00::/8", "fd00:1::/32", "fd00:1::/120", "fd00:1::100/120", "fd00:1::4/126", "2001:db8::/32", "::/0"},
}

func (g gen) ipBlock() *networkingv1.IPBlock {
	v4 := g.r.IntN(2) == 0
	nets := genNets[v4]
	i := g.r.IntN(len(nets))
	b := &networkingv1.IPBlock{CIDR: nets[i]}
	// except entries must be strict subsets.
	_, outer, _ := net.ParseCIDR(nets[i])
	ob, _ := outer.Mask.Size()
	for _, e := range nets {
		_, inner, _ := net.ParseCIDR(e)
		ib, _ := inner.Mask.Size()
		if ib > ob && outer.Contains(inner.IP) && g.r.IntN(2) == 0 {
			b.Except = append(b.Except, e)
		}
	}
	return b
}

func (g gen) peer() networkingv1.NetworkPolicyPeer {
	switch g.r.IntN(4) {
	case 0:
		return networkingv1.NetworkPolicyPeer{PodSelector: g.selector()}
	case 1:
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: g.selector()}
	case 2:
		return networkingv1.NetworkPolicyPeer{PodSelector: g.selector(), NamespaceSelector: g.selector()}
	}
	return networkingv1.NetworkPolicyPeer{IPBlock: g.ipBlock()}
}

func (g gen) ports() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range g.r.IntN(3) {
		var p networkingv1.NetworkPolicyPort
		if g.r.IntN(3) > 0 {
			proto := corev1.Protocol(g.pick("TCP", "UDP", "SCTP"))
			p.Protocol = &proto
		}
		switch g.r.IntN(4) {
		case 0: // protocol only
		case 1:
			v := intstr.FromString(g.pick("http", "dns", "metrics"))
			p.Port = &v
		default:
			v := intstr.FromInt32(int32(80 + g.r.IntN(4)))
			p.Port = &v
			if g.r.IntN(2) == 0 {
				end := v.IntVal + int32(g.r.IntN(3))
				p.EndPort = &end
			}
		}
		out = append(out, p)
	}
	return out
}

func (g gen) cluster() *policy.Cluster {
	c := &policy.Cluster{}
	nss := []string{"a", "b", "c", "d"}
	for _, ns := range nss[:1+g.r.IntN(3)] {
		c.Namespaces = append(c.Namespaces, newNamespace(ns))
		c.Namespaces[len(c.Namespaces)-1].Labels = g.labels(2)
	}
	for i := range 4 + g.r.IntN(10) {
		ns := nss[g.r.IntN(len(nss))] // may be undeclared
		var ips []string
		switch g.r.IntN(4) {
		case 0:
			ips = []string{fmt.Sprintf("10.1.%d.%d", i%2, i+1)}
		case 1:
			ips = []string{fmt.Sprintf("fd00:1::%x", 0x100*(i%2)+i+1)}
		default:
			ips = []string{fmt.Sprintf("10.1.%d.%d", i%2, i+1), fmt.Sprintf("fd00:1::%x", 0x100*(i%2)+i+1)}
		}
		p := newPod(ns, fmt.Sprintf("p%d", i), ips)
		p.Labels = g.labels(3)
		switch g.r.IntN(12) {
		case 0:
			p.Spec.HostNetwork = true
		case 1:
			p.Status.Phase = corev1.PodSucceeded
		case 2:
			p.Status.PodIP, p.Status.PodIPs = "", nil
		}
		for _, name := range []string{"http", "dns", "metrics"} {
			if g.r.IntN(2) == 0 {
				proto := corev1.Protocol(g.pick("TCP", "UDP", "SCTP"))
				withPorts(p, corev1.ContainerPort{Name: name, ContainerPort: int32(80 + g.r.IntN(4)), Protocol: proto})
			}
		}
		c.Pods = append(c.Pods, p)
	}
	for i := range g.r.IntN(6) {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np%d", i), Namespace: nss[g.r.IntN(len(nss))]}}
		np.Spec.PodSelector = *g.selector()
		switch g.r.IntN(4) {
		case 0:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		case 1:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		case 2:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}
		for range g.r.IntN(3) {
			r := networkingv1.NetworkPolicyIngressRule{Ports: g.ports()}
			for range g.r.IntN(3) {
				r.From = append(r.From, g.peer())
			}
			np.Spec.Ingress = append(np.Spec.Ingress, r)
		}
		for range g.r.IntN(3) {
			r := networkingv1.NetworkPolicyEgressRule{Ports: g.ports()}
			for range g.r.IntN(3) {
				r.To = append(r.To, g.peer())
			}
			np.Spec.Egress = append(np.Spec.Egress, r)
		}
		c.Policies = append(c.Policies, np)
	}
	g.services(c)
	return c
}

// clusterWithTiers is cluster() with, for most seeds, cluster policies of
// both tiers and nodes.
func (g gen) clusterWithTiers() *policy.Cluster {
	c := g.cluster()
	if g.r.IntN(5) > 0 {
		g.clusterPolicies(c)
	}
	return c
}

// services adds Services (IPv4, IPv6 or dual-stack ClusterIPs) and their
// EndpointSlices: endpoints are pod addresses (of live pods or not) and
// outside addresses, ready or not, behind numbered target ports; some
// slice ports do not match the Service's by name or protocol.
func (g gen) services(c *policy.Cluster) {
	var pods4, pods6 []string
	for _, p := range c.Pods {
		for _, ip := range p.Status.PodIPs {
			if netip.MustParseAddr(ip.IP).Is4() {
				pods4 = append(pods4, ip.IP)
			} else {
				pods6 = append(pods6, ip.IP)
			}
		}
	}
	// One more egress policy now and then, so that more sources are
	// isolated for egress when they reach a Service.
	if g.r.IntN(2) == 0 {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "svc-egress", Namespace: g.pick("a", "b", "c", "d")}}
		np.Spec.PodSelector = *g.selector()
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		for range 1 + g.r.IntN(2) {
			r := networkingv1.NetworkPolicyEgressRule{Ports: g.ports()}
			for range g.r.IntN(3) {
				r.To = append(r.To, g.peer())
			}
			np.Spec.Egress = append(np.Spec.Egress, r)
		}
		c.Policies = append(c.Policies, np)
	}
	pods4 = append(pods4, "192.0.2.7")
	pods6 = append(pods6, "2001:db8::7")
	nss := []string{"a", "b", "c", "d"}
	for i := range 1 + g.r.IntN(3) {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc%d", i), Namespace: nss[g.r.IntN(len(nss))]}}
		v4, v6 := fmt.Sprintf("10.96.0.%d", i+1), fmt.Sprintf("fd00:96::%x", i+1)
		switch g.r.IntN(3) {
		case 0:
			svc.Spec.ClusterIPs = []string{v4}
		case 1:
			svc.Spec.ClusterIPs = []string{v6}
		default:
			svc.Spec.ClusterIPs = []string{v4, v6}
		}
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
		type pp struct {
			proto string
			port  int32
		}
		used := map[pp]bool{}
		nports := 1 + g.r.IntN(2)
		for j := range nports {
			// Mostly ports the differential test asks about.
			pick := []pp{{"TCP", 80}, {"TCP", 81}, {"TCP", 83}, {"UDP", 80}, {"UDP", 82}, {"SCTP", 81}, {"TCP", 84}}[g.r.IntN(7)]
			sp := corev1.ServicePort{Port: pick.port, Protocol: corev1.Protocol(pick.proto)}
			if nports > 1 || g.r.IntN(2) == 0 {
				sp.Name = fmt.Sprintf("p%d", j)
			}
			if used[pp{string(sp.Protocol), sp.Port}] {
				continue
			}
			used[pp{string(sp.Protocol), sp.Port}] = true
			svc.Spec.Ports = append(svc.Spec.Ports, sp)
		}
		c.Services = append(c.Services, svc)
		for k := range 1 + g.r.IntN(3) {
			es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{
				Name: fmt.Sprintf("%s-%d", svc.Name, k), Namespace: svc.Namespace,
				Labels: map[string]string{"kubernetes.io/service-name": svc.Name},
			}}
			if g.r.IntN(8) == 0 {
				es.Labels["kubernetes.io/service-name"] = "other" // belongs to no Service here
			}
			addrs := pods4
			es.AddressType = discoveryv1.AddressTypeIPv4
			if g.r.IntN(2) == 0 {
				addrs, es.AddressType = pods6, discoveryv1.AddressTypeIPv6
			}
			for j, sp := range svc.Spec.Ports {
				if g.r.IntN(4) == 0 {
					continue
				}
				name, proto := sp.Name, sp.Protocol
				if g.r.IntN(8) == 0 {
					name = fmt.Sprintf("nope%d", j)
				}
				if g.r.IntN(8) == 0 {
					proto = corev1.Protocol(g.pick("TCP", "UDP", "SCTP"))
				}
				target := int32(80 + g.r.IntN(4))
				es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &target})
			}
			for range g.r.IntN(5) {
				e := discoveryv1.Endpoint{Addresses: []string{addrs[g.r.IntN(len(addrs))]}}
				switch g.r.IntN(4) {
				case 0:
					f := false
					e.Conditions.Ready = &f
				case 1:
					tr := true
					e.Conditions.Ready = &tr
				}
				es.Endpoints = append(es.Endpoints, e)
			}
			c.EndpointSlices = append(c.EndpointSlices, es)
		}
	}
}

func TestDifferentialAgainstReference(t *testing.T) {
	seeds := 3000
	if testing.Short() {
		seeds = 300
	}
	outside := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("fd00:2::1")}
	type q struct {
		proto table.Protocol
		port  uint16
	}
	queries := []q{{table.TCP, 80}, {table.TCP, 81}, {table.TCP, 83}, {table.UDP, 80}, {table.UDP, 82}, {table.SCTP, 81}, {table.ICMP, 0}}
	checked, toServices, onBackends, backendsAllowed, backendsDenied := 0, 0, 0, 0, 0
	reasons := map[table.Reason]int{}
	for seed := range seeds {
		g := gen{rand.New(rand.NewPCG(uint64(seed), 7))}
		c := g.clusterWithTiers()
		tab, err := policy.Compile(c)
		if err != nil {
			t.Fatalf("seed %d: Compile: %v", seed, err)
		}
		ref := newRefWorld(c)
		var addrs []netip.Addr
		for _, p := range c.Pods {
			for _, ip := range p.Status.PodIPs {
				addrs = append(addrs, netip.MustParseAddr(ip.IP))
			}
		}
		addrs = append(addrs, outside...)
		dsts := append(slices.Clone(addrs), clusterIPs(c)...)
		for _, src := range addrs {
			for _, dst := range dsts {
				if src.Is4() != dst.Is4() {
					continue
				}
				for _, qq := range queries {
					proto := qq.proto
					if proto == table.ICMP && src.Is6() {
						proto = table.ICMPv6
					}
					v := tab.Lookup(src, dst, proto, qq.port)
					wantE, wantI := ref.decide(src, dst, proto, qq.port)
					checked++
					reasons[v.Egress.Reason]++
					reasons[v.Ingress.Reason]++
					checkClusterRule(t, tab, table.Egress, v.Egress, src, dst, proto, qq.port)
					checkClusterRule(t, tab, table.Ingress, v.Ingress, src, dst, proto, qq.port)
					if _, ok := tab.ServiceByAddr(dst); ok {
						toServices++
						if ref.refPod(src) != nil && len(ref.refBackends(dst, proto, qq.port)) > 0 {
							onBackends++
							if v.Egress.Reason == table.AllowedByRule {
								backendsAllowed++
							} else if v.Egress.Reason == table.Denied {
								backendsDenied++
							}
						}
					}
					if v.Egress.Allowed() != wantE || v.Ingress.Allowed() != wantI {
						e := tab.Explain(src, dst, proto, qq.port)
						t.Fatalf("seed %d: %s -> %s %s/%d: table egress=%v ingress=%v, reference egress=%v ingress=%v\n%s\n%s",
							seed, e.From, e.To, proto, qq.port, v.Egress.Allowed(), v.Ingress.Allowed(), wantE, wantI, e.Egress.Detail, e.Ingress.Detail)
					}
				}
			}
		}
	}
	t.Logf("%d queries over %d random clusters agree (%d to Service ClusterIPs, %d of them judged on ready backends: %d allowed by rules, %d denied)",
		checked, seeds, toServices, onBackends, backendsAllowed, backendsDenied)
	var tally []string
	for r := table.NotPod; r <= table.BaselineDenied; r++ {
		tally = append(tally, fmt.Sprintf("%s %d", r, reasons[r]))
	}
	t.Logf("sides decided: %s", strings.Join(tally, ", "))
}

// clusterIPs returns every ClusterIP of the cluster's Services.
func clusterIPs(c *policy.Cluster) []netip.Addr {
	var out []netip.Addr
	for _, s := range c.Services {
		for _, ip := range s.Spec.ClusterIPs {
			out = append(out, netip.MustParseAddr(ip))
		}
	}
	return out
}
