package hostile

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/internal/lab"
)

// nodeView is what a second agent must not touch: the state file, the XDP
// programs of the kernel leg and of the pods' veths, and the devices of the
// routes to the pods.
type nodeView struct {
	State  string
	XDP    map[string]string // the programs attached, or why the link could not be read
	Routes map[netip.Addr][]string
}

func (n *node) view() nodeView {
	n.t.Helper()
	v := nodeView{XDP: map[string]string{}, Routes: map[netip.Addr][]string{}}
	b, err := os.ReadFile(filepath.Join(n.l.Dir(), "agent-state", "ports.json"))
	if err != nil {
		v.State = err.Error()
	} else {
		v.State = string(b)
	}
	h := n.nodeHandle()
	links := []string{"pgw0"}
	for _, ep := range n.l.Endpoints() {
		if ep.Kind == lab.KindPod {
			links = append(links, ep.HostIf)
			for _, a := range ep.IPs {
				v.Routes[a] = n.routeDevs(h, a)
			}
		}
	}
	for _, name := range links {
		l, err := h.LinkByName(name)
		if err != nil {
			v.XDP[name] = err.Error()
			continue
		}
		var st xsk.XDPState
		err = n.l.Node().NS.Do(func() error {
			var err error
			st, err = xsk.QueryXDP(l.Attrs().Index)
			return err
		})
		if err != nil {
			n.t.Fatal(err)
		}
		v.XDP[name] = fmt.Sprintf("%+v", st)
	}
	return v
}

// TestSecondAgent is the sequence of issue 11 (F1): a second agent with the
// same state directory on a running node (a DaemonSet rolling update with
// maxSurge, or an operator running a copy by hand) gets SIGTERM; then the
// first one is killed and a third one starts. The second must exit at once,
// naming the lock and the first agent's PID, and touch nothing; the third
// must take every pod over, with no pod's route deleted.
//
// Before the fix the second agent replaced pgw0's program, stayed up
// retrying "bind: device or resource busy", and on SIGTERM deleted the
// first one's state file; the third then deleted the route of every pod.
func TestSecondAgent(t *testing.T) {
	n := newNode(t)
	n.checkPolicy("with the first agent")
	before := n.view()
	if !strings.Contains(before.State, `"ports"`) {
		t.Fatalf("no state file with the first agent: %s", before.State)
	}
	firstPID := n.l.AgentPID()

	// The second agent: same manifests, node and state directory, its own
	// metrics address.
	port := func() int {
		var p int
		if err := n.l.Node().NS.Do(func() error {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			p = ln.Addr().(*net.TCPAddr).Port
			return ln.Close()
		}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := append([]string{"agent", "--manifests", n.l.ManifestDir(), "--node-name", n.l.NodeName(),
		"--metrics-addr", "127.0.0.1:" + strconv.Itoa(port())}, n.args...)
	cmd := exec.Command(n.bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := n.l.Node().NS.Start(cmd); err != nil {
		t.Fatal(err)
	}
	var werr error
	done := make(chan struct{})
	go func() { werr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	start := time.Now()
	select {
	case <-done:
		t.Logf("the second agent exited after %v: %v\n%s", time.Since(start).Round(time.Millisecond), werr, out.String())
		if werr == nil {
			t.Errorf("the second agent exited with status 0")
		}
		lock := filepath.Join(n.l.Dir(), "agent-state", "agent.lock")
		for _, want := range []string{lock, fmt.Sprintf("pid %d", firstPID)} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("the second agent's error does not name %q:\n%s", want, out.String())
			}
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the second agent still runs after 5s; sending it SIGTERM")
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("the second agent did not stop within 30s of SIGTERM")
		}
		t.Logf("the second agent stopped: %v\n%s", werr, out.String())
	}
	if diff := cmp.Diff(before, n.view()); diff != "" {
		t.Errorf("the second agent changed the node (-before +after):\n%s", diff)
	}
	n.checkPolicy("after the second agent")

	// Crash the first agent, start a third.
	if err := n.l.StopAgent(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	n.start()
	n.checkPolicy("with the third agent")
	after := n.view()
	for a, devs := range after.Routes {
		if len(devs) != 1 || devs[0] != "pgk0" {
			t.Errorf("with the third agent, the route to %v is via %v, want pgk0", a, devs)
		}
	}
	if log := n.logLines(); strings.Contains(log, "deleting route of a gone pod") {
		t.Errorf("an agent deleted pod routes:\n%s", grepLines(log, "deleting route"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
