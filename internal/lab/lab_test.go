package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/policy/table"
)

// The test binary doubles as a fake agent: run as `lab.test agent ARGS`,
// it serves /readyz and /metrics on --metrics-addr, prints its arguments
// and network namespace, and exits 0 on SIGTERM.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(fakeAgent(os.Args[2:]))
	}
	code := m.Run()
	removePodgate()
	os.Exit(code)
}

func fakeAgent(args []string) int {
	addr := ""
	for i, a := range args {
		if a == "--metrics-addr" && i+1 < len(args) {
			addr = args[i+1]
		}
	}
	ns, _ := os.Readlink("/proc/self/ns/net")
	fmt.Printf("fake agent: args %q netns %s\n", args, ns)
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "fake_agent_up 1") })
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: time.Second}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Println("fake agent: SIGTERM, stopping")
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Println("fake agent:", err)
		return 1
	}
	return 0
}

// testPrefix starts the names of the labs these tests build, so that a
// check for leftovers never sees another program's namespaces.
const testPrefix = "pglt"

func newArticleLab(t *testing.T, e Enforcer) *Lab {
	t.Helper()
	return NewForTest(t, Spec{Manifests: []string{articleDir}, Enforcer: e, Prefix: testPrefix})
}

var allPorts = []table.PortSpec{
	{Port: 80, Protocol: table.TCP},
	{Port: 80, Protocol: table.UDP},
	{Port: 80, Protocol: table.SCTP},
	{Protocol: table.ICMP},
}

