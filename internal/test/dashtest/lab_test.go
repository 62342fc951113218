package dashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// The lab: node n1 with pods x/a (client), x/b and z/c (servers); not "y", which YAML 1.1 reads as true.
const (
	nodeName    = "n1"
	agentAddr   = "127.0.0.1:9402" // the DaemonSet's prometheus.io/port
	promAddr    = "127.0.0.1:9090"
	allowedPort = 8080
	deniedPort  = 9090
)

// labPod is a pod of the lab.
type labPod struct {
	Namespace, Name, App string
	IP                   netip.Addr
	NS                   *netns.Namespace
}

// The pods' manifests and the policies: b admits a on 8080 only (so a→b:9090
// is denied_ingress at b); a may only send to pods of its own namespace (so
// a→c is denied_egress at a).
const labManifests = `apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: z}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1}
status: {podIP: 10.98.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n1}
status: {podIP: 10.98.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: z, labels: {app: c}}
spec: {nodeName: n1}
status: {podIP: 10.98.0.30}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a-8080, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 8080}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-egress-own-namespace, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}]}]
`

// extraPolicy is added during the run to make the agent rebuild its table;
// it changes no verdict of the lab's traffic.
const extraPolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-anywhere, namespace: z}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress: [{from: [{namespaceSelector: {}}]}]
`

// lab is a node made of network namespaces with the agent running in it.
type lab struct {
	node       *netns.Namespace
	a, b, c    labPod
	dir        string // manifests
	tmp        string
	client     *http.Client // dials from inside the node namespace
	agentLog   string
	agentBin   string
	agentAlive func() error
}

// requireRoot skips without root, or fails when PODGATE_REQUIRE_PROMETHEUS=1.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(requireEnv) == "1" {
		tb.Fatalf("%s=1 but not running as root (network namespaces need it)", requireEnv)
	}
	tb.Skip("the end-to-end test needs root (network namespaces)")
}

// buildAgent builds bin/podgate into dir.
func buildAgent(tb testing.TB, dir string) string {
	tb.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		tb.Fatalf("go: %v", err)
	}
	out := filepath.Join(dir, "podgate")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/podgate")
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("build podgate: %v\n%s", err, b)
	}
	return out
}

// newLab builds the namespaces, starts the servers and the agent, and
// waits until the agent is ready. Everything is undone in t.Cleanup.
func newLab(t *testing.T) *lab {
	t.Helper()
	requireRoot(t)
	l := &lab{tmp: t.TempDir()}
	l.agentBin = buildAgent(t, l.tmp)
	l.dir = filepath.Join(l.tmp, "manifests")
	if err := os.Mkdir(l.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.dir, "lab.yaml"), []byte(labManifests), 0o644); err != nil {
		t.Fatal(err)
	}

	l.node = netns.RouterForTest(t, "pgdn")
	for _, p := range []*labPod{
		{Namespace: "x", Name: "a", App: "a", IP: netip.MustParseAddr("10.98.0.10")},
		{Namespace: "x", Name: "b", App: "b", IP: netip.MustParseAddr("10.98.0.20")},
		{Namespace: "z", Name: "c", App: "c", IP: netip.MustParseAddr("10.98.0.30")},
	} {
		p.NS, _ = netns.PodForTest(t, "pgd"+p.Name, netns.PodConfig{
			Node: l.node, HostIf: "pod-" + p.Name, IPs: []netip.Addr{p.IP},
		})
		switch p.Name {
		case "a":
			l.a = *p
		case "b":
			l.b = *p
		case "c":
			l.c = *p
		}
	}
	l.client = &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := l.node.Do(func() error {
					var d net.Dialer
					var err error
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
	l.serve(t, l.b, allowedPort, deniedPort)
	l.serve(t, l.c, allowedPort)

	l.agentLog = filepath.Join(l.tmp, "agent.log")
	l.agentAlive = l.start(t, "agent", l.agentLog, l.agentBin, "agent",
		"--manifests", l.dir,
		"--node-name", nodeName,
		"--state-dir", filepath.Join(l.tmp, "state"),
		"--metrics-addr", agentAddr,
		"--conntrack-max", "1024",
	)
	if err := l.waitHTTP("http://"+agentAddr+"/readyz", 60*time.Second, l.agentAlive); err != nil {
		t.Fatalf("agent not ready: %v\n%s", err, tail(l.agentLog))
	}
	return l
}

// serve accepts connections on the pod's ports and answers "hi".
func (l *lab) serve(t *testing.T, p labPod, ports ...int) {
	t.Helper()
	for _, port := range ports {
		var ln net.Listener
		err := p.NS.Do(func() error {
			var err error
			ln, err = net.Listen("tcp4", net.JoinHostPort(p.IP.String(), strconv.Itoa(port)))
			return err
		})
		if err != nil {
			t.Fatalf("listen in %s: %v", p.Name, err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write([]byte("hi"))
				_ = c.Close()
			}
		}()
		t.Cleanup(func() {
			_ = ln.Close()
			wg.Wait()
		})
	}
}

// start runs a process in the node namespace, in its own process group,
// with its output in logPath; it is stopped (SIGTERM, then SIGKILL after
// 15 s) in t.Cleanup. The returned function reports whether it still runs.
func (l *lab) start(t *testing.T, what, logPath, bin string, args ...string) func() error {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := l.node.Start(cmd); err != nil {
		_ = logf.Close()
		t.Fatalf("start %s: %v", what, err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		_ = logf.Close()
		close(done)
	}()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Errorf("%s did not stop on SIGTERM; killing it", what)
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
		}
		if t.Failed() {
			t.Logf("%s log (%s):\n%s", what, logPath, tail(logPath))
		}
	})
	return func() error {
		select {
		case <-done:
			return fmt.Errorf("%s exited: %v", what, waitErr)
		default:
			return nil
		}
	}
}

// tail returns the last lines of a log file.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// get fetches a URL from inside the node namespace.
func (l *lab) get(u string) ([]byte, error) {
	resp, err := l.client.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// waitHTTP polls u until it answers 200, alive fails or timeout passes.
func (l *lab) waitHTTP(u string, timeout time.Duration, alive func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := l.get(u)
		if err == nil {
			return nil
		}
		if aerr := alive(); aerr != nil {
			return aerr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// connect makes n TCP connections from a to dst, each reading the server's
// "hi", and returns how many succeeded.
func (l *lab) connect(dst labPod, port, n int) int {
	ok := 0
	addr := net.JoinHostPort(dst.IP.String(), strconv.Itoa(port))
	for range n {
		var c net.Conn
		err := l.a.NS.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp4", addr, 2*time.Second)
			return err
		})
		if err != nil {
			continue
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err == nil && string(buf) == "hi" {
			ok++
		}
		_ = c.Close()
	}
	return ok
}

// syns sends n TCP SYNs from a to dst:port, each from its own socket (its
// own flow), without waiting for an answer: non-blocking connects that are
// closed again at once (closing a socket in SYN-SENT sends nothing).
func (l *lab) syns(dst labPod, port, n int) error {
	return l.a.NS.Do(func() error {
		sa := &unix.SockaddrInet4{Port: port, Addr: dst.IP.As4()}
		fds := make([]int, 0, n)
		defer func() {
			for _, fd := range fds {
				_ = unix.Close(fd)
			}
		}()
		for range n {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			fds = append(fds, fd)
			if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
				return fmt.Errorf("connect %v: %w", dst.IP, err)
			}
		}
		return nil
	})
}

// addPolicy writes extraPolicy into the manifest directory (atomically).
func (l *lab) addPolicy() error {
	tmp := filepath.Join(l.tmp, "extra.yaml")
	if err := os.WriteFile(tmp, []byte(extraPolicy), 0o644); err != nil {
		return fmt.Errorf("write policy: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(l.dir, "extra.yaml")); err != nil {
		return fmt.Errorf("add policy: %w", err)
	}
	return nil
}

// promResult is one series of a Prometheus API answer.
type promResult struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`  // instant: [unix seconds, "value"]
	Values [][2]any          `json:"values"` // range
}

