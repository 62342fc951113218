package k8swatch

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// fakeSetup is an APISource on a fake clientset.
type fakeSetup struct {
	client  *fake.Clientset
	factory informers.SharedInformerFactory
	store   *table.Store
	src     *APISource
	logs    *logBuffer
}

// newFake creates an APISource over a fake clientset holding objects.
// cfg's informers, store and logger are filled in. Call start to run it.
func newFake(t *testing.T, cfg APIConfig, objects ...runtime.Object) *fakeSetup {
	t.Helper()
	return newFakeWith(t, cfg, false, objects...)
}

// newFakeWith is newFake, with the Service and EndpointSlice informers
// when services is set.
func newFakeWith(t *testing.T, cfg APIConfig, services bool, objects ...runtime.Object) *fakeSetup {
	t.Helper()
	f := &fakeSetup{client: fake.NewClientset(objects...), store: &table.Store{}}
	f.factory = informers.NewSharedInformerFactoryWithOptions(f.client, 0, informers.WithTransform(StripManagedFields))
	cfg.Pods = f.factory.Core().V1().Pods()
	cfg.Namespaces = f.factory.Core().V1().Namespaces()
	cfg.NetworkPolicies = f.factory.Networking().V1().NetworkPolicies()
	if services {
		cfg.Services = f.factory.Core().V1().Services()
		cfg.EndpointSlices = f.factory.Discovery().V1().EndpointSlices()
	}
	if cfg.NodeName != "" {
		cfg.Nodes = f.factory.Core().V1().Nodes()
	}
	cfg.Store = f.store
	cfg.Logger, f.logs = testLogger(t)
	src, err := NewAPISource(cfg)
	if err != nil {
		t.Fatalf("NewAPISource: %v", err)
	}
	f.src = src
	return f
}

// start starts the informers and runs the source until the test ends.
func (f *fakeSetup) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	f.factory.Start(ctx.Done())
	wg.Go(func() {
		if err := f.src.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		f.factory.Shutdown()
	})
}

func (f *fakeSetup) waitReady(t *testing.T) {
	t.Helper()
	testutil.EventuallyTrue(t, 10*time.Second, "the source to be ready", f.src.Ready)
}

func TestAPISourceFollowsChanges(t *testing.T) {
	ctx := t.Context()
	f := newFake(t, APIConfig{},
		newNamespace("a", map[string]string{"team": "a"}),
		newNamespace("b", map[string]string{"team": "b"}),
		newPod("a", "web", "10.0.0.1", map[string]string{"app": "web"}),
		newPod("a", "client", "10.0.0.2", map[string]string{"app": "client"}),
		newPod("b", "client", "10.0.0.3", map[string]string{"app": "client"}),
		ingressPolicy("a", "web", "web", "client", "", 80),
	)
	f.start(t)
	f.waitReady(t)
	expectVerdicts(t, f.store, 5*time.Second,
		verdict{"10.0.0.2", "10.0.0.1", 80, true},
		verdict{"10.0.0.2", "10.0.0.1", 81, false},
		verdict{"10.0.0.3", "10.0.0.1", 80, false})

	pods := f.client.CoreV1().Pods("a")
	client, err := pods.Get(ctx, "client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client.Labels["app"] = "other"
	if _, err := pods.Update(ctx, client, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 80, false})

	np := ingressPolicy("a", "web", "web", "client", "b", 80)
	if _, err := f.client.NetworkingV1().NetworkPolicies("a").Update(ctx, np, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.3", "10.0.0.1", 80, true})

	if err := f.client.NetworkingV1().NetworkPolicies("a").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 81, true})
	if st := f.src.Status(); !st.Ready() || st.Stale || st.LastError != nil || st.Err() != nil {
		t.Errorf("status = %+v, want ready, current and without errors", st)
	}
}

