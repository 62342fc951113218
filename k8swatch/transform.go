package k8swatch

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrimForPolicy is an informer transform (a cache.TransformFunc, for
// informers.WithTransform) that keeps of each object only what an
// [APISource] reads, to keep the informer caches small: every object loses
// metadata.managedFields ([StripManagedFields]); a Pod keeps only its name,
// namespace, UID, resourceVersion, generation, labels and deletion
// timestamp, its node name, hostNetwork and the name and ports of its
// containers, and its phase and addresses (status.podIP, status.podIPs);
// a Node keeps only its name, UID, resourceVersion, labels and addresses.
// Everything else (annotations, owner references, images, environment,
// volumes, probes, conditions) is dropped: in a large cluster the Pod cache
// is most of an agent's memory, and those fields most of a Pod.
//
// Other values, and objects that were trimmed already, pass unchanged
// (client-go may hand a transform an object it transformed before). Only
// use it for informers whose only consumer is an APISource: another
// consumer of the same shared informer would see the trimmed objects.
func TrimForPolicy(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return trimPod(o), nil
	case *corev1.Node:
		return trimNode(o), nil
	}
	return StripManagedFields(obj)
}

// keepMeta returns the metadata that informers and the table read: the
// identity and version of the object and its labels.
func keepMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		Generation:        m.Generation,
		Labels:            m.Labels,
		DeletionTimestamp: m.DeletionTimestamp,
	}
}

// trimPod returns the part of p that [policy.Compile] and podChanged read.
func trimPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta:   p.TypeMeta,
		ObjectMeta: keepMeta(&p.ObjectMeta),
		Spec: corev1.PodSpec{
			NodeName:    p.Spec.NodeName,
			HostNetwork: p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{
			Phase:  p.Status.Phase,
			PodIP:  p.Status.PodIP,
			PodIPs: p.Status.PodIPs,
		},
	}
	if len(p.Spec.Containers) > 0 {
		out.Spec.Containers = make([]corev1.Container, len(p.Spec.Containers))
		for i, c := range p.Spec.Containers {
			out.Spec.Containers[i] = corev1.Container{Name: c.Name, Ports: c.Ports}
		}
	}
	return out
}

// trimNode returns the part of n that [policy.Compile] and the node
// address handler read.
func trimNode(n *corev1.Node) *corev1.Node {
	return &corev1.Node{
		TypeMeta:   n.TypeMeta,
		ObjectMeta: keepMeta(&n.ObjectMeta),
		Status:     corev1.NodeStatus{Addresses: n.Status.Addresses},
	}
}
