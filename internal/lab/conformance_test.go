package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podgate/podgate/internal/test/conformance"
	"github.com/podgate/podgate/policy/table"
)

// The upstream conformance scenarios of sigs.k8s.io/network-policy-api
// (internal/test/conformance, which policy's offline test runs through the
// table) with real connections: the base topology is built once as a lab
// of two nodes (worker-0 and worker-1, the centaurs as hostNetwork pods in
// their nodes' namespaces) with an agent on each; for each test, every
// state the test puts the cluster in is written to the agents' manifest
// directory as one file, and once every agent runs a table published
// after the write, the probes of that state are real connections.

// labConformanceEnv selects the tests: unset runs labConformanceShort,
// "all" every upstream test, otherwise a comma-separated list of short
// names.
const labConformanceEnv = "PODGATE_LAB_CONFORMANCE"

// labConformanceShort is the default subset: one test of each kind (rule
// order and pass in both tiers and directions, the three protocols,
// integration with NetworkPolicy, named ports, CIDR peers and pod label
// changes).
var labConformanceShort = []string{
	"CNPAdminTierIngressTCP",
	"CNPAdminTierEgressUDP",
	"CNPBaselineTierIngressSCTP",
	"CNPAdminTierIntegration",
	"CNPBaselineTierEgressNamedPort",
	"CNPAdminTierEgressInlineCIDRPeers",
}

// confStep is one state of the cluster during a test and the probes made
// in it.
type confStep struct {
	manifest []byte
	probes   []conformance.Probe
}

// confNodeIPs and confNodeIPs6 are the addresses the lab gives the two
// nodes on its default underlay subnets (172.18.0.0/24, fd00:18::/64),
// which the world's Node objects and hostNetwork pods must have.
var (
	confNodeIPs  = []string{"172.18.0.1", "172.18.0.2"}
	confNodeIPs6 = []string{"fd00:18::1", "fd00:18::2"}
)

// TestUpstreamConformanceLab runs upstream conformance tests through the
// lab: a probe passes when the real connection does what the upstream test
// wants. It also checks the lab's own expectation (the table compiled
// from the same manifests) against the upstream test's.
func TestUpstreamConformanceLab(t *testing.T) {
	bin, extra := buildPodgate(t)
	tests := conformance.ReadTests(t)
	sel := os.Getenv(labConformanceEnv)
	switch sel {
	case "":
		tests = slices.DeleteFunc(tests, func(ct conformance.Test) bool { return !slices.Contains(labConformanceShort, ct.ShortName) })
		if len(tests) != len(labConformanceShort) {
			t.Fatalf("%d of the %d tests of the short run found upstream", len(tests), len(labConformanceShort))
		}
	case "all":
	default:
		names := strings.Split(sel, ",")
		tests = slices.DeleteFunc(tests, func(ct conformance.Test) bool { return !slices.Contains(names, ct.ShortName) })
		if len(tests) == 0 {
			t.Fatalf("%s=%s: no such upstream test", labConformanceEnv, sel)
		}
	}
	for _, fam := range []string{"IPv4", "IPv6"} {
		t.Run(fam, func(t *testing.T) { conformanceLab(t, bin, extra, tests, fam == "IPv6") })
	}
}

