package k8swatch

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	npaclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podgate/podgate/internal/test/kubetest"
	"github.com/podgate/podgate/policy/table"
)

// The control plane at scale (docs/control-plane-at-scale.md): a real API
// server holding 10,000 pods on 500 nodes in 1,000 namespaces with 2,000
// NetworkPolicies, and one agent's APISource, wired as `podgate agent`
// wires it, measured in a subprocess of its own so that its resident
// memory is honest: time to the first table, memory, API write to table
// latency under a churn of pod changes, and the requests the source sends
// to the API server. The numbers are logged, never asserted: the machine
// may be slow. What is asserted is correctness: every write reaches the
// table.
const (
	// envScale=1 runs TestControlPlaneAtScale (make bench-scale).
	envScale = "PODGATE_SCALE"
	// envScaleTransforms lists the agents to measure, comma-separated, by
	// informer transform: "trim" (TrimForPolicy, as the agent runs) or
	// "strip" (StripManagedFields only, as it ran before). Default
	// "trim".
	envScaleTransforms = "PODGATE_SCALE_TRANSFORMS"
	// envScaleChurn is how long the churn lasts, as a Go duration;
	// default 30s.
	envScaleChurn = "PODGATE_SCALE_CHURN"
	// envScaleAgent is set by TestControlPlaneAtScale for the agent
	// subprocess: the kubeconfig to use.
	envScaleAgent = "PODGATE_SCALE_AGENT_KUBECONFIG"
	// envScaleTransform is the transform of the agent subprocess.
	envScaleTransform = "PODGATE_SCALE_TRANSFORM"
	// envScaleRun is "i/n": the agent subprocess is the i-th of n on one
	// API server, and its churn changes only the namespaces n%n == i and
	// creates pods of its own names and addresses, so that it knows the
	// pods it changes whatever the agents before it did.
	envScaleRun = "PODGATE_SCALE_RUN"
)

// scaleSize is the cluster that TestControlPlaneAtScale loads.
type scaleSize struct {
	namespaces, podsPerNS, nodes, policiesPerNS int
}

var defaultScale = scaleSize{namespaces: 1000, podsPerNS: 10, nodes: 500, policiesPerNS: 2}

// scaleChurnRate is the number of pod changes per second of the churn.
const scaleChurnRate = 50

// scaleAgentNode is the node the measured agent runs on.
const scaleAgentNode = "node-0"