// TestAPISourceTombstones delivers deletions the way an informer does
// after a relist that found objects gone: the object is already removed
// from the cache and the handler gets a cache.DeletedFinalStateUnknown.
func TestAPISourceTombstones(t *testing.T) {
	node := newNode("node-1", corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.1"})
	var calls [][]netip.Addr
	var mu sync.Mutex
	f := newFake(t, APIConfig{NodeName: "node-1", OnNodeAddrs: func(a []netip.Addr) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, a)
	}},
		newNamespace("a", map[string]string{"team": "a"}),
		newNamespace("b", map[string]string{"team": "b"}),
		newPod("a", "web", "10.0.0.1", map[string]string{"app": "web"}),
		newPod("a", "client", "10.0.0.2", map[string]string{"app": "client"}),
		newPod("b", "other", "10.0.0.3", map[string]string{"app": "other"}),
		ingressPolicy("a", "web", "web", "client", "b", 80),
		node,
	)
	f.start(t)
	f.waitReady(t)
	expectVerdicts(t, f.store, 5*time.Second,
		verdict{"10.0.0.2", "10.0.0.1", 80, true},
		verdict{"10.0.0.3", "10.0.0.1", 80, true})
	testutil.EventuallyTrue(t, 5*time.Second, "node addresses", func() bool { return len(f.src.NodeAddrs()) == 1 })

	tombstone := func(informer string, obj runtime.Object) {
		t.Helper()
		var inf cache.SharedIndexInformer
		switch informer {
		case "pods":
			inf = f.factory.Core().V1().Pods().Informer()
		case "namespaces":
			inf = f.factory.Core().V1().Namespaces().Informer()
		case "networkpolicies":
			inf = f.factory.Networking().V1().NetworkPolicies().Informer()
		case "nodes":
			inf = f.factory.Core().V1().Nodes().Informer()
		case "services":
			inf = f.factory.Core().V1().Services().Informer()
		case "endpointslices":
			inf = f.factory.Discovery().V1().EndpointSlices().Informer()
		}
		key, err := cache.MetaNamespaceKeyFunc(obj)
		if err != nil {
			t.Fatal(err)
		}
		if err := inf.GetIndexer().Delete(obj); err != nil {
			t.Fatal(err)
		}
		f.src.handlers[informer].OnDelete(cache.DeletedFinalStateUnknown{Key: key, Obj: obj})
	}

	before := f.src.Status().Events
	tombstone("pods", newPod("a", "client", "10.0.0.2", map[string]string{"app": "client"}))
	tab := expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 80, false})
	if _, ok := tab.EndpointByName("a", "client"); ok {
		t.Errorf("pod a/client still in the table after its tombstone")
	}

	tombstone("namespaces", newNamespace("b", map[string]string{"team": "b"}))
	// Pod b/other stays, but its namespace lost its labels.
	expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.3", "10.0.0.1", 80, false})

	tombstone("networkpolicies", ingressPolicy("a", "web", "web", "client", "b", 80))
	expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.3", "10.0.0.1", 80, true})

	tombstone("nodes", node)
	testutil.EventuallyTrue(t, 5*time.Second, "node addresses to be cleared", func() bool { return f.src.NodeAddrs() == nil })
	mu.Lock()
	defer mu.Unlock()
	want := [][]netip.Addr{{netip.MustParseAddr("192.0.2.1")}, nil}
	if diff := cmp.Diff(want, calls, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("OnNodeAddrs calls (-want +got):\n%s", diff)
	}
	if got := f.src.Status().Events - before; got != 3 {
		t.Errorf("events counted for 3 policy tombstones = %d, want 3 (node changes do not count)", got)
	}
}

// TestAPISourceCoalescesBursts drives the rebuild runner with a fake
// clock: a burst of changes within MinInterval is published once.
func TestAPISourceCoalescesBursts(t *testing.T) {
	ctx := t.Context()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	// The probe loop also waits on the clock; with a long interval it
	// holds one timer that the steps below never reach.
	f := newFake(t, APIConfig{Clock: clk, MinInterval: time.Second, ProbeInterval: time.Hour},
		newNamespace("a", nil),
		newPod("a", "web", "10.0.0.1", map[string]string{"app": "web"}),
		newPod("a", "client", "10.0.0.2", map[string]string{"app": "client"}),
	)
	f.start(t)
	f.waitReady(t)
	gen := f.store.Load().Generation()
	events := f.src.Status().Events

	// The first change after a quiet period is published at once.
	clk.Step(time.Minute)
	if _, err := f.client.NetworkingV1().NetworkPolicies("a").Create(ctx, ingressPolicy("a", "np-0", "web", "client", "", 80), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, 5*time.Second, "the first change to be published", func() bool { return f.store.Load().Generation() == gen+1 })

	// A burst: the runner waits for the rest of the interval, then
	// publishes everything at once.
	for i := 1; i <= 5; i++ {
		np := ingressPolicy("a", "np-"+string(rune('0'+i)), "web", "client", "", 80+int32(i))
		if _, err := f.client.NetworkingV1().NetworkPolicies("a").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.EventuallyTrue(t, 5*time.Second, "the informer to deliver the burst", func() bool { return f.src.Status().Events == events+6 })
	testutil.EventuallyTrue(t, 5*time.Second, "the runner to wait for the interval", func() bool { return clk.Waiters() == 2 })
	if got := f.store.Load().Generation(); got != gen+1 {
		t.Fatalf("generation during the burst = %d, want %d (nothing published before the interval)", got, gen+1)
	}
	clk.Step(time.Second)
	tab := expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 85, true})
	time.Sleep(50 * time.Millisecond)
	if got := f.store.Load().Generation(); got != gen+2 {
		t.Errorf("generation after the burst = %d, want %d (one publication for five changes)", got, gen+2)
	}
	if got := len(tab.Policies()); got != 6 {
		t.Errorf("policies in the table = %d, want 6", got)
	}
}

