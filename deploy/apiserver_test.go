package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/podgate/podgate/internal/test/kubetest"
)

const fieldManager = "podgate-deploy-test"

// warnings collects the API server's warning headers.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// applier applies unstructured objects with server-side apply.
type applier struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newApplier(t *testing.T, cfg *rest.Config) *applier {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDiscoveryRESTMapper(groups)}
}

// apply server-side-applies u, with strict field validation; dryRun
// makes the API server run admission and validation without persisting.
func (a *applier) apply(ctx context.Context, u *unstructured.Unstructured, dryRun bool) error {
	gvk := u.GroupVersionKind()
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dyn.Resource(mapping.Resource).Namespace(u.GetNamespace())
	}
	data, err := u.MarshalJSON()
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: fieldManager, FieldValidation: "Strict", Force: ptr.To(true)}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, data, opts)
	return err
}

// TestAPIServer checks the rendered kustomization against a real
// kube-apiserver: a server-side dry run of every object, the admission of
// the pods the DaemonSet would create, and the agent's RBAC, exercised with
// its own ServiceAccount token.
func TestAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx := t.Context()

	var warn warnings
	cfg := rest.CopyConfig(env.Config())
	cfg.WarningHandler = &warn
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := newApplier(t, cfg)
	m := index(t, render(t, filesys.MakeFsOnDisk(), "."))

	// Dry runs of namespaced objects need their namespace: create it for
	// real first.
	for _, o := range m.all {
		if o.u.GetKind() == "Namespace" {
			if err := a.apply(ctx, o.u, false); err != nil {
				t.Fatalf("creating %s: %v", o.id(), err)
			}
		}
	}
	warn.take()

	t.Run("server-side dry run", func(t *testing.T) {
		for _, o := range m.all {
			t.Run(o.id(), func(t *testing.T) {
				if err := a.apply(ctx, o.u, true); err != nil {
					t.Fatalf("server-side apply --dry-run=server: %v", err)
				}
				if w := warn.take(); len(w) != 0 {
					t.Errorf("API server warnings:\n%s", strings.Join(w, "\n"))
				}
			})
		}
		// Nothing was persisted.
		if _, err := admin.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after a dry run, get DaemonSet: %v; want NotFound", err)
		}
	})

	// Everything for real now: the ServiceAccount must exist for pod
	// admission, the RBAC objects for the RBAC checks. (There is no
	// controller-manager: the DaemonSet creates no pods.)
	for _, o := range m.all {
		if err := a.apply(ctx, o.u, false); err != nil {
			t.Fatalf("applying %s: %v", o.id(), err)
		}
	}
	warn.take()

	t.Run("pod admission", func(t *testing.T) {
		// A pod as the DaemonSet controller would create it, dry-run: the
		// ServiceAccount, Priority and PodSecurity admission plugins
		// judge it as they would the real ones.
		newPod := func(ns, sa string) *corev1.Pod {
			tmpl := m.ds.Spec.Template.DeepCopy()
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "podgate-node-1", Namespace: ns, Labels: tmpl.Labels, Annotations: tmpl.Annotations},
				Spec:       tmpl.Spec,
			}
			p.Spec.NodeName = "node-1"
			p.Spec.ServiceAccountName = sa
			return p
		}
		dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}

		t.Run("podgate-system admits the agent", func(t *testing.T) {
			got, err := admin.CoreV1().Pods(namespace).Create(ctx, newPod(namespace, name), dryRun)
			if err != nil {
				t.Fatalf("dry-run create: %v", err)
			}
			if w := warn.take(); len(w) != 0 {
				t.Errorf("API server warnings:\n%s", strings.Join(w, "\n"))
			}
			if got.Spec.Priority == nil || *got.Spec.Priority < 2000000000 {
				t.Errorf("priority = %v, want system-node-critical's (2000001000)", got.Spec.Priority)
			}
		})

		t.Run("a baseline namespace rejects it", func(t *testing.T) {
			// Why the namespace enforces "privileged".
			const ns = "podgate-baseline"
			if _, err := env.CreateNamespace(ctx, ns, map[string]string{"pod-security.kubernetes.io/enforce": "baseline"}); err != nil {
				t.Fatal(err)
			}
			_, err := admin.CoreV1().Pods(ns).Create(ctx, newPod(ns, "default"), dryRun)
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "violates PodSecurity") {
				t.Fatalf("dry-run create in a baseline namespace: %v; want a PodSecurity violation", err)
			}
			for _, want := range []string{"host namespaces", "hostPath volumes", "non-default capabilities"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("PodSecurity error %q does not mention %q", err, want)
				}
			}
		})
	})

	t.Run("rbac", func(t *testing.T) {
		saCfg, err := env.ServiceAccountConfig(ctx, namespace, name)
		if err != nil {
			t.Fatal(err)
		}
		sa, err := kubernetes.NewForConfig(saCfg)
		if err != nil {
			t.Fatal(err)
		}
		checkRBAC(t, ctx, sa)
	})
}

