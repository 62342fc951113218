package hostile

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy/table"
)

// labPrefix starts the names of this package's labs (namespaces and
// directories), so that TestMain can remove what a killed run left.
const labPrefix = "pghostile"

// nodeManifests is the scenario every test runs on (see its files).
const nodeManifests = "testdata/node"

// tcpPort, udpPort and icmpEcho are probe ports.
func tcpPort(p uint16) table.PortSpec { return table.PortSpec{Port: p, Protocol: table.TCP} }
func udpPort(p uint16) table.PortSpec { return table.PortSpec{Port: p, Protocol: table.UDP} }
func icmpEcho() table.PortSpec        { return table.PortSpec{Protocol: table.ICMP} }

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

// runTests builds the agent into binDir (unless PODGATE_BIN names one),
// removes what killed runs of this package left, and runs the tests.
func runTests(m *testing.M) int {
	if os.Geteuid() != 0 || os.Getenv("PODGATE_BIN") != "" {
		return m.Run()
	}
	if rep, err := lab.Cleanup(labPrefix); err != nil {
		fmt.Fprintf(os.Stderr, "clean up old labs: %v (%+v)\n", err, rep)
	}
	dir := binDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "podgate"), "../../../cmd/podgate")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ./cmd/podgate: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// binDir is where TestMain builds the agent: per test process, so that
// packages tested at the same time do not share it.
func binDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("podgate-hostile-%d", os.Getpid()))
}

// agentBinary returns the podgate binary to run, skipping the test
// without root.
func agentBinary(tb testing.TB) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root (network namespaces, AF_PACKET, XDP)")
	}
	if b := os.Getenv("PODGATE_BIN"); b != "" {
		return b
	}
	b := filepath.Join(binDir(), "podgate")
	if _, err := os.Stat(b); err != nil {
		tb.Fatalf("agent binary: %v", err)
	}
	return b
}

// node is a lab built from nodeManifests with the agent running.
type node struct {
	t    *testing.T
	l    *lab.Lab
	bin  string
	args []string // extra agent arguments
	// The scenario's endpoints: a attacks, b is the victim, c is trusted
	// by b, d may not send, ext is outside.
	a, b, c, d, ext *lab.Endpoint
}

// probeTimeout bounds the node's probes: a denied probe takes this long, so
// it is short. It is as long as TCP's first SYN retransmission timeout, so
// an allowed TCP probe whose first SYN is lost fails; probes that may lose
// a packet to a flood use expectWithin.
const probeTimeout = time.Second

// newNode builds the lab and starts the agent with args (and its own state
// directory).
func newNode(t *testing.T, args ...string) *node {
	t.Helper()
	bin := agentBinary(t)
	l := lab.NewForTest(t, lab.Spec{
		Manifests:    []string{nodeManifests},
		Prefix:       labPrefix,
		ProbeTimeout: probeTimeout,
	})
	n := &node{t: t, l: l, bin: bin}
	n.args = append([]string{"--state-dir", filepath.Join(l.Dir(), "agent-state")}, args...)
	for name, ep := range map[string]**lab.Endpoint{"app/a": &n.a, "app/b": &n.b, "app/c": &n.c, "app/d": &n.d, "ext": &n.ext} {
		e, ok := l.Endpoint(name)
		if !ok {
			t.Fatalf("lab has no endpoint %s", name)
		}
		*ep = e
	}
	n.start()
	return n
}

// start starts the agent and fails the test if it does not get ready.
func (n *node) start() time.Duration {
	n.t.Helper()
	start := time.Now()
	if err := n.l.StartAgent(context.Background(), n.bin, n.args...); err != nil {
		n.t.Fatal(err)
	}
	return time.Since(start)
}

// metrics scrapes the agent's /metrics.
func (n *node) metrics() Metrics {
	n.t.Helper()
	m, err := n.scrape()
	if err != nil {
		n.t.Fatal(err)
	}
	return m
}