// TestControlPlaneAtScale loads the API server and measures one agent's
// APISource in a subprocess (TestControlPlaneAtScaleAgent). It runs only
// with PODGATE_SCALE=1.
func TestControlPlaneAtScale(t *testing.T) {
	if os.Getenv(envScale) != "1" {
		t.Skipf("set %s=1 to load an API server with 10,000 pods and measure an agent (make bench-scale)", envScale)
	}
	env := kubetest.Start(t)
	ctx := t.Context()
	cfg := env.Config()
	cfg.QPS, cfg.Burst = -1, -1
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if err := loadScaleCluster(ctx, t, env, client, defaultScale); err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d namespaces, %d nodes, %d pods and %d NetworkPolicies in %v",
		defaultScale.namespaces, defaultScale.nodes, defaultScale.namespaces*defaultScale.podsPerNS,
		defaultScale.namespaces*defaultScale.policiesPerNS, time.Since(begin).Round(time.Millisecond))

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubetest.WriteKubeconfig(kubeconfig, env.Config()); err != nil {
		t.Fatal(err)
	}
	transforms := cmpOr(os.Getenv(envScaleTransforms), "trim")
	variants := strings.Split(transforms, ",")
	for i, tr := range variants {
		t.Run("agent="+tr, func(t *testing.T) {
			args := []string{"-test.run=^TestControlPlaneAtScaleAgent$", "-test.v", "-test.count=1", "-test.timeout=15m"}
			cmd := exec.CommandContext(ctx, os.Args[0], args...)
			cmd.Env = append(os.Environ(), envScaleAgent+"="+kubeconfig, envScaleTransform+"="+tr, fmt.Sprintf("%s=%d/%d", envScaleRun, i, len(variants)))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			sc := bufio.NewScanner(&out)
			for sc.Scan() {
				if line := strings.TrimSpace(sc.Text()); line != "" {
					t.Log(line)
				}
			}
			if err != nil {
				t.Fatalf("agent subprocess: %v", err)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// scalePodIP is the address of pod p of namespace n.
func scalePodIP(s scaleSize, n, p int) string {
	i := n*s.podsPerNS + p
	return fmt.Sprintf("10.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255)
}

func scaleNodeIP(i int) string { return fmt.Sprintf("192.168.%d.%d", i>>8, i&255) }

// scalePod is a realistic pod: a Deployment's replica with two containers
// (named ports, environment, resources, probes, mounts) and annotations,
// of which the table reads only the labels, node, ports and addresses.
func scalePod(ns, name, node string, p int) *corev1.Pod {
	app := fmt.Sprintf("app-%d", p%5)
	pod := kubetest.NewPod(ns, name, node, map[string]string{
		"app":               app,
		"tier":              []string{"web", "api", "db"}[p%3],
		"pod-template-hash": "6d4cf56db6",
	})
	pod.Annotations = map[string]string{
		"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z",
		"prometheus.io/scrape":              "true",
		"prometheus.io/port":                "9090",
	}
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app + "-6d4cf56db6", UID: types.UID("0f1e2d3c-" + app)}}
	c := &pod.Spec.Containers[0]
	c.Ports = []corev1.ContainerPort{
		{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
		{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
	}
	for i := range 8 {
		c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%d", i), Value: fmt.Sprintf("value-%d-of-%s", i, app)})
	}
	c.Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app"}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: app + "-config"}}}}}
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
		Name: "proxy", Image: "kubetest.invalid/proxy:v2",
		Args:  []string{"--listen=:15001", "--admin=:15000", "--log-level=info"},
		Ports: []corev1.ContainerPort{{Name: "proxy-admin", ContainerPort: 15000}},
	})
	return pod
}

// scalePolicies returns the NetworkPolicies of namespace n (of count):
// each isolates one app for ingress (from its tier, its team's namespaces
// and a CIDR with an exception, on two numbered and a named port) and
// egress (to its team, DNS and a CIDR); every other namespace also has a
// policy with set-based selectors (matchExpressions, a namespaceSelector
// on the environment) on the named metrics port, the others a default
// deny of ingress with an exception for monitoring.
func scalePolicies(n, count int) []*networkingv1.NetworkPolicy {
	ns := fmt.Sprintf("ns-%d", n)
	team := map[string]string{"team": fmt.Sprintf("team-%d", n%50)}
	metrics := intstr.FromString("metrics")
	var out []*networkingv1.NetworkPolicy
	for i := range count {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np-%d", i)}}
		switch {
		case i%2 == 0:
			np.Spec = appPolicySpec(fmt.Sprintf("app-%d", (n+i)%5), team)
		case n%2 == 0:
			np.Spec = networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"app-1", "app-2"}},
					{Key: "tier", Operator: metav1.LabelSelectorOpExists},
				}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
							{Key: "env", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"staging"}},
						}},
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-0"}},
					}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &metrics}},
				}},
			}
		default:
			np.Spec = networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "monitoring"}},
					}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &metrics}},
				}},
			}
		}
		out = append(out, np)
	}
	return out
}

