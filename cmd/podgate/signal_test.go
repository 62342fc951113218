package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mainEnv makes the test binary run main() with its arguments (under a
// 2 GiB address-space limit, so that a runaway read fails instead of
// taking the machine's memory).
const mainEnv = "PODGATE_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) != "" {
		lim := syscall.Rlimit{Cur: 2 << 30, Max: 2 << 30}
		if err := syscall.Setrlimit(syscall.RLIMIT_AS, &lim); err != nil {
			fmt.Fprintln(os.Stderr, "setrlimit:", err)
			os.Exit(3)
		}
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestPolicySpecialFilesExitAtOnce runs `podgate policy lint -f PATH` on a
// directory holding a FIFO named p.yaml and on /dev/zero: each must exit
// at once with an error naming the file. A run still going after 5s gets
// SIGTERM, which must end it.
func TestPolicySpecialFilesExitAtOnce(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "p.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, file, what string }{
		{"FIFO p.yaml in a directory", dir, fifo, "named pipe"},
		{"/dev/zero", "/dev/zero", "/dev/zero", "character device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(exe, "policy", "lint", "-f", tc.path)
			cmd.Env = append(os.Environ(), mainEnv+"=1")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			var werr error
			select {
			case werr = <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
					t.Fatalf("still running after 5s; SIGTERM ended it")
				case <-time.After(3 * time.Second):
					_ = cmd.Process.Kill()
					<-done
					t.Fatalf("still running after 5s, and 3s after SIGTERM (killed)")
				}
			}
			took := time.Since(start)
			msg := strings.TrimSpace(stderr.String())
			t.Logf("exited after %v: %v: %s", took.Round(time.Millisecond), werr, msg)
			ee, ok := werr.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1\n%s", werr, firstLines(msg, 3))
			}
			if want := tc.file + ": not a regular file (" + tc.what + ")"; !strings.Contains(msg, want) {
				t.Errorf("stderr %q does not contain %q", msg, want)
			}
		})
	}
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[:min(n, len(lines))], "\n")
}
