package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/podgate/podgate/internal/netns"
)

// ErrNoAgent is returned by [Lab.StopAgent] and [Node.StopAgent] when no
// agent runs.
var ErrNoAgent = errors.New("no agent running")

// ErrAgentRunning is returned by [Lab.StartAgent] and [Node.StartAgent]
// when an agent runs already.
var ErrAgentRunning = errors.New("agent already running")

// Node is a node of a lab: a network namespace with forwarding on, the
// host ends of its pods' veths, an uplink (to the underlay in a lab of
// several nodes) and, once started, its own podgate agent.
//
// Its methods may be called from several goroutines at once.
type Node struct {
	lab       *Lab
	name      string
	index     int
	multi     bool // the lab has several nodes
	ep        *Endpoint
	podCIDRs  []netip.Prefix
	uplinkMAC net.HardwareAddr // several nodes: uplink0's MAC

	agentMu sync.Mutex
	agent   *agentProc
	// binary and args of the last StartAgent, for RestartAgent.
	binary string
	args   []string
	// kubeconfig is the agent's --kubeconfig with Spec.AgentKubeconfig,
	// once decided, and relay the relay to a loopback API server it
	// names ([Node.agentKubeconfig]).
	kubeconfig string
	relay      *apiRelay
}

// agentProc is a running agent.
type agentProc struct {
	cmd  *exec.Cmd
	addr string // metrics address, 127.0.0.1:PORT in the node namespace
	log  *os.File
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, once done is closed
}

// Name returns the node's name (its agent's --node-name).
func (n *Node) Name() string { return n.name }

// Endpoint returns the node as a probe source: its namespace and
// addresses.
func (n *Node) Endpoint() *Endpoint { return n.ep }

// NS returns the node's network namespace.
func (n *Node) NS() *netns.Namespace { return n.ep.NS }

// IPs returns the node's own addresses (on lo in a lab of one node, on
// its uplink in a lab of several).
func (n *Node) IPs() []netip.Addr { return slices.Clone(n.ep.IPs) }

// PodCIDRs returns the prefixes the other nodes route to this node as a
// whole (see [NodeLayout.PodCIDRs]); pods outside them are routed one by
// one.
func (n *Node) PodCIDRs() []netip.Prefix { return slices.Clone(n.podCIDRs) }

// inPodCIDR reports whether a is in one of the node's pod CIDRs.
func (n *Node) inPodCIDR(a netip.Addr) bool {
	return slices.ContainsFunc(n.podCIDRs, func(p netip.Prefix) bool { return p.Contains(a) })
}

// Pods returns the pods of the node (not its hostNetwork pods).
func (n *Node) Pods() []*Endpoint {
	var out []*Endpoint
	for _, ep := range n.lab.endpoints {
		if ep.Kind == KindPod && ep.Node == n.name {
			out = append(out, ep)
		}
	}
	return out
}

// AgentLog returns the path of the file that collects the node's agent's
// stdout and stderr (all its runs, appended): agent.log in the lab's
// directory for a lab of one node, agent-NODE.log for a lab of several.
func (n *Node) AgentLog() string {
	if !n.multi {
		return filepath.Join(n.lab.dir, "agent.log")
	}
	return filepath.Join(n.lab.dir, "agent-"+n.name+".log")
}

// StateDir returns the --state-dir the lab gives the node's agent in a
// lab of several nodes (agent-state-NODE in the lab's directory), and ""
// in a lab of one node, where the caller chooses.
func (n *Node) StateDir() string {
	if !n.multi {
		return ""
	}
	return filepath.Join(n.lab.dir, "agent-state-"+n.name)
}

// BPFDir returns the --bpf-dir the lab gives the node's agent unless the
// caller gives one: bpf-NODE in the lab's directory, where the agent
// mounts a bpffs.
func (n *Node) BPFDir() string { return filepath.Join(n.lab.dir, "bpf-"+n.name) }

// StartAgent runs the podgate agent in the node's namespace as a child
// process:
//
//	BINARY agent --manifests MANIFESTDIR --node-name NODE --metrics-addr 127.0.0.1:PORT [--state-dir DIR] ARGS...
//
// (--kubeconfig instead of --manifests with Spec.AgentKubeconfig; a
// server on the loopback is relayed into the node's namespace, see
// Spec.AgentKubeconfig). In a
// lab of several nodes the lab adds --state-dir ([Node.StateDir]), and
// args must not have one: agents that share a state directory undo each
// other's work. The agent's output is appended to [Node.AgentLog] (and
// Spec.AgentOutput); it runs in its own process group (a Ctrl-C at the
// terminal reaches the lab, which stops the agent in order). StartAgent
// then waits until GET /readyz answers 200 (made from inside the node's
// namespace), the agent exits, ctx is done or Spec.AgentReadyTimeout
// passes; in the last three cases the agent is killed and the error
// carries the end of its log.
func (n *Node) StartAgent(ctx context.Context, binary string, args ...string) error {
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	return n.startLocked(ctx, binary, args)
}