// parallel runs do(i) for i in [0, n) on workers goroutines and returns
// the first error.
func parallel(ctx context.Context, n, workers int, do func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := do(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && err != context.Canceled {
		return err
	}
	return nil
}

// loadScaleCluster creates the nodes (with addresses), namespaces (team
// and env labels), pods (with status: Running, addresses) and policies of
// size s, with 64 requests in flight.
func loadScaleCluster(ctx context.Context, t *testing.T, env *kubetest.Env, client kubernetes.Interface, s scaleSize) error {
	const workers = 64
	step := func(what string, n int, do func(ctx context.Context, i int) error) error {
		begin := time.Now()
		if err := parallel(ctx, n, workers, do); err != nil {
			return fmt.Errorf("create %s: %w", what, err)
		}
		d := time.Since(begin)
		t.Logf("created %d %s in %v (%.0f/s)", n, what, d.Round(time.Millisecond), float64(n)/d.Seconds())
		return nil
	}
	err := step("nodes", s.nodes, func(ctx context.Context, i int) error {
		node := newNode(fmt.Sprintf("node-%d", i))
		node.Labels = map[string]string{"kubernetes.io/hostname": node.Name, "topology.kubernetes.io/zone": fmt.Sprintf("zone-%d", i%3)}
		created, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		created.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: scaleNodeIP(i)},
			{Type: corev1.NodeHostName, Address: node.Name},
		}
		_, err = client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return err
	}
	err = step("namespaces", s.namespaces, func(ctx context.Context, n int) error {
		envLabel := "prod"
		if n%3 == 0 {
			envLabel = "staging"
		}
		_, err := env.CreateNamespace(ctx, fmt.Sprintf("ns-%d", n), map[string]string{"team": fmt.Sprintf("team-%d", n%50), "env": envLabel})
		return err
	})
	if err != nil {
		return err
	}
	err = step("pods", s.namespaces*s.podsPerNS, func(ctx context.Context, i int) error {
		n, p := i/s.podsPerNS, i%s.podsPerNS
		node := i % s.nodes
		pod := scalePod(fmt.Sprintf("ns-%d", n), fmt.Sprintf("pod-%d", p), fmt.Sprintf("node-%d", node), p)
		_, err := kubetest.CreatePod(ctx, client, pod, kubetest.PodStatus{IPs: []string{scalePodIP(s, n, p)}, HostIP: scaleNodeIP(node)})
		return err
	})
	if err != nil {
		return err
	}
	return step("NetworkPolicies", s.namespaces*s.policiesPerNS, func(ctx context.Context, i int) error {
		n, k := i/s.policiesPerNS, i%s.policiesPerNS
		np := scalePolicies(n, s.policiesPerNS)[k]
		_, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{})
		return err
	})
}

// requestCounter counts the requests of a client and the bytes of their
// responses (watch streams included), through rest.Config.WrapTransport.
type requestCounter struct {
	requests, watches, bytes atomic.Int64
	// protobuf counts the responses in protobuf.
	protobuf atomic.Int64
}

func (c *requestCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		c.requests.Add(1)
		if req.URL.Query().Get("watch") == "true" || req.URL.Query().Get("watch") == "1" {
			c.watches.Add(1)
		}
		resp, err := rt.RoundTrip(req)
		if err == nil && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/vnd.kubernetes.protobuf") {
			c.protobuf.Add(1)
		}
		if err == nil && resp.Body != nil {
			resp.Body = &countingBody{ReadCloser: resp.Body, n: &c.bytes}
		}
		return resp, err
	})
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// procStatus returns a field of /proc/self/status in MiB (VmRSS, VmHWM).
func procStatus(field string) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				return -1
			}
			return kb / 1024
		}
	}
	return -1
}

// loadavg returns the first three fields of /proc/loadavg: the machine
// is shared, and the numbers mean little under load.
func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// memory describes the process's memory: resident as it runs, and the
// live heap after a collection.
func memory() string {
	rss, hwm := procStatus("VmRSS"), procStatus("VmHWM")
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return fmt.Sprintf("VmRSS %.0f MiB (peak %.0f MiB), heap in use after GC %.0f MiB, Go runtime total %.0f MiB",
		rss, hwm, float64(ms.HeapInuse)/(1<<20), float64(ms.Sys)/(1<<20))
}

// churnOp is one pod change of the churn and how to tell that a table
// contains it.
type churnOp struct {
	kind  string
	start time.Time // of the write that the table must reflect
	done  func(*table.Table) bool
	slot  *churnPod
}

// churnPod is a pod the churn may change; busy while a change of it is
// on its way to the table.
type churnPod struct {
	ns, name string
	ip       netip.Addr
	present  bool
	busy     bool
}

