package k8swatch

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/podgate/podgate/internal/test/kubetest"
	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// apiSetup is an APISource wired as cmd wires it: one informer factory
// with TrimForPolicy, the source created before the factory starts.
type apiSetup struct {
	src   *APISource
	store *table.Store
	logs  *logBuffer
}

func startAPISource(t testing.TB, client kubernetes.Interface, nodeName string) *apiSetup {
	t.Helper()
	return startAPISourceWith(t, client, nodeName, nil)
}

// startAPISourceWith is startAPISource with a change to the config.
func startAPISourceWith(t testing.TB, client kubernetes.Interface, nodeName string, change func(*APIConfig)) *apiSetup {
	t.Helper()
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(TrimForPolicy))
	s := &apiSetup{store: &table.Store{}}
	log, logs := testLogger(t)
	s.logs = logs
	cfg := APIConfig{
		Pods:            factory.Core().V1().Pods(),
		Namespaces:      factory.Core().V1().Namespaces(),
		NetworkPolicies: factory.Networking().V1().NetworkPolicies(),
		Services:        factory.Core().V1().Services(),
		EndpointSlices:  factory.Discovery().V1().EndpointSlices(),
		Nodes:           factory.Core().V1().Nodes(),
		NodeName:        nodeName,
		Store:           s.store,
		Logger:          log,
		Probe:           ReadyzProbe(client.Discovery().RESTClient()),
		ProbeInterval:   200 * time.Millisecond,
		ProbeTimeout:    time.Second,
	}
	if change != nil {
		change(&cfg)
	}
	src, err := NewAPISource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.src = src
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	factory.Start(ctx.Done())
	wg.Go(func() {
		if err := src.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		factory.Shutdown()
	})
	return s
}

