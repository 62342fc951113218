package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
)

// MaxPrefixLen is the longest prefix [NewForTest] and [UniqueName] accept.
// The generated name is the prefix, a dash and 8 hex digits, so a prefix of
// up to 6 bytes also yields a valid interface name.
const MaxPrefixLen = 12

// UniqueName returns prefix-XXXXXXXX with 8 random hex digits.
func UniqueName(prefix string) (string, error) {
	if prefix == "" || len(prefix) > MaxPrefixLen {
		return "", fmt.Errorf("make name from prefix %q (1..%d bytes): %w", prefix, MaxPrefixLen, ErrInvalidName)
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make name: %w", err)
	}
	return prefix + "-" + hex.EncodeToString(b[:]), nil
}

// NewForTest creates a uniquely named namespace for the test and deletes it
// in tb.Cleanup. It skips the test when not running as root and fails it if
// the namespace cannot be created. Cleanups run last-in first-out, so
// resources created after the namespace (sockets, handles, XDP programs)
// are released before the namespace is deleted.
func NewForTest(tb testing.TB, prefix string) *Namespace {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("network namespaces need root")
	}
	var (
		ns  *Namespace
		err error
	)
	for range 5 {
		var name string
		name, err = UniqueName(prefix)
		if err != nil {
			tb.Fatalf("netns for test: %v", err)
		}
		ns, err = New(name)
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		tb.Fatalf("netns for test: %v", err)
	}
	tb.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			tb.Errorf("delete netns: %v", err)
		}
	})
	return ns
}

// HandleForTest returns a netlink handle inside ns, closed in tb.Cleanup.
func HandleForTest(tb testing.TB, ns *Namespace) *netlink.Handle {
	tb.Helper()
	h, err := ns.Handle()
	if err != nil {
		tb.Fatalf("netlink handle: %v", err)
	}
	tb.Cleanup(h.Close)
	return h
}

// RouterForTest is [NewForTest] for a namespace that plays a node: its
// loopback is up and it forwards IPv4 and IPv6.
func RouterForTest(tb testing.TB, prefix string) *Namespace {
	tb.Helper()
	ns := NewForTest(tb, prefix)
	h := HandleForTest(tb, ns)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("loopback up: %v", err)
	}
	for _, key := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := ns.Sysctl(key, "1"); err != nil {
			tb.Fatal(err)
		}
	}
	return ns
}

// PodForTest makes a namespace for a pod ([NewForTest] with prefix) and
// a ptp pod in it ([AddPod] with cfg, whose Pod it sets), failing the test
// on error.
func PodForTest(tb testing.TB, prefix string, cfg PodConfig) (*Namespace, Pod) {
	tb.Helper()
	cfg.Pod = NewForTest(tb, prefix)
	p, err := AddPod(cfg)
	if err != nil {
		tb.Fatalf("pod %s: %v", cfg.HostIf, err)
	}
	return cfg.Pod, p
}