func TestAPISourceIgnoresIrrelevantUpdates(t *testing.T) {
	ctx := t.Context()
	f := newFake(t, APIConfig{},
		newNamespace("a", nil),
		newPod("a", "web", "10.0.0.1", map[string]string{"app": "web"}),
	)
	f.start(t)
	f.waitReady(t)
	events := f.src.Status().Events
	gen := f.store.Load().Generation()

	pods := f.client.CoreV1().Pods("a")
	pod, err := pods.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Annotations = map[string]string{"touched": "yes"}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if pod, err = pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A pod without an address is not in the table either.
	if _, err := pods.Create(ctx, newPod("a", "pending", "", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A relevant change after them, to know they were all delivered.
	pod.Labels["app"] = "web2"
	if _, err := pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, 5*time.Second, "the relabel to be published", func() bool {
		tab := f.store.Load()
		i, ok := tab.EndpointByName("a", "web")
		return ok && tab.Endpoint(i).Labels["app"] == "web2"
	})
	if got := f.src.Status().Events - events; got != 1 {
		t.Errorf("events = %d, want 1: only the relabel changes the table", got)
	}
	if got := f.store.Load().Generation(); got != gen+1 {
		t.Errorf("generation = %d, want %d", got, gen+1)
	}
}

func TestPodChanged(t *testing.T) {
	base := newPod("a", "web", "10.0.0.1", map[string]string{"app": "web"})
	base.ResourceVersion = "1"
	for _, tc := range []struct {
		name   string
		change func(p *corev1.Pod)
		want   bool
	}{
		{"resync", func(p *corev1.Pod) {}, false},
		{"annotation", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Annotations = map[string]string{"a": "b"} }, false},
		{"condition", func(p *corev1.Pod) {
			p.ResourceVersion = "2"
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady}}
		}, false},
		{"label", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Labels = map[string]string{"app": "x"} }, true},
		{"ip", func(p *corev1.Pod) {
			p.ResourceVersion = "2"
			p.Status.PodIP = "10.0.0.9"
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.9"}}
		}, true},
		{"node", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Spec.NodeName = "node-2" }, true},
		{"named port", func(p *corev1.Pod) {
			p.ResourceVersion = "2"
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}
		}, true},
		{"succeeded", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Status.Phase = corev1.PodSucceeded }, true},
		{"label of a pod without address", func(p *corev1.Pod) {
			p.ResourceVersion = "2"
			p.Status.PodIP, p.Status.PodIPs = "", nil
			p.Labels = map[string]string{"app": "x"}
		}, true}, // it leaves the table
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := base.DeepCopy()
			tc.change(cur)
			if got := podChanged(base, cur); got != tc.want {
				t.Errorf("podChanged = %v, want %v", got, tc.want)
			}
		})
	}
	noIP := newPod("a", "p", "", map[string]string{"app": "a"})
	noIP2 := newPod("a", "p", "", map[string]string{"app": "b"})
	noIP2.ResourceVersion = "2"
	if podChanged(noIP, noIP2) {
		t.Errorf("podChanged(relabel of a pod that stays out of the table) = true, want false")
	}
}