// TestAPISourceWithAPIServer runs an APISource against a real API server:
// every kind of change takes effect without a restart, and a stopped API
// server makes the view stale while the last table stays.
func TestAPISourceWithAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx := t.Context()
	client := env.Client()

	for ns, team := range map[string]string{"a": "a", "b": "b"} {
		if _, err := env.CreateNamespace(ctx, ns, map[string]string{"team": team}); err != nil {
			t.Fatal(err)
		}
	}
	createPod := func(ns, name, ip, app string) {
		t.Helper()
		if _, err := kubetest.CreatePod(ctx, client, kubetest.NewPod(ns, name, "node-1", map[string]string{"app": app}),
			kubetest.PodStatus{IPs: []string{ip}, HostIP: "192.0.2.1"}); err != nil {
			t.Fatal(err)
		}
	}
	createPod("a", "web", "10.244.0.10", "web")
	createPod("a", "client", "10.244.0.11", "client")
	createPod("b", "client", "10.244.0.12", "client")
	node, err := client.CoreV1().Nodes().Create(ctx, newNode("node-1"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "192.0.2.1"},
		{Type: corev1.NodeHostName, Address: "node-1"},
	}
	if node, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	s := startAPISource(t, client, "node-1")
	testutil.EventuallyTrue(t, 30*time.Second, "the source to be ready", s.src.Ready)
	const timeout = 10 * time.Second
	const web, aClient, bClient = "10.244.0.10", "10.244.0.11", "10.244.0.12"
	// No policy: everything is allowed.
	expectVerdicts(t, s.store, timeout, verdict{aClient, web, 80, true}, verdict{bClient, web, 81, true})
	testutil.EventuallyTrue(t, timeout, "node addresses", func() bool {
		return slices.Equal(s.src.NodeAddrs(), []netip.Addr{netip.MustParseAddr("192.0.2.1")})
	})

	nps := client.NetworkingV1().NetworkPolicies("a")
	t.Run("create policy", func(t *testing.T) {
		if _, err := nps.Create(ctx, ingressPolicy("a", "web", "web", "client", "trusted", 80), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, s.store, timeout,
			verdict{aClient, web, 80, true}, verdict{aClient, web, 81, false}, verdict{bClient, web, 80, false})
	})

	t.Run("relabel pod", func(t *testing.T) {
		pods := client.CoreV1().Pods("a")
		pod, err := pods.Get(ctx, "client", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Labels["app"] = "other"
		if pod, err = pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, s.store, timeout, verdict{aClient, web, 80, false})
		pod.Labels["app"] = "client"
		if _, err = pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, s.store, timeout, verdict{aClient, web, 80, true})
	})

	t.Run("relabel namespace", func(t *testing.T) {
		ns, err := client.CoreV1().Namespaces().Get(ctx, "b", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Labels["team"] = "trusted"
		if _, err := client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, s.store, timeout, verdict{bClient, web, 80, true})
	})

	t.Run("change pod IP", func(t *testing.T) {
		if _, err := kubetest.SetPodStatus(ctx, client, "a", "client", kubetest.PodStatus{IPs: []string{"10.244.0.21"}}); err != nil {
			t.Fatal(err)
		}
		tab := expectVerdicts(t, s.store, timeout, verdict{"10.244.0.21", web, 80, true}, verdict{aClient, web, 80, false})
		if _, ok := tab.EndpointByAddr(netip.MustParseAddr(aClient)); ok {
			t.Errorf("the old address still belongs to a pod")
		}
	})

	t.Run("delete pod", func(t *testing.T) {
		if err := kubetest.DeletePod(ctx, client, "a", "client"); err != nil {
			t.Fatal(err)
		}
		tab := expectVerdicts(t, s.store, timeout, verdict{"10.244.0.21", web, 80, false})
		if _, ok := tab.EndpointByName("a", "client"); ok {
			t.Errorf("deleted pod a/client is still in the table")
		}
	})

	t.Run("update and delete policy", func(t *testing.T) {
		np, err := nps.Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		np.Spec.Ingress[0].Ports[0].Port.IntVal = 8080
		if _, err := nps.Update(ctx, np, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, s.store, timeout, verdict{bClient, web, 8080, true}, verdict{bClient, web, 80, false})
		if err := nps.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, s.store, timeout, verdict{bClient, web, 80, true})
		if _, err := nps.Create(ctx, ingressPolicy("a", "web", "web", "client", "trusted", 80), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, s.store, timeout, verdict{bClient, web, 80, true}, verdict{bClient, web, 81, false})
	})

	t.Run("node addresses", func(t *testing.T) {
		node.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "192.0.2.1"},
			{Type: corev1.NodeExternalIP, Address: "203.0.113.7"},
		}
		if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		testutil.EventuallyTrue(t, timeout, "the new node addresses", func() bool {
			return slices.Equal(s.src.NodeAddrs(), []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("203.0.113.7")})
		})
	})

	t.Run("Service and EndpointSlice", func(t *testing.T) {
		// No controller-manager runs: the test writes the EndpointSlice
		// that the EndpointSlice controller would.
		if _, err := env.CreateNamespace(ctx, "s", nil); err != nil {
			t.Fatal(err)
		}
		const caller, backend, intruder, svcIP = "10.244.1.1", "10.244.1.2", "10.244.1.3", "10.0.0.100"
		createPod("s", "caller", caller, "caller")
		createPod("s", "backend", backend, "backend")
		createPod("s", "intruder", intruder, "intruder")
		if _, err := client.NetworkingV1().NetworkPolicies("s").Create(ctx, egressToApp("s", "caller", "caller", "backend", 8080), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.CoreV1().Services("s").Create(ctx, newService("s", "backend", svcIP, 80), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Before its endpoints exist the ClusterIP is an address.
		expectVerdicts(t, s.store, timeout, verdict{caller, svcIP, 80, false}, verdict{caller, backend, 8080, true})
		slicesAPI := client.DiscoveryV1().EndpointSlices("s")
		es, err := slicesAPI.Create(ctx, newEndpointSlice("s", "backend-abcde", "backend", 8080, []string{backend}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		tab := expectVerdicts(t, s.store, timeout, verdict{caller, svcIP, 80, true}, verdict{intruder, svcIP, 80, true})
		if b, ok := tab.ServiceBackends(netip.MustParseAddr(svcIP), table.TCP, 80); !ok || len(b) != 1 || b[0].Port != 8080 {
			t.Errorf("backends of s/backend: %+v, %v", b, ok)
		}
		e := tab.Explain(netip.MustParseAddr(caller), netip.MustParseAddr(svcIP), table.TCP, 80)
		if !strings.Contains(e.Egress.Detail, "destination is Service s/backend") {
			t.Errorf("explanation: %s", e.Egress.Detail)
		}
		fresh := newEndpointSlice("s", "backend-abcde", "backend", 8080, []string{backend, intruder})
		fresh.ResourceVersion = es.ResourceVersion
		if _, err = slicesAPI.Update(ctx, fresh, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, s.store, timeout, verdict{caller, svcIP, 80, false})
		if err := client.CoreV1().Services("s").Delete(ctx, "backend", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testutil.EventuallyTrue(t, timeout, "the Service to leave the table", func() bool {
			_, ok := s.store.Load().ServiceByAddr(netip.MustParseAddr(svcIP))
			return !ok
		})
		expectVerdicts(t, s.store, timeout, verdict{caller, svcIP, 80, false}, verdict{caller, backend, 8080, true})
	})

	t.Run("forbidden informers are stale until allowed", func(t *testing.T) {
		testForbidden(t, env)
	})

	t.Run("API server stopped and restarted", func(t *testing.T) {
		if st := s.src.Status(); st.Stale || !st.Ready() {
			t.Fatalf("status before the stop = %+v, want ready and current", st)
		}
		last := s.store.Load()
		watchErrors := strings.Count(s.logs.String(), "list or watch failed")
		stop := time.Now()
		env.StopAPIServer()
		testutil.EventuallyTrue(t, 10*time.Second, "the view to be stale", func() bool { return s.src.Status().Stale })
		st := s.src.Status()
		t.Logf("stale %v after the stop began: %s", time.Since(stop).Round(time.Millisecond), st.StaleReason)
		if s.store.Load() != last || !s.src.Ready() {
			t.Errorf("while stale: table replaced = %v, ready = %v; want the last table, still ready", s.store.Load() != last, s.src.Ready())
		}
		expectVerdicts(t, s.store, time.Second, verdict{bClient, web, 80, true}, verdict{bClient, web, 81, false})

		if err := env.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		t.Logf("API server ready %v after the stop began", started.Sub(stop).Round(time.Millisecond))
		// Changes right after the restart: a new pod, a new policy, a
		// deleted pod.
		createPod("a", "late", "10.244.0.30", "client")
		if _, err := client.NetworkingV1().NetworkPolicies("b").Create(ctx, ingressPolicy("b", "after-restart", "client", "none", "", 9), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := kubetest.DeletePod(ctx, client, "b", "client"); err != nil {
			t.Fatal(err)
		}
		testutil.EventuallyTrue(t, 90*time.Second, "the view to be current", func() bool { return !s.src.Status().Stale })
		t.Logf("current again %v after the API server was ready; the watch error handler was called %d times during the outage",
			time.Since(started).Round(time.Millisecond), strings.Count(s.logs.String(), "list or watch failed")-watchErrors)
		tab := expectVerdicts(t, s.store, 90*time.Second, verdict{"10.244.0.30", web, 80, true}, verdict{"10.244.0.30", web, 81, false})
		t.Logf("changes made after the restart published %v after it", time.Since(started).Round(time.Millisecond))
		if _, ok := tab.EndpointByName("b", "client"); ok {
			// The verdicts above may have come before the deletion.
			testutil.EventuallyTrue(t, timeout, "b/client to be deleted", func() bool {
				_, ok := s.store.Load().EndpointByName("b", "client")
				return !ok
			})
		}
		compareWithAPI(t, client, s.store.Load())
		if st := s.src.Status(); !st.Ready() || st.Err() != nil {
			t.Errorf("status after the restart = %+v, Err = %v; want ready, current", st, st.Err())
		}
	})
}

// compareWithAPI checks that tab holds exactly the pods (with their
// addresses) and the policies that the API server lists.
func compareWithAPI(t *testing.T, client kubernetes.Interface, tab *table.Table) {
	t.Helper()
	ctx := t.Context()
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]netip.Addr{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if policy.PodTakesPart(p) {
			want[p.Namespace+"/"+p.Name] = []netip.Addr{netip.MustParseAddr(p.Status.PodIP)}
		}
	}
	got := map[string][]netip.Addr{}
	for _, e := range tab.Endpoints() {
		if _, dup := got[e.String()]; dup {
			t.Errorf("endpoint %s twice in the table", e.String())
		}
		got[e.String()] = e.IPs
	}
	addrCmp := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
	if diff := cmp.Diff(want, got, addrCmp); diff != "" {
		t.Errorf("table endpoints differ from the API's pods (-want +got):\n%s", diff)
	}
	nps, err := client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var wantPols, gotPols []string
	for _, np := range nps.Items {
		wantPols = append(wantPols, np.Namespace+"/"+np.Name)
	}
	for _, p := range tab.Policies() {
		gotPols = append(gotPols, p.String())
	}
	slices.Sort(wantPols)
	if diff := cmp.Diff(wantPols, gotPols); diff != "" {
		t.Errorf("table policies differ from the API's (-want +got):\n%s", diff)
	}
}

// testForbidden runs a second source as a user without RBAC rules: every
// list fails with Forbidden, which client-go reports to the watch error
// handler (it does not retry that silently), so the view is stale while
// the probe (allowed to everyone) succeeds. Granting the rules the agent
// needs makes the informers sync and the view current.
func testForbidden(t *testing.T, env *kubetest.Env) {
	ctx := t.Context()
	const user = "podgate-agent-test"
	cfg, err := env.ConfigFor(user)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := startAPISource(t, client, "node-1")
	testutil.EventuallyTrue(t, 20*time.Second, "the view to be stale", func() bool { return s.src.Status().Stale })
	st := s.src.Status()
	t.Logf("stale: %s", st.StaleReason)
	if s.src.Ready() || st.Synced {
		t.Errorf("ready = %v, synced = %v without permission to list; want neither", s.src.Ready(), st.Synced)
	}

	admin := env.Client().RbacV1()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "namespaces", "nodes", "services"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	if _, err := admin.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if _, err := admin.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	granted := time.Now()
	testutil.EventuallyTrue(t, 60*time.Second, "the source to be ready and current", func() bool {
		st := s.src.Status()
		return st.Ready() && !st.Stale
	})
	t.Logf("ready and current %v after the permissions were granted", time.Since(granted).Round(time.Millisecond))
	compareWithAPI(t, env.Client(), s.store.Load())
}
