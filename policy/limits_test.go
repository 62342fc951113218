package policy_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy"
)

// loadHelperEnv makes the test binary a helper that loads the paths in its
// arguments with policy.Load under a 2 GiB address-space limit and prints
// the error ("ok" without one): reading /dev/zero or waiting on a FIFO
// then fails or hangs the helper, not the test or the machine.
const loadHelperEnv = "PODGATE_POLICY_LOAD_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(loadHelperEnv) != "" {
		os.Exit(loadHelper(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func loadHelper(paths []string) int {
	lim := syscall.Rlimit{Cur: 2 << 30, Max: 2 << 30}
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &lim); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		return 2
	}
	if _, err := policy.Load(paths...); err != nil {
		fmt.Println(err)
		return 0
	}
	fmt.Println("ok")
	return 0
}

// loadInHelper runs policy.Load(paths...) in a helper process and returns
// what it printed; it fails the test if the helper does not finish within
// 10 seconds or dies.
func loadInHelper(t *testing.T, paths ...string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, paths...)
	cmd.Env = append(os.Environ(), loadHelperEnv+"=1")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Load(%v) died after %v: %v\n%s", paths, time.Since(start).Round(time.Millisecond), err, firstLines(stderr.String(), 3))
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("Load(%v) still running after 10s", paths)
	}
	return strings.TrimSpace(out.String())
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

// TestLoadSpecialFiles gives Load what is not a regular file: each must
// fail at once, naming the file and what it is, without reading from it.
func TestLoadSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory of manifests with a FIFO named p.yaml among them.
	withFIFO := filepath.Join(dir, "withfifo")
	if err := os.Mkdir(withFIFO, 0o755); err != nil {
		t.Fatal(err)
	}
	testutil.WriteFile(t, filepath.Join(withFIFO, "a.yaml"), npHeader+"spec: {podSelector: {}}\n")
	if err := syscall.Mkfifo(filepath.Join(withFIFO, "p.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory with a link to /dev/zero named z.yaml.
	withZero := filepath.Join(dir, "withzero")
	if err := os.Mkdir(withZero, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", filepath.Join(withZero, "z.yaml")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		want       []string
	}{
		{"FIFO", fifo, []string{fifo, "not a regular file (named pipe)"}},
		{"FIFO p.yaml in a directory", withFIFO, []string{filepath.Join(withFIFO, "p.yaml"), "not a regular file (named pipe)"}},
		{"/dev/zero", "/dev/zero", []string{"/dev/zero", "not a regular file (character device)"}},
		{"link to /dev/zero in a directory", withZero, []string{filepath.Join(withZero, "z.yaml"), "not a regular file (character device)"}},
		{"/dev/null", "/dev/null", []string{"/dev/null", "not a regular file (character device)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			got := loadInHelper(t, tc.path)
			t.Logf("%v: %s", time.Since(start).Round(time.Millisecond), got)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("error %q does not contain %q", got, w)
				}
			}
		})
	}
}

// sparseFile makes a file of size bytes that takes no disk space (a hole,
// read as NUL bytes): enough for a size check, which comes before any
// parsing.
func sparseFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func TestLoadSizeLimits(t *testing.T) {
	dir := t.TempDir()
	manifest := npHeader + "spec: {podSelector: {}}\n"

	t.Run("default limit per file", func(t *testing.T) {
		big := filepath.Join(dir, "big.yaml")
		sparseFile(t, big, policy.DefaultMaxFileBytes+1)
		_, err := policy.Load(big)
		if !errors.Is(err, policy.ErrTooLarge) || !errors.Is(err, policy.ErrManifest) {
			t.Fatalf("err = %v, want ErrTooLarge and ErrManifest", err)
		}
		for _, w := range []string{big, "larger than 64 MiB, the limit per manifest file", "raise it with Loader.MaxFileBytes"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
	})
	t.Run("at the limit", func(t *testing.T) {
		d := t.TempDir()
		p := testutil.WriteFile(t, filepath.Join(d, "np.yaml"), manifest)
		ld := policy.Loader{MaxFileBytes: int64(len(manifest)), MaxTotalBytes: int64(len(manifest))}
		if _, err := ld.Load(p); err != nil {
			t.Fatalf("a file of exactly the limit: %v", err)
		}
	})
	t.Run("per file, named", func(t *testing.T) {
		d := t.TempDir()
		p := testutil.WriteFile(t, filepath.Join(d, "np.yaml"), manifest)
		ld := policy.Loader{MaxFileBytes: int64(len(manifest)) - 1, FileLimitName: "--manifest-file-limit"}
		_, err := ld.Load(p)
		if !errors.Is(err, policy.ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
		want := fmt.Sprintf("bad manifest: %s: larger than %d bytes, the limit per manifest file (raise it with --manifest-file-limit)", p, len(manifest)-1)
		if err.Error() != want {
			t.Errorf("err = %q\nwant  %q", err, want)
		}
	})
	t.Run("in total", func(t *testing.T) {
		d := t.TempDir()
		for i := range 3 {
			testutil.WriteFile(t, filepath.Join(d, fmt.Sprintf("np%d.yaml", i)), strings.Replace(manifest, "name: np", fmt.Sprintf("name: np%d", i), 1))
		}
		size := int64(len(manifest) + 1)
		ld := policy.Loader{MaxTotalBytes: 2*size + 1, TotalLimitName: "--manifest-total-limit"}
		_, err := ld.Load(d)
		if !errors.Is(err, policy.ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
		for _, w := range []string{filepath.Join(d, "np2.yaml"), fmt.Sprintf("larger than %d bytes, the limit for all files together (raise it with --manifest-total-limit)", 2*size+1)} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
		if n := strings.Count(err.Error(), "\n") + 1; n != 1 {
			t.Errorf("%d errors, want one (no file is read after the total is reached): %v", n, err)
		}
		ld.MaxTotalBytes = 3 * size
		if _, err := ld.Load(d); err != nil {
			t.Errorf("the three files within the total: %v", err)
		}
	})
}
