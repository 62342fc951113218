package lab

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// writeTestKubeconfig writes a kubeconfig whose current context's server
// is server and whose CA is the relative path ca.crt.
func writeTestKubeconfig(t *testing.T, path, server string) {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: "ca.crt"}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	kc.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "x"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
}

// TestAgentKubeconfigRelay: with a kubeconfig whose server is on this
// namespace's loopback, each node's agent gets a kubeconfig of its own
// whose server is a relay in the node's namespace, reaching the server;
// a server elsewhere is left alone.
func TestAgentKubeconfigRelay(t *testing.T) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "api "+r.URL.Path)
	}), ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeTestKubeconfig(t, kubeconfig, "http://"+ln.Addr().String())
	l := NewForTest(t, Spec{Manifests: []string{articleThreeNodes}, Prefix: testPrefix, Enforcer: EnforcerNone, AgentKubeconfig: kubeconfig})

	seen := map[string]bool{}
	for _, n := range l.Nodes() {
		n.agentMu.Lock()
		path, err := n.agentKubeconfig()
		again, err2 := n.agentKubeconfig()
		n.agentMu.Unlock()
		if err != nil || err2 != nil {
			t.Fatal(err, err2)
		}
		if path != again || seen[path] || path == kubeconfig {
			t.Errorf("node %s: kubeconfig %s (again %s): want one of its own, kept", n.Name(), path, again)
		}
		seen[path] = true
		cfg, err := clientcmd.LoadFromFile(path)
		if err != nil {
			t.Fatal(err)
		}
		c := cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster]
		if c.CertificateAuthority != filepath.Join(dir, "ca.crt") {
			t.Errorf("node %s: CA %q, want the original's made absolute", n.Name(), c.CertificateAuthority)
		}
		u, err := url.Parse(c.Server)
		if err != nil {
			t.Fatal(err)
		}
		if u.Hostname() != "127.0.0.1" || u.Host == ln.Addr().String() {
			t.Errorf("node %s: server %s, want a relay on 127.0.0.1", n.Name(), c.Server)
		}
		resp, err := n.HTTPClient().Get(c.Server + "/version")
		if err != nil {
			t.Fatalf("node %s: through the relay: %v", n.Name(), err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "api /version" {
			t.Errorf("node %s: through the relay: %q", n.Name(), body)
		}
		// Without the relay the node's namespace does not reach it.
		if resp, err := n.HTTPClient().Get("http://" + ln.Addr().String() + "/version"); err == nil {
			resp.Body.Close()
			t.Errorf("node %s reaches the server on this namespace's loopback without the relay", n.Name())
		}
	}

	// A server that is not on the loopback is the agents' business.
	other := filepath.Join(dir, "other")
	writeTestKubeconfig(t, other, "https://192.0.2.1:6443")
	l2 := NewForTest(t, Spec{Manifests: []string{articleThreeNodes}, Prefix: testPrefix, Enforcer: EnforcerNone, AgentKubeconfig: other})
	n := l2.Nodes()[0]
	n.agentMu.Lock()
	path, err := n.agentKubeconfig()
	n.agentMu.Unlock()
	if err != nil || path != other {
		t.Errorf("kubeconfig %q, %v: want %s itself", path, err, other)
	}
	if _, err := os.Stat(filepath.Join(l2.Dir(), "kubeconfig-"+n.Name())); !os.IsNotExist(err) {
		t.Errorf("a copy was written for a server not on the loopback: %v", err)
	}
}
