package kubetest_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podgate/podgate/internal/test/kubetest"
)

func TestFindBinariesOverrides(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(kubetest.EnvAPIServer, filepath.Join(dir, "no-apiserver"))
	t.Setenv(kubetest.EnvEtcd, filepath.Join(dir, "no-etcd"))
	_, err := kubetest.FindBinaries()
	var missing *kubetest.MissingBinariesError
	if !errors.As(err, &missing) {
		t.Fatalf("FindBinaries() error = %v, want *MissingBinariesError", err)
	}
	if len(missing.Paths) != 2 || missing.Paths[0] != filepath.Join(dir, "no-apiserver") {
		t.Fatalf("missing paths = %v, want both overrides", missing.Paths)
	}
}

func TestPodsPoliciesAndAPIServerRestart(t *testing.T) {
	t.Parallel()
	env := kubetest.Start(t)
	ctx := t.Context()
	client := env.Client()

	const ns = "shop"
	if _, err := env.CreateNamespace(ctx, ns, map[string]string{"team": "shop"}); err != nil {
		t.Fatal(err)
	}
	pod, err := kubetest.CreatePod(ctx, client,
		kubetest.NewPod(ns, "web", "node-1", map[string]string{"app": "web"}),
		kubetest.PodStatus{IPs: []string{"10.244.1.5", "fd00:10:244:1::5"}, HostIP: "192.0.2.10"})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Status.PodIP != "10.244.1.5" || len(pod.Status.PodIPs) != 2 || pod.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod status = %+v, want Running with podIP 10.244.1.5 and two podIPs", pod.Status)
	}
	// The ServiceAccount admission plugin is on, as in a real cluster.
	if pod.Spec.ServiceAccountName != kubetest.DefaultServiceAccount {
		t.Errorf("serviceAccountName = %q, want %q", pod.Spec.ServiceAccountName, kubetest.DefaultServiceAccount)
	}

	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(80)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-from-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	}
	if _, err := client.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating NetworkPolicy: %v", err)
	}

	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing pods: %v", err)
	}
	if len(pods.Items) != 1 || pods.Items[0].Status.PodIP != "10.244.1.5" || pods.Items[0].Spec.NodeName != "node-1" {
		t.Fatalf("listed pods = %+v, want web on node-1 with podIP 10.244.1.5", pods.Items)
	}
	nps, err := client.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing NetworkPolicies: %v", err)
	}
	if len(nps.Items) != 1 || nps.Items[0].Name != np.Name {
		t.Fatalf("listed NetworkPolicies = %v, want %s", nps.Items, np.Name)
	}

	// An informer started before the restart must see objects created after.
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	podInformer := factory.Core().V1().Pods()
	npInformer := factory.Networking().V1().NetworkPolicies()
	podInformer.Informer()
	npInformer.Informer()
	informerCtx, stopInformers := context.WithCancel(ctx)
	factory.Start(informerCtx.Done())
	t.Cleanup(func() {
		stopInformers()
		factory.Shutdown()
	})
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced, npInformer.Informer().HasSynced) {
		t.Fatal("informer caches did not sync")
	}

	// seenAfter creates a pod and a NetworkPolicy named name and waits for
	// the informers to see both.
	seenAfter := func(name, ip string) {
		t.Helper()
		if _, err := kubetest.CreatePod(ctx, client,
			kubetest.NewPod(ns, name, "node-1", map[string]string{"app": "client"}),
			kubetest.PodStatus{IPs: []string{ip}}); err != nil {
			t.Fatal(err)
		}
		np2 := np.DeepCopy()
		np2.Name, np2.ResourceVersion = name, ""
		if _, err := client.NetworkingV1().NetworkPolicies(ns).Create(ctx, np2, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating NetworkPolicy %s: %v", name, err)
		}
		begin := time.Now()
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 90*time.Second, true, func(context.Context) (bool, error) {
			p, err := podInformer.Lister().Pods(ns).Get(name)
			if err != nil || p.Status.PodIP != ip {
				return false, nil
			}
			_, err = npInformer.Lister().NetworkPolicies(ns).Get(name)
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("informers did not see pod and NetworkPolicy %s: %v", name, err)
		}
		t.Logf("informers saw %s %v after it was created", name, time.Since(begin).Round(time.Millisecond))
	}

	begin := time.Now()
	if err := env.RestartAPIServer(ctx); err != nil {
		t.Fatalf("restarting kube-apiserver: %v", err)
	}
	t.Logf("kube-apiserver stopped, started and ready in %v", time.Since(begin).Round(time.Millisecond))
	seenAfter("after-restart", "10.244.1.6")

	// A crash (SIGKILL) instead of a graceful stop.
	env.KillAPIServer()
	if env.APIServerRunning() {
		t.Fatal("kube-apiserver still running after KillAPIServer")
	}
	if _, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("listing pods succeeded while kube-apiserver was down")
	}
	if err := env.StartAPIServer(ctx); err != nil {
		t.Fatalf("starting kube-apiserver after a kill: %v", err)
	}
	seenAfter("after-kill", "10.244.1.7")

	if err := kubetest.DeletePod(ctx, client, ns, "after-restart"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods(ns).Get(ctx, "after-restart", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("pod after DeletePod: err = %v, want NotFound", err)
	}
}

