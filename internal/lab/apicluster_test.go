package lab

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/podgate/podgate/internal/test/kubetest"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// Several agents, one real API server: the article's three pods on three
// nodes, an agent on each with its own --node-name, all watching one
// kube-apiserver and etcd.

// apiCluster is the article's three-node cluster whose agents read a
// real API server, and a copy of its manifests that the test edits in
// step with what it writes to the API, for the lab's expectations.
type apiCluster struct {
	l      *Lab
	env    *kubetest.Env
	client kubernetes.Interface
	dir    string // the manifests as the API holds them
}

// clusterThroughAPI starts a real kube-apiserver (the article's Service
// range), creates the objects of articleThreeNodes and of extra (more
// manifest files, copied into the cluster's directory) in it, builds the
// three-node lab from the same manifests and starts an agent on every
// node on the API (the lab relays each node's namespace to the API
// server, see Spec.AgentKubeconfig).
func clusterThroughAPI(t *testing.T, extra map[string]string) *apiCluster {
	t.Helper()
	bin, args := buildPodgate(t)
	env := kubetest.StartWithOptions(t, kubetest.Options{APIServerFlags: []string{"--service-cluster-ip-range=10.1.0.0/24"}})
	dir := copyManifestDir(t, articleThreeNodes)
	for name, data := range extra {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	createManifests(t, env, dir)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubetest.WriteKubeconfig(kubeconfig, env.Config()); err != nil {
		t.Fatal(err)
	}
	l := NewForTest(t, Spec{Manifests: []string{dir}, Prefix: testPrefix, AgentKubeconfig: kubeconfig, ProbeTimeout: time.Second})
	if got := len(l.Nodes()); got != 3 {
		t.Fatalf("%d nodes, want 3", got)
	}
	if err := l.StartAgent(context.Background(), bin, args(l)...); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Nodes() {
		if !slices.ContainsFunc(agentArgs(t, n), func(a string) bool { return a == n.Name() }) {
			t.Errorf("node %s: the agent does not run with --node-name %s", n.Name(), n.Name())
		}
	}
	return &apiCluster{l: l, env: env, client: env.Client(), dir: dir}
}

// agentArgs returns the command line of node n's agent.
func agentArgs(t *testing.T, n *Node) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n.AgentPID()))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// expect recompiles the lab's expectations from the cluster's manifest
// directory (after the test has edited it).
func (c *apiCluster) expect(t *testing.T) {
	t.Helper()
	if err := c.l.Apply(c.dir); err != nil {
		t.Fatal(err)
	}
}

// changed returns the results of before whose expectation differs under
// the lab's current one: the pairs a change affects.
func changed(l *Lab, before []Result) []Result {
	e := l.Expectation()
	var out []Result
	for _, r := range before {
		if r2 := r; e(&r2) != r.Expected {
			r2.Expected = !r.Expected
			out = append(out, r2)
		}
	}
	return out
}

// probing is how converge probes a pair: each probe bounded by timeout
// at first (short, so that the wait follows the change closely; after
// every 10 probes that disagree the bound doubles, up to 1s, so that a
// slow machine's connections are not taken for denials for ever), and a
// new probe every interval while fewer than inFlight run; with inFlight
// 1, one probe after the other.
type probing struct {
	timeout, interval time.Duration
	inFlight          int
}

