package bench

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestToolsInPackageList checks that every program the harness runs is in
// the set-up's package list (hack/packages.txt, group test), under the
// package EnsureTools installs for it: make test installs them, so the
// bench tests never reach EnsureTools' apt-get.
func TestToolsInPackageList(t *testing.T) {
	out, err := exec.Command("bash", "../hack/deps.sh", "--list", "test").CombinedOutput()
	if err != nil {
		t.Fatalf("hack/deps.sh --list test: %v\n%s", err, out)
	}
	cmds := map[string][]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			t.Fatalf("hack/deps.sh --list test: want a package and its commands, got %q", line)
		}
		cmds[f[0]] = f[1:]
	}
	for _, tl := range tools() {
		if !slices.Contains(cmds[tl.pkg], tl.bin) {
			t.Errorf("hack/packages.txt: package %s of group test does not list %s, which the bench runs (have %v)", tl.pkg, tl.bin, cmds[tl.pkg])
		}
	}
}