func TestRBACIsEnforced(t *testing.T) {
	t.Parallel()
	env := kubetest.Start(t)
	ctx := t.Context()
	admin := env.Client()

	const ns, sa = "podgate-system", "podgate"
	if _, err := env.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := env.CreateNamespace(ctx, "other", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating service account: %v", err)
	}
	if _, err := kubetest.CreatePod(ctx, admin, kubetest.NewPod(ns, "p", "node-1", nil),
		kubetest.PodStatus{IPs: []string{"10.244.0.7"}}); err != nil {
		t.Fatal(err)
	}

	certCfg, err := env.ConfigFor(kubetest.ServiceAccountUser(ns, sa), kubetest.ServiceAccountGroups(ns)...)
	if err != nil {
		t.Fatal(err)
	}
	tokenCfg, err := env.ServiceAccountConfig(ctx, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	// A kubeconfig written for the token identity behaves the same.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubetest.WriteKubeconfig(kubeconfig, tokenCfg); err != nil {
		t.Fatal(err)
	}
	fileCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("loading kubeconfig: %v", err)
	}
	identities := map[string]*rest.Config{"client certificate": certCfg, "token": tokenCfg, "kubeconfig": fileCfg}
	clients := map[string]kubernetes.Interface{}
	for name, cfg := range identities {
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatalf("%s: creating client: %v", name, err)
		}
		clients[name] = c
	}

	for name, c := range clients {
		_, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("%s: listing pods without RBAC: err = %v, want Forbidden", name, err)
		}
	}

	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pod-reader"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"},
		}},
	}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating Role: %v", err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "podgate-pod-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating RoleBinding: %v", err)
	}

	for name, c := range clients {
		// The RBAC authorizer reads roles from informers: allow a moment.
		var pods *corev1.PodList
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
			var err error
			pods, err = c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("%s: listing pods with a RoleBinding never succeeded: %v", name, err)
		}
		if len(pods.Items) != 1 || pods.Items[0].Status.PodIP != "10.244.0.7" {
			t.Fatalf("%s: listed pods = %v, want p with podIP 10.244.0.7", name, pods.Items)
		}
		if _, err := c.CoreV1().Pods("other").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("%s: listing pods of another namespace: err = %v, want Forbidden", name, err)
		}
		if err := c.CoreV1().Pods(ns).Delete(ctx, "p", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("%s: deleting a pod with a read-only role: err = %v, want Forbidden", name, err)
		}
	}

	// A plain user with no binding stays forbidden.
	aliceCfg, err := env.ConfigFor("alice", "developers")
	if err != nil {
		t.Fatal(err)
	}
	alice, err := kubernetes.NewForConfig(aliceCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("alice: listing pods: err = %v, want Forbidden", err)
	}
}
