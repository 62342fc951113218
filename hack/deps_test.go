package hack

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// listed is one line of `deps.sh --list`: a package and its commands.
type listed struct {
	pkg  string
	cmds []string
}

// list runs `deps.sh --list groups...` with the test's own environment.
func list(t *testing.T, groups ...string) []listed {
	t.Helper()
	out, err := exec.Command("bash", append([]string{"deps.sh", "--list"}, groups...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("deps.sh --list %s: %v\n%s", strings.Join(groups, " "), err, ee.Stderr)
		}
		t.Fatalf("deps.sh --list %s: %v", strings.Join(groups, " "), err)
	}
	var l []listed
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			t.Fatalf("deps.sh --list: want a package and its commands, got %q", line)
		}
		l = append(l, listed{f[0], f[1:]})
	}
	return l
}

// TestPackageList checks that every group has packages and that the demo
// group has what the lab runs for the manifests' Services.
func TestPackageList(t *testing.T) {
	for _, g := range []string{"demo", "test", "image"} {
		if len(list(t, g)) == 0 {
			t.Errorf("group %s has no packages", g)
		}
	}
	var demo []string
	for _, l := range list(t, "demo") {
		demo = append(demo, l.cmds...)
	}
	// internal/lab (programServices) runs these two.
	for _, c := range []string{"iptables-restore", "ip6tables-restore"} {
		if !slices.Contains(demo, c) {
			t.Errorf("group demo does not provide %s, which the lab runs", c)
		}
	}
}

// sandbox is a PATH of stand-ins for deps.sh: every command of the list
// that the case has, an id that prints uid, and an apt-get that logs its
// calls and, on install, creates the commands of the packages it is asked
// for.
type sandbox struct {
	t      *testing.T
	bin    string
	aptLog string
	env    []string
}

