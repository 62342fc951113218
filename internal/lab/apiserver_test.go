package lab

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podgate/podgate/internal/kubetest"
	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy"
)

// relayIntoNetns listens on 127.0.0.1 inside ns and relays every
// connection to target (host:port) on this process's loopback. It returns
// the listener's address; it stops with the test.
func relayIntoNetns(t *testing.T, ns *netns.Namespace, target string) string {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestArticleThroughAPIServer is the article's scenario end to end with
// the Kubernetes source: its namespaces, pods (status written through the
// status subresource, as a kubelet would) and policies are created in a
// real kube-apiserver, the agent watches the API instead of files, and
// real connections between the lab's namespaces match the policy engine's
// matrix. Deleting a policy through the API then changes what connects,
// without a restart; the test logs how long that took.
func TestArticleThroughAPIServer(t *testing.T) {
	bin, extra := buildPodgate(t)
	env := kubetest.Start(t)
	ctx := context.Background()
	client := env.Client()

	m, err := policy.Load(articleDir)
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
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	l := NewForTest(t, Spec{Manifests: []string{articleDir}, Prefix: testPrefix, AgentKubeconfig: kubeconfig})
	// The agent runs in the node netns; the API server listens on the
	// host's loopback. Listen on 127.0.0.1 inside the node netns and relay
	// to the API server from here, so that neither netns changes.
	cfg := env.Config()
	cfg.Host = "https://" + relayIntoNetns(t, l.Node().NS, strings.TrimPrefix(env.Host(), "https://"))
	if err := kubetest.WriteKubeconfig(kubeconfig, cfg); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
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
	tcp5432 := policy.PortSpec{Port: 5432, Protocol: policy.TCP}
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