// converge probes each of pairs (From, To, Port) again and again, each
// pair in a goroutine of its own, until two probes in a row (in the order
// they started, none started before them still running) observe what the
// lab now expects: two, so that a connection that was merely slow does
// not pass for a denial. It returns for each pair how long after start
// the first of those two showed the new verdict: an allowed probe when it
// had its answer, a denied one when it began (its first packet was
// dropped). It fails the test if a pair has not converged within.
func converge(t *testing.T, l *Lab, pairs []Result, start time.Time, how probing, within time.Duration) []time.Duration {
	t.Helper()
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(within))
	defer cancel()
	out := make([]time.Duration, len(pairs))
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Go(func() { out[i], errs[i] = convergePair(ctx, l, p, start, how) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			p := pairs[i]
			t.Errorf("%s -> %s %s: %v", p.From, p.To, p.Port, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// convergePair is converge for one pair.
func convergePair(ctx context.Context, l *Lab, p Result, start time.Time, how probing) (time.Duration, error) {
	type done struct {
		id  int
		r   Result
		err error
	}
	type sample struct {
		started, seen time.Time
		agree         bool
	}
	results := make(chan done, how.inFlight)
	pending := map[int]time.Time{} // started, by probe
	var samples []sample           // finished, in the order they started
	var last Result
	bound, misses, next := how.timeout, 0, 0
	launch := func() {
		id := next
		next++
		pending[id] = time.Now()
		go func() {
			r, err := l.ProbeResultWithin(ctx, p.From, p.To, p.Port, bound)
			results <- done{id, r, err}
		}()
	}
	tick := time.NewTicker(how.interval)
	defer tick.Stop()
	launch()
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("not as expected after %v (last probe: %s %s)", time.Since(start).Round(time.Millisecond), last.String(), last.Detail)
		case <-tick.C:
			if len(pending) < how.inFlight {
				launch()
			}
			continue
		case d := <-results:
			delete(pending, d.id)
			if ctx.Err() != nil {
				continue
			}
			if d.err != nil {
				return 0, d.err
			}
			last = d.r
			s := sample{started: d.r.Started, seen: d.r.Started, agree: d.r.Observed == d.r.Expected}
			if d.r.Observed {
				s.seen = s.seen.Add(d.r.Elapsed)
			}
			if !s.agree {
				if misses++; misses%10 == 0 {
					bound = min(2*bound, time.Second)
				}
			}
			i, _ := slices.BinarySearchFunc(samples, s, func(a, b sample) int { return a.started.Compare(b.started) })
			samples = slices.Insert(samples, i, s)
		}
		// The earliest two agreeing probes in a row, with none started
		// before the second still running.
		for i := 0; i+1 < len(samples); i++ {
			if !samples[i].agree || !samples[i+1].agree {
				continue
			}
			if slices.ContainsFunc(slices.Collect(maps.Values(pending)), func(st time.Time) bool { return st.Before(samples[i+1].started) }) {
				break
			}
			return samples[i].seen.Sub(start), nil
		}
		if len(pending) < how.inFlight && how.inFlight == 1 {
			launch()
		}
	}
}

// checkMatrix runs the whole matrix and fails on every probe that is not
// as the lab expects; it returns the results.
func checkMatrix(t *testing.T, l *Lab, what string) []Result {
	t.Helper()
	results, err := l.Matrix(context.Background(), allPorts)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(results), 60; got != want {
		t.Errorf("%s: %d probes, want %d", what, got, want)
	}
	for _, r := range Mismatches(results) {
		t.Errorf("%s: %s %s", what, r.Mark(), r.String())
	}
	if t.Failed() {
		t.FailNow()
	}
	return results
}

// nodesOf returns the nodes whose agents judge the results: the source's
// (egress) and the destination's (ingress) of pods.
func nodesOf(results []Result) []string {
	var out []string
	for _, r := range results {
		for _, n := range []string{r.FromNode, r.ToNode} {
			if n != "" && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out
}

// step applies one change: edit (the manifests, for the expectations),
// then write (the same change through the API). It waits until every pair
// whose expectation changed observes the new one (there must be some),
// then checks the whole matrix, and returns its results.
func (c *apiCluster) step(t *testing.T, what string, before []Result, edit func(), write func(ctx context.Context) error) []Result {
	t.Helper()
	edit()
	c.expect(t)
	affected := changed(c.l, before)
	return c.stepPairs(t, what, affected, write)
}

// stepPairs is step with the affected pairs given.
func (c *apiCluster) stepPairs(t *testing.T, what string, affected []Result, write func(ctx context.Context) error) []Result {
	t.Helper()
	if len(affected) == 0 {
		t.Fatalf("%s: changes no probe's expectation", what)
	}
	if err := write(context.Background()); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	start := time.Now()
	took := converge(t, c.l, affected, start, probing{timeout: 500 * time.Millisecond, interval: 500 * time.Millisecond, inFlight: 1}, 30*time.Second)
	t.Logf("%s: %d probe(s) changed (pairs on %s), all as expected %v after the API write",
		what, len(affected), strings.Join(nodesOf(affected), ", "), slices.Max(took).Round(time.Millisecond))
	return checkMatrix(t, c.l, what)
}

// TestClusterThroughAPIServer: the article's three pods on three nodes,
// an agent on each, one real API server. The matrix is as the policies
// say, each denial recorded by the agent of the node that owns the
// denying side. Then, through the API, each change followed by real
// probes until the affected pairs show the new behaviour and the whole
// matrix agrees:
//
//   - delete dbpod-policy (the DB pod accepts everything its peers'
//     egress allows);
//   - create it again, now admitting the API pod from namespaces labelled
//     team=frontend, which no namespace is (the API pod is denied);
//   - label the frontend namespace team=frontend (it is admitted again);
//   - move the App pod: delete it, and create it on another node with
//     the same labels and a new address, the lab moving its veth
//     ([Lab.MovePod]).
func TestClusterThroughAPIServer(t *testing.T) {
	c := clusterThroughAPI(t, nil)
	results := checkMatrix(t, c.l, "initially")
	checkDenials(t, results)
	if nodes := nodesOf(results); len(nodes) != 3 {
		t.Fatalf("the pods are on %v, want 3 nodes", nodes)
	}

	results = c.step(t, "delete dbpod-policy", results,
		func() {
			if err := os.Remove(filepath.Join(c.dir, "dbpod-policy.yaml")); err != nil {
				t.Fatal(err)
			}
		},
		func(ctx context.Context) error {
			return c.client.NetworkingV1().NetworkPolicies("backend").Delete(ctx, "dbpod-policy", metav1.DeleteOptions{})
		})

	recreated := strings.Replace(dbpodPolicy(t), "kubernetes.io/metadata.name: frontend", "team: frontend", 1)
	results = c.step(t, "create dbpod-policy again, from namespaces with team=frontend", results,
		func() {
			if err := os.WriteFile(filepath.Join(c.dir, "dbpod-policy.yaml"), []byte(recreated), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		func(ctx context.Context) error {
			m, err := policy.Load(filepath.Join(c.dir, "dbpod-policy.yaml"))
			if err != nil {
				return err
			}
			np := m.Policies[0].DeepCopy()
			np.ResourceVersion = ""
			_, err = c.client.NetworkingV1().NetworkPolicies("backend").Create(ctx, np, metav1.CreateOptions{})
			return err
		})

	results = c.step(t, "label namespace frontend team=frontend", results,
		func() {
			editManifest(t, c.dir, "namespaces.yaml", "  name: frontend\n", "  name: frontend\n  labels:\n    team: frontend\n")
		},
		func(ctx context.Context) error {
			_, err := c.client.CoreV1().Namespaces().Patch(ctx, "frontend", types.MergePatchType,
				[]byte(`{"metadata":{"labels":{"team":"frontend"}}}`), metav1.PatchOptions{})
			return err
		})
	checkDenials(t, results)

	// The move: delete the pod (at once: no kubelet confirms a graceful
	// delete), CNI DEL and ADD on the new node, the pod created there
	// with the same labels and its new address.
	var involved []Result
	for _, r := range results {
		if r.From == "frontend/apppod" || r.To == "frontend/apppod" {
			involved = append(involved, r)
		}
	}
	to, ip := moveAppPod(t, c.dir)
	c.expect(t)
	old, err := c.client.CoreV1().Pods("frontend").Get(context.Background(), "apppod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	results = c.stepPairs(t, "move frontend/apppod to "+to+" as "+ip.String(), involved, func(ctx context.Context) error {
		zero := int64(0)
		if err := c.client.CoreV1().Pods("frontend").Delete(ctx, "apppod", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return err
		}
		if err := c.l.MovePod("frontend/apppod", to, []netip.Addr{ip}); err != nil {
			return err
		}
		_, err := kubetest.CreatePod(ctx, c.client, kubetest.NewPod("frontend", "apppod", to, old.Labels), kubetest.PodStatus{IPs: []string{ip.String()}})
		return err
	})
	checkDenials(t, results)
	for _, r := range results {
		if r.To == "frontend/apppod" && (r.ToNode != to || r.Dst != ip) {
			t.Fatalf("%s: want the App pod at %s on %s", r.String(), ip, to)
		}
	}
}

// dbpodPolicy returns the article's dbpod-policy.yaml.
func dbpodPolicy(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(articleThreeNodes, "dbpod-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// toggleManifest is the policies of TestClusterWriteToEnforce: TCP 9000
// of each of the article's three pods admits the pods labelled
// role=client (the API pod admits anything of 10.0.0.0/16 on it once it
// is labelled role=client itself), and the API pod may reach the App pod
// on it; so labelling the API pod role=client, or not, changes a verdict
// at each node:
//
//   - apipod -> dbpod:9000: the DB pod's ingress, at aks-nodepool1-0;
//   - apppod -> apipod:9000: the API pod's ingress, at aks-nodepool1-1;
//   - apipod -> apppod:9000: the App pod's ingress, at aks-nodepool1-2.
const toggleManifest = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-9000-from-clients
  namespace: backend
spec:
  podSelector:
    matchLabels:
      run: dbpod
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          role: client
    ports:
    - {protocol: TCP, port: 9000}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: clients-9000
  namespace: frontend
spec:
  podSelector:
    matchLabels:
      role: client
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock:
        cidr: 10.0.0.0/16
    ports:
    - {protocol: TCP, port: 9000}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: app-9000-from-clients
  namespace: frontend
spec:
  podSelector:
    matchLabels:
      run: apppod
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: client
    ports:
    - {protocol: TCP, port: 9000}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api-to-app-9000
  namespace: frontend
spec:
  podSelector:
    matchLabels:
      run: apipod
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels:
          run: apppod
    ports:
    - {protocol: TCP, port: 9000}
`

// writeProbing is how TestClusterWriteToEnforce probes (see converge): a
// new probe every 10ms, each bounded by 150ms at first (an allowed probe
// takes a few milliseconds here), so a change is seen within about 10ms
// whichever way it goes.
var writeProbing = probing{timeout: 150 * time.Millisecond, interval: 10 * time.Millisecond, inFlight: 16}

// EnvClusterWrites is the number of API writes TestClusterWriteToEnforce
// measures (default 10; `make bench-cluster` sets 120).
const EnvClusterWrites = "PODGATE_CLUSTER_WRITES"

// TestClusterWriteToEnforce measures, with real probes as proof, how long
// it takes from an API write until every agent it concerns enforces it:
// the article's three-node cluster on one real API server with the
// policies of toggleManifest; each write labels the API pod role=client,
// or removes the label, which changes one verdict at each of the three
// nodes (see toggleManifest). From the moment the API call returns, each
// node's verdict is probed every 10ms ([writeProbing]; two probes in a
// row must agree) until it is the new one; the write's latency is the
// slowest of the three. Meanwhile each agent's podgate_table_generation
// is scraped every 25ms (for at most 5s), for the time each agent
// published a new table.
// The test logs p50, p90, p99 and max; it fails only if an agent does
// not enforce a write within 30s, never on the numbers.
func TestClusterWriteToEnforce(t *testing.T) {
	writes := 10
	if s := os.Getenv(EnvClusterWrites); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 2 {
			t.Fatalf("%s=%q: want a number of writes, at least 2", EnvClusterWrites, s)
		}
		writes = n
	}
	c := clusterThroughAPI(t, map[string]string{"toggle.yaml": toggleManifest})
	l := c.l
	port := table.PortSpec{Port: 9000, Protocol: table.TCP}
	pairs := []Result{
		{From: "frontend/apipod", To: "backend/dbpod", Port: port},
		{From: "frontend/apppod", To: "frontend/apipod", Port: port},
		{From: "frontend/apipod", To: "frontend/apppod", Port: port},
	}
	judges := make([]*Node, len(pairs)) // the node whose agent's verdict changes: the destination's
	for i, p := range pairs {
		ep, ok := l.Endpoint(p.To)
		if !ok {
			t.Fatalf("no %s", p.To)
		}
		judges[i] = node(t, l, ep.Node)
	}
	if nodes := []string{judges[0].Name(), judges[1].Name(), judges[2].Name()}; len(slices.Compact(slices.Sorted(slices.Values(nodes)))) != 3 {
		t.Fatalf("the toggled verdicts are judged at %v, want three nodes", nodes)
	}
	labelled := copyManifestDir(t, c.dir)
	editManifest(t, labelled, "pods.yaml", "    run: apipod\n", "    run: apipod\n    role: client\n")
	// Each state's expectation must be the opposite of the other's on
	// every pair (checked against the policy engine, not assumed), and
	// every pair starts as expected.
	for _, dir := range []string{labelled, c.dir} {
		if err := l.Apply(dir); err != nil {
			t.Fatal(err)
		}
		for _, p := range pairs {
			r, err := l.ProbeResult(context.Background(), p.From, p.To, p.Port)
			if err != nil {
				t.Fatal(err)
			}
			if want := dir == labelled; r.Expected != want {
				t.Fatalf("%s: expected %v with the API pod labelled %v", r.String(), r.Expected, want)
			}
			if dir == c.dir && r.Observed != r.Expected {
				t.Fatalf("before the first write: %s", r.String())
			}
		}
	}

	var total, gens []time.Duration
	byWay := map[bool][]time.Duration{} // by whether the write labels (allows)
	perNode := make([][]time.Duration, len(pairs))
	for i := range writes {
		on := i%2 == 0
		dir, patch := c.dir, `{"metadata":{"labels":{"role":null}}}`
		if on {
			dir, patch = labelled, `{"metadata":{"labels":{"role":"client"}}}`
		}
		if err := l.Apply(dir); err != nil {
			t.Fatal(err)
		}
		before := make([]float64, len(judges))
		for j, n := range judges {
			before[j] = tableGeneration(t, n)
		}
		ctx, stopScrape := context.WithTimeout(context.Background(), 5*time.Second)
		published := make([]time.Time, len(judges))
		var wg sync.WaitGroup
		if _, err := c.client.CoreV1().Pods("frontend").Patch(context.Background(), "apipod", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			stopScrape()
			t.Fatal(err)
		}
		start := time.Now()
		for j, n := range judges {
			wg.Go(func() { published[j] = watchGeneration(ctx, n, before[j]) })
		}
		took := converge(t, l, pairs, start, writeProbing, 30*time.Second)
		wg.Wait()
		stopScrape()
		for j, d := range took {
			perNode[j] = append(perNode[j], d)
		}
		total = append(total, slices.Max(took))
		byWay[on] = append(byWay[on], slices.Max(took))
		for _, p := range published {
			if !p.IsZero() {
				gens = append(gens, p.Sub(start))
			}
		}
	}
	host, _ := os.Hostname()
	t.Logf("API write -> every agent enforcing, %d writes (label the API pod role=client and back), 3 agents, one verdict per node, %d CPUs, host %s:", writes, runtime.NumCPU(), host)
	t.Logf("  all three nodes enforcing (real probes): %s", quantiles(total))
	t.Logf("    label added (denied -> allowed): %s; label removed (allowed -> denied): %s", quantiles(byWay[true]), quantiles(byWay[false]))
	for j, n := range judges {
		t.Logf("  %s (%s): %s", n.Name(), pairs[j].From+" -> "+pairs[j].To, quantiles(perNode[j]))
	}
	t.Logf("  an agent's table generation changed (metrics, 25ms scrapes, %d of %d): %s", len(gens), writes*len(judges), quantiles(gens))
	t.Logf("  probes: one every %v per node (each bounded by %v at first); a write's time is when the first of two agreeing probes in a row saw the new verdict", writeProbing.interval, writeProbing.timeout)
}

// tableGeneration returns node n's agent's podgate_table_generation.
func tableGeneration(t *testing.T, n *Node) float64 {
	t.Helper()
	m, err := n.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return m.Get("podgate_table_generation")
}

// watchGeneration scrapes node n's agent's podgate_table_generation every
// 25ms until it differs from before, and returns when that was seen (zero
// if ctx ended first).
func watchGeneration(ctx context.Context, n *Node, before float64) time.Time {
	for ctx.Err() == nil {
		m, err := n.Metrics(ctx)
		if err == nil && m.Get("podgate_table_generation") != before {
			return time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(25 * time.Millisecond):
		}
	}
	return time.Time{}
}

// quantiles formats p50, p90, p99 and max of ds (nearest rank).
func quantiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))].Round(time.Millisecond)
	}
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v (n=%d)", q(0.50), q(0.90), q(0.99), s[len(s)-1].Round(time.Millisecond), len(s))
}
