package k8swatch

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	npaclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podgate/podgate/internal/test/kubetest"
	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy"
)

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	cnpGVR = schema.GroupVersionResource{Group: clusterPolicyGroup, Version: "v1beta1", Resource: "clusternetworkpolicies"}
)

// npaModuleDir is where the go command keeps sigs.k8s.io/network-policy-api,
// whose CRD manifests and CRD test data the tests read.
func npaModuleDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("go list -m sigs.k8s.io/network-policy-api: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		t.Fatal("go list -m sigs.k8s.io/network-policy-api: module not downloaded")
	}
	return dir
}

// decodeYAML reads one object from a YAML file.
func decodeYAML(t *testing.T, data []byte) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096).Decode(&u.Object); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return u
}

// installCRD creates the module's experimental ClusterNetworkPolicy CRD and
// waits until it is established.
func installCRD(t *testing.T, dyn dynamic.Interface, moduleDir string) {
	t.Helper()
	ctx := t.Context()
	data, err := os.ReadFile(filepath.Join(moduleDir, "config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := decodeYAML(t, data)
	if _, err := dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := dyn.Resource(crdGVR).Get(ctx, crd.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD not established: %v", err)
	}
}

// TestClusterPoliciesWithAPIServer runs an APISource against a real API
// server: it works without the CRD, picks up ClusterNetworkPolicies once
// the CRD is installed (each change publishes a new table, so the fastpath
// re-checks established flows), validates manifests as the CRD does, and
// lets them go when the CRD is removed.
func TestClusterPoliciesWithAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx := t.Context()
	client := env.Client()
	moduleDir := npaModuleDir(t)
	dyn, err := dynamic.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}
	npa, err := npaclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"a", "b"} {
		if _, err := env.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []struct{ ns, name, ip string }{{"a", "web", "10.244.0.10"}, {"b", "client", "10.244.0.12"}} {
		if _, err := kubetest.CreatePod(ctx, client, kubetest.NewPod(p.ns, p.name, "node-1", map[string]string{"app": p.name}),
			kubetest.PodStatus{IPs: []string{p.ip}, HostIP: "192.0.2.1"}); err != nil {
			t.Fatal(err)
		}
	}
	s := startClusterAPISource(t, client, npa)
	testutil.EventuallyTrue(t, 30*time.Second, "the source to be ready without the CRD", s.src.Ready)
	const timeout = 10 * time.Second
	const web, bClient = "10.244.0.10", "10.244.0.12"
	before := expectVerdicts(t, s.store, timeout, verdict{bClient, web, 80, true})
	if got := s.src.ClusterPolicyResources(); got != nil {
		t.Fatalf("watching %v before the CRD exists", got)
	}

	installCRD(t, dyn, moduleDir)
	testutil.EventuallyTrue(t, timeout, "the source to watch ClusterNetworkPolicies", func() bool {
		return slices.Equal(s.src.ClusterPolicyResources(), []string{"clusternetworkpolicies.v1beta1.policy.networking.k8s.io"})
	})

	cnps := npa.PolicyV1beta1().ClusterNetworkPolicies()
	t.Run("create", func(t *testing.T) {
		if _, err := cnps.Create(ctx, denyIngressFrom("deny-b", "Admin", 1, "b"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tab := expectVerdicts(t, s.store, timeout, verdict{bClient, web, 80, false})
		if tab.Generation() <= before.Generation() {
			t.Errorf("generation %d, %d before the ClusterNetworkPolicy", tab.Generation(), before.Generation())
		}
		before = tab
	})
	t.Run("update", func(t *testing.T) {
		p, err := cnps.Get(ctx, "deny-b", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Spec.Ingress[0].Action = "Pass"
		if _, err := cnps.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		tab := expectVerdicts(t, s.store, timeout, verdict{bClient, web, 80, true})
		if tab.Generation() <= before.Generation() {
			t.Errorf("generation %d, %d before the update", tab.Generation(), before.Generation())
		}
	})
	t.Run("validation agrees with the API server", func(t *testing.T) {
		compareValidation(t, dyn, moduleDir)
	})
	t.Run("CRD removed", func(t *testing.T) {
		if err := dyn.Resource(crdGVR).Delete(ctx, "clusternetworkpolicies.policy.networking.k8s.io", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testutil.EventuallyTrue(t, 30*time.Second, "the source to stop watching", func() bool { return s.src.ClusterPolicyResources() == nil })
		tab := expectVerdicts(t, s.store, timeout, verdict{bClient, web, 80, true})
		if n := len(tab.ClusterPolicies()); n != 0 {
			t.Errorf("%d cluster policies in the table after the CRD was removed", n)
		}
		testutil.EventuallyTrue(t, timeout, "the view to be current", func() bool { st := s.src.Status(); return st.Ready() && !st.Stale })
	})
}

func startClusterAPISource(t *testing.T, client kubernetes.Interface, npa npaclient.Interface) *apiSetup {
	t.Helper()
	return startAPISourceWith(t, client, "", func(cfg *APIConfig) {
		cfg.ClusterPolicies = &ClusterPolicyConfig{Client: npa, Discovery: client.Discovery(), Interval: 200 * time.Millisecond}
	})
}

// compareValidation checks that policy.Load accepts exactly the
// ClusterNetworkPolicy manifests that the API server, with the CRD,
// accepts: the module's CRD test data and cases of every rule of the
// schema and its CEL validations.
func compareValidation(t *testing.T, dyn dynamic.Interface, moduleDir string) {
	type tc struct{ name, doc string }
	var cases []tc
	for _, dir := range []string{"valid", "invalid"} {
		files, err := filepath.Glob(filepath.Join(moduleDir, "pkg/crdtest/testdata", dir, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no CRD test data in %s: %v", dir, err)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			cases = append(cases, tc{"crdtest/" + dir + "/" + filepath.Base(f), string(data)})
		}
	}
	head := "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: %s}\nspec:\n"
	spec := func(name, body string) tc { return tc{name, fmt.Sprintf(head, name) + body} }
	sub := "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n"
	cases = append(cases, []tc{
		spec("ok", sub+"  egress: [{action: Deny, to: [{networks: [10.0.0.0/8, \"fd00::/8\"]}, {nodes: {}}, {domainNames: [a.example]}], protocols: [{tcp: {destinationPort: {range: {start: 1, end: 65535}}}}]}]\n"),
		spec("no-tier", "  priority: 1\n  subject: {namespaces: {}}\n"),
		spec("bad-tier", "  tier: Middle\n  priority: 1\n  subject: {namespaces: {}}\n"),
		spec("no-priority", "  tier: Admin\n  subject: {namespaces: {}}\n"),
		spec("priority-1001", "  tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}\n"),
		spec("priority-negative", "  tier: Admin\n  priority: -1\n  subject: {namespaces: {}}\n"),
		spec("no-subject", "  tier: Admin\n  priority: 1\n"),
		spec("empty-subject", "  tier: Admin\n  priority: 1\n  subject: {}\n"),
		spec("two-subjects", "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n"),
		spec("pods-without-podselector", "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}}}\n"),
		spec("pods-without-namespaceselector", "  tier: Baseline\n  priority: 0\n  subject: {pods: {podSelector: {}}}\n"),
		spec("action-allow", sub+"  ingress: [{action: Allow, from: [{namespaces: {}}]}]\n"),
		spec("no-action", sub+"  ingress: [{from: [{namespaces: {}}]}]\n"),
		spec("no-from", sub+"  ingress: [{action: Deny}]\n"),
		spec("empty-from", sub+"  ingress: [{action: Deny, from: []}]\n"),
		spec("empty-peer", sub+"  ingress: [{action: Deny, from: [{}]}]\n"),
		spec("peer-pods-without-podselector", sub+"  egress: [{action: Deny, to: [{pods: {namespaceSelector: {}}}]}]\n"),
		spec("two-peer-fields", sub+"  egress: [{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}]\n"),
		spec("host-bits", sub+"  egress: [{action: Deny, to: [{networks: [10.0.0.1/8]}]}]\n"),
		spec("leading-zero", sub+"  egress: [{action: Deny, to: [{networks: [010.0.0.0/8]}]}]\n"),
		spec("mapped", sub+"  egress: [{action: Deny, to: [{networks: [\"::ffff:10.0.0.0/104\"]}]}]\n"),
		spec("not-a-cidr", sub+"  egress: [{action: Deny, to: [{networks: [10.0.0.0]}]}]\n"),
		spec("duplicate-network", sub+"  egress: [{action: Deny, to: [{networks: [10.0.0.0/8, 10.0.0.0/8]}]}]\n"),
		spec("empty-networks", sub+"  egress: [{action: Deny, to: [{networks: []}]}]\n"),
		spec("range-equal", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {range: {start: 80, end: 80}}}}]}]\n"),
		spec("port-0", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {number: 0}}}]}]\n"),
		spec("port-65536", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {number: 65536}}}]}]\n"),
		spec("tcp-empty", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}]\n"),
		spec("port-empty", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {}}}]}]\n"),
		spec("number-and-range", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80, range: {start: 1, end: 2}}}}]}]\n"),
		spec("two-protocols", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}, udp: {destinationPort: {number: 80}}}]}]\n"),
		spec("empty-protocols", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: []}]\n"),
		spec("named-port", sub+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: http}]}]\n"),
		spec("named-port-with-nodes", sub+"  egress: [{action: Accept, to: [{nodes: {}}], protocols: [{destinationNamedPort: http}]}]\n"),
		spec("bad-domain", sub+"  egress: [{action: Accept, to: [{domainNames: [\"foo.*.com\"]}]}]\n"),
		spec("rule-name-101", sub+"  egress: [{name: "+strings.Repeat("x", 101)+", action: Deny, to: [{nodes: {}}]}]\n"),
		spec("26-rules", sub+"  ingress: ["+strings.Repeat("{action: Deny, from: [{namespaces: {}}]},", 26)+"]\n"),
		spec("unknown-field", sub+"  egress: [{action: Deny, to: [{nodes: {}}], ports: [80]}]\n"),
		{"bad-name", fmt.Sprintf(head, "Bad_Name") + sub},
	}...)
	dir := t.TempDir()
	accepted, rejected := 0, 0
	for _, c := range cases {
		u := decodeYAML(t, []byte(c.doc))
		gvr := cnpGVR
		gvr.Version = strings.TrimPrefix(u.GetAPIVersion(), clusterPolicyGroup+"/")
		_, apiErr := dyn.Resource(gvr).Create(t.Context(), u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
		if apiErr != nil && !apierrors.IsInvalid(apiErr) && !apierrors.IsBadRequest(apiErr) {
			t.Errorf("%s: dry-run create: %v", c.name, apiErr)
			continue
		}
		path := filepath.Join(dir, strings.ReplaceAll(c.name, "/", "_")+".yaml")
		if err := os.WriteFile(path, []byte(c.doc), 0o644); err != nil {
			t.Fatal(err)
		}
		_, loadErr := policy.Load(path)
		switch {
		case apiErr == nil && loadErr != nil:
			t.Errorf("%s: the API server accepts it, policy.Load rejects it: %v", c.name, loadErr)
		case apiErr != nil && loadErr == nil:
			t.Errorf("%s: the API server rejects it (%v), policy.Load accepts it", c.name, apiErr)
		case apiErr == nil:
			accepted++
		default:
			rejected++
		}
	}
	t.Logf("%d manifests: %d accepted and %d rejected by both the API server and policy.Load", len(cases), accepted, rejected)
}
