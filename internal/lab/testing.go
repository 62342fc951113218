package lab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// NewForTest builds a lab for a test and closes it in tb.Cleanup, failing
// the test if Close fails or leaves a namespace or the directory behind.
// It skips the test when not running as root. Cleanups run last-in
// first-out, so what the test registers afterwards (connections, agents)
// is released first; Close runs even when the test fails midway.
func NewForTest(tb testing.TB, spec Spec) *Lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("the lab needs root (network namespaces)")
	}
	l, err := Build(context.Background(), spec)
	if err != nil {
		tb.Fatalf("build lab: %v", err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("close lab: %v", err)
		}
		if left := Leftovers(l.ID()); len(left) > 0 {
			tb.Errorf("lab %s left behind: %v", l.ID(), left)
		}
	})
	return l
}

// Leftovers returns the namespaces under /run/netns and the directory in
// os.TempDir() that belong to the lab with the given ID (or to any lab
// whose ID starts with it).
func Leftovers(id string) []string {
	var out []string
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), id+"-") || e.Name() == id {
				out = append(out, filepath.Join("/run/netns", e.Name()))
			}
		}
	}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), id+"-") || e.Name() == id {
				out = append(out, filepath.Join(os.TempDir(), e.Name()))
			}
		}
	}
	return out
}