func newSandbox(t *testing.T, uid int, have func(cmd string) bool) *sandbox {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skipf("bash: %v", err)
	}
	chmod, err := exec.LookPath("chmod")
	if err != nil {
		t.Skipf("chmod: %v", err)
	}
	dir := t.TempDir()
	s := &sandbox{t: t, bin: filepath.Join(dir, "bin"), aptLog: filepath.Join(dir, "apt.log")}
	provides := filepath.Join(dir, "provides")
	var p strings.Builder
	for _, l := range list(t, "demo", "test", "image") {
		fmt.Fprintf(&p, "%s %s\n", l.pkg, strings.Join(l.cmds, " "))
	}
	if err := os.Mkdir(s.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	s.write("id", fmt.Sprintf("#!%s\necho %d\n", bash, uid))
	s.write("apt-get", fmt.Sprintf(`#!%s
printf 'DEBIAN_FRONTEND=%%s %%s\n' "${DEBIAN_FRONTEND:-}" "$*" >>%q
if [[ $1 == install && -n "${APT_FAIL:-}" ]]; then
	echo "E: ${APT_FAIL}" >&2
	exit 100
fi
[[ $1 == install && -z "${APT_INSTALLS_NOTHING:-}" ]] || exit 0
for arg in "$@"; do
	while read -r pkg cmds; do
		[[ ${pkg} == "${arg}" ]] || continue
		for c in ${cmds}; do
			printf '#!/bin/sh\n' >%q/"${c}" && %s +x %q/"${c}"
		done
	done <%q
done
`, bash, s.aptLog, s.bin, chmod, s.bin, provides))
	if err := os.WriteFile(provides, []byte(p.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range list(t, "demo", "test", "image") {
		for _, c := range l.cmds {
			if have(c) {
				s.write(c, "#!/bin/sh\n")
			}
		}
	}
	s.env = []string{"PATH=" + s.bin, "HOME=" + dir}
	return s
}

func (s *sandbox) write(name, content string) {
	s.t.Helper()
	if err := os.WriteFile(filepath.Join(s.bin, name), []byte(content), 0o755); err != nil {
		s.t.Fatal(err)
	}
}

// run runs deps.sh with args in the sandbox, extra environment added, and
// returns its exit code and standard error (it must print nothing on
// standard output).
func (s *sandbox) run(extra []string, args ...string) (int, string) {
	s.t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		s.t.Fatal(err)
	}
	script, err := filepath.Abs("deps.sh")
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(bash, append([]string{script}, args...)...)
	cmd.Env = append(slices.Clone(s.env), extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		s.t.Fatalf("deps.sh: %v", err)
	}
	if stdout.Len() > 0 {
		s.t.Errorf("deps.sh %s printed on stdout: %q", strings.Join(args, " "), stdout.String())
	}
	return code, stderr.String()
}

// aptCalls returns the apt-get calls so far, one a line.
func (s *sandbox) aptCalls() []string {
	s.t.Helper()
	b, err := os.ReadFile(s.aptLog)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		s.t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func all(string) bool { return true }

// except returns a have function that lacks the given commands.
func except(cmds ...string) func(string) bool {
	return func(c string) bool { return !slices.Contains(cmds, c) }
}

// TestDepsInstall runs deps.sh as root and as a user, with and without
// missing commands, and checks what it asks apt-get and what it says.
func TestDepsInstall(t *testing.T) {
	const update = "DEBIAN_FRONTEND=noninteractive update -qq"
	install := func(pkgs string) string {
		return "DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends " + pkgs
	}
	for _, tc := range []struct {
		name     string
		uid      int
		have     func(string) bool
		env      []string
		args     []string
		wantCode int
		wantApt  []string
		// wantErr are pieces of standard error; nil wants it empty.
		wantErr []string
	}{{
		name: "nothing missing: no apt-get, no output",
		uid:  0, have: all, args: []string{"demo", "test", "image"},
	}, {
		name: "root: one update, one install of the missing packages only",
		uid:  0, have: except("iptables-legacy-restore", "iperf3", "promtool"), args: []string{"test"},
		wantApt: []string{update, install("iptables iperf3 prometheus")},
		wantErr: []string{"deps.sh: installing iptables iperf3 prometheus from Debian (for test)\n"},
	}, {
		name: "demo asks only for demo's packages",
		uid:  0, have: func(string) bool { return false }, args: []string{"demo"},
		wantApt: []string{update, install("iptables")},
		wantErr: []string{"installing iptables from Debian (for demo)"},
	}, {
		name: "a package in two groups is installed once",
		uid:  0, have: except("podman"), args: []string{"test", "image"},
		wantApt: []string{update, install("podman")},
		wantErr: []string{"installing podman from Debian (for test image)"},
	}, {
		name: "user: prints the command, fails, no apt-get",
		uid:  1000, have: except("iperf3", "prometheus", "promtool"), args: []string{"test"},
		wantCode: 1,
		wantErr: []string{
			"missing Debian packages (for test):",
			"  iperf3: bench: TCP throughput",
			"install them as root, then run this again:\ndeps.sh:   sudo apt-get install -y --no-install-recommends iperf3 prometheus\n",
		},
	}, {
		name: "PODGATE_NO_INSTALL=1 as root: prints the command, fails",
		uid:  0, have: except("runc"), env: []string{"PODGATE_NO_INSTALL=1"}, args: []string{"image"},
		wantCode: 1,
		wantErr:  []string{"  runc: ", "deps.sh:   apt-get install -y --no-install-recommends runc\n"},
	}, {
		name: "apt-get fails: its output and the command",
		uid:  0, have: except("podman"), env: []string{"APT_FAIL=Unable to locate package podman"}, args: []string{"image"},
		wantCode: 1,
		wantApt:  []string{update, install("podman")},
		wantErr:  []string{"E: Unable to locate package podman\n", "apt-get failed: apt-get update && apt-get install -y --no-install-recommends podman"},
	}, {
		name: "installed package without its commands",
		uid:  0, have: except("ip"), env: []string{"APT_INSTALLS_NOTHING=1"}, args: []string{"test"},
		wantCode: 1,
		wantApt:  []string{update, install("iproute2")},
		wantErr:  []string{"iproute2 is installed, but not all of its commands are on PATH: ip"},
	}, {
		name: "unknown group",
		uid:  0, have: all, args: []string{"test", "tset"},
		wantCode: 1,
		wantErr:  []string{"unknown group tset"},
	}, {
		name: "no group",
		uid:  0, have: all,
		wantCode: 1,
		wantErr:  []string{"usage: hack/deps.sh [--list] GROUP..."},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t, tc.uid, tc.have)
			code, stderr := s.run(tc.env, tc.args...)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tc.wantCode, stderr)
			}
			if diff := cmp.Diff(tc.wantApt, s.aptCalls()); diff != "" {
				t.Errorf("apt-get calls (-want +got):\n%s", diff)
			}
			if tc.wantErr == nil && stderr != "" {
				t.Errorf("stderr: %q, want nothing", stderr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, stderr)
				}
			}
			if code != 0 || tc.wantApt == nil {
				return
			}
			// Installed now: a second run is a no-op.
			calls := len(s.aptCalls())
			if code, stderr := s.run(tc.env, tc.args...); code != 0 || stderr != "" || len(s.aptCalls()) != calls {
				t.Errorf("second run: exit code %d, stderr %q, apt-get calls %d → %d; want 0, nothing, none",
					code, stderr, calls, len(s.aptCalls()))
			}
		})
	}
}
