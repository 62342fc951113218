package lab

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podgate/podgate/internal/test/kubetest"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// articleThroughAPI starts a real kube-apiserver (Service range
// 10.1.0.0/24, the article's --service-cidr), creates the article's
// objects in it ([createManifests]), builds the article's lab and starts
// the agent on the API instead of files.
func articleThroughAPI(t *testing.T) (*Lab, kubernetes.Interface) {
	t.Helper()
	bin, extra := buildPodgate(t)
	env := kubetest.StartWithOptions(t, kubetest.Options{APIServerFlags: []string{"--service-cluster-ip-range=10.1.0.0/24"}})
	ctx := context.Background()
	createManifests(t, env, articleDir)
	// The API server listens on this namespace's loopback: the lab relays
	// to it from the node's namespace (Spec.AgentKubeconfig).
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubetest.WriteKubeconfig(kubeconfig, env.Config()); err != nil {
		t.Fatal(err)
	}
	l := NewForTest(t, Spec{Manifests: []string{articleDir}, Prefix: testPrefix, AgentKubeconfig: kubeconfig})
	if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	return l, env.Client()
}

// createManifests creates the objects of the manifests in dir through the
// API of env: namespaces, pods (status written through the status
// subresource, as a kubelet would), policies, and the one Service with
// its EndpointSlice (no controller-manager runs: the test writes the
// slice the EndpointSlice controller would). The Service must get the
// ClusterIP of the manifests (start env with the article's Service range).
func createManifests(t *testing.T, env *kubetest.Env, dir string) {
	t.Helper()
	ctx := context.Background()
	client := env.Client()
	m, err := policy.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range m.Namespaces {
		if _, err := env.CreateNamespace(ctx, ns.Name, ns.Labels); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range m.Pods {
		pod := kubetest.NewPod(p.Namespace, p.Name, p.Spec.NodeName, p.Labels)
		var ips []string
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		if _, err := kubetest.CreatePod(ctx, client, pod, kubetest.PodStatus{IPs: ips}); err != nil {
			t.Fatal(err)
		}
	}
	for _, np := range m.Policies {
		np = np.DeepCopy()
		np.ResourceVersion = ""
		if _, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.Services) != 1 || len(m.EndpointSlices) != 1 {
		t.Fatalf("the article has %d Services and %d EndpointSlices, want 1 and 1", len(m.Services), len(m.EndpointSlices))
	}
	for _, s := range m.Services {
		s = s.DeepCopy()
		s.ResourceVersion = ""
		created, err := client.CoreV1().Services(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if created.Spec.ClusterIP != dbClusterIP {
			t.Fatalf("Service %s/%s got ClusterIP %s, want %s", s.Namespace, s.Name, created.Spec.ClusterIP, dbClusterIP)
		}
	}
	for _, es := range m.EndpointSlices {
		es = es.DeepCopy()
		es.ResourceVersion = ""
		if _, err := client.DiscoveryV1().EndpointSlices(es.Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestArticleThroughAPIServer is the article's scenario end to end with
// the Kubernetes source ([articleThroughAPI]): real connections between
// the lab's namespaces match the policy engine's matrix. Deleting a policy
// through the API then changes what connects, without a restart; the test
// logs how long that took.
func TestArticleThroughAPIServer(t *testing.T) {
	l, client := articleThroughAPI(t)
	ctx := context.Background()
	results, err := l.Matrix(ctx, allPorts)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range Mismatches(results) {
		t.Errorf("%s %s", r.Mark(), r.String())
	}
	t.Logf("%d probes through the API-driven agent", len(results))

	// dbpod-policy isolates dbpod; without it the App pod reaches the DB
	// pod (its own egress allows only the API pod: check the API pod
	// instead on a port the policy did not allow).
	tcp5432 := table.PortSpec{Port: 5432, Protocol: table.TCP}
	if r, err := l.ProbeResult(ctx, "frontend/apipod", "backend/dbpod", tcp5432); err != nil || r.Observed {
		t.Fatalf("before the delete, apipod -> dbpod:5432 should be denied: %v %v", r, err)
	}
	start := time.Now()
	if err := client.NetworkingV1().NetworkPolicies("backend").Delete(ctx, "dbpod-policy", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := l.ProbeResult(ctx, "frontend/apipod", "backend/dbpod", tcp5432)
		if err != nil {
			t.Fatal(err)
		}
		if r.Observed {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("deleting dbpod-policy through the API did not take effect within 10s")
		}
	}
	t.Logf("policy deleted through the API: connections follow within %v (includes one probe)", time.Since(start).Round(time.Millisecond))
}

// TestArticleServiceThroughAPIServer: the db Service as the agent reads it
// from the API ([articleThroughAPI]): the API pod connects through the
// ClusterIP, the App pod is denied at its egress. Deleting the
// EndpointSlice through the API leaves the agent nothing to judge the
// ClusterIP by but its address, which the API pod's egress does not allow
// (the node still DNATs: the lab's kube-proxy follows the manifests).
func TestArticleServiceThroughAPIServer(t *testing.T) {
	l, client := articleThroughAPI(t)
	ctx := context.Background()
	// The db Service, as the agent reads it from the API: the API pod
	// connects through it, the App pod is denied at its egress.
	for _, tc := range []struct {
		from string
		want bool
	}{{"frontend/apipod", true}, {"frontend/apppod", false}} {
		r, err := l.ProbeResult(ctx, tc.from, dbClusterIP, table.PortSpec{Port: 80, Protocol: table.TCP})
		if err != nil {
			t.Fatal(err)
		}
		if r.Expected != tc.want || r.Observed != tc.want {
			t.Errorf("%s: want %v", r.String(), tc.want)
		}
	}
	if got := deniedFlow(t, l, "10.0.1.20", dbClusterIP); got != "egress" {
		t.Errorf("apppod -> the ClusterIP denied at %q, want egress", got)
	}

	if err := client.DiscoveryV1().EndpointSlices("backend").Delete(ctx, "db-7x2kq", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// A probe can fail for reasons other than the agent (a SYN lost on a
	// loaded machine), so wait for the agent's own record of the denial,
	// and then check that a new connection is denied.
	start := time.Now()
	var last Result
	for {
		dir, ok, err := lookupDeniedFlow(l, "10.0.1.30", dbClusterIP)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if dir != "egress" {
				t.Errorf("apipod -> the ClusterIP without endpoints denied at %q, want egress", dir)
			}
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("deleting the EndpointSlice through the API did not take effect within 10s: no denied flow apipod -> the ClusterIP in the agent's flow log (last probe: %s %s)", last.String(), last.Detail)
		}
		if last, err = l.ProbeResult(ctx, "frontend/apipod", dbClusterIP, table.PortSpec{Port: 80, Protocol: table.TCP}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("EndpointSlice deleted through the API: the agent denies within %v (includes the probes)", time.Since(start).Round(time.Millisecond))
	if r, err := l.ProbeResult(ctx, "frontend/apipod", dbClusterIP, table.PortSpec{Port: 80, Protocol: table.TCP}); err != nil || r.Observed {
		t.Errorf("after the EndpointSlice delete, apipod -> the ClusterIP should be denied: %s %v", r.String(), err)
	}
}