// can asks the API server whether the client's identity may do verb on
// group/resource in ns ("" is every namespace, or cluster-scoped).
func can(ctx context.Context, c kubernetes.Interface, verb, group, resource, ns string) (bool, error) {
	r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: verb, Group: group, Resource: resource,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return r.Status.Allowed, nil
}

func checkRBAC(t *testing.T, ctx context.Context, sa kubernetes.Interface) {
	// The authorizer's caches see the new binding within moments.
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true,
		func(ctx context.Context) (bool, error) { return can(ctx, sa, "list", "", "pods", "") })
	if err != nil {
		t.Fatalf("the ServiceAccount never got list pods: %v", err)
	}

	t.Run("access reviews", func(t *testing.T) {
		type check struct {
			verb, group, resource, ns string
		}
		var allowed []check
		for _, res := range []struct{ group, resource string }{
			{"", "pods"}, {"", "namespaces"}, {"", "nodes"}, {"", "services"},
			{"networking.k8s.io", "networkpolicies"}, {"discovery.k8s.io", "endpointslices"},
			{"policy.networking.k8s.io", "clusternetworkpolicies"}, {"policy.networking.k8s.io", "adminnetworkpolicies"},
			{"policy.networking.k8s.io", "baselineadminnetworkpolicies"},
		} {
			for _, verb := range []string{"get", "list", "watch"} {
				allowed = append(allowed, check{verb, res.group, res.resource, ""})
			}
		}
		allowed = append(allowed,
			check{"list", "", "pods", "kube-system"},
			check{"watch", "networking.k8s.io", "networkpolicies", "default"},
			check{"list", "discovery.k8s.io", "endpointslices", "kube-system"},
		)
		denied := []check{
			{"list", "", "secrets", ""},
			{"get", "", "secrets", namespace},
			{"list", "", "configmaps", ""},
			{"list", "", "endpoints", ""}, // the old Endpoints API: EndpointSlices replace it
			{"create", "", "services", ""},
			{"update", "", "services", ""},
			{"create", "discovery.k8s.io", "endpointslices", ""},
			{"update", "discovery.k8s.io", "endpointslices", ""},
			{"delete", "discovery.k8s.io", "endpointslices", ""},
			{"create", "", "pods", ""},
			{"update", "", "pods", ""},
			{"patch", "", "pods", ""},
			{"delete", "", "pods", ""},
			{"update", "", "nodes", ""},
			{"patch", "", "nodes", ""},
			{"delete", "", "namespaces", ""},
			{"create", "networking.k8s.io", "networkpolicies", ""},
			{"delete", "networking.k8s.io", "networkpolicies", ""},
			{"create", "policy.networking.k8s.io", "clusternetworkpolicies", ""},
			{"update", "policy.networking.k8s.io", "clusternetworkpolicies", ""},
			{"patch", "policy.networking.k8s.io", "adminnetworkpolicies", ""},
			{"delete", "policy.networking.k8s.io", "baselineadminnetworkpolicies", ""},
			{"create", "", "events", ""},
			{"get", "coordination.k8s.io", "leases", namespace},
			{"impersonate", "", "serviceaccounts", ""},
			{"create", "rbac.authorization.k8s.io", "clusterrolebindings", ""},
			{"*", "*", "*", ""},
		}
		for _, tt := range []struct {
			checks []check
			want   bool
		}{{allowed, true}, {denied, false}} {
			for _, c := range tt.checks {
				scope := c.ns
				if scope == "" {
					scope = "cluster"
				}
				t.Run(fmt.Sprintf("%s %s/%s in %s", c.verb, c.group, c.resource, scope), func(t *testing.T) {
					got, err := can(ctx, sa, c.verb, c.group, c.resource, c.ns)
					if err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff(tt.want, got); diff != "" {
						t.Errorf("allowed (-want +got):\n%s", diff)
					}
				})
			}
		}
	})

	// Cluster policies without their CRDs: the authorizer judges a request
	// before the API server looks for the resource, so a permitted list
	// finds nothing (NotFound) and a forbidden create is Forbidden.
	t.Run("cluster policy requests", func(t *testing.T) {
		rc := sa.Discovery().RESTClient()
		for _, res := range []string{"v1beta1/clusternetworkpolicies", "v1alpha2/clusternetworkpolicies", "v1alpha1/adminnetworkpolicies", "v1alpha1/baselineadminnetworkpolicies"} {
			path := "/apis/policy.networking.k8s.io/" + res
			if err := rc.Get().AbsPath(path).Do(ctx).Error(); !apierrors.IsNotFound(err) {
				t.Errorf("list %s: %v, want NotFound (allowed; no CRD)", res, err)
			}
			if err := rc.Get().AbsPath(path).Param("watch", "true").Param("timeoutSeconds", "1").Do(ctx).Error(); !apierrors.IsNotFound(err) {
				t.Errorf("watch %s: %v, want NotFound (allowed; no CRD)", res, err)
			}
			body := []byte(`{"apiVersion":"policy.networking.k8s.io/` + strings.Split(res, "/")[0] + `","kind":"X","metadata":{"name":"x"}}`)
			if err := rc.Post().AbsPath(path).Param("dryRun", "All").Body(body).Do(ctx).Error(); !apierrors.IsForbidden(err) {
				t.Errorf("create %s: %v, want Forbidden", res, err)
			}
		}
	})

	// The same, with real requests.
	t.Run("requests", func(t *testing.T) {
		list := metav1.ListOptions{Limit: 1}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "example.test/c"}}},
		}
		for _, tt := range []struct {
			name          string
			call          func(context.Context) error
			wantForbidden bool
		}{
			{"list pods", func(ctx context.Context) error { _, err := sa.CoreV1().Pods("").List(ctx, list); return err }, false},
			{"list namespaces", func(ctx context.Context) error { _, err := sa.CoreV1().Namespaces().List(ctx, list); return err }, false},
			{"list nodes", func(ctx context.Context) error { _, err := sa.CoreV1().Nodes().List(ctx, list); return err }, false},
			{"list networkpolicies", func(ctx context.Context) error {
				_, err := sa.NetworkingV1().NetworkPolicies("").List(ctx, list)
				return err
			}, false},
			{"get namespace", func(ctx context.Context) error {
				_, err := sa.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
				return err
			}, false},
			{"watch pods", func(ctx context.Context) error {
				w, err := sa.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{TimeoutSeconds: ptr.To[int64](1)})
				if err == nil {
					w.Stop()
				}
				return err
			}, false},
			{"list services", func(ctx context.Context) error { _, err := sa.CoreV1().Services("").List(ctx, list); return err }, false},
			{"list endpointslices", func(ctx context.Context) error {
				_, err := sa.DiscoveryV1().EndpointSlices("").List(ctx, list)
				return err
			}, false},
			{"watch endpointslices", func(ctx context.Context) error {
				w, err := sa.DiscoveryV1().EndpointSlices("").Watch(ctx, metav1.ListOptions{TimeoutSeconds: ptr.To[int64](1)})
				if err == nil {
					w.Stop()
				}
				return err
			}, false},
			{"create endpointslice", func(ctx context.Context) error {
				es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"}, AddressType: discoveryv1.AddressTypeIPv4}
				_, err := sa.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				return err
			}, true},
			{"watch networkpolicies", func(ctx context.Context) error {
				w, err := sa.NetworkingV1().NetworkPolicies("").Watch(ctx, metav1.ListOptions{TimeoutSeconds: ptr.To[int64](1)})
				if err == nil {
					w.Stop()
				}
				return err
			}, false},
			{"list secrets", func(ctx context.Context) error { _, err := sa.CoreV1().Secrets("").List(ctx, list); return err }, true},
			{"list configmaps", func(ctx context.Context) error {
				_, err := sa.CoreV1().ConfigMaps(namespace).List(ctx, list)
				return err
			}, true},
			{"create pod", func(ctx context.Context) error {
				_, err := sa.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				return err
			}, true},
			{"update pod", func(ctx context.Context) error {
				_, err := sa.CoreV1().Pods("default").Update(ctx, pod, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
				return err
			}, true},
			{"delete namespace", func(ctx context.Context) error {
				return sa.CoreV1().Namespaces().Delete(ctx, namespace, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
			}, true},
			{"create networkpolicy", func(ctx context.Context) error {
				np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny", Namespace: "default"}}
				_, err := sa.NetworkingV1().NetworkPolicies("default").Create(ctx, np, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				return err
			}, true},
		} {
			t.Run(tt.name, func(t *testing.T) {
				err := tt.call(ctx)
				switch {
				case tt.wantForbidden && !apierrors.IsForbidden(err):
					t.Errorf("err = %v, want Forbidden", err)
				case !tt.wantForbidden && err != nil && !errors.Is(err, context.Canceled):
					t.Errorf("err = %v, want success", err)
				}
			})
		}
	})
}
