package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podgate/podgate/internal/lab"
)

func TestLabFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lab"}, `"filename" not set`},
		{[]string{"lab", "-f", article, "-o", "yaml"}, "--output"},
		{[]string{"lab", "-f", article, "--ports", "80/XTP"}, "--ports"},
		{[]string{"lab", "-f", article, "--enforcer", "cilium"}, "--enforcer"},
		{[]string{"lab", "-f", article, "--node-ip", "10.0.1"}, "--node-ip"},
		{[]string{"lab", "-f", article, "--node-subnet", "10.0.2.0"}, "--node-subnet"},
		{[]string{"lab", "-f", article, "--nodes", "-1"}, "--nodes -1"},
		{[]string{"lab", "-f", article, "--nodes", "2", "--node-name", "n"}, "--node-name n builds that node alone"},
	} {
		_, _, err := podgate(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("podgate %s: err = %v, want it to mention %s", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

type labEntry struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Expected string `json:"expected"`
	Observed string `json:"observed"`
	FromNode string `json:"fromNode"`
	ToNode   string `json:"toNode"`
	DeniedBy *struct {
		Node      string   `json:"node"`
		Direction string   `json:"direction"`
		Reason    string   `json:"reason"`
		Policies  []string `json:"policies"`
	} `json:"deniedBy"`
}

// TestLabKernelOnlyJSON runs the article's lab without an agent: every
// probe works, as expected, and -o json prints one entry per probe.
func TestLabKernelOnlyJSON(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	out, stderr, err := podgate(t, "lab", "-f", article, "--enforcer", "none", "-o", "json", "--prefix", "pgltcmd")
	if err != nil {
		t.Fatalf("lab: %v\n%s", err, stderr)
	}
	var got []labEntry
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not one JSON array: %v\n%s", err, out)
	}
	if len(got) != 60 { // (4 endpoints squared - testvm to itself) x 4 ports
		t.Errorf("%d entries, want 60", len(got))
	}
	for _, e := range got {
		if e.Expected != "allow" || e.Observed != "allow" {
			t.Errorf("%+v", e)
		}
	}
	if !strings.Contains(stderr, "lab pgltcmd-") || !strings.Contains(stderr, "3 pods, 1 outside host") {
		t.Errorf("stderr: %s", stderr)
	}
	if left := lab.Leftovers("pgltcmd"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestLabArticle runs `podgate lab` on the article with a freshly built
// podgate as the agent: all four criteria hold on the wire, the exit
// status is 0. Then the same on three nodes (`make demo`), -o json: every
// denial comes from the agent of the right node. Skipped while podgate
// has no agent command.
func TestLabArticle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bin := filepath.Join(t.TempDir(), "podgate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "agent", "--help").CombinedOutput(); err != nil {
		t.Skipf("no agent command yet: %v\n%s", err, out)
	}
	out, stderr, err := podgate(t, "lab", "-f", article, "--agent-binary", bin, "--prefix", "pgltcmd")
	t.Logf("stdout:\n%s\nstderr:\n%s", out, stderr)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	if !strings.Contains(out, "60 probes: 60 as expected") {
		t.Error("not every observation matched")
	}
	// The article's criteria in the 80/TCP table: rows are sources in the
	// order dbpod, apipod, apppod, testvm; so are the columns.
	tcp := out[:strings.Index(out, "80/UDP")]
	for _, row := range []string{
		"backend/dbpod    .              X                X                X",
		"frontend/apipod  .              .                X                X",
		"frontend/apppod  X              .                .                X",
		"testvm           X              .                .                -",
	} {
		if !strings.Contains(tcp, row) {
			t.Errorf("80/TCP table lacks row %q", row)
		}
	}
	if left := lab.Leftovers("pgltcmd"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}

	out, stderr, err = podgate(t, "lab", "-f", filepath.Join(article, "three-nodes"), "--agent-binary", bin, "--prefix", "pgltcmd", "--timeout", "1s", "-o", "json")
	if err != nil {
		t.Fatalf("lab on three nodes: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "3 nodes on 172.18.0.0/24") || !strings.Contains(stderr, "node aks-nodepool1-1 (172.18.0.2): frontend/apipod") {
		t.Errorf("stderr: %s", stderr)
	}
	var got []labEntry
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not one JSON array: %v\n%s", err, out)
	}
	if len(got) != 60 {
		t.Errorf("%d entries, want 60", len(got))
	}
	denied := 0
	for _, e := range got {
		if e.Expected != e.Observed {
			t.Errorf("%+v", e)
		}
		if e.Observed == "allow" {
			continue
		}
		denied++
		switch d := e.DeniedBy; {
		case d == nil:
			t.Errorf("no agent recorded the denial of %+v", e)
		case !(d.Direction == "egress" && d.Node == e.FromNode) && !(d.Direction == "ingress" && d.Node == e.ToNode):
			t.Errorf("denied at the wrong node: %+v, %+v", e, *d)
		}
		if e.From == "testvm" && e.To == "backend/dbpod" && e.Protocol == "TCP" &&
			(e.DeniedBy == nil || e.DeniedBy.Node != "aks-nodepool1-0" || e.DeniedBy.Direction != "ingress" || len(e.DeniedBy.Policies) != 1 || e.DeniedBy.Policies[0] != "backend/dbpod-policy") {
			t.Errorf("testvm -> dbpod TCP: %+v, want denied by dbpod's ingress at aks-nodepool1-0", e.DeniedBy)
		}
	}
	if denied != 44 {
		t.Errorf("%d denied, want 44", denied)
	}
	if left := lab.Leftovers("pgltcmd"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func TestLabCleanupCommand(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	out, _, err := podgate(t, "lab", "--cleanup", "--prefix", "pgltnone")
	if err != nil || !bytes.Contains([]byte(out), []byte("nothing to clean up")) {
		t.Errorf("cleanup: %v\n%s", err, out)
	}
}