// TestControlPlaneAtScaleAgent is the agent subprocess of
// TestControlPlaneAtScale; it runs only when that test starts it.
func TestControlPlaneAtScaleAgent(t *testing.T) {
	kubeconfig := os.Getenv(envScaleAgent)
	if kubeconfig == "" {
		t.Skip("run by TestControlPlaneAtScale")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	t.Logf("agent process at start: VmRSS %.0f MiB; load average %s", procStatus("VmRSS"), loadavg())

	// The source, wired as `podgate agent` wires it, with its requests
	// counted.
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	var counter requestCounter
	restCfg.WrapTransport = counter.wrap
	// client-go's generated clients ask for protobuf by default.
	variant := cmpOr(os.Getenv(envScaleTransform), "trim")
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		t.Fatal(err)
	}
	npa, err := npaclient.NewForConfig(restCfg)
	if err != nil {
		t.Fatal(err)
	}
	transform := TrimForPolicy
	switch variant {
	case "trim":
	case "strip":
		transform = StripManagedFields
	default:
		t.Fatalf("unknown transform %q (trim or strip)", variant)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(transform))
	store := &table.Store{}
	var mu sync.Mutex
	published := map[uint64]time.Time{}
	var rebuilds []time.Duration
	src, err := NewAPISource(APIConfig{
		Pods:            factory.Core().V1().Pods(),
		Namespaces:      factory.Core().V1().Namespaces(),
		NetworkPolicies: factory.Networking().V1().NetworkPolicies(),
		Services:        factory.Core().V1().Services(),
		EndpointSlices:  factory.Discovery().V1().EndpointSlices(),
		Nodes:           factory.Core().V1().Nodes(),
		ClusterPolicies: &ClusterPolicyConfig{Client: npa, Discovery: client.Discovery()},
		NodeName:        scaleAgentNode,
		Store:           store,
		Probe:           ReadyzProbe(client.Discovery().RESTClient()),
		OnPublish: func(gen uint64, rebuild time.Duration) {
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			published[gen] = now
			rebuilds = append(rebuilds, rebuild)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// When the informer delivered each pod's latest change, to split the
	// latency into the API server's part (write, watch) and the
	// source's (rebuild, publish): a handler of its own on the source's
	// pod informer.
	seen := &podSeen{at: map[string]time.Time{}}
	if _, err := factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    seen.note,
		UpdateFunc: func(_, cur any) { seen.note(cur) },
		DeleteFunc: seen.note,
	}); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	var wg sync.WaitGroup
	// Stop the source, then the informers, which stop with ctx.
	defer func() {
		cancel()
		wg.Wait()
		factory.Shutdown()
	}()
	wg.Go(func() {
		if err := src.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	factory.Start(ctx.Done())
	for !src.Ready() {
		if time.Since(begin) > 5*time.Minute {
			t.Fatalf("not ready after 5 minutes: %v", src.Status().Err())
		}
		time.Sleep(time.Millisecond)
	}
	ready := time.Since(begin)
	st := src.Status()
	stats := store.Load().Stats()
	t.Logf("agent %s: ready in %v (first table: %d endpoints, %d identities, %d policies, %d rules; compile %v, rebuild %v); %d requests (%d answered in protobuf), %.1f MiB received",
		variant, ready.Round(time.Millisecond), stats.Endpoints, stats.Identities, stats.Policies, stats.Rules,
		stats.Duration.Round(time.Millisecond), st.LastRebuild.Round(time.Millisecond), counter.requests.Load(), counter.protobuf.Load(), float64(counter.bytes.Load())/(1<<20))
	t.Logf("memory when ready: %s", memory())

	// Idle: what the source asks of the API server when nothing changes.
	const idle = 10 * time.Second
	r0, b0 := counter.requests.Load(), counter.bytes.Load()
	time.Sleep(idle)
	t.Logf("idle %v: %.2f requests/s, %.1f KiB/s received", idle,
		float64(counter.requests.Load()-r0)/idle.Seconds(), float64(counter.bytes.Load()-b0)/1024/idle.Seconds())

	churn := 30 * time.Second
	if v := os.Getenv(envScaleChurn); v != "" {
		if churn, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	lat, byKind, gens, failed := runChurn(ctx, t, kubeconfig, store, published, &mu, churn, seen)
	r1, b1 := counter.requests.Load(), counter.bytes.Load()
	st = src.Status()
	mu.Lock()
	rb := slices.Clone(rebuilds[1:])
	mu.Unlock()
	t.Logf("churn of %d pod changes/s for %v: %d changes, %d tables published (%.1f/s); write→table %s",
		scaleChurnRate, churn, len(lat), gens, float64(gens)/churn.Seconds(), quantiles(lat))
	for _, k := range []string{"relabel", "create", "delete"} {
		t.Logf("  %s (%d): %s", k, len(byKind[k]), quantiles(byKind[k]))
	}
	for _, k := range []string{"write→informer", "informer→table"} {
		t.Logf("  %s: %s", k, quantiles(byKind[k]))
	}
	t.Logf("  rebuild (list, compile, publish; or update the last table) during the churn: %s; %d of %d rebuilds incremental",
		quantiles(rb), st.Incremental, st.Rebuilds)
	t.Logf("  source requests during the churn and the drain: %d (%.2f/s), %.1f MiB received (%.0f KiB/s); source events %d, rebuilds %d",
		r1-r0, float64(r1-r0)/churn.Seconds(), float64(b1-b0)/(1<<20), float64(b1-b0)/1024/churn.Seconds(), st.Events, st.Rebuilds)
	t.Logf("memory after the churn: %s; load average %s", memory(), loadavg())
	if failed > 0 {
		t.Errorf("%d changes never reached the table", failed)
	}
}

// podSeen records when an informer delivered the latest change of each
// pod (by namespace/name).
type podSeen struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (s *podSeen) note(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.at[key] = now
}

func (s *podSeen) get(key string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.at[key]
	return t, ok
}

// quantiles formats p50, p90, p99 and max of d.
func quantiles(d []time.Duration) string {
	if len(d) == 0 {
		return "none"
	}
	d = slices.Clone(d)
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))].Round(time.Millisecond) }
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v", q(0.5), q(0.9), q(0.99), d[len(d)-1].Round(time.Millisecond))
}

