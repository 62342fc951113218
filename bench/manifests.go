package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/podgate/podgate/policy/policytest"
)

// The bench lab: three pods on node NodeName in namespace "bench", next to
// the synthetic cluster's pods on node-1 (which the lab leaves out: they
// are only in the policy table).
const (
	NodeName     = "bench-node"
	benchNS      = "bench"
	ClientPod    = benchNS + "/client"
	ServerPod    = benchNS + "/server"
	OtherPod     = benchNS + "/other"
	IPerfPort    = 5201
	ConnPort     = 7000
	EchoPort     = 7001 // UDP ping-pong
	ProbePort    = 7002 // TCP, for the allowed/denied checks
	DeniedPort   = 7100 // TCP, allowed for nobody
	FloodPortLo  = 9000 // UDP destination ports of the generator's flows
	FloodPortHi  = 9999
	FloodSrcBase = 20000
	FloodSrcN    = 1000
)

// Addresses of the bench pods.
const (
	clientIP = "10.250.0.10"
	serverIP = "10.250.0.20"
	otherIP  = "10.250.0.30"
)

// benchObjects returns the bench namespace, its three pods and the
// policies that make the measured flows allowed: server accepts from the
// client on the bench ports (UDP 9000-9999 by an endPort range), client
// may send to the server and to DNS. "other" is not a client, so
// other → server is denied, and so is client → server on DeniedPort.
func benchObjects() []any {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(p int32, proto corev1.Protocol, end int32) networkingv1.NetworkPolicyPort {
		v := intstr.FromInt32(p)
		np := networkingv1.NetworkPolicyPort{Port: &v, Protocol: &proto}
		if end > 0 {
			np.EndPort = &end
		}
		return np
	}
	pod := benchPod
	role := func(r string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"role": r}}
	}
	return []any{
		&corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: benchNS, Labels: map[string]string{"team": "team-0", "env": "bench"}},
		},
		pod("client", "client", clientIP),
		pod("server", "server", serverIP),
		pod("other", "other", otherIP),
		&networkingv1.NetworkPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
			ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: "server-ingress"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: *role("server"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{
						From: []networkingv1.NetworkPolicyPeer{{PodSelector: role("client")}},
						Ports: []networkingv1.NetworkPolicyPort{
							port(IPerfPort, tcp, 0), port(ConnPort, tcp, ProbePort),
							port(EchoPort, udp, 0), port(FloodPortLo, udp, FloodPortHi),
						},
					},
					{
						From:  []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}},
						Ports: []networkingv1.NetworkPolicyPort{port(443, tcp, 0)},
					},
				},
			},
		},
		&networkingv1.NetworkPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
			ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: "client-egress"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: *role("client"),
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{{PodSelector: role("server")}}},
					{
						To:    []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}}}},
						Ports: []networkingv1.NetworkPolicyPort{port(53, udp, 0), port(53, tcp, 0)},
					},
				},
			},
		},
	}
}

// benchPod returns a running pod of the bench namespace on the bench node.
func benchPod(name, role, ip string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: name, Labels: map[string]string{"role": role, "tier": "web"}},
		Spec: corev1.PodSpec{NodeName: NodeName, Containers: []corev1.Container{{
			Name: "c", Image: "scratch", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// maxIdlePods bounds Config.IdlePods: the extra pods' addresses are
// 10.250.16.1 on, 250 per /24, within 10.250.16.0/20.
const maxIdlePods = 1000

// idlePods returns n more pods of the bench namespace on the bench node
// (role "idle": no policy selects them), for the idle-cost lab.
func idlePods(n int) []any {
	out := make([]any, 0, n)
	for i := range n {
		ip := fmt.Sprintf("10.250.%d.%d", 16+i/250, 1+i%250) // 10.250.16.1-250, 10.250.17.1-250, ...
		out = append(out, benchPod(fmt.Sprintf("idle-%03d", i), "idle", ip))
	}
	return out
}

// BenchPolicies is the number of policies of the bench namespace, which
// are in the table besides the synthetic ones.
const BenchPolicies = 2

// writeManifests writes the manifests of one configuration into dir:
// bench.yaml (the bench namespace, pods and policies, and extraPods more
// pods on the bench node) and cluster.json (a kind: List of
// policytest.ScaleCluster(namespaces, podsPerNS, policies)).
func writeManifests(dir string, namespaces, podsPerNS, policies, extraPods int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	var doc []byte
	for i, o := range append(benchObjects(), idlePods(extraPods)...) {
		y, err := yaml.Marshal(o)
		if err != nil {
			return fmt.Errorf("write manifests: %w", err)
		}
		if i > 0 {
			doc = append(doc, "---\n"...)
		}
		doc = append(doc, y...)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.yaml"), doc, 0o644); err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	c := policytest.ScaleCluster(namespaces, podsPerNS, policies)
	items := make([]any, 0, len(c.Namespaces)+len(c.Pods)+len(c.Policies))
	for _, ns := range c.Namespaces {
		n := *ns
		n.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}
		items = append(items, &n)
	}
	for _, p := range c.Pods {
		q := *p
		q.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
		items = append(items, &q)
	}
	for _, np := range c.Policies {
		q := *np
		q.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
		items = append(items, &q)
	}
	list := map[string]any{"apiVersion": "v1", "kind": "List", "items": items}
	data, err := json.Marshal(list)
	if err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cluster.json"), data, 0o644); err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	return nil
}
