package k8swatch

import (
	"net/netip"

	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podgate/podgate/policy"
)

// TestTrimForPolicyKeepsTheTable compiles a cluster from trimmed and
// untrimmed objects: the tables must have the same endpoints, and trimmed
// objects must compare unchanged for podChanged and nodeChanged.
func TestTrimForPolicyKeepsTheTable(t *testing.T) {
	nss, pods, nps := scaleObjects(20, 5, 40)
	for i, p := range pods {
		p.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"}
		p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
		p.ResourceVersion = "1"
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "A", Value: "b"}}
		p.Spec.Volumes = []corev1.Volume{{Name: "v"}}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		p.Status.HostIP = "192.0.2.1"
		switch i % 10 {
		case 1:
			p.Status.Phase = corev1.PodSucceeded
		case 2:
			p.Spec.HostNetwork = true
		case 3:
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090}}})
		}
	}
	full := &policy.Cluster{Namespaces: nss, Pods: pods, Policies: nps}
	var trimmed []*corev1.Pod
	for _, p := range pods {
		obj, err := TrimForPolicy(p.DeepCopy())
		if err != nil {
			t.Fatal(err)
		}
		tp := obj.(*corev1.Pod)
		if tp.Annotations != nil || tp.ManagedFields != nil || tp.Spec.Volumes != nil || tp.Status.Conditions != nil || tp.Spec.Containers[0].Env != nil {
			t.Fatalf("pod %s not trimmed: %+v", p.Name, tp)
		}
		again, _ := TrimForPolicy(tp)
		if diff := cmp.Diff(tp, again); diff != "" {
			t.Fatalf("trimming twice changes the pod (-once +twice):\n%s", diff)
		}
		if podChanged(p, tp) || podPresent(p) != podPresent(tp) {
			t.Errorf("trimming pod %s changes what the table reads", p.Name)
		}
		trimmed = append(trimmed, tp)
	}
	want, err := policy.CompileWith(full, policy.Options{Trusted: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := policy.CompileWith(&policy.Cluster{Namespaces: nss, Pods: trimmed, Policies: nps}, policy.Options{Trusted: true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.Endpoints(), got.Endpoints(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("endpoints differ (-full +trimmed):\n%s", diff)
	}
	if ws, gs := want.Stats(), got.Stats(); ws.Identities != gs.Identities || ws.Rules != gs.Rules || ws.Groups != gs.Groups {
		t.Errorf("stats differ: full %+v, trimmed %+v", ws, gs)
	}

	node := newNode("node-1")
	node.Labels = map[string]string{"zone": "a"}
	node.Annotations = map[string]string{"a": "b"}
	node.ResourceVersion = "3"
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.1"}}
	node.Status.Images = []corev1.ContainerImage{{Names: []string{"big"}}}
	obj, _ := TrimForPolicy(node.DeepCopy())
	tn := obj.(*corev1.Node)
	if tn.Status.Images != nil || tn.Annotations != nil || nodeChanged(node, tn) || tn.Name != node.Name {
		t.Errorf("node trimmed wrongly: %+v", tn)
	}

	ns := nss[0].DeepCopy()
	ns.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	obj, _ = TrimForPolicy(ns)
	if tns := obj.(*corev1.Namespace); tns.ManagedFields != nil || tns.Labels == nil {
		t.Errorf("namespace trimmed wrongly: %+v", tns)
	}
}
