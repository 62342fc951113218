package policy

import (
	"fmt"
	"slices"

	"github.com/podgate/podgate/policy/table"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Finding is one lint warning about an object.
type Finding struct {
	// Object is "Kind namespace/name".
	Object string `json:"object"`
	// Field is the field path the finding is about, if any.
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// String returns "Object: field: message".
func (f Finding) String() string {
	if f.Field != "" {
		return fmt.Sprintf("%s: %s: %s", f.Object, f.Field, f.Message)
	}
	return fmt.Sprintf("%s: %s", f.Object, f.Message)
}

// The DNS server pods that the DNS check assumes when the manifests
// declare none: CoreDNS as kubeadm, AKS, EKS and GKE deploy it.
var dnsPodLabels = labels.Set{"k8s-app": "kube-dns"}

const dnsNamespace = "kube-system"

// Lint reports what users of NetworkPolicy commonly get wrong in c, which
// must have compiled into t without error: egress isolation that also
// blocks DNS, selectors that match nothing, two peers where one ANDed peer
// was probably meant, named ports no pod declares, hostNetwork pods that a
// policy seems to target, and the compiler's warnings; and for cluster
// policies: subjects and peers that match nothing, rules shadowed by an
// earlier rule, policies of one tier and priority that select the same
// pods, and Baseline Deny rules that no NetworkPolicy relaxes.
func Lint(c *Cluster, t *table.Table) []Finding {
	l := linter{t: t, nsLabels: map[string]labels.Set{}}
	for _, ns := range c.Namespaces {
		set := labels.Set{}
		for k, v := range ns.Labels {
			set[k] = v
		}
		set[namespaceNameLabel] = ns.Name
		l.nsLabels[ns.Name] = set
	}
	for _, w := range t.Warnings() {
		l.out = append(l.out, Finding{Object: "table", Message: w})
	}
	var pols []*networkingv1.NetworkPolicy
	for _, np := range c.Policies {
		pols = append(pols, DefaultNetworkPolicy(np))
	}
	for _, p := range c.Pods {
		ns := namespaceOf(&p.ObjectMeta)
		if _, ok := l.nsLabels[ns]; !ok {
			l.nsLabels[ns] = labels.Set{namespaceNameLabel: ns}
			l.add(fmt.Sprintf("Pod %s/%s", ns, p.Name), "metadata.namespace",
				fmt.Sprintf("namespace %q is not declared; assuming it has only the label %s=%s", ns, namespaceNameLabel, ns))
		}
	}
	for _, np := range pols {
		l.policy(np, c.Pods)
	}
	l.dns(pols)
	l.clusterPolicies()
	return l.out
}

type linter struct {
	t        *table.Table
	nsLabels map[string]labels.Set
	out      []Finding
}

func (l *linter) add(obj, field, msg string) {
	l.out = append(l.out, Finding{Object: obj, Field: field, Message: msg})
}

func selector(s *metav1.LabelSelector) labels.Selector {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return labels.Nothing()
	}
	return sel
}

func (l *linter) policy(np *networkingv1.NetworkPolicy, pods []*corev1.Pod) {
	obj := fmt.Sprintf("NetworkPolicy %s/%s", np.Namespace, np.Name)
	sel := selector(&np.Spec.PodSelector)
	n := 0
	for i := range l.t.Endpoints() {
		e := &l.t.Endpoints()[i]
		if e.Namespace == np.Namespace && sel.Matches(labels.Set(e.Labels)) {
			n++
		}
	}
	if n == 0 {
		l.add(obj, "spec.podSelector", fmt.Sprintf("selects no pod in namespace %s", np.Namespace))
	}
	for _, p := range pods {
		if p.Spec.HostNetwork && namespaceOf(&p.ObjectMeta) == np.Namespace && sel.Matches(labels.Set(p.Labels)) {
			l.add(obj, "spec.podSelector", fmt.Sprintf("matches hostNetwork pod %s/%s, which NetworkPolicy never applies to", np.Namespace, p.Name))
		}
	}
	for i, r := range np.Spec.Ingress {
		l.rule(obj, np, fmt.Sprintf("spec.ingress[%d]", i), "from", r.From, r.Ports)
	}
	for i, r := range np.Spec.Egress {
		l.rule(obj, np, fmt.Sprintf("spec.egress[%d]", i), "to", r.To, r.Ports)
	}
}

func (l *linter) rule(obj string, np *networkingv1.NetworkPolicy, path, peersName string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) {
	nsOnly, podOnly := -1, -1
	for j, peer := range peers {
		pp := fmt.Sprintf("%s.%s[%d]", path, peersName, j)
		if peer.IPBlock != nil {
			continue
		}
		var namespaces []string
		if peer.NamespaceSelector != nil {
			nsSel := selector(peer.NamespaceSelector)
			for name, set := range l.nsLabels {
				if nsSel.Matches(set) {
					namespaces = append(namespaces, name)
				}
			}
			if len(namespaces) == 0 {
				l.add(obj, pp+".namespaceSelector", "matches no namespace")
				continue
			}
		} else {
			namespaces = []string{np.Namespace}
		}
		switch {
		case peer.NamespaceSelector != nil && peer.PodSelector == nil && nsOnly < 0:
			nsOnly = j
		case peer.NamespaceSelector == nil && peer.PodSelector != nil && podOnly < 0:
			podOnly = j
		}
		if peer.PodSelector != nil {
			podSel := selector(peer.PodSelector)
			found := false
			for i := range l.t.Endpoints() {
				e := &l.t.Endpoints()[i]
				if slices.Contains(namespaces, e.Namespace) && podSel.Matches(labels.Set(e.Labels)) {
					found = true
					break
				}
			}
			if !found {
				where := "namespace " + np.Namespace
				if peer.NamespaceSelector != nil {
					where = "the selected namespaces"
				}
				l.add(obj, pp+".podSelector", "matches no pod in "+where)
			}
		}
	}
	if nsOnly >= 0 && podOnly >= 0 {
		l.add(obj, fmt.Sprintf("%s.%s", path, peersName), fmt.Sprintf(
			"peers [%d] (namespaceSelector only) and [%d] (podSelector only) are ORed: every pod of the selected namespaces, or the selected pods of namespace %s; "+
				"if you meant the selected pods in the selected namespaces, write both selectors in one peer (one dash)", nsOnly, podOnly, np.Namespace))
	}
	for j, p := range ports {
		if p.Port == nil || p.Port.Type != intstr.String {
			continue
		}
		proto := protocolOf(p.Protocol)
		declared := false
		for i := range l.t.Endpoints() {
			for _, np := range l.t.Endpoints()[i].NamedPorts {
				if l.t.Spec().PortNames[np.Name] == p.Port.StrVal && np.Proto == proto {
					declared = true
				}
			}
		}
		if !declared {
			l.add(obj, fmt.Sprintf("%s.ports[%d].port", path, j), fmt.Sprintf("named port %q/%s is declared by no pod's containers, so it matches nothing", p.Port.StrVal, proto))
		}
	}
}

// dns warns about pods that are isolated for egress with no rule allowing
// DNS (UDP port 53) to the cluster's DNS pods.
func (l *linter) dns(pols []*networkingv1.NetworkPolicy) {
	dnsNS, ok := l.nsLabels[dnsNamespace]
	if !ok {
		dnsNS = labels.Set{namespaceNameLabel: dnsNamespace}
	}
	for i := range l.t.Endpoints() {
		ep := int32(i)
		sel := l.t.Selecting(ep, table.Egress)
		if len(sel) == 0 {
			continue
		}
		e := &l.t.Endpoints()[i]
		allowed := false
		for _, pi := range sel {
			info := l.t.Policy(pi)
			np := findPolicy(pols, info.Namespace, info.Name)
			for _, r := range np.Spec.Egress {
				if allowsDNS(np.Namespace, r, dnsNS) {
					allowed = true
				}
			}
		}
		if !allowed {
			l.add("Pod "+e.String(), "", fmt.Sprintf(
				"is isolated for egress (by %s) and no rule allows DNS (UDP port 53) to %s pods labelled k8s-app=kube-dns: name lookups from it will fail",
				joinPolicies(l.t, sel), dnsNamespace))
		}
	}
}

func joinPolicies(t *table.Table, idx []int32) string {
	s := ""
	for i, p := range idx {
		if i > 0 {
			s += ", "
		}
		s += t.Policy(p).String()
	}
	return s
}

func findPolicy(pols []*networkingv1.NetworkPolicy, ns, name string) *networkingv1.NetworkPolicy {
	for _, p := range pols {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return &networkingv1.NetworkPolicy{}
}

func allowsDNS(policyNS string, r networkingv1.NetworkPolicyEgressRule, dnsNS labels.Set) bool {
	portOK := len(r.Ports) == 0
	for _, p := range r.Ports {
		if protocolOf(p.Protocol) != table.UDP {
			continue
		}
		switch {
		case p.Port == nil:
			portOK = true
		case p.Port.Type == intstr.String:
			portOK = portOK || p.Port.StrVal == "dns"
		default:
			hi := p.Port.IntVal
			if p.EndPort != nil {
				hi = *p.EndPort
			}
			portOK = portOK || (p.Port.IntVal <= 53 && 53 <= hi)
		}
	}
	if !portOK {
		return false
	}
	if len(r.To) == 0 {
		return true
	}
	for _, peer := range r.To {
		if peer.IPBlock != nil {
			// An ipBlock may well hold the DNS service or node-local DNS.
			return true
		}
		if peer.NamespaceSelector == nil && policyNS != dnsNamespace {
			continue
		}
		if peer.NamespaceSelector != nil && !selector(peer.NamespaceSelector).Matches(dnsNS) {
			continue
		}
		if peer.PodSelector == nil || selector(peer.PodSelector).Matches(dnsPodLabels) {
			return true
		}
	}
	return false
}
