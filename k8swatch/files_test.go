package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

const podsYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: a
  labels: {team: a}
---
apiVersion: v1
kind: Pod
metadata: {namespace: a, name: web, labels: {app: web}}
spec:
  containers: [{name: app, image: app}]
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {namespace: a, name: client, labels: {app: client}}
spec:
  containers: [{name: app, image: app}]
status: {phase: Running, podIP: 10.0.0.2}
`

// policyYAML allows TCP port from app=client to app=web.
func policyYAML(name string, port int) string {
	return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: a, name: %s}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: %d}]
`, name, port)
}

// replaceFile writes content to a temporary file next to path and renames
// it over path, as many editors and tools do.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	testutil.WriteFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// runFiles runs a FileSource over paths until the test ends and returns
// it with its store and log.
func runFiles(t *testing.T, paths ...string) (*FileSource, *table.Store, *logBuffer) {
	t.Helper()
	store := &table.Store{}
	log, logs := testLogger(t)
	src, err := NewFileSource(FileConfig{Paths: paths, Store: store, Logger: log, Debounce: 20 * time.Millisecond,
		NodeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := src.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return src, store, logs
}

func TestFileSourceDirectory(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "pods.yaml"), podsYAML)
	pol := filepath.Join(dir, "policy.yaml")
	testutil.WriteFile(t, pol, policyYAML("web", 80))
	src, store, logs := runFiles(t, dir)
	testutil.EventuallyTrue(t, 5*time.Second, "ready", src.Ready)
	expectVerdicts(t, store, time.Second, verdict{"10.0.0.2", "10.0.0.1", 80, true}, verdict{"10.0.0.2", "10.0.0.1", 81, false})
	if got := src.NodeAddrs(); len(got) != 1 || got[0] != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("NodeAddrs = %v, want the configured 192.0.2.1", got)
	}

	t.Run("atomic rename", func(t *testing.T) {
		replaceFile(t, pol, policyYAML("web", 81))
		expectVerdicts(t, store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 81, true}, verdict{"10.0.0.2", "10.0.0.1", 80, false})
	})

	t.Run("editor with backup and several writes", func(t *testing.T) {
		backup := pol + "~"
		if err := os.Rename(pol, backup); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(pol)
		if err != nil {
			t.Fatal(err)
		}
		content := policyYAML("web", 82)
		half := len(content) / 2
		if _, err := f.WriteString(content[:half]); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(content[half:]); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(backup); err != nil {
			t.Fatal(err)
		}
		expectVerdicts(t, store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 82, true})
		testutil.EventuallyTrue(t, 5*time.Second, "ready", src.Ready)
	})

	t.Run("invalid file keeps the last table", func(t *testing.T) {
		good := store.Load()
		bad := strings.Replace(policyYAML("web", 82), "app: web", "not a valid key!: web", 1)
		replaceFile(t, pol, bad)
		testutil.EventuallyTrue(t, 5*time.Second, "the error to be reported", func() bool { return src.Status().LastError != nil })
		st := src.Status()
		if !errors.Is(st.LastError, policy.ErrInvalid) && !errors.Is(st.LastError, policy.ErrManifest) {
			t.Errorf("LastError = %v, want a manifest or validation error", st.LastError)
		}
		if !strings.Contains(st.LastError.Error(), "policy.yaml") {
			t.Errorf("LastError = %v, want it to name the file", st.LastError)
		}
		if src.Ready() || store.Load() != good {
			t.Errorf("after an invalid file: ready = %v, table replaced = %v; want not ready and the last table kept", src.Ready(), store.Load() != good)
		}
		if !logs.Contains("level=ERROR") {
			t.Errorf("no error logged")
		}
		expectVerdicts(t, store, time.Second, verdict{"10.0.0.2", "10.0.0.1", 82, true})

		replaceFile(t, pol, policyYAML("web", 83))
		testutil.EventuallyTrue(t, 5*time.Second, "recovery", src.Ready)
		expectVerdicts(t, store, time.Second, verdict{"10.0.0.2", "10.0.0.1", 83, true})
	})

	t.Run("new file", func(t *testing.T) {
		testutil.WriteFile(t, filepath.Join(dir, "more.yml"), policyYAML("more", 90))
		expectVerdicts(t, store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 90, true})
	})

	t.Run("delete", func(t *testing.T) {
		for _, name := range []string{"more.yml", "policy.yaml"} {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		// No policy left: nothing is isolated.
		tab := expectVerdicts(t, store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 12345, true})
		if n := len(tab.Policies()); n != 0 {
			t.Errorf("policies after deleting their files = %d, want 0", n)
		}
	})

	t.Run("other files are ignored", func(t *testing.T) {
		before := src.Status()
		testutil.WriteFile(t, filepath.Join(dir, ".policy.yaml.swp"), "not yaml: [")
		testutil.WriteFile(t, filepath.Join(dir, "4913"), "")
		testutil.WriteFile(t, filepath.Join(dir, "zz.yaml"), "") // a relevant change after them
		testutil.EventuallyTrue(t, 5*time.Second, "the reload", func() bool { return src.Status().Rebuilds > before.Rebuilds })
		if got := src.Status().Events - before.Events; got < 1 || got > 2 {
			t.Errorf("events = %d, want 1 or 2 (create and write of zz.yaml only)", got)
		}
	})
}

func TestFileSourceSingleFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "all.yaml")
	testutil.WriteFile(t, path, podsYAML+"---\n"+policyYAML("web", 80))
	testutil.WriteFile(t, filepath.Join(dir, "unrelated.yaml"), "not: [valid")
	src, store, _ := runFiles(t, path)
	testutil.EventuallyTrue(t, 5*time.Second, "ready", src.Ready)
	expectVerdicts(t, store, time.Second, verdict{"10.0.0.2", "10.0.0.1", 80, true})

	replaceFile(t, path, podsYAML+"---\n"+policyYAML("web", 81))
	expectVerdicts(t, store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 81, true}, verdict{"10.0.0.2", "10.0.0.1", 80, false})
	replaceFile(t, path, podsYAML+"---\n"+policyYAML("web", 82))
	expectVerdicts(t, store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 82, true})

	// Deleting the file is an error (the last table stays); writing it
	// again recovers.
	gen := store.Load().Generation()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, 5*time.Second, "the error", func() bool { return src.Status().LastError != nil })
	if store.Load().Generation() != gen {
		t.Errorf("a table was published without the file")
	}
	testutil.WriteFile(t, path, podsYAML+"---\n"+policyYAML("web", 84))
	expectVerdicts(t, store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 84, true})
	testutil.EventuallyTrue(t, 5*time.Second, "ready", src.Ready)
}

// TestFileSourceConfigMapVolume swaps the "..data" symlink the way the
// kubelet updates a ConfigMap volume.
func TestFileSourceConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	version := func(n int, policyPort int) {
		t.Helper()
		v := filepath.Join(dir, fmt.Sprintf("..v%d", n))
		if err := os.Mkdir(v, 0o755); err != nil {
			t.Fatal(err)
		}
		testutil.WriteFile(t, filepath.Join(v, "pods.yaml"), podsYAML)
		testutil.WriteFile(t, filepath.Join(v, "policy.yaml"), policyYAML("web", policyPort))
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(v), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version(1, 80)
	for _, name := range []string{"pods.yaml", "policy.yaml"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	src, store, _ := runFiles(t, dir)
	testutil.EventuallyTrue(t, 5*time.Second, "ready", src.Ready)
	expectVerdicts(t, store, time.Second, verdict{"10.0.0.2", "10.0.0.1", 80, true})
	version(2, 81)
	expectVerdicts(t, store, 5*time.Second, verdict{"10.0.0.2", "10.0.0.1", 81, true}, verdict{"10.0.0.2", "10.0.0.1", 80, false})
}

func TestFileSourceErrors(t *testing.T) {
	if _, err := NewFileSource(FileConfig{Debounce: -1}); err == nil ||
		!strings.Contains(err.Error(), "no manifest paths") || !strings.Contains(err.Error(), "store") || !strings.Contains(err.Error(), "negative") {
		t.Errorf("NewFileSource(bad config) error = %v, want all problems", err)
	}
	src, err := NewFileSource(FileConfig{Paths: []string{filepath.Join(t.TempDir(), "missing", "x.yaml")}, Store: &table.Store{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "watch manifests") {
		t.Errorf("Run with a missing directory: error = %v, want a watch error", err)
	}
	if err := src.Run(t.Context()); err == nil {
		t.Errorf("second Run: no error")
	}
}
