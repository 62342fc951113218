package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// envRequirePodman makes TestImage fail instead of skip without podman.
const envRequirePodman = "PODGATE_REQUIRE_PODMAN"

// imageScript runs hack/image.sh with args and extra environment and
// returns its standard output.
func imageScript(ctx context.Context, t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join("..", "hack", "image.sh")}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	// Never install from inside a test; CI installs podman first.
	cmd.Env = append(cmd.Env, "PODGATE_NO_INSTALL=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	begin := time.Now()
	err := cmd.Run()
	t.Logf("hack/image.sh %s (%v):\n%s", strings.Join(args, " "), time.Since(begin).Round(time.Millisecond), stderr.String())
	if err != nil {
		t.Fatalf("hack/image.sh %s: %v\nstdout:\n%s", strings.Join(args, " "), err, stdout.String())
	}
	return stdout.String()
}

// TestImage builds the image with hack/image.sh (as `make image` does) and
// runs `podgate version` in it. Without podman (or root, which the
// script's podman configuration assumes) it skips, or fails with
// PODGATE_REQUIRE_PODMAN=1.
func TestImage(t *testing.T) {
	missing := ""
	if _, err := exec.LookPath("podman"); err != nil {
		missing = "podman is not installed (apt-get install podman runc)"
	} else if os.Geteuid() != 0 {
		missing = "podman builds need root here"
	}
	if missing != "" {
		if os.Getenv(envRequirePodman) == "1" {
			t.Fatalf("%s, and %s=1", missing, envRequirePodman)
		}
		t.Skipf("%s; set %s=1 to fail instead of skip", missing, envRequirePodman)
	}
	if testing.Short() {
		t.Skip("builds a container image; skipped with -short")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	image := fmt.Sprintf("localhost/podgate-deploy-test:%d", os.Getpid())
	env := []string{"IMAGE=" + image}
	t.Cleanup(func() {
		cmd := exec.Command("bash", filepath.Join("..", "hack", "image.sh"), "podman", "rmi", "--force", image)
		cmd.Env = append(os.Environ(), "PODGATE_NO_INSTALL=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("removing %s: %v\n%s", image, err, out)
		}
	})

	// The script builds bin/podgate and the image, and checks `version`.
	imageScript(ctx, t, env, "build")

	versionLine := regexp.MustCompile(`^podgate (\S+) \(revision \S+, go\S+, linux/\S+\)\n$`)
	out := imageScript(ctx, t, env, "podman", "run", "--rm", "--network=none", image, "version")
	match := versionLine.FindStringSubmatch(out)
	if match == nil {
		t.Fatalf("podman run --rm %s version printed %q, want %s", image, out, versionLine)
	}
	version := match[1]

	inspect := imageScript(ctx, t, env, "podman", "image", "inspect", image)
	var images []struct {
		Config struct {
			User       string
			Entrypoint []string
			Cmd        []string
			Labels     map[string]string
		}
	}
	if err := json.Unmarshal([]byte(inspect), &images); err != nil || len(images) != 1 {
		t.Fatalf("podman image inspect: %v (%d images)\n%s", err, len(images), inspect)
	}
	cfg := images[0].Config
	for _, tt := range []struct {
		name      string
		got, want any
	}{
		{"user (non-root; the DaemonSet runs the agent as 0)", cfg.User, "65532:65532"},
		{"entrypoint", cfg.Entrypoint, []string{"/podgate"}},
		{"cmd", cfg.Cmd, []string{"version"}},
		{"title label", cfg.Labels["org.opencontainers.image.title"], "podgate"},
		{"version label", cfg.Labels["org.opencontainers.image.version"], version},
		{"source label", cfg.Labels["org.opencontainers.image.source"], "https://github.com/podgate/podgate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}

	// The default command is `version`, so a bare run works too.
	if out := imageScript(ctx, t, env, "podman", "run", "--rm", "--network=none", image); !versionLine.MatchString(out) {
		t.Errorf("podman run --rm %s printed %q, want the version", image, out)
	}
}
