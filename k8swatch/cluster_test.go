package k8swatch

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	npafake "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned/fake"

	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy/table"
)

// clusterFake is an APISource with cluster policies on fake clientsets
// whose discovery serves what the test says.
type clusterFake struct {
	*fakeSetup
	npa  *npafake.Clientset
	disc *lockedDiscovery
}

// lockedDiscovery is a FakeDiscovery whose resources the test may change
// while the source reads them (the fake does not lock them).
type lockedDiscovery struct {
	*fakediscovery.FakeDiscovery
	mu        sync.Mutex
	resources map[string]*metav1.APIResourceList
}

func (d *lockedDiscovery) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	d.mu.Lock()
	l, ok := d.resources[gv]
	d.mu.Unlock()
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Group: gv}, "")
	}
	return l, nil
}

// The fake clientset is NewSimpleClientset: NewClientset's field-managed
// tracker needs the applyconfiguration schema of every type.
func newClusterFake(t *testing.T, served []string, npaObjects []runtime.Object, objects ...runtime.Object) *clusterFake {
	t.Helper()
	f := &clusterFake{fakeSetup: &fakeSetup{client: fake.NewClientset(objects...), store: &table.Store{}}, npa: npafake.NewSimpleClientset(npaObjects...)}
	f.disc = &lockedDiscovery{FakeDiscovery: f.client.Discovery().(*fakediscovery.FakeDiscovery)}
	f.serve(served...)
	f.factory = informers.NewSharedInformerFactoryWithOptions(f.client, 0, informers.WithTransform(StripManagedFields))
	cfg := APIConfig{
		Pods:            f.factory.Core().V1().Pods(),
		Namespaces:      f.factory.Core().V1().Namespaces(),
		NetworkPolicies: f.factory.Networking().V1().NetworkPolicies(),
		Nodes:           f.factory.Core().V1().Nodes(),
		ClusterPolicies: &ClusterPolicyConfig{Client: f.npa, Discovery: f.disc, Interval: 20 * time.Millisecond},
		Store:           f.store,
	}
	cfg.Logger, f.logs = testLogger(t)
	src, err := NewAPISource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.src = src
	return f
}

// serve makes discovery list the given "resource/version"s of
// policy.networking.k8s.io.
func (f *clusterFake) serve(served ...string) {
	lists := map[string]*metav1.APIResourceList{}
	for _, rv := range served {
		res, version, _ := strings.Cut(rv, "/")
		gv := clusterPolicyGroup + "/" + version
		if lists[gv] == nil {
			lists[gv] = &metav1.APIResourceList{GroupVersion: gv}
		}
		lists[gv].APIResources = append(lists[gv].APIResources, metav1.APIResource{Name: res, Namespaced: false})
	}
	f.disc.mu.Lock()
	defer f.disc.mu.Unlock()
	f.disc.resources = lists
}

func denyIngressFrom(name, tier string, priority int32, fromNS string) *npav1beta1.ClusterNetworkPolicy {
	return &npav1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: npav1beta1.ClusterNetworkPolicySpec{
			Tier: npav1beta1.Tier(tier), Priority: priority,
			Subject: npav1beta1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
			Ingress: []npav1beta1.ClusterNetworkPolicyIngressRule{{
				Action: npav1beta1.ClusterNetworkPolicyRuleActionDeny,
				From: []npav1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{
					MatchLabels: map[string]string{"kubernetes.io/metadata.name": fromNS}}}},
			}},
		},
	}
}