// Float returns the value of an instant result.
func (r promResult) Float() float64 {
	return sampleValue(r.Value)
}

func sampleValue(v [2]any) float64 {
	s, _ := v[1].(string)
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0
	}
	return f
}

// promAPI queries Prometheus' HTTP API from inside the node namespace.
func (l *lab) promAPI(path string, params url.Values) (json.RawMessage, error) {
	b, err := l.get("http://" + promAddr + path + "?" + params.Encode())
	if err != nil {
		return nil, err
	}
	var r struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s: %s", path, r.ErrorType, r.Error)
	}
	return r.Data, nil
}

// query runs an instant query at t.
func (l *lab) query(expr string, at time.Time) ([]promResult, error) {
	data, err := l.promAPI("/api/v1/query", url.Values{
		"query": {expr},
		"time":  {strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)},
	})
	if err != nil {
		return nil, err
	}
	return decodeResult(data)
}

// queryRange runs a range query.
func (l *lab) queryRange(expr string, start, end time.Time, step time.Duration) ([]promResult, error) {
	data, err := l.promAPI("/api/v1/query_range", url.Values{
		"query": {expr},
		"start": {strconv.FormatFloat(float64(start.UnixMilli())/1000, 'f', 3, 64)},
		"end":   {strconv.FormatFloat(float64(end.UnixMilli())/1000, 'f', 3, 64)},
		"step":  {strconv.FormatFloat(step.Seconds(), 'f', 3, 64)},
	})
	if err != nil {
		return nil, err
	}
	return decodeResult(data)
}

func decodeResult(data json.RawMessage) ([]promResult, error) {
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("decode result: %w", err)
	}
	switch d.ResultType {
	case "vector", "matrix":
		var rs []promResult
		if err := json.Unmarshal(d.Result, &rs); err != nil {
			return nil, fmt.Errorf("decode %s: %w", d.ResultType, err)
		}
		return rs, nil
	case "scalar":
		var v [2]any
		if err := json.Unmarshal(d.Result, &v); err != nil {
			return nil, fmt.Errorf("decode scalar: %w", err)
		}
		return []promResult{{Metric: map[string]string{}, Value: v}}, nil
	}
	return nil, fmt.Errorf("unexpected result type %q", d.ResultType)
}
