package hostile

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/podgate/podgate/internal/test/testutil"
)

// daemonSetProbe returns the address and path the DaemonSet's probe uses,
// as the lab's agent serves them: a probe on the metrics port goes to the
// lab's metrics address, any other to host:port in the node namespace.
func (n *node) daemonSetProbe(t *testing.T, which string) (addr, path string) {
	t.Helper()
	b, err := os.ReadFile("../../../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatal(err)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	p := c.LivenessProbe
	if which == "readiness" {
		p = c.ReadinessProbe
	}
	if p == nil || p.HTTPGet == nil {
		t.Fatalf("the DaemonSet has no HTTP %s probe", which)
	}
	var port corev1.ContainerPort
	for _, cp := range c.Ports {
		if cp.Name == p.HTTPGet.Port.StrVal || (p.HTTPGet.Port.StrVal == "" && cp.ContainerPort == p.HTTPGet.Port.IntVal) {
			port = cp
		}
	}
	if port.Name == "metrics" {
		return strings.TrimPrefix(n.l.AgentURL(), "http://"), p.HTTPGet.Path
	}
	host := p.HTTPGet.Host
	if host == "" {
		t.Fatalf("%s probe on port %s without host: the lab cannot map the pod IP", which, port.Name)
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port.ContainerPort))), p.HTTPGet.Path
}

// probeAsKubelet makes one request as the kubelet's probe does (a new
// connection, 3s timeout) and returns the status and the time it took.
func (n *node) probeAsKubelet(addr, path string) (int, time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := n.l.HTTPClient().Do(req)
	if err != nil {
		return 0, time.Since(start), err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start), nil
}

// getMetrics is a request for /metrics.
var getMetrics = []byte("GET /metrics HTTP/1.1\r\nHost: podgate\r\n\r\n")