func TestAPISourceCompileErrorKeepsLastTable(t *testing.T) {
	ctx := t.Context()
	f := newFake(t, APIConfig{},
		newNamespace("a", nil),
		newPod("a", "web", "10.0.0.1", map[string]string{"app": "web"}),
		newPod("a", "client", "10.0.0.2", map[string]string{"app": "client"}),
		ingressPolicy("a", "web", "web", "client", "", 80),
	)
	f.start(t)
	f.waitReady(t)
	good := f.store.Load()

	// The fake clientset does not validate: an invalid selector gets in,
	// as it could through a buggy or older API server.
	bad := ingressPolicy("a", "bad", "web", "client", "", 81)
	bad.Spec.PodSelector.MatchLabels = map[string]string{"not a valid key!": "x"}
	if _, err := f.client.NetworkingV1().NetworkPolicies("a").Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, 5*time.Second, "the compile error to be reported", func() bool { return f.src.Status().LastError != nil })
	st := f.src.Status()
	if !errors.Is(st.LastError, policy.ErrInvalid) || !strings.Contains(st.LastError.Error(), "a/bad") {
		t.Errorf("LastError = %v, want one wrapping policy.ErrInvalid that names a/bad", st.LastError)
	}
	if f.store.Load() != good || st.Generation != good.Generation() {
		t.Errorf("the store's table changed after a compile error")
	}
	if f.src.Ready() || st.Err() == nil || st.ErrorSince.IsZero() || st.Failures != 1 {
		t.Errorf("status = %+v: want not ready, an error, ErrorSince set and one failure", st)
	}
	if !f.logs.Contains("level=ERROR") || !f.logs.Contains("a/bad") {
		t.Errorf("no error log line naming a/bad:\n%s", f.logs.String())
	}
	// Still enforcing the last table.
	expectVerdicts(t, f.store, time.Second, verdict{"10.0.0.2", "10.0.0.1", 81, false})

	if err := f.client.NetworkingV1().NetworkPolicies("a").Delete(ctx, "bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, 5*time.Second, "recovery", f.src.Ready)
	if st := f.src.Status(); st.LastError != nil || st.Generation <= good.Generation() {
		t.Errorf("after removing the invalid policy: status = %+v, want no error and a new table", st)
	}
}

