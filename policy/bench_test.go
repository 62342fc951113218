package policy_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/policytest"
	"github.com/podgate/podgate/policy/table"
)

func scaleCluster(ns, perNS, pols int) *policy.Cluster {
	return policytest.ScaleCluster(ns, perNS, pols)
}

type query struct {
	src, dst netip.Addr
	proto    table.Protocol
	port     uint16
}

func queries(tab *table.Table, n int) []query {
	r := rand.New(rand.NewPCG(1, 2))
	eps := tab.Endpoints()
	out := make([]query, n)
	ports := []uint16{80, 443, 8080, 5432}
	for i := range out {
		src := eps[r.IntN(len(eps))].IPs[0]
		if r.IntN(10) == 0 {
			src = netip.AddrFrom4([4]byte{192, 168, byte(r.IntN(4)), byte(r.IntN(256))})
		}
		out[i] = query{src, eps[r.IntN(len(eps))].IPs[0], table.TCP, ports[r.IntN(len(ports))]}
	}
	return out
}

func BenchmarkLookup(b *testing.B) {
	for _, pols := range []int{0, 100, 2000} {
		b.Run(fmt.Sprintf("pods=10000/namespaces=1000/policies=%d", pols), func(b *testing.B) {
			tab := mustCompile(b, scaleCluster(1000, 10, pols))
			qs := queries(tab, 1<<14)
			allowed := 0
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				q := &qs[i&(len(qs)-1)]
				if tab.Lookup(q.src, q.dst, q.proto, q.port).Allowed() {
					allowed++
				}
			}
			b.ReportMetric(float64(allowed)/float64(b.N), "allowed/op")
		})
	}
}

// BenchmarkLookupManyPoliciesOnOnePod is the worst case: every policy
// selects the destination, so a denied lookup scans all their rules. The
// cost grows with the policies that select the pod, not with the total.
func BenchmarkLookupManyPoliciesOnOnePod(b *testing.B) {
	for _, pols := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("policies-selecting-dst=%d", pols), func(b *testing.B) {
			c := scaleCluster(pols, 10, pols)
			for _, np := range c.Policies {
				np.Namespace = "ns-0"
			}
			tab := mustCompile(b, c)
			dst, _ := tab.EndpointByName("ns-0", "pod-0")
			src, _ := tab.EndpointByName(fmt.Sprintf("ns-%d", pols-1), "pod-1")
			s, d := tab.Endpoint(src).IPs[0], tab.Endpoint(dst).IPs[0]
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				tab.Ingress(s, d, table.TCP, 5432)
			}
		})
	}
}

// addScaleService adds Service ns-0/svc (ClusterIP 10.96.0.1, port 80 to
// target port 8080) to a ScaleCluster, with n ready backends: pod-(i%10)
// of the namespaces ns-50, ns-100, ... (team-0, like ns-0).
func addScaleService(c *policy.Cluster, n int) netip.Addr {
	c.Services = append(c.Services, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns-0", Name: "svc"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1", Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
		}},
	})
	name, port, tcp := "http", int32(8080), corev1.ProtocolTCP
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns-0", Name: "svc-1", Labels: map[string]string{discoveryv1.LabelServiceName: "svc"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &tcp}},
	}
	for i := range n {
		pod := (i+1)*50*10 + i%10 // pod (i%10) of namespace ns-(50*(i+1))
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{policytest.PodIP(pod)}})
	}
	c.EndpointSlices = append(c.EndpointSlices, es)
	return netip.MustParseAddr("10.96.0.1")
}

// BenchmarkLookupService is a lookup from an egress-isolated pod to a
// Service ClusterIP: the source's egress is judged for every ready
// backend, all of them allowed (the most work: no early denial).
func BenchmarkLookupService(b *testing.B) {
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("pods=10000/policies=2000/backends=%d", n), func(b *testing.B) {
			c := scaleCluster(1000, 10, 2000)
			svc := addScaleService(c, n)
			tab := mustCompile(b, c)
			src := netip.MustParseAddr(policytest.PodIP(0))
			if v := tab.Lookup(src, svc, table.TCP, 80); v.Egress.Reason != table.AllowedByRule {
				b.Fatalf("lookup: %+v", v)
			}
			if got, _ := tab.ServiceBackends(svc, table.TCP, 80); len(got) != n {
				b.Fatalf("%d backends, want %d", len(got), n)
			}
			b.ReportAllocs()
			for b.Loop() {
				tab.Lookup(src, svc, table.TCP, 80)
			}
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	for _, size := range []struct{ ns, perNS, pols int }{{1000, 10, 0}, {1000, 10, 100}, {1000, 10, 2000}} {
		b.Run(fmt.Sprintf("pods=%d/namespaces=%d/policies=%d", size.ns*size.perNS, size.ns, size.pols), func(b *testing.B) {
			c := scaleCluster(size.ns, size.perNS, size.pols)
			b.ReportAllocs()
			var tab *table.Table
			for i := 0; i < b.N; i++ {
				tab = mustCompile(b, c)
			}
			b.StopTimer()
			rules := tab.Stats().Rules
			tab = nil
			b.ReportMetric(retainedMiB(func() any { return mustCompile(b, c) }), "MiB-retained")
			b.ReportMetric(float64(rules), "rules")
			runtime.KeepAlive(c) // the cluster is not part of what the table retains
		})
	}
}

// retainedMiB is the heap that the value f returns keeps alive.
func retainedMiB(f func() any) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	v := f()
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(v)
	return float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / (1 << 20)
}

// BenchmarkCompileTrusted compiles objects that the API server validated,
// as the Kubernetes source does.
func BenchmarkCompileTrusted(b *testing.B) {
	c := scaleCluster(1000, 10, 2000)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := policy.CompileWith(c, policy.Options{Trusted: true}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	c := scaleCluster(100, 10, 200)
	svc := addScaleService(c, 1)
	tab := mustCompile(t, c)
	qs := queries(tab, 256)
	// Every fourth query goes to the Service, judged on its backend.
	for i := 0; i < len(qs); i += 4 {
		qs[i].dst, qs[i].port = svc, 80
	}
	if v := tab.Lookup(netip.MustParseAddr(policytest.PodIP(0)), svc, table.TCP, 80); v.Egress.Reason != table.AllowedByRule {
		t.Fatalf("the Service is not judged on its backend: %+v", v)
	}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		q := &qs[i%len(qs)]
		i++
		_ = tab.Lookup(q.src, q.dst, q.proto, q.port)
		_ = tab.Ingress(q.src, q.dst, q.proto, q.port)
		_ = tab.Egress(q.src, q.dst, q.proto, q.port)
	})
	if allocs != 0 {
		t.Errorf("Lookup, Ingress and Egress allocate %v times per call, want 0", allocs)
	}
}
