package iptables

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// Chain names of the kernel baseline. User chains of iptables-legacy are at
// most 28 bytes long.
const (
	chainForward = "PG-FORWARD"
	chainInput   = "PG-INPUT"
	ingressPfx   = "PG-ING-"
	egressPfx    = "PG-EGR-"
	setPfx       = "PG-"
)

// Rules are the NetworkPolicy enforcement of one node compiled for the
// kernel: the inputs of `ipset restore` and `iptables-legacy-restore`
// (the layout is in the package documentation). IPv6 is not compiled (the
// bench lab is IPv4): IPv6 pod addresses and ipBlocks are left out and
// listed in Notes.
type Rules struct {
	// IPSet is the input of `ipset restore`.
	IPSet string
	// IPTables is the input of `iptables-legacy-restore` (the filter
	// table; restoring it replaces the table).
	IPTables string
	// Sets, Members, Chains and Rules count what was compiled (rules in
	// the per-pod chains).
	Sets, Members, Chains, Rules int
	// Notes say what was left out.
	Notes []string
}

// ipsetDef is one ipset: its type and sorted members.
type ipsetDef struct {
	typ     string // hash:ip or hash:net
	members []string
}

// compiler holds the state of one compilation.
type compiler struct {
	pods     []table.Endpoint
	podObjs  map[string]*corev1.Pod // namespace/name
	nsLabels map[string]labels.Set
	nsNames  []string
	sets     map[string]ipsetDef
	notes    map[string]bool
}

