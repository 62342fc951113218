package lab

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"sync"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/podgate/podgate/internal/netns"
)

// The Kubernetes API for agents in node namespaces: an API server on the
// loopback of the lab's own namespace (a test's kube-apiserver) is out of
// reach of a node namespace, so the lab relays to it from each node.

// apiRelay listens on the loopback inside a node namespace and relays
// every connection to an address in the namespace of the lab's process.
// It stops with close.
type apiRelay struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // nil once closed
	closed chan struct{}
	wg     sync.WaitGroup
}

// startRelay listens on host:0 (a loopback address) inside ns and relays
// to target.
func startRelay(ns *netns.Namespace, host, target string) (*apiRelay, error) {
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
		return err
	}); err != nil {
		return nil, fmt.Errorf("relay to the API server %s: listen in %s: %w", target, ns.Name(), err)
	}
	r := &apiRelay{ln: ln, target: target, conns: map[net.Conn]struct{}{}, closed: make(chan struct{})}
	r.wg.Go(r.accept)
	return r, nil
}

// addr returns the relay's listening address in the node namespace.
func (r *apiRelay) addr() *net.TCPAddr { return r.ln.Addr().(*net.TCPAddr) }

// track adds c to the open connections; false once the relay is closed.
func (r *apiRelay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *apiRelay) untrack(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns != nil {
		delete(r.conns, c)
	}
}

func (r *apiRelay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		if !r.track(c) {
			_ = c.Close()
			return
		}
		r.wg.Go(func() { r.serve(c) })
	}
}

// serve relays one connection until either side closes it.
func (r *apiRelay) serve(c net.Conn) {
	defer r.untrack(c)
	defer c.Close()
	// Dialled from this goroutine: in the lab process's own namespace.
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	if !r.track(up) {
		_ = up.Close()
		return
	}
	defer r.untrack(up)
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, _ = io.Copy(c, up)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	select {
	case <-done:
	case <-r.closed:
	}
}

// close stops listening, closes every relayed connection and waits for
// the relay's goroutines.
func (r *apiRelay) close() error {
	err := r.ln.Close()
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	if conns != nil {
		close(r.closed)
	}
	for c := range conns {
		_ = c.Close()
	}
	r.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close relay to the API server %s: %w", r.target, err)
	}
	return nil
}

// loopbackHost reports whether host (of a URL) names a loopback address.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// agentKubeconfig returns the --kubeconfig of node n's agent, for
// Spec.AgentKubeconfig. If the server of the kubeconfig's current context
// is on a loopback address (https://127.0.0.1:PORT, as a test's API
// server), the node's namespace cannot reach it: the lab starts a relay
// in the node's namespace, on the same loopback address, once per node
// (it runs until Close), and writes a copy of the kubeconfig whose server
// is the relay (kubeconfig-NODE in the lab's directory, relative paths
// made absolute; the host name stays, so the server certificate still
// matches). Otherwise the agent reads Spec.AgentKubeconfig itself. The
// caller holds n.agentMu.
func (n *Node) agentKubeconfig() (string, error) {
	path := n.lab.spec.AgentKubeconfig
	if n.kubeconfig != "" {
		return n.kubeconfig, nil
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return "", fmt.Errorf("kubeconfig for node %s: %w", n.name, err)
	}
	if err := clientcmd.ResolveLocalPaths(cfg); err != nil {
		return "", fmt.Errorf("kubeconfig for node %s: %w", n.name, err)
	}
	ctx, ok := cfg.Contexts[cfg.CurrentContext]
	if !ok {
		return "", fmt.Errorf("kubeconfig for node %s: %s: no current context", n.name, path)
	}
	cluster, ok := cfg.Clusters[ctx.Cluster]
	if !ok {
		return "", fmt.Errorf("kubeconfig for node %s: %s: context %q names no known cluster", n.name, path, cfg.CurrentContext)
	}
	u, err := url.Parse(cluster.Server)
	if err != nil {
		return "", fmt.Errorf("kubeconfig for node %s: %s: server: %w", n.name, path, err)
	}
	if !loopbackHost(u.Hostname()) {
		n.kubeconfig = path
		return path, nil
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	listen := u.Hostname()
	if listen == "localhost" {
		listen = "127.0.0.1"
	}
	r, err := startRelay(n.ep.NS, listen, net.JoinHostPort(listen, port))
	if err != nil {
		return "", fmt.Errorf("kubeconfig for node %s: %w", n.name, err)
	}
	u.Host = net.JoinHostPort(u.Hostname(), fmt.Sprint(r.addr().Port))
	cluster.Server = u.String()
	out := filepath.Join(n.lab.dir, "kubeconfig-"+n.name)
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		return "", errors.Join(fmt.Errorf("kubeconfig for node %s: %w", n.name, err), r.close())
	}
	n.relay, n.kubeconfig = r, out
	return out, nil
}

// closeRelay stops the node's relay to the API server, if it has one.
func (n *Node) closeRelay() error {
	n.agentMu.Lock()
	r := n.relay
	n.relay, n.kubeconfig = nil, ""
	n.agentMu.Unlock()
	if r == nil {
		return nil
	}
	return r.close()
}