func TestAPISourceNodeAddrs(t *testing.T) {
	ctx := t.Context()
	var got atomic.Pointer[[]netip.Addr]
	f := newFake(t, APIConfig{NodeName: "node-1", OnNodeAddrs: func(a []netip.Addr) { got.Store(&a) }},
		newNode("node-1",
			corev1.NodeAddress{Type: corev1.NodeHostName, Address: "node-1"},
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.1"},
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "2001:db8::1"},
			corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"},
			corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "192.0.2.1"}),
		newNode("node-2", corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.2"}),
	)
	f.start(t)
	f.waitReady(t)
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("203.0.113.1")}
	testutil.EventuallyTrue(t, 5*time.Second, "node addresses", func() bool { return slices.Equal(f.src.NodeAddrs(), want) })

	nodes := f.client.CoreV1().Nodes()
	other, err := nodes.Get(ctx, "node-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other.Status.Addresses[0].Address = "192.0.2.22"
	if _, err := nodes.UpdateStatus(ctx, other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	mine, err := nodes.Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mine.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.11"}}
	if _, err := nodes.UpdateStatus(ctx, mine, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want = []netip.Addr{netip.MustParseAddr("192.0.2.11")}
	testutil.EventuallyTrue(t, 5*time.Second, "the new node address", func() bool {
		p := got.Load()
		return p != nil && slices.Equal(*p, want) && slices.Equal(f.src.NodeAddrs(), want)
	})
	if err := nodes.Delete(ctx, "node-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, 5*time.Second, "no node addresses", func() bool { return f.src.NodeAddrs() == nil })
}

// TestAPISourceStaleness checks the bookkeeping of stale views with a
// probe the test controls and informer resource versions it sets; the
// integration tests check the signal against a real API server.
func TestAPISourceStaleness(t *testing.T) {
	var probeErr atomic.Pointer[error]
	probe := func(context.Context) error {
		if p := probeErr.Load(); p != nil {
			return *p
		}
		return nil
	}
	f := newFake(t, APIConfig{Probe: probe, ProbeInterval: 5 * time.Millisecond, NodeName: "node-1"}, newNamespace("a", nil))
	var mu sync.Mutex
	rvs := map[string]string{}
	setRV := func(name, rv string) {
		mu.Lock()
		defer mu.Unlock()
		rvs[name] = rv
	}
	for _, w := range f.src.watched {
		setRV(w.name, "1")
		w.lastRV = func() string {
			mu.Lock()
			defer mu.Unlock()
			return rvs[w.name]
		}
	}
	f.start(t)
	f.waitReady(t)
	testutil.EventuallyTrue(t, 5*time.Second, "LastSync", func() bool { return !f.src.Status().LastSync.IsZero() })

	down := errors.New("connection refused")
	probeErr.Store(&down)
	testutil.EventuallyTrue(t, 5*time.Second, "the view to be stale", func() bool { return f.src.Status().Stale })
	st := f.src.Status()
	if !strings.Contains(st.StaleReason, "connection refused") || st.StaleSince.IsZero() || !st.Ready() || st.Err() == nil {
		t.Errorf("stale status = %+v: want the probe's error as reason, StaleSince set, still ready, and Err reporting it", st)
	}
	if !f.logs.Contains("policy view is stale") {
		t.Errorf("no log line for the stale view")
	}

	// The server answers again, but the informers have not heard from
	// it yet: still stale.
	probeErr.Store(nil)
	for _, name := range []string{"pods", "namespaces", "networkpolicies"} {
		setRV(name, "2")
	}
	time.Sleep(50 * time.Millisecond)
	if !f.src.Status().Stale {
		t.Fatalf("view current although the node informer has not received anything since the outage")
	}
	setRV("nodes", "2")
	testutil.EventuallyTrue(t, 5*time.Second, "the view to be current", func() bool { return !f.src.Status().Stale })
	if !f.logs.Contains("policy view is current again") {
		t.Errorf("no log line for the recovery")
	}

	// A failed list or watch of one informer, reported by client-go.
	var w *watched
	for _, x := range f.src.watched {
		if x.name == "networkpolicies" {
			w = x
		}
	}
	f.src.watchErrorHandler(w)(t.Context(), nil, errors.New(`networkpolicies.networking.k8s.io is forbidden`))
	if st := f.src.Status(); !st.Stale || !strings.Contains(st.StaleReason, "forbidden") {
		t.Fatalf("after a watch error: status = %+v, want stale, naming the error", st)
	}
	time.Sleep(50 * time.Millisecond)
	if !f.src.Status().Stale {
		t.Fatalf("view current although the failed informer has not listed since")
	}
	setRV("networkpolicies", "3")
	testutil.EventuallyTrue(t, 5*time.Second, "the view to be current after the relist", func() bool { return !f.src.Status().Stale })
}

func TestStripManagedFields(t *testing.T) {
	pod := newPod("a", "web", "10.0.0.1", nil)
	pod.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	got, err := StripManagedFields(pod)
	if err != nil || got != any(pod) || pod.ManagedFields != nil {
		t.Errorf("StripManagedFields(pod) = %v, %v; managedFields = %v; want the pod without them", got, err, pod.ManagedFields)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "a/web"}
	if got, err := StripManagedFields(tomb); err != nil || got != any(tomb) {
		t.Errorf("StripManagedFields(tombstone) = %v, %v; want it unchanged", got, err)
	}
}

func TestNewAPISourceErrors(t *testing.T) {
	factory0 := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	_, err := NewAPISource(APIConfig{NodeName: "n", MinInterval: -1, Services: factory0.Core().V1().Services()})
	for _, want := range []string{"pod informer", "namespace informer", "NetworkPolicy informer", "node informer", "store", "negative",
		"Service and EndpointSlice informers go together"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewAPISource(empty config) error = %v, want it to mention %q", err, want)
		}
	}

	// Watch error handlers can only be installed before the informers
	// start.
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	cfg := APIConfig{
		Pods:            factory.Core().V1().Pods(),
		Namespaces:      factory.Core().V1().Namespaces(),
		NetworkPolicies: factory.Networking().V1().NetworkPolicies(),
		Store:           &table.Store{},
	}
	cfg.Pods.Informer()
	cfg.Namespaces.Informer()
	cfg.NetworkPolicies.Informer()
	ctx, cancel := context.WithCancel(t.Context())
	factory.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
	})
	testutil.EventuallyTrue(t, 5*time.Second, "informers to start", func() bool { return cfg.Pods.Informer().HasSynced() })
	if _, err := NewAPISource(cfg); err == nil || !strings.Contains(err.Error(), "watch error handler") {
		t.Errorf("NewAPISource after the informers started: error = %v, want one about the watch error handler", err)
	}
}