// Compile compiles the policies of c (compiled into t without error) for
// the local pods of node nodeName into ipsets and iptables rules. The
// output is deterministic.
func Compile(c *policy.Cluster, t *table.Table, nodeName string) (*Rules, error) {
	if c == nil || t == nil {
		return nil, errors.New("compile kernel rules: no cluster or table")
	}
	kc := &compiler{
		pods:     t.Endpoints(),
		podObjs:  map[string]*corev1.Pod{},
		nsLabels: map[string]labels.Set{},
		sets:     map[string]ipsetDef{},
		notes:    map[string]bool{},
	}
	for _, ns := range c.Namespaces {
		l := labels.Set{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		l["kubernetes.io/metadata.name"] = ns.Name
		kc.nsLabels[ns.Name] = l
	}
	for _, p := range c.Pods {
		ns := p.Namespace
		if ns == "" {
			ns = "default"
		}
		kc.podObjs[ns+"/"+p.Name] = p
	}
	for _, ep := range kc.pods {
		if _, ok := kc.nsLabels[ep.Namespace]; !ok {
			kc.nsLabels[ep.Namespace] = labels.Set{"kubernetes.io/metadata.name": ep.Namespace}
		}
	}
	for ns := range kc.nsLabels {
		kc.nsNames = append(kc.nsNames, ns)
	}
	slices.Sort(kc.nsNames)

	pols := make([]*networkingv1.NetworkPolicy, 0, len(c.Policies))
	for _, np := range c.Policies {
		pols = append(pols, policy.DefaultNetworkPolicy(np))
	}
	slices.SortFunc(pols, func(a, b *networkingv1.NetworkPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})

	var (
		decl     []string // chain declarations
		body     []string // per-pod chains
		dispatch []string // PG-FORWARD rules after the conntrack ones
		input    []string // PG-INPUT rules after the conntrack one
		out      Rules
	)
	for i := range kc.pods {
		ep := &kc.pods[i]
		if ep.NodeName != nodeName {
			continue
		}
		addr, ok := firstIPv4(ep.IPs)
		if !ok {
			kc.note(fmt.Sprintf("pod %s has no IPv4 address: not enforced", ep))
			continue
		}
		for _, dir := range []table.Direction{table.Egress, table.Ingress} {
			sel, err := kc.selecting(pols, ep, dir)
			if err != nil {
				return nil, err
			}
			if len(sel) == 0 {
				continue
			}
			chain := podChain(dir, ep)
			decl = append(decl, ":"+chain+" - [0:0]")
			body = append(body, fmt.Sprintf("# %s %s: %s", ep, dir, policyNames(sel)))
			lines, err := kc.podRules(chain, dir, ep, sel)
			if err != nil {
				return nil, err
			}
			body = append(body, lines...)
			body = append(body, "-A "+chain+" -j DROP")
			out.Chains++
			for _, l := range lines {
				if strings.HasPrefix(l, "-A ") {
					out.Rules++
				}
			}
			out.Rules++ // the DROP
			if dir == table.Egress {
				jump := fmt.Sprintf("-s %s/32 -j %s", addr, chain)
				dispatch = append(dispatch, "-A "+chainForward+" "+jump)
				input = append(input, "-A "+chainInput+" "+jump)
			} else {
				dispatch = append(dispatch, fmt.Sprintf("-A %s -d %s/32 -j %s", chainForward, addr, chain))
			}
		}
	}

	var ipt strings.Builder
	ipt.WriteString("# podgate bench: NetworkPolicy in iptables and ipsets (iptables-legacy-restore)\n")
	ipt.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	ipt.WriteString(":" + chainForward + " - [0:0]\n:" + chainInput + " - [0:0]\n")
	for _, d := range decl {
		ipt.WriteString(d + "\n")
	}
	ipt.WriteString("-A INPUT -j " + chainInput + "\n")
	ipt.WriteString("-A FORWARD -j " + chainForward + "\n")
	ipt.WriteString("-A " + chainForward + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	ipt.WriteString("-A " + chainForward + " -m conntrack --ctstate INVALID -j DROP\n")
	for _, d := range dispatch {
		ipt.WriteString(d + "\n")
	}
	ipt.WriteString("-A " + chainInput + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	for _, d := range input {
		ipt.WriteString(d + "\n")
	}
	for _, b := range body {
		ipt.WriteString(b + "\n")
	}
	ipt.WriteString("COMMIT\n")
	out.IPTables = ipt.String()

	names := make([]string, 0, len(kc.sets))
	for n := range kc.sets {
		names = append(names, n)
	}
	slices.Sort(names)
	var ips strings.Builder
	for _, n := range names {
		s := kc.sets[n]
		fmt.Fprintf(&ips, "create %s %s family inet hashsize 1024 maxelem %d\n", n, s.typ, max(65536, len(s.members)))
		for _, m := range s.members {
			fmt.Fprintf(&ips, "add %s %s\n", n, m)
		}
		out.Members += len(s.members)
	}
	out.IPSet = ips.String()
	out.Sets = len(names)
	for n := range kc.notes {
		out.Notes = append(out.Notes, n)
	}
	slices.Sort(out.Notes)
	return &out, nil
}

func (kc *compiler) note(s string) { kc.notes[s] = true }

func firstIPv4(ips []netip.Addr) (netip.Addr, bool) {
	for _, a := range ips {
		if a.Unmap().Is4() {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// podChain names the chain of a pod for a direction.
func podChain(dir table.Direction, ep *table.Endpoint) string {
	pfx := ingressPfx
	if dir == table.Egress {
		pfx = egressPfx
	}
	sum := sha256.Sum256([]byte(ep.Namespace + "/" + ep.Name))
	return pfx + strings.ToUpper(hex.EncodeToString(sum[:6]))
}

func policyNames(pols []*networkingv1.NetworkPolicy) string {
	names := make([]string, len(pols))
	for i, p := range pols {
		names[i] = p.Namespace + "/" + p.Name
	}
	return strings.Join(names, ", ")
}

// hasType reports whether a defaulted policy has the direction's type.
func hasType(np *networkingv1.NetworkPolicy, dir table.Direction) bool {
	want := networkingv1.PolicyTypeIngress
	if dir == table.Egress {
		want = networkingv1.PolicyTypeEgress
	}
	return slices.Contains(np.Spec.PolicyTypes, want)
}

// selecting returns the policies of the pod's namespace whose podSelector
// selects it and that have the direction's type.
func (kc *compiler) selecting(pols []*networkingv1.NetworkPolicy, ep *table.Endpoint, dir table.Direction) ([]*networkingv1.NetworkPolicy, error) {
	var out []*networkingv1.NetworkPolicy
	for _, np := range pols {
		if np.Namespace != ep.Namespace || !hasType(np, dir) {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			return nil, fmt.Errorf("compile kernel rules: policy %s/%s: %w", np.Namespace, np.Name, err)
		}
		if sel.Matches(labels.Set(ep.Labels)) {
			out = append(out, np)
		}
	}
	return out, nil
}

// portMatch is the iptables match of one resolved NetworkPolicy port.
type portMatch struct {
	proto string // tcp, udp, sctp
	spec  string // "" (every port), "80" or "80:90"
}

func (p portMatch) String() string {
	if p.spec == "" {
		return "-p " + p.proto
	}
	return fmt.Sprintf("-p %s -m %s --dport %s", p.proto, p.proto, p.spec)
}

func protoName(p *corev1.Protocol) corev1.Protocol {
	if p == nil {
		return corev1.ProtocolTCP
	}
	return *p
}

// numericPort returns the match of a port that is not named.
func numericPort(np networkingv1.NetworkPolicyPort) portMatch {
	pm := portMatch{proto: strings.ToLower(string(protoName(np.Protocol)))}
	if np.Port == nil {
		return pm
	}
	pm.spec = strconv.Itoa(int(np.Port.IntVal))
	if np.EndPort != nil && *np.EndPort > np.Port.IntVal {
		pm.spec += ":" + strconv.Itoa(int(*np.EndPort))
	}
	return pm
}

func isNamed(np networkingv1.NetworkPolicyPort) bool {
	return np.Port != nil && np.Port.Type == intstr.String
}

// resolveNamed returns the container port of pod named name with the
// protocol, or 0.
func (kc *compiler) resolveNamed(ep *table.Endpoint, name string, proto corev1.Protocol) int32 {
	pod := kc.podObjs[ep.Namespace+"/"+ep.Name]
	if pod == nil {
		return 0
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			p := cp.Protocol
			if p == "" {
				p = corev1.ProtocolTCP
			}
			if cp.Name == name && p == proto {
				return cp.ContainerPort
			}
		}
	}
	return 0
}

// peerSet is a resolved peer: an ipset and the pods it stands for (for
// named egress ports). ipBlock peers have pods only when a rule has named
// ports.
type peerSet struct {
	set   string
	pods  []*table.Endpoint
	block *networkingv1.IPBlock
}

// podRules returns the rules of a pod's chain for the selecting policies.
func (kc *compiler) podRules(chain string, dir table.Direction, ep *table.Endpoint, pols []*networkingv1.NetworkPolicy) ([]string, error) {
	verdict, side := "ACCEPT", "src"
	if dir == table.Egress {
		verdict, side = "RETURN", "dst"
	}
	var lines []string
	for _, np := range pols {
		type rule struct {
			peers []networkingv1.NetworkPolicyPeer
			ports []networkingv1.NetworkPolicyPort
		}
		var rules []rule
		if dir == table.Ingress {
			for _, r := range np.Spec.Ingress {
				rules = append(rules, rule{r.From, r.Ports})
			}
		} else {
			for _, r := range np.Spec.Egress {
				rules = append(rules, rule{r.To, r.Ports})
			}
		}
		for ri, r := range rules {
			lines = append(lines, fmt.Sprintf("# %s/%s %s[%d]", np.Namespace, np.Name, dir, ri))
			var peers []peerSet
			for _, p := range r.peers {
				ps, ok, err := kc.peer(np.Namespace, p)
				if err != nil {
					return nil, fmt.Errorf("compile kernel rules: policy %s/%s: %w", np.Namespace, np.Name, err)
				}
				if ok {
					peers = append(peers, ps)
				}
			}
			if len(r.peers) > 0 && len(peers) == 0 {
				continue // only IPv6 peers
			}
			var numeric []portMatch
			var named []networkingv1.NetworkPolicyPort
			for _, pt := range r.ports {
				if isNamed(pt) {
					named = append(named, pt)
				} else {
					numeric = append(numeric, numericPort(pt))
				}
			}
			peerMatches := []string{""}
			if len(r.peers) > 0 {
				peerMatches = peerMatches[:0]
				for _, ps := range peers {
					m := fmt.Sprintf(" -m set --match-set %s %s", ps.set, side)
					if !slices.Contains(peerMatches, m) { // two peers, one set
						peerMatches = append(peerMatches, m)
					}
				}
			}
			emit := func(peer string, pm *portMatch) {
				l := "-A " + chain + peer
				if pm != nil {
					l += " " + pm.String()
				}
				lines = append(lines, l+" -j "+verdict)
			}
			if len(r.ports) == 0 {
				for _, pm := range peerMatches {
					emit(pm, nil)
				}
				continue
			}
			for _, pm := range peerMatches {
				for i := range numeric {
					emit(pm, &numeric[i])
				}
			}
			if len(named) == 0 {
				continue
			}
			if dir == table.Ingress {
				// Resolved on this pod.
				for _, pt := range named {
					proto := protoName(pt.Protocol)
					n := kc.resolveNamed(ep, pt.Port.StrVal, proto)
					if n == 0 {
						continue
					}
					m := portMatch{proto: strings.ToLower(string(proto)), spec: strconv.Itoa(int(n))}
					for _, pm := range peerMatches {
						emit(pm, &m)
					}
				}
				continue
			}
			// Egress: resolved on each destination pod; the pods of each
			// peer are grouped by the port their name resolves to.
			if len(r.peers) == 0 {
				all := make([]*table.Endpoint, len(kc.pods))
				for i := range kc.pods {
					all[i] = &kc.pods[i]
				}
				peers = []peerSet{{pods: all}}
			}
			for _, ps := range peers {
				pods := ps.pods
				if ps.block != nil {
					pods = kc.podsInBlock(ps.block)
				}
				for _, pt := range named {
					proto := protoName(pt.Protocol)
					byPort := map[int32][]string{}
					for _, p := range pods {
						n := kc.resolveNamed(p, pt.Port.StrVal, proto)
						if a, ok := firstIPv4(p.IPs); ok && n != 0 {
							byPort[n] = append(byPort[n], a.String())
						}
					}
					ports := make([]int32, 0, len(byPort))
					for n := range byPort {
						ports = append(ports, n)
					}
					slices.Sort(ports)
					for _, n := range ports {
						set := kc.addSet("hash:ip", byPort[n])
						m := portMatch{proto: strings.ToLower(string(proto)), spec: strconv.Itoa(int(n))}
						emit(fmt.Sprintf(" -m set --match-set %s dst", set), &m)
					}
				}
			}
		}
	}
	return lines, nil
}

// peer resolves one NetworkPolicy peer of a policy in namespace ns. It
// returns false for peers that cannot match IPv4 traffic.
func (kc *compiler) peer(ns string, p networkingv1.NetworkPolicyPeer) (peerSet, bool, error) {
	if p.IPBlock != nil {
		cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
		if err != nil {
			return peerSet{}, false, fmt.Errorf("ipBlock %q: %w", p.IPBlock.CIDR, err)
		}
		if !cidr.Addr().Is4() {
			kc.note("IPv6 ipBlock " + p.IPBlock.CIDR + " left out")
			return peerSet{}, false, nil
		}
		cidr = cidr.Masked()
		var members []string
		if cidr.Bits() == 0 {
			members = append(members, "0.0.0.0/1", "128.0.0.0/1")
		} else {
			members = append(members, cidr.String())
		}
		for _, e := range p.IPBlock.Except {
			ex, err := netip.ParsePrefix(e)
			if err != nil {
				return peerSet{}, false, fmt.Errorf("ipBlock except %q: %w", e, err)
			}
			members = append(members, ex.Masked().String()+" nomatch")
		}
		return peerSet{set: kc.addSet("hash:net", members), block: p.IPBlock}, true, nil
	}
	nsSel := labels.Everything()
	podSel := labels.Everything()
	var err error
	if p.NamespaceSelector != nil {
		if nsSel, err = metav1.LabelSelectorAsSelector(p.NamespaceSelector); err != nil {
			return peerSet{}, false, err
		}
	}
	if p.PodSelector != nil {
		if podSel, err = metav1.LabelSelectorAsSelector(p.PodSelector); err != nil {
			return peerSet{}, false, err
		}
	}
	var pods []*table.Endpoint
	var members []string
	for i := range kc.pods {
		ep := &kc.pods[i]
		if p.NamespaceSelector == nil {
			if ep.Namespace != ns {
				continue
			}
		} else if !nsSel.Matches(kc.nsLabels[ep.Namespace]) {
			continue
		}
		if !podSel.Matches(labels.Set(ep.Labels)) {
			continue
		}
		pods = append(pods, ep)
		if a, ok := firstIPv4(ep.IPs); ok {
			members = append(members, a.String())
		}
	}
	return peerSet{set: kc.addSet("hash:ip", members), pods: pods}, true, nil
}

// podsInBlock returns the pods with an IPv4 address in the block and not
// in its excepts.
func (kc *compiler) podsInBlock(b *networkingv1.IPBlock) []*table.Endpoint {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return nil
	}
	var ex []netip.Prefix
	for _, e := range b.Except {
		if p, err := netip.ParsePrefix(e); err == nil {
			ex = append(ex, p.Masked())
		}
	}
	var out []*table.Endpoint
	for i := range kc.pods {
		a, ok := firstIPv4(kc.pods[i].IPs)
		if !ok || !cidr.Masked().Contains(a) {
			continue
		}
		if slices.ContainsFunc(ex, func(p netip.Prefix) bool { return p.Contains(a) }) {
			continue
		}
		out = append(out, &kc.pods[i])
	}
	return out
}

// addSet records a set with the given type and members and returns its
// name, the same for the same contents.
func (kc *compiler) addSet(typ string, members []string) string {
	m := slices.Clone(members)
	slices.Sort(m)
	m = slices.Compact(m)
	h := sha256.New()
	h.Write([]byte(typ))
	for _, s := range m {
		h.Write([]byte{0})
		h.Write([]byte(s))
	}
	name := setPfx + strings.ToUpper(hex.EncodeToString(h.Sum(nil)[:6]))
	kc.sets[name] = ipsetDef{typ: typ, members: m}
	return name
}
