package k8swatch

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podgate/podgate/policy/table"
)

// logBuffer collects a source's log for assertions and prints it when the
// test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) Contains(s string) bool { return strings.Contains(b.String(), s) }

// testLogger returns a debug logger into a buffer that is printed if t
// fails.
func testLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("source log:\n%s", b.String())
		}
	})
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// allowed reports whether tab allows TCP from src to dst:port. A nil
// table allows nothing.
func allowed(tab *table.Table, src, dst string, port uint16) bool {
	if tab == nil {
		return false
	}
	return tab.Lookup(netip.MustParseAddr(src), netip.MustParseAddr(dst), table.TCP, port).Allowed()
}

// expectVerdicts waits until the store's table gives every verdict in want
// and returns that table.
func expectVerdicts(t testing.TB, store *table.Store, timeout time.Duration, want ...verdict) *table.Table {
	t.Helper()
	var tab *table.Table
	var bad verdict
	ok := func() bool {
		tab = store.Load()
		if tab == nil {
			return false
		}
		for _, v := range want {
			if allowed(tab, v.src, v.dst, v.port) != v.allowed {
				bad = v
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			if tab == nil {
				t.Fatalf("no table published after %v", timeout)
			}
			e := tab.Explain(netip.MustParseAddr(bad.src), netip.MustParseAddr(bad.dst), table.TCP, bad.port)
			t.Fatalf("after %v, generation %d: %s -> %s:%d allowed = %v, want %v (%s; %s)",
				timeout, tab.Generation(), bad.src, bad.dst, bad.port, !bad.allowed, bad.allowed, e.Egress.Detail, e.Ingress.Detail)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return tab
}

type verdict struct {
	src, dst string
	port     uint16
	allowed  bool
}

func newNamespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// newPod returns a running pod with address ip (none if empty).
func newPod(ns, name, ip string, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   "node-1",
			Containers: []corev1.Container{{Name: "app", Image: "app:v1"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if ip != "" {
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	return p
}

// ingressPolicy returns a policy that isolates the pods with label
// app=target for ingress and allows TCP port from pods with app=from in
// its namespace and from namespaces labelled team=fromTeam (when set).
func ingressPolicy(ns, name, target, from, fromTeam string, port int32) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	peers := []networkingv1.NetworkPolicyPeer{{
		PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": from}},
	}}
	if fromTeam != "" {
		peers = append(peers, networkingv1.NetworkPolicyPeer{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fromTeam}},
		})
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": target}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  peers,
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		},
	}
}

func newNode(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status:     corev1.NodeStatus{Addresses: addrs},
	}
}