// newService returns Service ns/name with ClusterIP ip and one TCP port
// named http.
func newService(ns, name, ip string, port int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Name: "http", Port: port, Protocol: corev1.ProtocolTCP}},
		},
	}
}

// newEndpointSlice returns an IPv4 EndpointSlice of Service ns/svc with
// port http at target port and one endpoint per address, ready unless
// listed in notReady.
func newEndpointSlice(ns, name, svc string, port int32, addrs []string, notReady ...string) *discoveryv1.EndpointSlice {
	http, tcp := "http", corev1.ProtocolTCP
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &http, Port: &port, Protocol: &tcp}},
	}
	for _, a := range addrs {
		ready := !slices.Contains(notReady, a)
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return es
}

// egressToApp isolates pods app=from in ns for egress and allows TCP port
// to pods app=to of every namespace.
func egressToApp(ns, name, from, to string, port int32) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": from}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": to}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		},
	}
}

// TestAPISourceServices: with the Service and EndpointSlice informers, a
// connection to a ClusterIP is judged against the Service's ready backends,
// and every change to them that matters is followed; updates that do not
// matter trigger no rebuild.
func TestAPISourceServices(t *testing.T) {
	ctx := t.Context()
	const client, web, other, svcIP = "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.96.0.1"
	f := newFakeWith(t, APIConfig{}, true,
		newNamespace("a", nil),
		newPod("a", "web", web, map[string]string{"app": "web"}),
		newPod("a", "client", client, map[string]string{"app": "client"}),
		newPod("a", "other", other, map[string]string{"app": "other"}),
		egressToApp("a", "client", "client", "web", 8080),
		newService("a", "web", svcIP, 80),
		newEndpointSlice("a", "web-1", "web", 8080, []string{web}),
	)
	f.start(t)
	f.waitReady(t)
	const timeout = 5 * time.Second
	expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 80, true}, verdict{client, svcIP, 8080, false})
	if got := f.store.Load().Stats().Services; got != 1 {
		t.Errorf("Services in the table = %d, want 1", got)
	}

	slicesAPI := f.client.DiscoveryV1().EndpointSlices("a")
	update := func(es *discoveryv1.EndpointSlice) {
		t.Helper()
		if _, err := slicesAPI.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// A ready backend the client may not reach denies the Service.
	update(newEndpointSlice("a", "web-1", "web", 8080, []string{web, other}))
	expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 80, false})
	// Not ready: ignored.
	update(newEndpointSlice("a", "web-1", "web", 8080, []string{web, other}, other))
	expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 80, true})

	// Updates that change nothing the table reads: no rebuild.
	events, gen := f.src.Status().Events, f.store.Load().Generation()
	es := newEndpointSlice("a", "web-1", "web", 8080, []string{web, other}, other)
	serving, zone := true, "zone-a"
	es.Endpoints[1].Conditions.Serving = &serving
	es.Endpoints[0].Zone = &zone
	es.Annotations = map[string]string{"touched": "yes"}
	update(es)
	svcs := f.client.CoreV1().Services("a")
	svc, err := svcs.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations = map[string]string{"touched": "yes"}
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	if _, err := svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A slice of no Service does not matter either.
	unowned := newEndpointSlice("a", "unowned", "", 8080, []string{other})
	delete(unowned.Labels, discoveryv1.LabelServiceName)
	if _, err := slicesAPI.Create(ctx, unowned, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Then one that does: the Service's port moves to 81.
	svc.Spec.Ports[0].Port = 81
	if _, err := svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 81, true}, verdict{client, svcIP, 80, false})
	if got := f.src.Status().Events - events; got != 1 {
		t.Errorf("events = %d, want 1: only the port change matters", got)
	}
	if got := f.store.Load().Generation(); got != gen+1 {
		t.Errorf("generation = %d, want %d", got, gen+1)
	}

	// Without the slice, the ClusterIP is an address no rule allows.
	if err := slicesAPI.Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 81, false})

	// Tombstones of both kinds.
	slice2 := newEndpointSlice("a", "web-2", "web", 8080, []string{web})
	if _, err := slicesAPI.Create(ctx, slice2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 81, true})
	tomb := func(informer string, inf cache.SharedIndexInformer, obj runtime.Object) {
		t.Helper()
		key, _ := cache.MetaNamespaceKeyFunc(obj)
		if err := inf.GetIndexer().Delete(obj); err != nil {
			t.Fatal(err)
		}
		f.src.handlers[informer].OnDelete(cache.DeletedFinalStateUnknown{Key: key, Obj: obj})
	}
	tomb("endpointslices", f.factory.Discovery().V1().EndpointSlices().Informer(), slice2)
	expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 81, false})
	if _, err := slicesAPI.Create(ctx, newEndpointSlice("a", "web-3", "web", 8080, []string{web}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 81, true})
	tomb("services", f.factory.Core().V1().Services().Informer(), svc)
	tab := expectVerdicts(t, f.store, timeout, verdict{client, svcIP, 81, false})
	if _, ok := tab.ServiceByAddr(netip.MustParseAddr(svcIP)); ok {
		t.Error("the Service is still in the table after its tombstone")
	}
}