func (n *Node) startLocked(ctx context.Context, binary string, args []string) error {
	if n.agent != nil {
		return fmt.Errorf("start agent on node %s: %w", n.name, ErrAgentRunning)
	}
	if n.multi && slices.ContainsFunc(args, func(a string) bool { return a == "--state-dir" || strings.HasPrefix(a, "--state-dir=") }) {
		return fmt.Errorf("start agent on node %s: --state-dir: the lab gives each node's agent its own", n.name)
	}
	port, err := n.freePort()
	if err != nil {
		return fmt.Errorf("start agent on node %s: %w", n.name, err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logf, err := os.OpenFile(n.AgentLog(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start agent on node %s: %w", n.name, err)
	}
	l := n.lab
	source := []string{"--manifests", l.ManifestDir()}
	if l.spec.AgentKubeconfig != "" {
		kc, err := n.agentKubeconfig()
		if err != nil {
			_ = logf.Close()
			return fmt.Errorf("start agent on node %s: %w", n.name, err)
		}
		source = []string{"--kubeconfig", kc}
	}
	argv := append(append([]string{"agent"}, source...),
		"--node-name", n.name,
		"--metrics-addr", addr,
	)
	if d := n.StateDir(); d != "" {
		argv = append(argv, "--state-dir", d)
	}
	if !slices.ContainsFunc(args, func(a string) bool { return a == "--bpf-dir" || strings.HasPrefix(a, "--bpf-dir=") }) {
		// Each node's agent pins its programs on a bpffs of its own in
		// the lab's directory (the host's mount namespace is shared),
		// which Close unmounts.
		argv = append(argv, "--bpf-dir", n.BPFDir())
	}
	argv = append(argv, args...)
	cmd := exec.Command(binary, argv...)
	var out io.Writer = logf
	if l.spec.AgentOutput != nil {
		out = io.MultiWriter(logf, l.spec.AgentOutput)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(logf, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	if err := n.ep.NS.Start(cmd); err != nil {
		_ = logf.Close()
		return fmt.Errorf("start agent on node %s: %w", n.name, err)
	}
	a := &agentProc{cmd: cmd, addr: addr, log: logf, done: make(chan struct{})}
	go func() {
		a.err = cmd.Wait()
		close(a.done)
	}()
	n.agent = a
	n.binary, n.args = binary, slices.Clone(args)
	if err := n.waitReady(ctx, a); err != nil {
		_ = n.stopLocked(syscall.SIGKILL)
		return fmt.Errorf("start agent on node %s: %w%s", n.name, err, n.logTail())
	}
	return nil
}

// waitReady polls /readyz until it answers 200.
func (n *Node) waitReady(ctx context.Context, a *agentProc) error {
	ctx, cancel := context.WithTimeout(ctx, n.lab.spec.AgentReadyTimeout)
	defer cancel()
	client := n.HTTPClient()
	url := "http://" + a.addr + "/readyz"
	last := "no answer"
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		if err != nil {
			rcancel()
			return fmt.Errorf("wait for readiness: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				rcancel()
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		rcancel()
		select {
		case <-a.done:
			return fmt.Errorf("agent exited before it was ready: %v", a.err)
		case <-ctx.Done():
			return fmt.Errorf("agent not ready after %v (last /readyz: %s): %w", n.lab.spec.AgentReadyTimeout, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// logTail returns the end of the agent log, formatted for an error.
func (n *Node) logTail() string {
	data, err := os.ReadFile(n.AgentLog())
	if err != nil || len(data) == 0 {
		return ""
	}
	const max = 2000
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return "\nagent log (" + n.AgentLog() + ", end):\n" + strings.TrimRight(string(data), "\n")
}

// StopAgent sends sig to the node's agent and waits for it to exit, at
// most Spec.AgentStopTimeout, after which it is killed. It returns nil if
// the agent exited with status 0 or died of sig itself, and an error
// carrying the end of the log otherwise. Without a running agent it
// returns [ErrNoAgent].
func (n *Node) StopAgent(sig os.Signal) error {
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	return n.stopLocked(sig)
}

// KillAgent kills the node's agent (SIGKILL): its XDP programs stay and
// drop everything of the node's pods until an agent starts again.
func (n *Node) KillAgent() error { return n.StopAgent(syscall.SIGKILL) }

// RestartAgent stops the node's agent with sig (if it runs) and starts it
// again with the binary and arguments of its last start.
func (n *Node) RestartAgent(ctx context.Context, sig os.Signal) error {
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	if n.binary == "" {
		return fmt.Errorf("restart agent on node %s: never started", n.name)
	}
	if err := n.stopLocked(sig); err != nil && !errors.Is(err, ErrNoAgent) {
		return err
	}
	return n.startLocked(ctx, n.binary, n.args)
}

func (n *Node) stopLocked(sig os.Signal) error {
	a := n.agent
	if a == nil {
		return ErrNoAgent
	}
	n.agent = nil
	defer a.log.Close()
	var errs []error
	select {
	case <-a.done:
		// It exited by itself.
	default:
		if err := a.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("signal agent: %w", err))
		}
		select {
		case <-a.done:
		case <-time.After(n.lab.spec.AgentStopTimeout):
			_ = a.cmd.Process.Kill()
			<-a.done
			errs = append(errs, fmt.Errorf("agent did not exit within %v of %v: killed", n.lab.spec.AgentStopTimeout, sig))
		}
	}
	if a.err != nil {
		var ee *exec.ExitError
		ws, ok := a.cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !(errors.As(a.err, &ee) && ok && ws.Signaled() && ws.Signal() == sig) {
			errs = append(errs, fmt.Errorf("agent: %w", a.err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("stop agent on node %s: %w%s", n.name, errors.Join(errs...), n.logTail())
	}
	return nil
}

// AgentRunning reports whether the node's agent, started by StartAgent,
// is running.
func (n *Node) AgentRunning() bool {
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	if n.agent == nil {
		return false
	}
	select {
	case <-n.agent.done:
		return false
	default:
		return true
	}
}

// AgentPID returns the process ID of the node's running agent, or 0.
func (n *Node) AgentPID() int {
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	if n.agent == nil {
		return 0
	}
	return n.agent.cmd.Process.Pid
}

// AgentURL returns the base URL of the node's agent
// (http://127.0.0.1:PORT), reachable only from the node's namespace, for
// example with [Node.HTTPClient]; empty when no agent runs.
func (n *Node) AgentURL() string {
	n.agentMu.Lock()
	defer n.agentMu.Unlock()
	if n.agent == nil {
		return ""
	}
	return "http://" + n.agent.addr
}

// HTTPClient returns an HTTP client whose connections are made in the
// node's namespace (for its agent's /healthz, /readyz, /metrics and
// /flows). It uses no proxy and no keep-alives.
func (n *Node) HTTPClient() *http.Client {
	ns := n.ep.NS
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

// freePort returns a TCP port free on 127.0.0.1 in the node's namespace.
func (n *Node) freePort() (int, error) {
	var port int
	err := n.ep.NS.Do(func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = ln.Addr().(*net.TCPAddr).Port
		return ln.Close()
	})
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	return port, nil
}

// eachNode runs fn for every node at once and joins the errors.
func (l *Lab) eachNode(fn func(n *Node) error) error {
	errs := make([]error, len(l.nodes))
	var wg sync.WaitGroup
	for i, n := range l.nodes {
		wg.Go(func() { errs[i] = fn(n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StartAgent starts an agent on every node at once ([Node.StartAgent])
// and waits until all are ready. If a node has an agent running already
// it starts none and returns [ErrAgentRunning]; if one fails, it stops
// the others it started (SIGKILL) and returns the errors.
func (l *Lab) StartAgent(ctx context.Context, binary string, args ...string) error {
	for _, n := range l.nodes {
		if n.AgentRunning() {
			return fmt.Errorf("start agent on node %s: %w", n.name, ErrAgentRunning)
		}
	}
	started := make([]bool, len(l.nodes))
	err := l.eachNode(func(n *Node) error {
		if err := n.StartAgent(ctx, binary, args...); err != nil {
			return err
		}
		started[n.index] = true
		return nil
	})
	if err != nil {
		for i, ok := range started {
			if ok {
				_ = l.nodes[i].StopAgent(syscall.SIGKILL)
			}
		}
	}
	return err
}

// StopAgent stops the agents of every node at once ([Node.StopAgent]).
// It returns [ErrNoAgent] when none runs, and the errors of the others
// otherwise.
func (l *Lab) StopAgent(sig os.Signal) error {
	var running atomic.Int32
	err := l.eachNode(func(n *Node) error {
		err := n.StopAgent(sig)
		if errors.Is(err, ErrNoAgent) {
			return nil
		}
		running.Add(1)
		return err
	})
	if running.Load() == 0 && err == nil {
		return ErrNoAgent
	}
	return err
}

// KillAgent kills the agent of every node (SIGKILL, see [Node.KillAgent]).
func (l *Lab) KillAgent() error { return l.StopAgent(syscall.SIGKILL) }

// RestartAgent restarts the agent of every node that has had one
// ([Node.RestartAgent]), all at once.
func (l *Lab) RestartAgent(ctx context.Context, sig os.Signal) error {
	return l.eachNode(func(n *Node) error {
		n.agentMu.Lock()
		had := n.binary != ""
		n.agentMu.Unlock()
		if !had {
			return nil
		}
		return n.RestartAgent(ctx, sig)
	})
}

// AgentLog returns the first node's [Node.AgentLog].
func (l *Lab) AgentLog() string { return l.nodes[0].AgentLog() }

// AgentRunning reports whether the first node's agent runs (the only
// one in a lab of one node; see [Lab.Nodes] for the others).
func (l *Lab) AgentRunning() bool { return l.nodes[0].AgentRunning() }

// AgentPID returns the process ID of the first node's agent, or 0.
func (l *Lab) AgentPID() int { return l.nodes[0].AgentPID() }

// AgentURL returns the first node's [Node.AgentURL].
func (l *Lab) AgentURL() string { return l.nodes[0].AgentURL() }

// HTTPClient returns the first node's [Node.HTTPClient].
func (l *Lab) HTTPClient() *http.Client { return l.nodes[0].HTTPClient() }
