package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNoAgent is returned by [Lab.StopAgent] when no agent runs.
var ErrNoAgent = errors.New("no agent running")

// ErrAgentRunning is returned by [Lab.StartAgent] when an agent runs
// already.
var ErrAgentRunning = errors.New("agent already running")

// agentProc is a running agent.
type agentProc struct {
	cmd  *exec.Cmd
	addr string // metrics address, 127.0.0.1:PORT in the node namespace
	log  *os.File
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, once done is closed
}

// AgentLog returns the path of the file that collects the agent's stdout
// and stderr (all runs of the lab, appended).
func (l *Lab) AgentLog() string { return filepath.Join(l.dir, "agent.log") }

// StartAgent runs the podgate agent in the node namespace as a child
// process:
//
//	BINARY agent --manifests MANIFESTDIR --node-name NODE --metrics-addr 127.0.0.1:PORT ARGS...
//
// with its output appended to [Lab.AgentLog] (and Spec.AgentOutput), in
// its own process group (a Ctrl-C at the terminal reaches the lab, which
// stops the agent in order). It then waits until GET /readyz answers 200
// (made from inside the node namespace), the agent exits, ctx is done or
// Spec.AgentReadyTimeout passes; in the last three cases the agent is
// killed and the error carries the end of its log.
func (l *Lab) StartAgent(ctx context.Context, binary string, args ...string) error {
	l.agentMu.Lock()
	defer l.agentMu.Unlock()
	if l.agent != nil {
		return fmt.Errorf("start agent: %w", ErrAgentRunning)
	}
	port, err := l.freeNodePort()
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logf, err := os.OpenFile(l.AgentLog(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	source := []string{"--manifests", l.ManifestDir()}
	if l.spec.AgentKubeconfig != "" {
		source = []string{"--kubeconfig", l.spec.AgentKubeconfig}
	}
	argv := append(append([]string{"agent"}, source...),
		"--node-name", l.nodeName,
		"--metrics-addr", addr,
	)
	argv = append(argv, args...)
	cmd := exec.Command(binary, argv...)
	var out io.Writer = logf
	if l.spec.AgentOutput != nil {
		out = io.MultiWriter(logf, l.spec.AgentOutput)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(logf, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	if err := l.node.NS.Start(cmd); err != nil {
		_ = logf.Close()
		return fmt.Errorf("start agent: %w", err)
	}
	a := &agentProc{cmd: cmd, addr: addr, log: logf, done: make(chan struct{})}
	go func() {
		a.err = cmd.Wait()
		close(a.done)
	}()
	l.agent = a
	if err := l.waitReady(ctx, a); err != nil {
		_ = l.stopLocked(syscall.SIGKILL)
		return fmt.Errorf("start agent: %w%s", err, l.logTail())
	}
	return nil
}

// waitReady polls /readyz until it answers 200.
func (l *Lab) waitReady(ctx context.Context, a *agentProc) error {
	ctx, cancel := context.WithTimeout(ctx, l.spec.AgentReadyTimeout)
	defer cancel()
	client := l.HTTPClient()
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
			return fmt.Errorf("agent not ready after %v (last /readyz: %s): %w", l.spec.AgentReadyTimeout, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// logTail returns the end of the agent log, formatted for an error.
func (l *Lab) logTail() string {
	data, err := os.ReadFile(l.AgentLog())
	if err != nil || len(data) == 0 {
		return ""
	}
	const max = 2000
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return "\nagent log (" + l.AgentLog() + ", end):\n" + strings.TrimRight(string(data), "\n")
}

// StopAgent sends sig to the agent and waits for it to exit, at most
// Spec.AgentStopTimeout, after which it is killed. It returns nil if the
// agent exited with status 0 or died of sig itself, and an error carrying
// the end of the log otherwise. Without a running agent it returns
// [ErrNoAgent].
func (l *Lab) StopAgent(sig os.Signal) error {
	l.agentMu.Lock()
	defer l.agentMu.Unlock()
	return l.stopLocked(sig)
}

func (l *Lab) stopLocked(sig os.Signal) error {
	a := l.agent
	if a == nil {
		return ErrNoAgent
	}
	l.agent = nil
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
		case <-time.After(l.spec.AgentStopTimeout):
			_ = a.cmd.Process.Kill()
			<-a.done
			errs = append(errs, fmt.Errorf("agent did not exit within %v of %v: killed", l.spec.AgentStopTimeout, sig))
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
		return fmt.Errorf("stop agent: %w%s", errors.Join(errs...), l.logTail())
	}
	return nil
}

// AgentRunning reports whether an agent started by StartAgent is running.
func (l *Lab) AgentRunning() bool {
	l.agentMu.Lock()
	defer l.agentMu.Unlock()
	if l.agent == nil {
		return false
	}
	select {
	case <-l.agent.done:
		return false
	default:
		return true
	}
}

// AgentPID returns the process ID of the running agent, or 0.
func (l *Lab) AgentPID() int {
	l.agentMu.Lock()
	defer l.agentMu.Unlock()
	if l.agent == nil {
		return 0
	}
	return l.agent.cmd.Process.Pid
}

// AgentURL returns the agent's base URL (http://127.0.0.1:PORT), reachable
// only from the node namespace, for example with [Lab.HTTPClient]; empty
// when no agent runs.
func (l *Lab) AgentURL() string {
	l.agentMu.Lock()
	defer l.agentMu.Unlock()
	if l.agent == nil {
		return ""
	}
	return "http://" + l.agent.addr
}

// HTTPClient returns an HTTP client whose connections are made in the node
// namespace (for the agent's /healthz, /readyz and /metrics). It uses no
// proxy and no keep-alives.
func (l *Lab) HTTPClient() *http.Client {
	ns := l.node.NS
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

// freeNodePort returns a TCP port free on 127.0.0.1 in the node namespace.
func (l *Lab) freeNodePort() (int, error) {
	var port int
	err := l.node.NS.Do(func() error {
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