func TestServiceAndEndpointSliceChanged(t *testing.T) {
	base := newEndpointSlice("a", "s", "svc", 80, []string{"10.0.0.1"})
	base.ResourceVersion = "1"
	for _, tc := range []struct {
		name   string
		change func(es *discoveryv1.EndpointSlice)
		want   bool
	}{
		{"resync", func(*discoveryv1.EndpointSlice) {}, false},
		{"annotation", func(es *discoveryv1.EndpointSlice) { es.Annotations = map[string]string{"a": "b"} }, false},
		{"hostname", func(es *discoveryv1.EndpointSlice) { h := "h"; es.Endpoints[0].Hostname = &h }, false},
		{"terminating", func(es *discoveryv1.EndpointSlice) { tr := true; es.Endpoints[0].Conditions.Terminating = &tr }, false},
		{"ready unset", func(es *discoveryv1.EndpointSlice) { es.Endpoints[0].Conditions.Ready = nil }, false}, // nil means ready
		{"not ready", func(es *discoveryv1.EndpointSlice) { f := false; es.Endpoints[0].Conditions.Ready = &f }, true},
		{"address", func(es *discoveryv1.EndpointSlice) { es.Endpoints[0].Addresses = []string{"10.0.0.2"} }, true},
		{"endpoint added", func(es *discoveryv1.EndpointSlice) {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.0.0.2"}})
		}, true},
		{"port", func(es *discoveryv1.EndpointSlice) { p := int32(81); es.Ports[0].Port = &p }, true},
		{"service label", func(es *discoveryv1.EndpointSlice) { es.Labels[discoveryv1.LabelServiceName] = "other" }, true},
	} {
		t.Run("EndpointSlice "+tc.name, func(t *testing.T) {
			cur := base.DeepCopy()
			if tc.name != "resync" {
				cur.ResourceVersion = "2"
			}
			tc.change(cur)
			if got := endpointSliceChanged(base, cur); got != tc.want {
				t.Errorf("endpointSliceChanged = %v, want %v", got, tc.want)
			}
		})
	}
	svc := newService("a", "s", "10.96.0.1", 80)
	svc.ResourceVersion = "1"
	for _, tc := range []struct {
		name   string
		change func(s *corev1.Service)
		want   bool
	}{
		{"selector", func(s *corev1.Service) { s.Spec.Selector = map[string]string{"a": "b"} }, false},
		{"target port", func(s *corev1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromInt32(8080) }, false},
		{"port", func(s *corev1.Service) { s.Spec.Ports[0].Port = 81 }, true},
		{"port name", func(s *corev1.Service) { s.Spec.Ports[0].Name = "web" }, true},
		{"protocol", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolUDP }, true},
		{"cluster IPs", func(s *corev1.Service) { s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00::1") }, true},
		{"type", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }, true},
	} {
		t.Run("Service "+tc.name, func(t *testing.T) {
			cur := svc.DeepCopy()
			cur.ResourceVersion = "2"
			tc.change(cur)
			if got := serviceChanged(svc, cur); got != tc.want {
				t.Errorf("serviceChanged = %v, want %v", got, tc.want)
			}
		})
	}
}