// conformanceLab builds the base topology of one IP family as a lab of two
// nodes with an agent on each and runs the tests through it.
func conformanceLab(t *testing.T, bin string, extra func(*Lab) []string, tests []conformance.Test, ipv6 bool) {
	nodeIPs := confNodeIPs
	if ipv6 {
		nodeIPs = confNodeIPs6
	}
	opts := conformance.Options{IPv6: ipv6, NodeIPs: nodeIPs}

	// The base topology: namespaces, nodes and pods, no policy.
	base := conformance.NewWorld(t, opts, nil)
	data, err := base.YAML()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cluster.yaml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	l := NewForTest(t, Spec{Manifests: []string{dir}, Prefix: testPrefix})
	for i, name := range conformance.NodeNames {
		n, ok := l.NodeNamed(name)
		if !ok || !slices.Equal(n.IPs(), []netip.Addr{netip.MustParseAddr(nodeIPs[i])}) {
			t.Fatalf("node %s: the lab gives it %v, the world %s", name, n, nodeIPs[i])
		}
	}
	names, err := l.ManifestNames()
	if err != nil || len(names) != 1 {
		t.Fatalf("manifest directory %v (%v): want one file", names, err)
	}
	manifest := names[0]
	ctx := context.Background()
	if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab of %d endpoints on %d nodes, agents ready, in %v", len(l.Endpoints()), len(l.Nodes()), time.Since(start).Round(time.Millisecond))

	total := conformance.Result{}
	disagree := 0
	for _, ct := range tests {
		t.Run(ct.ShortName, func(t *testing.T) {
			began := time.Now()
			// Follow the test once to record its states and probes.
			w := conformance.NewWorld(t, opts, ct.Manifests)
			var steps []*confStep
			version := -1
			recorded := conformance.Run(t, ct, w, func(w *conformance.World, p conformance.Probe) string {
				if w.Version != version || len(steps) == 0 {
					data, err := w.YAML()
					if err != nil {
						t.Fatal(err)
					}
					steps = append(steps, &confStep{manifest: data})
					version = w.Version
				}
				s := steps[len(steps)-1]
				s.probes = append(s.probes, p)
				return ""
			})
			res := conformance.Result{Probes: recorded.Probes, Failures: recorded.Failures, Unported: recorded.Unported}
			for _, s := range steps {
				if err := applyAndWait(ctx, l, manifest, s.manifest); err != nil {
					t.Fatal(err)
				}
				for _, o := range probeAll(ctx, t, l, s.probes) {
					if o.r.Expected != o.p.Want {
						disagree++
						t.Errorf("%s: the lab's table expects %v", o.p, o.r.Expected)
					}
					if o.r.Observed != o.p.Want {
						res.Failures = append(res.Failures, strings.TrimSpace(fmt.Sprintf("%s: observed %s (%s -> %s) %s", o.p, verdict(o.r.Observed), o.r.Src, o.r.Dst, o.r.Detail)))
						continue
					}
					res.Passed++
				}
			}
			for _, f := range res.Failures {
				t.Error(f)
			}
			t.Logf("%d of %d probes pass in %d states, in %v", res.Passed, res.Probes, len(steps), time.Since(began).Round(time.Millisecond))
			total.Add(res)
		})
	}
	t.Logf("%s, through the lab: %d upstream tests, %d of %d probes pass (%d unported mutations, %d disagreements of the lab's table), in %v",
		family(ipv6), len(tests), total.Passed, total.Probes, len(total.Unported), disagree, time.Since(start).Round(time.Second))
}

func family(ipv6 bool) string {
	if ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// applyAndWait writes the manifest file name (the agents' whole cluster)
// and waits until every node's agent enforces a table it published after
// the write (the generation the fastpath uses went up), for a generous
// 60s. The write is one rename, so no agent reads a half-written state.
func applyAndWait(ctx context.Context, l *Lab, name string, data []byte) error {
	gens := map[string]float64{}
	for _, n := range l.Nodes() {
		m, err := n.Metrics(ctx)
		if err != nil {
			return err
		}
		gens[n.Name()] = m.Get("podgate_table_generation")
	}
	if err := l.WriteManifest(name, data); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range l.Nodes() {
		for {
			m, err := n.Metrics(ctx)
			if err != nil {
				return err
			}
			if m.Get("podgate_table_generation") > gens[n.Name()] {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("node %s: the agent did not apply the new manifests within 60s (table generation %v)", n.Name(), gens[n.Name()])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// confObservation is a probe and what the lab observed.
type confObservation struct {
	p conformance.Probe
	r Result
}

// probeAll makes the probes, 16 at a time, each with a real connection
// from the client pod to the server pod's address; a connection the test
// wants that timed out is probed again, up to [MatrixRetries] times, as
// Matrix does (a loaded machine can lose a probe; a wrong denial fails
// every time).
func probeAll(ctx context.Context, t *testing.T, l *Lab, probes []conformance.Probe) []confObservation {
	t.Helper()
	out := make([]confObservation, len(probes))
	errs := make([]error, len(probes))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ps := table.PortSpec{Port: p.Port, Protocol: p.Protocol}
			for try := 0; ; try++ {
				r, err := l.ProbeResult(ctx, p.Client, p.Server, ps)
				if err != nil {
					errs[i] = err
					return
				}
				r.Retries = try
				out[i] = confObservation{p: p, r: r}
				if r.Observed || !p.Want || !strings.Contains(r.Detail, "timeout") || try >= MatrixRetries {
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}