// runChurn changes scaleChurnRate pods per second for d, a quarter
// created, a quarter deleted and half relabeled, from its own client (not
// counted), and measures for each change the time from the start of the
// write that the table must reflect (the label patch, the status update
// that gives a new pod its address, the deletion) to the publication of
// the first table that reflects it. It returns the latencies, by kind,
// the number of tables published meanwhile, and how many changes never
// reached the table within 30 s after the churn.
func runChurn(ctx context.Context, t *testing.T, kubeconfig string, store *table.Store, published map[uint64]time.Time, mu *sync.Mutex,
	d time.Duration, seen *podSeen) ([]time.Duration, map[string][]time.Duration, uint64, int) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = -1, -1
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := defaultScale
	run, runs := 0, 1
	if v := os.Getenv(envScaleRun); v != "" {
		if _, err := fmt.Sscanf(v, "%d/%d", &run, &runs); err != nil || run < 0 || run >= runs {
			t.Fatalf("%s=%q: want i/n", envScaleRun, v)
		}
	}
	var pods []*churnPod
	for n := run; n < s.namespaces; n += runs {
		for p := range s.podsPerNS {
			pods = append(pods, &churnPod{ns: fmt.Sprintf("ns-%d", n), name: fmt.Sprintf("pod-%d", p), ip: netip.MustParseAddr(scalePodIP(s, n, p)), present: true})
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var pmu sync.Mutex // guards pods, the slots, pending and rng
	var pending []*churnOp
	var lat []time.Duration
	byKind := map[string][]time.Duration{}
	var errs atomic.Int64
	add := func(op *churnOp) {
		pmu.Lock()
		defer pmu.Unlock()
		pending = append(pending, op)
	}
	release := func(slot *churnPod) {
		pmu.Lock()
		defer pmu.Unlock()
		slot.busy = false
	}
	// pick returns an idle pod that exists, marked busy.
	pick := func() *churnPod {
		pmu.Lock()
		defer pmu.Unlock()
		for {
			c := pods[rng.IntN(len(pods))]
			if c.present && !c.busy {
				c.busy = true
				return c
			}
		}
	}
	created := 0
	change := func(ctx context.Context, i int) {
		pmu.Lock()
		r := rng.IntN(4)
		pmu.Unlock()
		switch r {
		case 0: // create a pod, then give it an address
			pmu.Lock()
			n := rng.IntN(s.namespaces)
			slot := &churnPod{ns: fmt.Sprintf("ns-%d", n), name: fmt.Sprintf("churn-%d-%d", run, created),
				ip: netip.MustParseAddr(fmt.Sprintf("10.%d.%d.%d", 100+run, created>>8, created&255)), busy: true}
			created++
			pmu.Unlock()
			pod, err := client.CoreV1().Pods(slot.ns).Create(ctx, scalePod(slot.ns, slot.name, fmt.Sprintf("node-%d", i%s.nodes), i), metav1.CreateOptions{})
			if err != nil {
				t.Logf("churn: create: %v", err)
				errs.Add(1)
				return
			}
			pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: slot.ip.String(), PodIPs: []corev1.PodIP{{IP: slot.ip.String()}}}
			op := &churnOp{kind: "create", start: time.Now(), slot: slot, done: func(tab *table.Table) bool {
				_, ok := tab.EndpointByAddr(slot.ip)
				return ok
			}}
			if _, err := client.CoreV1().Pods(slot.ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
				t.Logf("churn: set status: %v", err)
				errs.Add(1)
				return
			}
			add(op)
		case 1: // delete a pod
			slot := pick()
			op := &churnOp{kind: "delete", start: time.Now(), slot: slot, done: func(tab *table.Table) bool {
				_, ok := tab.EndpointByAddr(slot.ip)
				return !ok
			}}
			if err := kubetest.DeletePod(ctx, client, slot.ns, slot.name); err != nil {
				t.Logf("churn: %v", err)
				errs.Add(1)
				release(slot)
				return
			}
			add(op)
		default: // relabel a pod
			slot := pick()
			rev := strconv.Itoa(i)
			op := &churnOp{kind: "relabel", start: time.Now(), slot: slot, done: func(tab *table.Table) bool {
				ep, ok := tab.EndpointByAddr(slot.ip)
				return ok && tab.Endpoint(ep).Labels["rev"] == rev
			}}
			patch := fmt.Appendf(nil, `{"metadata":{"labels":{"rev":%q}}}`, rev)
			if _, err := client.CoreV1().Pods(slot.ns).Patch(ctx, slot.name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Logf("churn: relabel: %v", err)
				errs.Add(1)
				release(slot)
				return
			}
			add(op)
		}
	}

	// The checker looks at every new table for the pending changes it
	// reflects.
	checkDone := make(chan struct{})
	var gens uint64
	var checker sync.WaitGroup
	checker.Go(func() {
		var last uint64
		var firstGen uint64
		for {
			select {
			case <-checkDone:
				gens = last - firstGen
				return
			case <-time.After(time.Millisecond):
			}
			tab := store.Load()
			if firstGen == 0 {
				firstGen = tab.Generation()
				last = firstGen
			}
			gen := tab.Generation()
			mu.Lock()
			at, ok := published[gen]
			mu.Unlock()
			if !ok {
				at = time.Now()
			}
			last = gen
			pmu.Lock()
			keep := pending[:0]
			for _, op := range pending {
				if !op.done(tab) {
					keep = append(keep, op)
					continue
				}
				l := max(at.Sub(op.start), 0)
				lat = append(lat, l)
				byKind[op.kind] = append(byKind[op.kind], l)
				if when, ok := seen.get(op.slot.ns + "/" + op.slot.name); ok && !when.Before(op.start) && !when.After(at) {
					byKind["write→informer"] = append(byKind["write→informer"], when.Sub(op.start))
					byKind["informer→table"] = append(byKind["informer→table"], at.Sub(when))
				}
				op.slot.busy = false
				switch op.kind {
				case "create":
					op.slot.present = true
					pods = append(pods, op.slot)
				case "delete":
					op.slot.present = false
				}
			}
			clear(pending[len(keep):])
			pending = keep
			pmu.Unlock()
		}
	})

	var writers sync.WaitGroup
	tick := time.NewTicker(time.Second / scaleChurnRate)
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-tick.C:
		}
		writers.Go(func() { change(ctx, i) })
	}
	tick.Stop()
	writers.Wait()
	// Drain: every change must reach the table.
	deadline := time.Now().Add(30 * time.Second)
	for {
		pmu.Lock()
		n := len(pending)
		pmu.Unlock()
		if n == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(checkDone)
	checker.Wait()
	pmu.Lock()
	defer pmu.Unlock()
	if e := errs.Load(); e > 0 {
		t.Errorf("%d churn writes failed", e)
	}
	return lat, byKind, gens, len(pending)
}
