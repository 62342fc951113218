package kubetest

import (
	"errors"
	"os"
	"testing"
	"time"
)

// Start starts an Env for the test with default Options; see
// StartWithOptions.
func Start(tb testing.TB) *Env {
	tb.Helper()
	return StartWithOptions(tb, Options{})
}

// StartWithOptions starts an Env for the test and returns it once the API
// server is ready. When the binaries are missing it skips the test, or fails
// it if PODGATE_REQUIRE_KUBE=1. Options.Dir defaults to tb.TempDir(). A
// cleanup stops both processes and, if the test failed, logs the tail of
// their logs.
func StartWithOptions(tb testing.TB, opts Options) *Env {
	tb.Helper()
	if opts.Binaries == (Binaries{}) {
		bins, err := FindBinaries()
		var missing *MissingBinariesError
		switch {
		case errors.As(err, &missing) && os.Getenv(EnvRequire) != "1":
			tb.Skipf("kubetest: %v; set %s=1 to fail instead of skip", err, EnvRequire)
		case err != nil:
			tb.Fatalf("kubetest: %v", err)
		}
		opts.Binaries = bins
	}
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	begin := time.Now()
	env, err := Launch(tb.Context(), opts)
	if err != nil {
		tb.Fatalf("kubetest: %v", err)
	}
	tb.Logf("kubetest: kube-apiserver %s at %s ready in %v (logs in %s)",
		KubeVersion, env.Host(), time.Since(begin).Round(time.Millisecond), env.logDir)
	// Registered after tb.TempDir, so it runs before the directory goes.
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("kubetest: test failed; control plane logs:\n%s", env.LogTail(40))
		}
		if err := env.Close(); err != nil {
			tb.Errorf("kubetest: %v", err)
		}
	})
	return env
}
