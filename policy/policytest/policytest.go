// Package policytest builds synthetic clusters for benchmarks and tests of
// the policy engine and its users (the fastpath, the bench harness).
package policytest

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podgate/podgate/policy"
)

// PodIP is the address ScaleCluster gives pod i (0-based, counted over all
// namespaces): 10.64.0.0/10 in order.
func PodIP(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255)
}

// ScaleCluster builds a cluster shaped like a multi-tenant one: nsCount
// namespaces "ns-N" of podsPerNS running pods "pod-M" on node "node-1"
// (labels app=app-(M%5), tier=web; a named container port http 8080;
// namespaces labelled team=team-(N%50), env=prod), and policies spread over
// the namespaces, each selecting one app and allowing ingress from its own
// namespace's web tier, from its team's namespaces and from 192.168.0.0/16
// (except 192.168.1.0/24) on TCP 80, 443 and http, and egress to its team,
// to UDP 53 and to 172.16.0.0/12.
func ScaleCluster(nsCount, podsPerNS, policies int) *policy.Cluster {
	c := &policy.Cluster{}
	for n := range nsCount {
		ns := fmt.Sprintf("ns-%d", n)
		c.Namespaces = append(c.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{"team": fmt.Sprintf("team-%d", n%50), "env": "prod"},
		}})
		for p := range podsPerNS {
			ip := PodIP(n*podsPerNS + p)
			c.Pods = append(c.Pods, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod-%d", p),
					Labels: map[string]string{"app": fmt.Sprintf("app-%d", p%5), "tier": "web"}},
				Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{
					Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
			})
		}
	}
	udp := corev1.ProtocolUDP
	for i := range policies {
		n := i % nsCount
		team := fmt.Sprintf("team-%d", n%50)
		p80, p443, named, dns := intstr.FromInt32(80), intstr.FromInt32(443), intstr.FromString("http"), intstr.FromInt32(53)
		c.Policies = append(c.Policies, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("np-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", (i/nsCount)%5)}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{
						{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}},
						{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": team}}, PodSelector: &metav1.LabelSelector{}},
						{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}},
					},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &p80}, {Port: &p443}, {Port: &named}},
				}},
				Egress: []networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": team}}}}},
					{Ports: []networkingv1.NetworkPolicyPort{{Port: &dns, Protocol: &udp}}},
					{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "172.16.0.0/12"}}}},
				},
			},
		})
	}
	return c
}