func (n *node) scrape() (Metrics, error) {
	url := n.l.AgentURL()
	if url == "" {
		return nil, lab.ErrNoAgent
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Scrape(ctx, n.l.HTTPClient(), url+"/metrics")
}

// checkHealthy fails the test unless the agent process runs and /healthz
// answers 200.
func (n *node) checkHealthy(when string) {
	n.t.Helper()
	if !n.l.AgentRunning() {
		n.t.Fatalf("%s: the agent is not running; log:\n%s", when, n.logTail())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.l.AgentURL()+"/healthz", nil)
	if err != nil {
		n.t.Fatal(err)
	}
	resp, err := n.l.HTTPClient().Do(req)
	if err != nil {
		n.t.Fatalf("%s: /healthz: %v", when, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		n.t.Fatalf("%s: /healthz: %s", when, resp.Status)
	}
}

// logTail returns the end of the agent's log.
func (n *node) logTail() string {
	data, err := os.ReadFile(n.l.AgentLog())
	if err != nil {
		return err.Error()
	}
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// logLines returns the lines of the agent's log that contain none of the
// given strings.
func (n *node) logLines(skip ...string) string {
	data, err := os.ReadFile(n.l.AgentLog())
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		keep := true
		for _, s := range skip {
			if strings.Contains(line, s) {
				keep = false
			}
		}
		if keep {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// expect probes from -> to on p and fails the test when the result is not
// what the lab's policy table expects; it returns the result.
func (n *node) expect(when, from, to string, p table.PortSpec) lab.Result {
	n.t.Helper()
	return n.expectWithin(when, from, to, p, probeTimeout)
}

// expectWithin is expect with its own probe timeout.
func (n *node) expectWithin(when, from, to string, p table.PortSpec, timeout time.Duration) lab.Result {
	n.t.Helper()
	r, err := n.l.ProbeResultWithin(context.Background(), from, to, p, timeout)
	if err != nil {
		n.t.Fatalf("%s: %v", when, err)
	}
	if !r.OK() {
		n.t.Errorf("%s: %s %s", when, r.Mark(), r.String())
	}
	return r
}

// checkPolicy probes a few allowed and denied pairs in both families.
func (n *node) checkPolicy(when string) {
	n.t.Helper()
	for _, c := range []struct {
		from, to string
		p        table.PortSpec
	}{
		{"app/a", "app/b", tcpPort(80)}, {"app/a", "app/b", udpPort(5353)}, {"app/c", "app/b", icmpEcho()},
		{"fd00:31::2", "fd00:31::3", tcpPort(80)}, {"app/b", "app/c", tcpPort(81)},
		{"app/a", "app/b", tcpPort(81)}, {"app/a", "app/c", tcpPort(80)}, {"ext", "app/b", tcpPort(80)},
		{"app/d", "ext", tcpPort(80)}, {"fd00:31::2", "fd00:31::4", tcpPort(80)},
	} {
		n.expect(when, c.from, c.to, c.p)
	}
}

// injector opens an injector on the endpoint's eth0, closed at cleanup.
func (n *node) injector(ep *lab.Endpoint) *Injector {
	n.t.Helper()
	in, err := NewInjector(ep.NS, "eth0")
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { in.Close() })
	return in
}

// sniffer starts a sniffer on the endpoint's eth0, closed at cleanup.
func (n *node) sniffer(ep *lab.Endpoint, filter func([]byte) bool) *Sniffer {
	n.t.Helper()
	s, err := NewSniffer(ep.NS, "eth0", 1000, filter)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { s.Close() })
	return s
}

// gatewayMAC returns the MAC of the host end of the endpoint's veth: the
// pod's gateway, whose frames the agent reads.
func (n *node) gatewayMAC(ep *lab.Endpoint) net.HardwareAddr {
	n.t.Helper()
	return n.linkMAC(n.l.Node().NS, ep.HostIf)
}

// podMAC returns the MAC of the endpoint's eth0.
func (n *node) podMAC(ep *lab.Endpoint) net.HardwareAddr {
	n.t.Helper()
	return n.linkMAC(ep.NS, "eth0")
}

func (n *node) linkMAC(ns *netns.Namespace, name string) net.HardwareAddr {
	n.t.Helper()
	h := netns.HandleForTest(n.t, ns)
	link, err := h.LinkByName(name)
	if err != nil {
		n.t.Fatalf("link %s in %s: %v", name, ns.Name(), err)
	}
	return link.Attrs().HardwareAddr
}

// nodeHandle returns a netlink handle in the node namespace.
func (n *node) nodeHandle() *netlink.Handle {
	n.t.Helper()
	return netns.HandleForTest(n.t, n.l.Node().NS)
}

// drops returns the drop counters by reason: the fastpath's, and the TC
// program's of pod veths as offload_REASON (VLAN-tagged frames never reach
// the fastpath).
func drops(m Metrics) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		for _, p := range []struct{ prefix, as string }{
			{`podgate_dropped_packets_total{reason="`, ""},
			{`podgate_offload_dropped_packets_total{reason="`, "offload_"},
		} {
			if strings.HasPrefix(k, p.prefix) {
				out[p.as+strings.TrimSuffix(strings.TrimPrefix(k, p.prefix), `"}`)] = v
			}
		}
	}
	return out
}

// dropDeltas returns, per reason, how many drops after has more than
// before (reasons that did not change are left out).
func dropDeltas(before, after Metrics) map[string]float64 {
	b, a := drops(before), drops(after)
	out := map[string]float64{}
	for r, v := range a {
		if d := v - b[r]; d != 0 {
			out[r] = d
		}
	}
	return out
}

// waitDrops scrapes until every reason in want has grown by at least its
// count since before, or timeout passes, and returns the last scrape.
func (n *node) waitDrops(before Metrics, want map[string]float64, timeout time.Duration) Metrics {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := n.metrics()
		d := dropDeltas(before, m)
		done := true
		for r, c := range want {
			if d[r] < c {
				done = false
			}
		}
		if done || time.Now().After(deadline) {
			return m
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// echo writes a short message on c and reads it back within d.
func echo(c net.Conn, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	msg := []byte("podgate hostile echo")
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: got %q", got)
	}
	return nil
}

// dial opens a connection with the lab (to an echo server), closed at
// cleanup.
func (n *node) dial(from, to string, p table.PortSpec) net.Conn {
	n.t.Helper()
	c, err := n.l.Dial(context.Background(), from, to, p)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { c.Close() })
	return c
}
