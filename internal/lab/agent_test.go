package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/policy/table"
)

// podgateBinary is cmd/podgate, built once for all the tests of a run
// (removed by TestMain).
var podgateBinary struct {
	once sync.Once
	dir  string
	path string
	help []byte
	err  error
}

// buildPodgate builds cmd/podgate (once per test run) and returns the
// binary and the extra agent arguments the lab should pass.
func buildPodgate(t *testing.T) (string, func(l *Lab) []string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	b := &podgateBinary
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "podgate-labtest-"); b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "podgate")
		if out, err := exec.Command("go", "build", "-o", b.path, "../../cmd/podgate").CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/podgate: %v\n%s", err, out)
			return
		}
		help, err := exec.Command(b.path, "agent", "--help").CombinedOutput()
		if err != nil || !bytes.Contains(help, []byte("--manifests")) {
			b.err = fmt.Errorf("podgate agent --help: %v\n%s", err, help)
		}
		b.help = help
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path, func(l *Lab) []string {
		// Each lab's agent keeps its state apart from other labs' (and
		// from a real agent's /run/podgate); in a lab of several nodes
		// the lab gives each node's agent its own.
		if len(l.Nodes()) == 1 && bytes.Contains(b.help, []byte("--state-dir")) {
			return []string{"--state-dir", filepath.Join(l.Dir(), "agent-state")}
		}
		return nil
	}
}

// removePodgate removes the binary buildPodgate built.
func removePodgate() {
	if podgateBinary.dir != "" {
		_ = os.RemoveAll(podgateBinary.dir)
	}
}

// TestArticleWithAgent is the article's scenario with podgate enforcing:
// every pair of pods and the test VM, on TCP, UDP and SCTP port 80 and
// ICMP, observes exactly what the policies decide. After a graceful stop
// the agent has given the node back: everything is reachable again.
func TestArticleWithAgent(t *testing.T) {
	bin, extra := buildPodgate(t)
	l := NewForTest(t, Spec{Manifests: []string{articleDir}, Prefix: testPrefix})
	ctx := context.Background()
	start := time.Now()
	if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	t.Logf("agent ready in %v", time.Since(start))
	start = time.Now()
	results, err := l.Matrix(ctx, allPorts)
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	if err := WriteTable(&table, results); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d probes in %v:\n%s", len(results), time.Since(start), table.String())
	for _, r := range Mismatches(results) {
		t.Errorf("%s %s", r.Mark(), r.String())
	}

	if err := l.StopAgent(syscall.SIGTERM); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	results, err = l.Matrix(ctx, allPorts)
	if err != nil {
		t.Fatal(err)
	}
	Judge(results, AllowAll)
	for _, r := range Mismatches(results) {
		t.Errorf("after the agent stopped: %s", r.String())
	}
}

// echo sends a short message on c and reads it back within d.
func echo(c net.Conn, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 4))
	return err
}