// holdConns opens count connections to the agent's metrics address from
// the given loopback source addresses (round robin), each sending payload
// and never reading. It returns the connections that opened.
func (n *node) holdConns(t *testing.T, count int, sources []string, payload []byte) []net.Conn {
	t.Helper()
	addr := strings.TrimPrefix(n.l.AgentURL(), "http://")
	var conns []net.Conn
	err := n.l.Node().NS.Do(func() error {
		for i := range count {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(sources[i%len(sources)])}}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			conns = append(conns, c)
			if len(payload) == 0 {
				continue
			}
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(payload); err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Logf("after %d connections: %v", len(conns), err)
	}
	return conns
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// checkProbes probes liveness and readiness as the DaemonSet does, once a
// second for the given time, and fails the test for any probe that does
// not answer 200 within the kubelet's 3 seconds.
func (n *node) checkProbes(t *testing.T, when string, d time.Duration) {
	t.Helper()
	live, livePath := n.daemonSetProbe(t, "liveness")
	ready, readyPath := n.daemonSetProbe(t, "readiness")
	var slowest time.Duration
	probes := 0
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(time.Second) {
		for _, p := range [][2]string{{live, livePath}, {ready, readyPath}} {
			code, took, err := n.probeAsKubelet(p[0], p[1])
			probes++
			slowest = max(slowest, took)
			if err != nil || code != http.StatusOK {
				t.Errorf("%s: probe %s%s: %d after %v: %v", when, p[0], p[1], code, took.Round(time.Millisecond), err)
			}
		}
	}
	t.Logf("%s: %d probes of %s%s and %s%s, slowest %v", when, probes, live, livePath, ready, readyPath, slowest.Round(time.Millisecond))
}

// agentMemory returns the agent's resident memory (from /proc) and the
// memory of the node namespace's TCP socket buffers (from its
// /proc/net/sockstat), in bytes.
func (n *node) agentMemory(t *testing.T) (rss, tcpBuffers int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.l.AgentPID()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			rss = kb << 10
		}
	}
	err = n.l.Node().NS.Do(func() error {
		// /proc/net is the reading thread's network namespace's.
		f, err := os.Open("/proc/thread-self/net/sockstat")
		if err != nil {
			return err
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			f := strings.Fields(s.Text())
			if len(f) > 0 && f[0] == "TCP:" {
				for i := 1; i+1 < len(f); i += 2 {
					if f[i] == "mem" {
						pages, _ := strconv.ParseInt(f[i+1], 10, 64)
						tcpBuffers = pages * int64(os.Getpagesize())
					}
				}
			}
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return rss, tcpBuffers
}

// TestHealthUnderMetricsLoad is issue 11's F3: 1,030 connections send GET
// /metrics and never read. Before the fix /healthz, on the same server,
// timed out (3s probes) until the idle timeout: the DaemonSet's liveness
// probe would have restarted the agent, and a restart leaves the node
// unenforced for that moment. The DaemonSet's probes must answer within
// their timeout however the connections come: all from one client, or
// from many clients filling the metrics server's whole connection budget.
// It also measures what such connections cost the agent.
func TestHealthUnderMetricsLoad(t *testing.T) {
	const load = 1030
	n := newNode(t)
	n.checkProbes(t, "idle", 2*time.Second)
	n.metrics() // a first scrape, so that its buffers are in the baseline

	// One client.
	conns := n.holdConns(t, load, []string{"127.0.0.1"}, getMetrics)
	time.Sleep(2 * time.Second)
	n.checkProbes(t, fmt.Sprintf("%d connections from one client", len(conns)), 10*time.Second)
	// Another client still gets its scrape.
	if err := n.l.Node().NS.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.250")}}
		c, err := d.Dial("tcp", strings.TrimPrefix(n.l.AgentURL(), "http://"))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: podgate\r\nConnection: close\r\n\r\n")); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}); err != nil {
		t.Errorf("a scrape from another client while one holds %d connections: %v", len(conns), err)
	}
	closeAll(conns)

	// Many clients: 21 source addresses fill the whole budget, with what
	// makes a connection cost the most: the GET /metrics unread,
	// headers just below the 12 KiB the server reads and not finished,
	// nothing at all; and headers past the limit, which the agent must
	// refuse.
	var sources []string
	for i := range 21 {
		sources = append(sources, fmt.Sprintf("127.0.1.%d", i+1))
	}
	header := func(size int) []byte {
		return []byte("GET /metrics HTTP/1.1\r\nHost: podgate\r\nX-Pad: " + strings.Repeat("a", size) + "\r\n")
	}
	for _, phase := range []struct {
		name    string
		payload []byte
		// count: 1,000 connections leave room in the budget for a scrape
		// of the agent's Go memory while they are held.
		count int
		// held: the agent keeps the connections while the client waits
		// (else it refuses them at once).
		held bool
	}{
		{"GET /metrics, not reading", getMetrics, load, true},
		{"11 KiB of unfinished headers", header(11 << 10), 1000, true},
		{"nothing sent", nil, 1000, true},
		{"100 KiB of headers", header(100 << 10), load, false},
	} {
		// A fresh agent, so that no garbage of the previous phase is in
		// the baseline.
		if err := n.l.StopAgent(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		n.start()
		n.metrics()
		time.Sleep(time.Second)
		rss0, tcp0 := n.agentMemory(t)
		fds0 := n.agentFDs(t)
		go0, goErr0 := n.goMemory()
		conns := n.holdConns(t, phase.count, sources, phase.payload)
		time.Sleep(3 * time.Second)
		rss1, tcp1 := n.agentMemory(t)
		fds1 := n.agentFDs(t)
		go1, goErr1 := n.goMemory()
		held := max(1, fds1-fds0)
		n.checkProbes(t, fmt.Sprintf("%d connections from %d clients, %s", len(conns), len(sources), phase.name), 5*time.Second)
		goMem := "Go heap and stacks: no scrape"
		if goErr0 == nil && goErr1 == nil {
			goMem = fmt.Sprintf("Go heap and stacks %+.1f KiB per connection", (go1-go0)/1024/float64(held))
		}
		t.Logf("%d connections, %s: %d held (open files %d -> %d); agent RSS %.1f -> %.1f MiB (%+.1f KiB per held connection), %s; TCP buffers of the node namespace %+.1f KiB per connection",
			len(conns), phase.name, fds1-fds0, fds0, fds1, float64(rss0)/(1<<20), float64(rss1)/(1<<20), float64(rss1-rss0)/1024/float64(held),
			goMem, float64(tcp1-tcp0)/1024/float64(len(conns)))
		// Where the agent holds every connection, what one costs is
		// bounded (the numbers go to SECURITY.md).
		if perConn := float64(max(rss1-rss0, int64(go1-go0))) / float64(held); phase.held && held > phase.count*9/10 && perConn > 64<<10 {
			t.Errorf("%s: %.0f KiB of agent memory per connection; at --metrics-max-conns 1024 that is %.0f MiB",
				phase.name, perConn/1024, perConn*1024/(1<<20))
		}
		if !phase.held && fds1 > fds0+64 {
			t.Errorf("%s: the agent holds %d open files, %d before", phase.name, fds1, fds0)
		}
		// Bounded time: the server closes every connection by itself (a 503
		// and close beyond the /metrics renderings in flight, the write
		// timeout for those, the header timeout), the clients still not
		// reading.
		start := time.Now()
		testutil.Eventually(t, 45*time.Second, phase.name+": the agent's connections closed", func() error {
			if fds := n.agentFDs(t); fds > fds0+8 {
				return fmt.Errorf("%d open files, %d before the load", fds, fds0)
			}
			return nil
		})
		t.Logf("%s: the agent closed the connections %v after the probes", phase.name, time.Since(start).Round(100*time.Millisecond))
		closeAll(conns)
	}
	n.checkHealthy("after the load")
}

// goMemory scrapes the agent's heap and stack memory in use, from a
// client address of its own (127.0.0.251).
func (n *node) goMemory() (float64, error) {
	ns := n.l.Node().NS
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() error {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.251")}}
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	m, err := Scrape(ctx, client, n.l.AgentURL()+"/metrics")
	if err != nil {
		return 0, err
	}
	return m.Get("go_memstats_heap_inuse_bytes") + m.Get("go_memstats_stack_inuse_bytes"), nil
}

// agentFDs returns how many files the agent has open.
func (n *node) agentFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", n.l.AgentPID()))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}
