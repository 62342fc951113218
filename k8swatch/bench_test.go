package k8swatch

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podgate/podgate/internal/test/kubetest"
	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy/table"
)

// BenchmarkPolicyLatency measures policy-to-enforcement latency against a
// real API server: from the start of a client-go Update (or Create) of a
// NetworkPolicy to the store holding a table whose verdict reflects it.
// Run it with a fixed count, e.g. -benchtime=200x; it reports p50, p99 and
// max over the iterations. The source uses DefaultMinInterval; the store is
// polled every 100 µs.
func BenchmarkPolicyLatency(b *testing.B) {
	env := kubetest.Start(b)
	ctx := b.Context()
	client := env.Client()
	if _, err := env.CreateNamespace(ctx, "bench", nil); err != nil {
		b.Fatal(err)
	}
	for _, p := range []struct{ name, ip string }{{"web", "10.244.1.10"}, {"client", "10.244.1.11"}} {
		if _, err := kubetest.CreatePod(ctx, client, kubetest.NewPod("bench", p.name, "node-1", map[string]string{"app": p.name}),
			kubetest.PodStatus{IPs: []string{p.ip}}); err != nil {
			b.Fatal(err)
		}
	}
	s := startAPISource(b, client, "")
	testutil.EventuallyTrue(b, 30*time.Second, "the source to be ready", s.src.Ready)
	nps := client.NetworkingV1().NetworkPolicies("bench")
	np, err := nps.Create(ctx, ingressPolicy("bench", "web", "web", "client", "", 1000), metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	src, dst := netip.MustParseAddr("10.244.1.11"), netip.MustParseAddr("10.244.1.10")
	// waitAllowed waits until the published table allows port, and
	// returns when it saw it.
	waitAllowed := func(b *testing.B, port uint16) time.Time {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if t := s.store.Load(); t != nil && t.Ingress(src, dst, table.TCP, port).Allowed() {
				return time.Now()
			}
			if time.Now().After(deadline) {
				b.Fatalf("port %d not allowed after 30 s", port)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	port := uint16(1000)
	waitAllowed(b, port)

	// isolated: each update comes after a pause longer than MinInterval,
	// as a single change does; back-to-back: the next update is sent as
	// soon as the last one was seen, so the runner's MinInterval delays
	// it.
	for _, mode := range []struct {
		name  string
		pause time.Duration
	}{{"isolated", 2 * DefaultMinInterval}, {"back-to-back", 0}} {
		b.Run("update/"+mode.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			gen := s.store.Load().Generation()
			for range b.N {
				if mode.pause > 0 {
					b.StopTimer()
					time.Sleep(mode.pause)
					b.StartTimer()
				}
				port++
				np.Spec.Ingress[0].Ports[0].Port.IntVal = int32(port)
				start := time.Now()
				if np, err = nps.Update(ctx, np, metav1.UpdateOptions{}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, waitAllowed(b, port).Sub(start))
			}
			reportLatency(b, lat)
			b.ReportMetric(float64(s.store.Load().Generation()-gen)/float64(b.N), "tables/op")
		})
	}

	b.Run("create/isolated", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for range b.N {
			b.StopTimer()
			time.Sleep(2 * DefaultMinInterval)
			b.StartTimer()
			port++
			start := time.Now()
			if _, err := nps.Create(ctx, ingressPolicy("bench", fmt.Sprintf("p%d", port), "web", "client", "", int32(port)), metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, waitAllowed(b, port).Sub(start))
		}
		reportLatency(b, lat)
	})
}

func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// BenchmarkRebuild measures one full rebuild (list the informer caches,
// build the Cluster, compile, publish), as after a policy change, of a
// cluster of 10,000 pods in 1,000
// namespaces with 2,000 policies. The informers' indexers are filled
// directly, without an API server.
func BenchmarkRebuild(b *testing.B) {
	for _, size := range []struct{ ns, perNS, pols int }{{100, 10, 100}, {1000, 10, 2000}} {
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.ns*size.perNS, size.pols), func(b *testing.B) {
			s, factory, store := newBenchSource(b)
			add := func(inf interface{ Add(any) error }, obj any) {
				if err := inf.Add(obj); err != nil {
					b.Fatal(err)
				}
			}
			nsIdx := factory.Core().V1().Namespaces().Informer().GetIndexer()
			podIdx := factory.Core().V1().Pods().Informer().GetIndexer()
			npIdx := factory.Networking().V1().NetworkPolicies().Informer().GetIndexer()
			nss, pods, nps := scaleObjects(size.ns, size.perNS, size.pols)
			for _, o := range nss {
				add(nsIdx, o)
			}
			for _, o := range pods {
				add(podIdx, o)
			}
			for _, o := range nps {
				add(npIdx, o)
			}
			var list time.Duration
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				_, _ = s.pods.List(labels.Everything())
				list += time.Since(start)
				s.pending.other() // as after a policy change: a full compile
				s.rebuild()
			}
			st := s.Status()
			if st.LastError != nil {
				b.Fatal(st.LastError)
			}
			stats := store.Load().Stats()
			if stats.Endpoints != size.ns*size.perNS || stats.Policies != size.pols {
				b.Fatalf("table has %d endpoints and %d policies, want %d and %d", stats.Endpoints, stats.Policies, size.ns*size.perNS, size.pols)
			}
			b.ReportMetric(float64(stats.Duration.Microseconds())/1000, "compile-ms")
			b.ReportMetric(float64(list.Microseconds())/1000/float64(b.N), "list-pods-ms")
		})
	}
}

