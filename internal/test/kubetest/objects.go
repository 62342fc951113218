package kubetest

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
)

// DefaultServiceAccount is the ServiceAccount that the ServiceAccount
// admission plugin assigns to pods that name none.
const DefaultServiceAccount = "default"

// runDefaultServiceAccounts does the part of the controller-manager's
// service account controller that admission needs: it creates the
// "default" ServiceAccount in every namespace that is not terminating. It
// returns when ctx is done. Failed creations are retried at the next
// resync.
func runDefaultServiceAccounts(ctx context.Context, client kubernetes.Interface) {
	factory := informers.NewSharedInformerFactory(client, 5*time.Second)
	namespaces := factory.Core().V1().Namespaces()
	accounts := factory.Core().V1().ServiceAccounts().Lister()
	ensure := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok || ns.DeletionTimestamp != nil || ns.Status.Phase == corev1.NamespaceTerminating {
			return
		}
		if _, err := accounts.ServiceAccounts(ns.Name).Get(DefaultServiceAccount); err == nil {
			return
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: DefaultServiceAccount}}
		// Errors (already exists, API server restarting) are left to the
		// next resync.
		_, _ = client.CoreV1().ServiceAccounts(ns.Name).Create(ctx, sa, metav1.CreateOptions{})
	}
	// AddEventHandler only fails on a stopped informer, which this is not.
	_, _ = namespaces.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    ensure,
		UpdateFunc: func(_, obj any) { ensure(obj) },
	})
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
}

// CreateNamespace creates a namespace with the given labels and waits until
// its default ServiceAccount exists, so pods can be created in it at once.
func (e *Env) CreateNamespace(ctx context.Context, name string, labels map[string]string) (*corev1.Namespace, error) {
	ns, err := e.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	if err := WaitForDefaultServiceAccount(ctx, e.client, name); err != nil {
		return nil, err
	}
	return ns, nil
}

// WaitForDefaultServiceAccount waits up to 30 seconds for the default
// ServiceAccount of namespace to exist.
func WaitForDefaultServiceAccount(ctx context.Context, client kubernetes.Interface, namespace string) error {
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true,
		func(ctx context.Context) (bool, error) {
			_, err := client.CoreV1().ServiceAccounts(namespace).Get(ctx, DefaultServiceAccount, metav1.GetOptions{})
			return err == nil, nil
		})
	if err != nil {
		return fmt.Errorf("waiting for the default service account of namespace %s: %w", namespace, err)
	}
	return nil
}

// NewPod returns a minimal valid pod bound to nodeName (empty: unscheduled)
// with one container. Callers may change it before CreatePod.
func NewPod(namespace, name, nodeName string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: nodeName,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "kubetest.invalid/app:v1",
			}},
		},
	}
}

// PodStatus is what a kubelet would report for a pod.
type PodStatus struct {
	// Phase is status.phase; empty means Running.
	Phase corev1.PodPhase
	// IPs are status.podIPs (at most one per family); the first is also
	// status.podIP.
	IPs []string
	// HostIP is status.hostIP and status.hostIPs[0]; empty leaves it unset.
	HostIP string
}

// CreatePod creates pod and then writes status through the status
// subresource, as a kubelet would; there is no kubelet, so nothing changes
// it afterwards. It returns the pod as stored.
func CreatePod(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, status PodStatus) (*corev1.Pod, error) {
	created, err := client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return SetPodStatus(ctx, client, created.Namespace, created.Name, status)
}

// SetPodStatus replaces the phase, IPs and conditions of the pod
// namespace/name through the status subresource (UpdateStatus), retrying on
// conflicts. A Running pod gets the conditions PodScheduled, Initialized,
// ContainersReady and Ready set to True; any other phase gets Ready False.
func SetPodStatus(ctx context.Context, client kubernetes.Interface, namespace, name string, status PodStatus) (*corev1.Pod, error) {
	var updated *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		applyStatus(pod, status, metav1.Now())
		updated, err = client.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("setting status of pod %s/%s: %w", namespace, name, err)
	}
	return updated, nil
}

func applyStatus(pod *corev1.Pod, status PodStatus, now metav1.Time) {
	phase := status.Phase
	if phase == "" {
		phase = corev1.PodRunning
	}
	s := &pod.Status
	s.Phase = phase
	s.PodIP = ""
	s.PodIPs = nil
	for _, ip := range status.IPs {
		s.PodIPs = append(s.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(status.IPs) > 0 {
		s.PodIP = status.IPs[0]
	}
	s.HostIP = status.HostIP
	s.HostIPs = nil
	if status.HostIP != "" {
		s.HostIPs = []corev1.HostIP{{IP: status.HostIP}}
	}
	if s.StartTime == nil && phase != corev1.PodPending {
		s.StartTime = &now
	}
	ready := corev1.ConditionFalse
	if phase == corev1.PodRunning {
		ready = corev1.ConditionTrue
	}
	scheduled := corev1.ConditionFalse
	if pod.Spec.NodeName != "" {
		scheduled = corev1.ConditionTrue
	}
	s.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: scheduled, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
	}
}

// DeletePod deletes a pod at once (grace period 0). A pod bound to a node
// is otherwise only marked for deletion, waiting for a kubelet that is not
// there. A pod that does not exist is not an error.
func DeletePod(ctx context.Context, client kubernetes.Interface, namespace, name string) error {
	zero := int64(0)
	err := client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", namespace, name, err)
	}
	return nil
}