// TestAgentDualStack runs the agent on the dual-stack node and checks the
// lab's uses beyond the matrix: IPv6 probes, 100 MB over TCP through the
// gateway, a 4,000-byte UDP datagram at MTU 1500 (IPv4 and IPv6
// fragments), a deny policy applied while a connection is open (the
// agent cuts it), and an agent restart after SIGKILL.
func TestAgentDualStack(t *testing.T) {
	bin, extra := buildPodgate(t)
	l := NewForTest(t, Spec{Manifests: []string{"testdata/dualstack"}, NodeName: "node-1", Prefix: testPrefix, ProbeTimeout: 500 * time.Millisecond, ProbeFromNode: true})
	ctx := context.Background()
	if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	matrix := func(when string) {
		t.Helper()
		results, err := l.Matrix(ctx, allPorts)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range Mismatches(results) {
			t.Errorf("%s: %s %s", when, r.Mark(), r.String())
		}
	}
	matrix("start")

	t.Run("IPv6", func(t *testing.T) {
		for _, pair := range [][2]string{{"app/a", "fd00:10::3"}, {"fd00:10::3", "app/a"}, {"ext", "fd00:10::3"}, {"fd00:20::5", "app/a"}} {
			for _, p := range allPorts {
				r, err := l.ProbeResult(ctx, pair[0], pair[1], p)
				if err != nil {
					t.Fatal(err)
				}
				if !r.Dst.Is6() || !r.OK() {
					t.Errorf("%s %s", r.Mark(), r.String())
				}
			}
		}
	})
	t.Run("100MB", func(t *testing.T) {
		transfer(t, l, "app/a", "app/b", table.PortSpec{Port: 80, Protocol: table.TCP}, 100<<20)
	})
	t.Run("UDP4000", func(t *testing.T) {
		for _, dst := range []string{"10.10.0.2", "fd00:10::2"} {
			c, err := l.Dial(ctx, "ext", dst, table.PortSpec{Port: 5353, Protocol: table.UDP})
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
				t.Errorf("4000 bytes to %s: %d bytes back, %v", dst, n, err)
			}
			c.Close()
		}
	})
	t.Run("KillDuringConnection", func(t *testing.T) {
		// An allowed connection stalls while the agent is down (the
		// node fails closed: at once for every new flow, and once the
		// kernel's lease on the offloaded flows expires for flows it
		// forwards), denied traffic does not get through, and the
		// connection resumes after a restart (mid-stream pickup).
		tcp80 := table.PortSpec{Port: 80, Protocol: table.TCP}
		c, err := l.Dial(ctx, "app/a", "app/b", tcp80)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echo(c, 500*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if err := l.StopAgent(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		time.Sleep(fastpath.KernelLease + 250*time.Millisecond)
		if err := echo(c, 500*time.Millisecond); err == nil {
			t.Errorf("the connection worked %v after the agent died: the node must fail closed once the kernel's lease expired", fastpath.KernelLease)
		}
		for _, from := range []string{"ext", "app/b"} {
			r, err := l.ProbeResult(ctx, from, "app/b", tcp80)
			if err != nil {
				t.Fatal(err)
			}
			if from == "ext" && r.Observed {
				t.Errorf("denied traffic got through while the agent was down: %s", r.String())
			}
		}
		restart := time.Now()
		if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
			t.Fatal(err)
		}
		ready := time.Since(restart)
		for {
			if err := echo(c, 300*time.Millisecond); err == nil {
				break
			}
			if time.Since(restart) > 10*time.Second {
				t.Fatalf("the connection did not resume within 10s of the restart")
			}
		}
		t.Logf("agent ready %v after the restart; the open connection resumed after %v", ready.Round(time.Millisecond), time.Since(restart).Round(time.Millisecond))
	})
	t.Run("DenyWhileOpen", func(t *testing.T) {
		tcp80 := table.PortSpec{Port: 80, Protocol: table.TCP}
		c, err := l.Dial(ctx, "app/a", "app/b", tcp80)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A connection the new policy still allows (app/a's egress is
		// not isolated) must be left alone.
		keep, err := l.Dial(ctx, "app/a", "ext", tcp80)
		if err != nil {
			t.Fatal(err)
		}
		defer keep.Close()
		if err := echo(c, 500*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		// Replace b's allow rule by a deny-all for the namespace.
		names, err := l.ManifestNames()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if strings.HasSuffix(n, "-policy.yaml") {
				if err := l.RemoveManifest(n); err != nil {
					t.Fatal(err)
				}
			}
		}
		deny := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: app}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n"
		if err := l.WriteManifest("deny.yaml", []byte(deny)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			r, err := l.ProbeResult(ctx, "app/a", "app/b", tcp80)
			if err != nil {
				t.Fatal(err)
			}
			if r.Expected {
				t.Fatalf("deny-all still expected to allow: %s", r.String())
			}
			if !r.Observed {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("agent did not apply the deny within 10s: %s", r.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := echo(c, 500*time.Millisecond); err == nil {
			t.Error("the open connection still works after a policy denied it")
		}
		if err := echo(keep, time.Second); err != nil {
			t.Errorf("a connection the new policy allows was cut: %v", err)
		}
		matrix("after deny-all")
	})
	t.Run("Restart", func(t *testing.T) {
		if err := l.StopAgent(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
			t.Fatal(err)
		}
		matrix("after restart")
	})
}

// TestAgentOffload: with the default --offload=tc, an allowed TCP
// connection goes to the kernel once established, and its 100 MB are
// forwarded there (the kernel's counters carry them, the fastpath sees a
// handful of packets, the kernel's table holds the flow while it is open);
// with --offload=none every packet goes through the fastpath and the
// kernel forwards none.
func TestAgentOffload(t *testing.T) {
	bin, extra := buildPodgate(t)
	for _, tc := range []struct {
		mode    string
		offload bool
	}{{"tc", true}, {"none", false}} {
		t.Run(tc.mode, func(t *testing.T) {
			l := NewForTest(t, Spec{Manifests: []string{"testdata/dualstack"}, Prefix: testPrefix})
			ctx := context.Background()
			if err := l.StartAgent(ctx, bin, append(extra(l), "--offload="+tc.mode)...); err != nil {
				t.Fatal(err)
			}
			before, err := l.Nodes()[0].Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			transfer(t, l, "app/a", "app/b", table.PortSpec{Port: 80, Protocol: table.TCP}, 100<<20)
			after, err := l.Nodes()[0].Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			delta := func(name string, labels ...string) float64 {
				return after.Get(name, labels...) - before.Get(name, labels...)
			}
			kernel := delta("podgate_offload_forwarded_packets_total", "action", "peer")
			engine := delta("podgate_forwarded_packets_total", "path", "pod_to_pod")
			t.Logf("offload=%s: the kernel forwarded %.0f packets, the fastpath %.0f; installs %.0f, removes %.0f",
				tc.mode, kernel, engine, delta("podgate_offload_installs_total"), delta("podgate_offload_removes_total"))
			if !tc.offload {
				if kernel != 0 || delta("podgate_offload_installs_total") != 0 {
					t.Errorf("--offload=none: the kernel forwarded %.0f packets, %.0f flows installed", kernel, delta("podgate_offload_installs_total"))
				}
				if engine < 1000 {
					t.Errorf("--offload=none: the fastpath forwarded only %.0f packets of 100 MB", engine)
				}
				return
			}
			if delta("podgate_offload_installs_total") < 1 {
				t.Error("no flow was offloaded")
			}
			// 100 MB are at least 1,600 GSO super-frames of 64 KiB; the
			// handshake, the FINs and a few segments before the install
			// go through the fastpath.
			if kernel < 1600 || engine > kernel/10 {
				t.Errorf("the kernel forwarded %.0f packets and the fastpath %.0f: the transfer was not offloaded", kernel, engine)
			}
			// The connection ended with FINs through the fastpath: out of
			// the kernel's table.
			if after.Get("podgate_offloaded_flows") != 0 {
				t.Errorf("%v flows still offloaded after the connection closed", after.Get("podgate_offloaded_flows"))
			}
		})
	}
}