// scaleObjects returns a multi-tenant cluster: nsCount namespaces (team
// labels) of perNS pods (app, tier labels, a named port), and policies
// spread over the namespaces, each isolating one app for ingress (from its
// tier, its team's namespaces and a CIDR, on three ports) and egress (to its
// team, DNS and a CIDR).
func scaleObjects(nsCount, perNS, policies int) ([]*corev1.Namespace, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	var nss []*corev1.Namespace
	var pods []*corev1.Pod
	var nps []*networkingv1.NetworkPolicy
	for n := range nsCount {
		ns := fmt.Sprintf("ns-%d", n)
		nss = append(nss, newNamespace(ns, map[string]string{"team": fmt.Sprintf("team-%d", n%50), "env": "prod"}))
		for p := range perNS {
			i := n*perNS + p
			ip := fmt.Sprintf("10.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255)
			pod := newPod(ns, fmt.Sprintf("pod-%d", p), ip, map[string]string{"app": fmt.Sprintf("app-%d", p%5), "tier": "web"})
			pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}
			pods = append(pods, pod)
		}
	}
	for i := range policies {
		n := i % nsCount
		team := map[string]string{"team": fmt.Sprintf("team-%d", n%50)}
		nps = append(nps, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("np-%d", i)},
			Spec:       appPolicySpec(fmt.Sprintf("app-%d", (i/nsCount)%5), team),
		})
	}
	return nss, pods, nps
}

// appPolicySpec isolates pods labelled app for ingress (from tier=web pods,
// the team's namespaces and a CIDR with an exception, on two numbered and
// a named port) and egress (to the team, DNS and a CIDR): the common
// policy of the large synthetic clusters.
func appPolicySpec(app string, team map[string]string) networkingv1.NetworkPolicySpec {
	udp := corev1.ProtocolUDP
	p80, p443, named, dns := intstr.FromInt32(80), intstr.FromInt32(443), intstr.FromString("http"), intstr.FromInt32(53)
	return networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}},
				{NamespaceSelector: &metav1.LabelSelector{MatchLabels: team}, PodSelector: &metav1.LabelSelector{}},
				{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}},
			},
			Ports: []networkingv1.NetworkPolicyPort{{Port: &p80}, {Port: &p443}, {Port: &named}},
		}},
		Egress: []networkingv1.NetworkPolicyEgressRule{
			{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: team}}}},
			{Ports: []networkingv1.NetworkPolicyPort{{Port: &dns, Protocol: &udp}}},
			{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "172.16.0.0/12"}}}},
		},
	}
}