// TestArticleKernelOnly runs the article's matrix with the kernel alone:
// every connection works, as expected with EnforcerNone. Judged against
// the policy table instead, the disagreements are exactly the connections
// the policies deny, all of them "!" (allowed but expected denied): the
// probes observe both outcomes and the comparison reports precisely the
// differences.
func TestArticleKernelOnly(t *testing.T) {
	l := newArticleLab(t, EnforcerNone)
	start := time.Now()
	results, err := l.Matrix(context.Background(), allPorts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d probes in %v", len(results), time.Since(start))
	// 3 pods and 1 outside host: 16 pairs minus outside to outside.
	if got, want := len(results), 15*len(allPorts); got != want {
		t.Fatalf("%d results, want %d", got, want)
	}
	for _, r := range results {
		if !r.Observed || !r.Expected {
			t.Errorf("%s", r.String())
		}
	}
	if s := Summarize(results); !s.OK() {
		t.Errorf("summary: %s", s)
	}

	tab := l.Table()
	Judge(results, PolicyExpectation(tab))
	denied := 0
	for _, r := range results {
		wantDenied := !tab.Lookup(r.Src, r.Dst, r.Port.Protocol, r.Port.Port).Allowed()
		if wantDenied {
			denied++
		}
		if r.OK() == wantDenied {
			t.Errorf("%s: OK() = %v, policy denies: %v", r.String(), r.OK(), wantDenied)
		}
		if wantDenied && r.Mark() != "!" {
			t.Errorf("%s: mark %q, want !", r.String(), r.Mark())
		}
	}
	s := Summarize(results)
	if s.UnexpectedAllow != denied || s.UnexpectedDeny != 0 || len(Mismatches(results)) != denied {
		t.Errorf("summary %s, want %d allowed but expected denied", s, denied)
	}
	// The article's criteria, in the expectations: DB pod accepts only the
	// API pod (on TCP 80); DB pod sends nothing; App and API pods accept
	// the VNET (the test VM) on TCP 80; App pod may only reach API pod.
	exp := map[string]bool{}
	for _, r := range results {
		exp[r.From+" "+r.To+" "+r.Port.String()] = r.Expected
	}
	for key, want := range map[string]bool{
		"frontend/apipod backend/dbpod 80/TCP":   true,
		"frontend/apppod backend/dbpod 80/TCP":   false,
		"testvm backend/dbpod 80/TCP":            false,
		"frontend/apipod backend/dbpod 80/UDP":   false,
		"backend/dbpod frontend/apipod 80/TCP":   false,
		"backend/dbpod testvm ICMP":              false,
		"testvm frontend/apppod 80/TCP":          true,
		"testvm frontend/apipod 80/TCP":          true,
		"testvm frontend/apipod 80/SCTP":         false,
		"frontend/apppod frontend/apipod 80/TCP": true,
		"frontend/apipod frontend/apppod 80/TCP": false,
		"backend/dbpod backend/dbpod 80/UDP":     true, // loopback
	} {
		if exp[key] != want {
			t.Errorf("expected %s = %v, want %v", key, exp[key], want)
		}
	}
	if denied == 0 || denied == len(results) {
		t.Errorf("%d of %d denied: the scenario should have both", denied, len(results))
	}

	var table, js bytes.Buffer
	if err := WriteTable(&table, results); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(&js, results); err != nil {
		t.Fatal(err)
	}
	t.Logf("judged against the policies:\n%s", table.String())
	var decoded []map[string]any
	if err := json.Unmarshal(js.Bytes(), &decoded); err != nil {
		t.Fatal(err)
	}
	if len(decoded) != len(results) {
		t.Fatalf("%d JSON entries", len(decoded))
	}
	for _, k := range []string{"from", "to", "port", "protocol", "expected", "observed"} {
		if _, ok := decoded[0][k]; !ok {
			t.Errorf("JSON entry lacks %q: %v", k, decoded[0])
		}
	}
}

// TestProbesFail blackholes the node's route to a pod, as a dropping
// enforcer would: every protocol's probe to it then fails (and says why),
// Matrix retries exactly those probes, and they work again once the route
// is back.
func TestProbesFail(t *testing.T) {
	l := newArticleLab(t, EnforcerNone)
	l.spec.ProbeTimeout = 500 * time.Millisecond
	db, _ := l.Endpoint("backend/dbpod")
	h, err := l.Node().NS.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(db.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	dst := &net.IPNet{IP: db.IPs[0].AsSlice(), Mask: net.CIDRMask(32, 32)}
	ctx := context.Background()
	check := func(want bool) {
		t.Helper()
		for _, p := range allPorts {
			r, err := l.ProbeResult(ctx, "frontend/apipod", "backend/dbpod", p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Observed != want {
				t.Errorf("%s: observed %v, want %v", r.String(), r.Observed, want)
			}
			if !r.Observed && r.Detail == "" {
				t.Errorf("%s: no detail", r.String())
			}
			t.Logf("%s in %v", r.String(), r.Elapsed.Round(time.Millisecond))
		}
	}
	check(true)
	if err := h.RouteReplace(&netlink.Route{Dst: dst, Type: unix.RTN_BLACKHOLE}); err != nil {
		t.Fatal(err)
	}
	check(false)
	// Matrix probes a connection that should work and timed out again
	// (MatrixRetries times), and nothing else.
	results, err := l.Matrix(ctx, allPorts)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		// Replies to dbpod take the blackholed route too.
		blackholed := (r.To == "backend/dbpod") != (r.From == "backend/dbpod")
		switch {
		case blackholed && (r.Observed || r.Retries != MatrixRetries):
			t.Errorf("%s: %d retries, want %d", r.String(), r.Retries, MatrixRetries)
		case !blackholed && (!r.Observed || r.Retries != 0):
			t.Errorf("%s: %d retries, want 0", r.String(), r.Retries)
		}
	}
	if err := h.RouteReplace(&netlink.Route{Dst: dst, LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	check(true)
}

// TestDualStack probes over IPv4 and IPv6 (chosen by address), from pods,
// the outside host and the node, and moves bigger payloads with Dial: a
// 4,000-byte UDP datagram at MTU 1500 (fragmented) and 8 MB over TCP and
// 1 MB over SCTP, each echoed intact.
func TestDualStack(t *testing.T) {
	l := NewForTest(t, Spec{Manifests: []string{"testdata/dualstack"}, NodeName: "node-1", Enforcer: EnforcerNone, Prefix: testPrefix, ProbeFromNode: true})
	if got := len(l.Endpoints()); got != 3 {
		t.Fatalf("%d endpoints, want a, b and ext", got)
	}
	ctx := context.Background()
	for _, pair := range [][2]string{
		{"app/a", "fd00:10::3"},
		{"fd00:10::3", "app/a"},
		{"ext", "fd00:10::2"},
		{"app/b", "fd00:20::5"},
		{"node", "fd00:10::3"},
		{"app/a", "app/b"}, // a's primary family (IPv4)
		{"app/b", "app/a"}, // b's primary family (IPv6)
	} {
		for _, p := range allPorts {
			r, err := l.ProbeResult(ctx, pair[0], pair[1], p)
			if err != nil {
				t.Fatal(err)
			}
			if !r.Observed {
				t.Errorf("%s", r.String())
			}
		}
	}
	r, err := l.ProbeResult(ctx, "app/b", "app/a", allPorts[0])
	if err != nil || !r.Src.Is6() || r.Dst != addrs("fd00:10::2")[0] {
		t.Errorf("b -> a picked %v -> %v (%v), want b's primary family IPv6", r.Src, r.Dst, err)
	}

	results, err := l.Matrix(ctx, allPorts)
	if err != nil {
		t.Fatal(err)
	}
	// a, b, ext, node as sources; a, b, ext as destinations; ext to ext left out.
	if got, want := len(results), (4*3-1)*len(allPorts); got != want {
		t.Errorf("%d results, want %d", got, want)
	}
	if s := Summarize(results); !s.OK() {
		t.Errorf("%s", s)
	}

	for _, dst := range []string{"10.10.0.3", "fd00:10::3"} {
		c, err := l.Dial(ctx, "app/a", dst, table.PortSpec{Port: 5353, Protocol: table.UDP})
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 4000)
		_, _ = rand.Read(msg)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 8000)
		n, err := c.Read(got)
		if err != nil || !bytes.Equal(got[:n], msg) {
			t.Errorf("UDP 4000 bytes to %s: %d bytes back, %v", dst, n, err)
		}
		c.Close()
	}
	transfer(t, l, "ext", "app/b", table.PortSpec{Port: 8080, Protocol: table.TCP}, 8<<20)
	transfer(t, l, "app/a", "fd00:10::3", table.PortSpec{Port: 8080, Protocol: table.SCTP}, 1<<20)
}

// transfer sends n random bytes through an echo connection and checks that
// the same bytes come back.
func transfer(t *testing.T, l *Lab, from, to string, p table.PortSpec, n int) {
	t.Helper()
	c, err := l.Dial(context.Background(), from, to, p)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	start := time.Now()
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.MultiWriter(c, sent), rand.Reader, int64(n))
		errc <- err
	}()
	recv := sha256.New()
	if _, err := io.CopyN(recv, c, int64(n)); err != nil {
		t.Fatalf("%s -> %s %s: receive: %v", from, to, p, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("%s -> %s %s: send: %v", from, to, p, err)
	}
	if !bytes.Equal(sent.Sum(nil), recv.Sum(nil)) {
		t.Fatalf("%s -> %s %s: echo differs", from, to, p)
	}
	t.Logf("%s -> %s %s: %d bytes echoed intact in %v", from, to, p, n, time.Since(start).Round(time.Millisecond))
}

// TestApply rewrites the manifest directory: the expectations follow, an
// invalid manifest is refused by Apply and reported by WriteManifest, and
// the directory holds exactly the applied files.
func TestApply(t *testing.T) {
	l := newArticleLab(t, EnforcerPodgate)
	tcp80 := table.PortSpec{Port: 80, Protocol: table.TCP}
	expect := func(from, to string) bool {
		t.Helper()
		src, dst, sip, dip, err := l.pair(from, to)
		if err != nil {
			t.Fatal(err)
		}
		r := Result{From: src.Name, To: dst.Name, Src: sip, Dst: dip, Port: tcp80}
		return l.Expectation()(&r)
	}
	if !expect("frontend/apipod", "backend/dbpod") || expect("frontend/apppod", "backend/dbpod") {
		t.Fatal("article expectations wrong")
	}

	// Without the policies (namespaces, pods and the VM only), everything
	// is allowed.
	dir := t.TempDir()
	for _, f := range []string{"namespaces.yaml", "pods.yaml", "testvm.yaml"} {
		data, err := os.ReadFile(filepath.Join(articleDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Apply(dir); err != nil {
		t.Fatal(err)
	}
	if !expect("frontend/apppod", "backend/dbpod") {
		t.Error("after removing the policies apppod -> dbpod is still expected denied")
	}
	names, err := l.ManifestNames()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 3 {
		t.Errorf("manifest dir holds %q, want the 3 applied files", names)
	}

	// A deny-all policy, added as one file.
	denyAll := []byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: backend}\nspec: {podSelector: {}}\n")
	if err := l.WriteManifest("deny.yaml", denyAll); err != nil {
		t.Fatal(err)
	}
	if expect("frontend/apipod", "backend/dbpod") {
		t.Error("deny-all in backend: apipod -> dbpod still expected allowed")
	}
	if err := l.WriteManifest("broken.yaml", []byte("kind: NetworkPolicy\n")); err == nil {
		t.Error("WriteManifest of a broken manifest: no error")
	}
	if expect("frontend/apipod", "backend/dbpod") {
		t.Error("a broken manifest changed the expectations")
	}
	if err := l.RemoveManifest("broken.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveManifest("deny.yaml"); err != nil {
		t.Fatal(err)
	}
	if !expect("frontend/apipod", "backend/dbpod") {
		t.Error("after removing deny.yaml apipod -> dbpod still expected denied")
	}
	broken := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(broken, []byte("kind: NetworkPolicy\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := l.ManifestNames()
	if err := l.Apply(dir, broken); err == nil {
		t.Error("Apply of a broken manifest: no error")
	}
	if after, _ := l.ManifestNames(); strings.Join(before, " ") != strings.Join(after, " ") {
		t.Errorf("a refused Apply changed the directory: %q -> %q", before, after)
	}
	if err := l.WriteManifest("../escape.yaml", denyAll); err == nil {
		t.Error("WriteManifest outside the directory: no error")
	}
}

// TestAgentProcess runs the test binary as a fake agent: it is started in
// the node namespace with the documented arguments, answers through
// HTTPClient, stops gracefully on SIGTERM, can be restarted and killed.
func TestAgentProcess(t *testing.T) {
	l := newArticleLab(t, EnforcerPodgate)
	ctx := context.Background()
	if err := l.StopAgent(syscall.SIGTERM); !errors.Is(err, ErrNoAgent) {
		t.Errorf("StopAgent without agent: %v", err)
	}
	if err := l.StartAgent(ctx, os.Args[0], "--extra"); err != nil {
		t.Fatal(err)
	}
	if !l.AgentRunning() {
		t.Error("agent not running")
	}
	if err := l.StartAgent(ctx, os.Args[0]); !errors.Is(err, ErrAgentRunning) {
		t.Errorf("second StartAgent: %v", err)
	}
	resp, err := l.HTTPClient().Get(l.AgentURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "fake_agent_up 1") {
		t.Errorf("/metrics: %q", body)
	}
	if err := l.StopAgent(syscall.SIGTERM); err != nil {
		t.Errorf("graceful stop: %v", err)
	}
	if l.AgentRunning() || l.AgentURL() != "" {
		t.Error("agent still running after StopAgent")
	}
	if err := l.StartAgent(ctx, os.Args[0]); err != nil {
		t.Fatal(err)
	}
	if err := l.StopAgent(syscall.SIGKILL); err != nil {
		t.Errorf("kill: %v", err)
	}

	log, err := os.ReadFile(l.AgentLog())
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(l.Node().NS.FD(), &st); err != nil {
		t.Fatal(err)
	}
	nodeNS := fmt.Sprintf("net:[%d]", st.Ino)
	for _, want := range []string{
		fmt.Sprintf("%q", "--manifests"), fmt.Sprintf("%q", l.ManifestDir()),
		fmt.Sprintf("%q %q", "--node-name", "aks-nodepool1-0"),
		fmt.Sprintf("%q", "--metrics-addr"), fmt.Sprintf("%q]", "--extra"),
		"netns " + nodeNS,
		"fake agent: SIGTERM, stopping",
	} {
		if !strings.Contains(string(log), want) {
			t.Errorf("agent log lacks %s:\n%s", want, log)
		}
	}

	// An agent that exits at once fails StartAgent with its log.
	if err := l.StartAgent(ctx, "/bin/false"); err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Errorf("StartAgent(/bin/false): %v", err)
	}
}

// TestBuildFailureLeavesNothing makes Build fail after it created the node
// namespace (an MTU veth refuses): nothing is left.
func TestBuildFailureLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	prefix := "pgltf"
	_, err := Build(context.Background(), Spec{Manifests: []string{articleDir}, Prefix: prefix, MTU: 70000})
	if err == nil {
		t.Fatal("Build with MTU 70000 succeeded")
	}
	t.Logf("Build failed as intended: %v", err)
	if left := Leftovers(fmt.Sprintf("%s-%d", prefix, os.Getpid())); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