func clusterObjects() []runtime.Object {
	return []runtime.Object{
		newNamespace("a", nil), newNamespace("b", nil),
		newPod("a", "web", "10.0.0.1", map[string]string{"app": "web"}),
		newPod("b", "client", "10.0.0.3", map[string]string{"app": "client"}),
		newNode("node-1", corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.1"}),
	}
}

// TestAPISourceClusterPoliciesServedAtStart: cluster policies that exist
// when the source starts are in its first table.
func TestAPISourceClusterPoliciesServedAtStart(t *testing.T) {
	f := newClusterFake(t, []string{"clusternetworkpolicies/v1beta1", "clusternetworkpolicies/v1alpha2"},
		[]runtime.Object{denyIngressFrom("deny-b", "Admin", 1, "b")}, clusterObjects()...)
	f.start(t)
	f.waitReady(t)
	tab := f.store.Load()
	if tab.Generation() != 1 || allowed(tab, "10.0.0.3", "10.0.0.1", 80) {
		t.Fatalf("first table (generation %d) allows b -> a: the ClusterNetworkPolicy is missing", tab.Generation())
	}
	if got := f.src.ClusterPolicyResources(); !slices.Equal(got, []string{"clusternetworkpolicies.v1beta1.policy.networking.k8s.io"}) {
		t.Errorf("watched resources = %v, want clusternetworkpolicies at v1beta1 only", got)
	}
}

// TestAPISourceClusterPolicies follows a CRD that appears, changes of its
// objects, and the CRD's removal: each publishes a new table.
func TestAPISourceClusterPolicies(t *testing.T) {
	ctx := t.Context()
	f := newClusterFake(t, nil, nil, clusterObjects()...)
	f.start(t)
	f.waitReady(t)
	first := expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.3", "10.0.0.1", 80, true})
	if got := f.src.ClusterPolicyResources(); got != nil {
		t.Fatalf("watching %v without CRDs", got)
	}

	// The CRD is installed, a policy created.
	f.serve("clusternetworkpolicies/v1beta1")
	testutil.EventuallyTrue(t, 5*time.Second, "the informer to start", func() bool { return len(f.src.ClusterPolicyResources()) == 1 })
	cnps := f.npa.PolicyV1beta1().ClusterNetworkPolicies()
	if _, err := cnps.Create(ctx, denyIngressFrom("deny-b", "Admin", 1, "b"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	denied := expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.3", "10.0.0.1", 80, false})
	if denied.Generation() <= first.Generation() {
		t.Errorf("generation %d after the ClusterNetworkPolicy, %d before: a change must publish a new table", denied.Generation(), first.Generation())
	}

	// Its action changes: a new table, which allows.
	p, err := cnps.Get(ctx, "deny-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.Ingress[0].Action = npav1beta1.ClusterNetworkPolicyRuleActionAccept
	if _, err := cnps.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	accepted := expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.3", "10.0.0.1", 80, true})
	if accepted.Generation() <= denied.Generation() {
		t.Errorf("generation %d after the update, %d before", accepted.Generation(), denied.Generation())
	}

	// The v1alpha1 kinds.
	f.serve("clusternetworkpolicies/v1beta1", "adminnetworkpolicies/v1alpha1", "baselineadminnetworkpolicies/v1alpha1")
	testutil.EventuallyTrue(t, 5*time.Second, "three informers", func() bool { return len(f.src.ClusterPolicyResources()) == 3 })
	banp := &npav1alpha1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: npav1alpha1.BaselineAdminNetworkPolicySpec{
		Subject: npav1alpha1.AdminNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
		Egress: []npav1alpha1.BaselineAdminNetworkPolicyEgressRule{{Action: "Deny",
			To: []npav1alpha1.BaselineAdminNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{}}}}},
	}}
	if _, err := f.npa.PolicyV1alpha1().BaselineAdminNetworkPolicies().Create(ctx, banp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.1", "192.0.2.1", 10250, false}, verdict{"10.0.0.1", "192.0.2.9", 10250, true})

	// A node's address changes: the nodes peer follows.
	node, err := f.client.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses[0].Address = "192.0.2.9"
	if _, err := f.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.1", "192.0.2.1", 10250, true}, verdict{"10.0.0.1", "192.0.2.9", 10250, false})

	// The CRDs are removed: their informers stop, their policies leave the
	// table.
	f.serve()
	testutil.EventuallyTrue(t, 5*time.Second, "the informers to stop", func() bool { return f.src.ClusterPolicyResources() == nil })
	expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.1", "192.0.2.9", 10250, true})
	if st := f.src.Status(); !st.Ready() || st.Stale || st.Err() != nil {
		t.Errorf("status = %+v, want ready and current", st)
	}
	if !f.logs.Contains("stopped watching cluster policies") {
		t.Error("no log line for the stopped informers")
	}
}

// TestAPISourceClusterPoliciesV1alpha2: a cluster that serves only
// v1alpha2 has its objects converted.
func TestAPISourceClusterPoliciesV1alpha2(t *testing.T) {
	p := &npav1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-b", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: npav1alpha2.ClusterNetworkPolicySpec{
			Tier: npav1alpha2.BaselineTier, Priority: 3,
			Subject: npav1alpha2.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
			Ingress: []npav1alpha2.ClusterNetworkPolicyIngressRule{{
				Action: npav1alpha2.ClusterNetworkPolicyRuleActionDeny,
				From:   []npav1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "b"}}}},
			}},
		},
	}
	f := newClusterFake(t, []string{"clusternetworkpolicies/v1alpha2"}, []runtime.Object{p}, clusterObjects()...)
	f.start(t)
	f.waitReady(t)
	tab := expectVerdicts(t, f.store, 5*time.Second, verdict{"10.0.0.3", "10.0.0.1", 80, false})
	if got := tab.ClusterPolicies(); len(got) != 1 || got[0].Tier != table.BaselineTier || got[0].Priority != 3 {
		t.Errorf("cluster policies = %+v, want the Baseline policy of priority 3", got)
	}
	f.src.cluster.mu.Lock()
	defer f.src.cluster.mu.Unlock()
	for _, c := range f.src.cluster.crs {
		for _, obj := range c.w.inf.GetStore().List() {
			cnp, ok := obj.(*npav1beta1.ClusterNetworkPolicy)
			if !ok || cnp.ManagedFields != nil {
				t.Errorf("cached %T with managedFields %v, want a v1beta1 object without them", obj, cnp.ManagedFields)
			}
		}
	}
}