// BenchmarkIncrementalPodChange measures one rebuild for one pod change
// (read the pod from the cache, update the last table, publish) in the
// cluster of TestControlPlaneAtScale held in memory: 10,000 pods (as
// TrimForPolicy leaves them) in 1,000 namespaces with 2,000 policies of
// the scale test's three shapes. The changes are those of its churn: a
// relabel to a label no pod has (a new identity each time), a relabel
// to an existing identity, a pod created with an address, and one
// deleted. Compare with BenchmarkRebuild, the full compile.
func BenchmarkIncrementalPodChange(b *testing.B) {
	s := defaultScale
	src, factory, store := newBenchSource(b)
	podIdx := factory.Core().V1().Pods().Informer().GetIndexer()
	add := func(idx interface{ Add(any) error }, obj any) {
		if err := idx.Add(obj); err != nil {
			b.Fatal(err)
		}
	}
	trimmed := func(p *corev1.Pod) *corev1.Pod {
		obj, err := TrimForPolicy(p)
		if err != nil {
			b.Fatal(err)
		}
		return obj.(*corev1.Pod)
	}
	for n := range s.namespaces {
		env := "prod"
		if n%3 == 0 {
			env = "staging"
		}
		add(factory.Core().V1().Namespaces().Informer().GetIndexer(),
			newNamespace(fmt.Sprintf("ns-%d", n), map[string]string{"team": fmt.Sprintf("team-%d", n%50), "env": env}))
		for p := range s.podsPerNS {
			pod := scalePod(fmt.Sprintf("ns-%d", n), fmt.Sprintf("pod-%d", p), fmt.Sprintf("node-%d", (n*s.podsPerNS+p)%s.nodes), p)
			ip := scalePodIP(s, n, p)
			pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
			add(podIdx, trimmed(pod))
		}
		for _, np := range scalePolicies(n, s.policiesPerNS) {
			add(factory.Networking().V1().NetworkPolicies().Informer().GetIndexer(), np)
		}
	}
	src.rebuild() // the full compile
	if st := src.Status(); st.LastError != nil || st.Rebuilds != 1 {
		b.Fatalf("first rebuild: %+v", st)
	}
	b.Logf("first table: %+v", store.Load().Stats())

	// change applies one change to the cache and rebuilds for it.
	change := func(b *testing.B, pod *corev1.Pod, deleted bool) {
		if deleted {
			if err := podIdx.Delete(pod); err != nil {
				b.Fatal(err)
			}
		} else if err := podIdx.Update(pod); err != nil {
			b.Fatal(err)
		}
		src.pending.pod(pod)
		src.rebuild()
	}
	get := func(b *testing.B, ns, name string) *corev1.Pod {
		pod, err := src.pods.Pods(ns).Get(name)
		if err != nil {
			b.Fatal(err)
		}
		return pod.DeepCopy()
	}
	rev := 0
	for _, kind := range []string{"relabel-new-identity", "relabel-existing-identity", "create-delete"} {
		b.Run(kind, func(b *testing.B) {
			before := src.Status()
			ops := 0
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				n := i % s.namespaces
				ns := fmt.Sprintf("ns-%d", n)
				switch kind {
				case "relabel-new-identity":
					pod := get(b, ns, "pod-0")
					rev++
					pod.Labels["rev"] = fmt.Sprint(rev)
					change(b, pod, false)
					ops++
				case "relabel-existing-identity":
					// pod-0 and pod-5 differ only in their tier
					// label (app-0, web and db): swap it.
					pod := get(b, ns, "pod-0")
					delete(pod.Labels, "rev")
					pod.Labels["tier"] = map[string]string{"web": "db", "db": "web"}[pod.Labels["tier"]]
					change(b, pod, false)
					ops++
				case "create-delete":
					// Half the iterations create a pod, half delete it.
					name := fmt.Sprintf("churn-%d", i/2)
					if i%2 == 0 {
						pod := scalePod(ns, name, "node-1", i)
						ip := fmt.Sprintf("10.200.%d.%d", (i/2)>>8&255, (i/2)&255)
						pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
						change(b, trimmed(pod), false)
					} else {
						change(b, get(b, fmt.Sprintf("ns-%d", (i-1)%s.namespaces), name), true)
					}
					ops++
				}
			}
			st := src.Status()
			if st.LastError != nil {
				b.Fatal(st.LastError)
			}
			if inc := st.Incremental - before.Incremental; inc != uint64(ops) {
				b.Fatalf("%d of %d changes updated the table incrementally", inc, ops)
			}
			stats := store.Load().Stats()
			b.ReportMetric(float64(stats.Identities), "identities")
		})
	}
}

// newBenchSource returns an APISource of Pods, Namespaces and
// NetworkPolicies on fake informers whose indexers the benchmark fills,
// publishing into the returned store.
func newBenchSource(b *testing.B) (*APISource, informers.SharedInformerFactory, *table.Store) {
	b.Helper()
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	store := &table.Store{}
	s, err := NewAPISource(APIConfig{
		Pods:            factory.Core().V1().Pods(),
		Namespaces:      factory.Core().V1().Namespaces(),
		NetworkPolicies: factory.Networking().V1().NetworkPolicies(),
		Store:           store,
	})
	if err != nil {
		b.Fatal(err)
	}
	return s, factory, store
}
