package conformance

import (
	"fmt"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// The hand-ported mutations of the upstream tests: the Go code that
// patches policies and namespaces or deletes objects.

func swap[T any](s []T, i, j int) { s[i], s[j] = s[j], s[i] }

// swapEgress and swapIngress are the upstream tests' most common mutation:
// exchange two rules of a policy.
func swapEgress(name string, i, j int) func(*World) {
	return func(w *World) { swap(w.cnp(name).Spec.Egress, i, j) }
}

func swapIngress(name string, i, j int) func(*World) {
	return func(w *World) { swap(w.cnp(name).Spec.Ingress, i, j) }
}

func namedPortEgress(name string, i int, port string) func(*World) {
	return func(w *World) {
		w.cnp(name).Spec.Egress[i].Protocols = []npav1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: port}}
	}
}

func namedPortIngress(name string, i int, port string) func(*World) {
	return func(w *World) {
		w.cnp(name).Spec.Ingress[i].Protocols = []npav1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: port}}
	}
}

func setNamespaceLabels(name string, labels map[string]string) func(*World) {
	return func(w *World) { w.namespace(name).Labels = labels }
}

// allowPodIPs inserts, before the other egress rules of the policy, an
// Accept rule to the addresses of two pods (the inline CIDR tests).
func allowPodIPs(name, pod1, pod2 string) func(*World) {
	return func(w *World) {
		mask := "/32"
		if w.IPv6 {
			mask = "/128"
		}
		rule := npav1beta1.ClusterNetworkPolicyEgressRule{
			Name: "allow-egress-to-specific-podIPs", Action: "Accept",
			To: []npav1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []npav1beta1.CIDR{
				npav1beta1.CIDR(w.PodIP(pod1) + mask), npav1beta1.CIDR(w.PodIP(pod2) + mask),
			}}},
		}
		p := w.cnp(name)
		p.Spec.Egress = append([]npav1beta1.ClusterNetworkPolicyEgressRule{rule}, p.Spec.Egress...)
	}
}

const (
	gryffindor = "network-policy-conformance-gryffindor"
	slytherin  = "network-policy-conformance-slytherin"
	hufflepuff = "network-policy-conformance-hufflepuff"
	ravenclaw  = "network-policy-conformance-ravenclaw"
)

// mutations are the hand-ported mutations, by upstream test
// (ShortName) and subtest name, in the order of the calls.
var mutations = map[string]map[string][]func(*World){
	"CNPAdminTierEgressNamedPort": {
		"Should support an 'allow-egress' policy for named port": {namedPortEgress("egress-tcp", 5, "web")},
	},
	"CNPAdminTierIngressNamedPort": {
		"Should support an 'allow-ingress' policy for named port": {namedPortIngress("ingress-udp", 5, "dns")},
	},
	"CNPBaselineTierEgressNamedPort": {
		"Should support an 'allow-egress' policy for named port": {namedPortEgress("default", 3, "dns")},
	},
	"CNPBaselineTierIngressNamedPort": {
		"Should support an 'allow-ingress' policy for named port": {namedPortIngress("default", 3, "web")},
	},
	"CNPAdminTierEgressInlineCIDRPeers": {
		"Should support a 'deny-egress' rule policy for egress-cidr-peer": {
			setNamespaceLabels(slytherin, map[string]string{"conformance-house": "denied-namespace-label"}),
			setNamespaceLabels(slytherin, map[string]string{"conformance-house": "slytherin"}),
		},
		"Should support an 'allow-egress' rule policy for egress-cidr-peer": {
			allowPodIPs("inline-cidr-as-peers-example", ravenclaw+"/luna-lovegood-0", hufflepuff+"/cedric-diggory-0"),
		},
	},
	"CNPBaselineTierEgressInlineCIDRPeers": {
		"Should support a 'deny-egress' rule policy for egress-cidr-peer": {
			setNamespaceLabels(slytherin, map[string]string{"conformance-house": "denied-namespace-label"}),
			setNamespaceLabels(slytherin, map[string]string{"conformance-house": "slytherin"}),
		},
		"Should support an 'allow-egress' rule policy for egress-cidr-peer": {
			allowPodIPs("default", ravenclaw+"/luna-lovegood-0", hufflepuff+"/cedric-diggory-0"),
		},
	},
	"CNPAdminTierIntegration": {
		"Should support a 'pass-ingress' policy for admin CNP and respect the match for network policy": {
			func(w *World) {
				w.cnp("pass-example").Spec.Ingress[0].Action = npav1beta1.ClusterNetworkPolicyRuleActionPass
			},
		},
		"Should support a 'pass-egress' policy for admin CNP and respect the match for network policy": {
			func(w *World) {
				w.cnp("pass-example").Spec.Egress[0].Action = npav1beta1.ClusterNetworkPolicyRuleActionPass
			},
		},
		"Should support a 'pass-ingress' policy for admin CNP and respect the match for baseline cluster network policy": {
			func(w *World) {
				w.M.Policies = slices.DeleteFunc(w.M.Policies, func(np *networkingv1.NetworkPolicy) bool {
					return np.Namespace == gryffindor && np.Name == "allow-gress-from-to-slytherin-to-gryffindor"
				})
			},
		},
	},
	"CNPAdminTierPriorityField": {
		"Should respect admin CNP priority field; thus passing both ingress and egress traffic over to baseline CNP": {
			func(w *World) { w.cnp("old-priority-60-new-priority-40-example").Spec.Priority = 40 },
		},
	},
}

func init() {
	// The rule-order tests of every protocol and direction swap the same
	// rules.
	for _, tier := range []string{"Admin", "Baseline"} {
		for _, proto := range []string{"TCP", "UDP", "SCTP"} {
			for _, dir := range []string{"egress", "ingress"} {
				name := fmt.Sprintf("%s-%s", dir, strings.ToLower(proto))
				swapFn := swapEgress
				if dir == "ingress" {
					swapFn = swapIngress
				}
				if tier == "Baseline" {
					name = "default"
				}
				test := fmt.Sprintf("CNP%sTier%s%s", tier, strings.ToUpper(dir[:1])+dir[1:], proto)
				m := map[string][]func(*World){
					fmt.Sprintf("Should support an 'deny-%s' policy for %s protocol; ensure rule ordering is respected", dir, proto): {swapFn(name, 0, 1)},
				}
				if tier == "Admin" {
					m[fmt.Sprintf("Should support an 'pass-%s' policy for %s protocol; ensure rule ordering is respected", dir, proto)] = []func(*World){swapFn(name, 0, 2)}
					m[fmt.Sprintf("Should support a 'pass-%s' policy for %s protocol at the specified port", dir, proto)] = []func(*World){swapFn(name, 3, 4)}
				}
				mutations[test] = m
			}
		}
	}
	both := func(name string, e1, e2, i1, i2 int) func(*World) {
		return func(w *World) { swapEgress(name, e1, e2)(w); swapIngress(name, i1, i2)(w) }
	}
	mutations["CNPAdminTierGress"] = map[string][]func(*World){
		"Should support an 'deny-gress' policy across different protocols":                       {both("gress-rules", 0, 1, 0, 1)},
		"Should support an 'pass-gress' policy across different protocols":                       {both("gress-rules", 0, 2, 0, 2)},
		"Should support a 'pass-gress' policy across different protocols at the specified ports": {both("gress-rules", 3, 4, 3, 4)},
	}
	mutations["CNPBaselineTierGress"] = map[string][]func(*World){
		"Should support an 'deny-gress' policy across different protocols": {both("default", 0, 1, 0, 1)},
	}
}
