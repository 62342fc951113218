package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podgate/podgate/policy/table"
)

// childEnv selects what TestChildLab does when this test binary runs as a
// child of the cleanup tests.
const childEnv = "PODGATE_LAB_TEST_CHILD"

// TestChildLab is not a test of its own: the cleanup tests run it in a
// child process. It builds a lab of three nodes, starts the fake agent on
// each, probes once across nodes, and then fails ("fail") or waits to be
// killed ("hang").
func TestChildLab(t *testing.T) {
	mode := os.Getenv(childEnv)
	if mode == "" {
		t.Skip("run by the cleanup tests only")
	}
	prefix, _, _ := strings.Cut(mode, ":")
	mode = mode[len(prefix)+1:]
	l := NewForTest(t, Spec{Manifests: []string{articleThreeNodes}, Prefix: prefix})
	if err := l.StartAgent(context.Background(), os.Args[0]); err != nil {
		t.Fatal(err)
	}
	ok, err := l.Probe(context.Background(), "frontend/apipod", "backend/dbpod", table.PortSpec{Port: 80, Protocol: table.SCTP})
	if err != nil || !ok {
		t.Fatalf("probe: %v %v", ok, err)
	}
	var pids []string
	for _, n := range l.Nodes() {
		pids = append(pids, strconv.Itoa(n.AgentPID()))
	}
	fmt.Printf("READY %s %s\n", l.ID(), strings.Join(pids, ","))
	switch mode {
	case "fail":
		t.Fatal("deliberate failure midway")
	case "hang":
		time.Sleep(time.Minute)
	}
}

func runChild(t *testing.T, prefix, mode string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildLab$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+prefix+":"+mode)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, bufio.NewScanner(out)
}

// waitReady reads the child's output up to its READY line and returns the
// lab ID and the agents' PIDs.
func waitReady(t *testing.T, sc *bufio.Scanner, log *strings.Builder) (string, []int) {
	t.Helper()
	for sc.Scan() {
		line := sc.Text()
		log.WriteString(line + "\n")
		var id, list string
		if _, err := fmt.Sscanf(line, "READY %s %s", &id, &list); err == nil {
			var pids []int
			for _, f := range strings.Split(list, ",") {
				pid, err := strconv.Atoi(f)
				if err != nil || pid <= 0 {
					t.Fatalf("bad READY line %q", line)
				}
				pids = append(pids, pid)
			}
			return id, pids
		}
	}
	t.Fatalf("child never got ready:\n%s", log.String())
	return "", nil
}

func processGone(pid int) bool {
	err := syscall.Kill(pid, 0)
	return errors.Is(err, syscall.ESRCH) || zombie(pid)
}

// TestCleanupAfterFailedTest: a test that fails midway, with a lab and
// its agents running, leaves no namespace, directory or agent behind.
func TestCleanupAfterFailedTest(t *testing.T) {
	cmd, sc := runChild(t, "pgltc", "fail")
	var log strings.Builder
	id, agents := waitReady(t, sc, &log)
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
	}
	err := cmd.Wait()
	if err == nil || !strings.Contains(log.String(), "deliberate failure midway") {
		t.Fatalf("child: %v\n%s", err, log.String())
	}
	if left := Leftovers(id); len(left) > 0 {
		t.Errorf("failed test left %v", left)
	}
	for _, agent := range agents {
		if !processGone(agent) {
			t.Errorf("agent %d still runs", agent)
		}
	}
}

// TestCleanupAfterKill: a lab of three nodes whose process is killed
// leaves its namespaces, directory and agents; Cleanup removes them, and
// leaves a running lab alone.
func TestCleanupAfterKill(t *testing.T) {
	live := NewForTest(t, Spec{Manifests: []string{articleDir}, Prefix: "pgltk", Enforcer: EnforcerNone})
	cmd, sc := runChild(t, "pgltk", "hang")
	var log strings.Builder
	id, agents := waitReady(t, sc, &log)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	left := Leftovers(id)
	if len(left) != 9 { // underlay, 3 nodes, 3 pods, outside, directory
		t.Fatalf("killed lab left %v, want 8 namespaces and a directory", left)
	}
	for _, agent := range agents {
		if processGone(agent) {
			t.Fatalf("agent %d died with the lab; the test needs it alive", agent)
		}
	}

	rep, err := Cleanup("pgltk")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cleanup: %+v", rep)
	if len(rep.Namespaces) != 8 || len(rep.Dirs) != 1 {
		t.Errorf("cleanup report %+v: want 8 namespaces, 1 directory", rep)
	}
	for _, agent := range agents {
		if !slices.Contains(rep.Killed, agent) {
			t.Errorf("cleanup report %+v: agent %d not stopped", rep, agent)
		}
	}
	if !slices.Contains(rep.Alive, live.ID()) {
		t.Errorf("cleanup report %+v: want live lab %s left alone", rep, live.ID())
	}
	if left := Leftovers(id); len(left) > 0 {
		t.Errorf("after cleanup: %v", left)
	}
	for _, agent := range agents {
		if !processGone(agent) {
			t.Errorf("agent %d still runs", agent)
		}
	}
	if got := len(Leftovers(live.ID())); got != 6 {
		t.Errorf("live lab has %d namespaces and directories, want 6", got)
	}
	ok, err := live.Probe(context.Background(), "testvm", "frontend/apppod", table.PortSpec{Port: 80, Protocol: table.TCP})
	if err != nil || !ok {
		t.Errorf("live lab broken after cleanup: %v %v", ok, err)
	}
}
