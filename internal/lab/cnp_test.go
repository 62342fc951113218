package lab

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podgate/podgate/policy/table"
)

// The article's scenario one step further, with ClusterNetworkPolicies
// (deploy/examples/aks-network-policies/cluster-network-policies): an
// Admin-tier Deny to the instance metadata service, an OutsideHost at
// 169.254.169.254, and a Baseline-tier default deny for frontend, which
// governs webpod (no NetworkPolicy selects it).

const articleCNP = articleDir + "/cluster-network-policies"

// The rules the agents name in their records of denied flows.
const (
	imdsRule         = `ClusterNetworkPolicy deny-instance-metadata egress[0] "deny-imds" (Admin tier, priority 10)`
	baselineEgress   = `ClusterNetworkPolicy frontend-default-deny egress[1] "deny-everything-else" (Baseline tier, priority 100)`
	baselineIngress  = `ClusterNetworkPolicy frontend-default-deny ingress[0] "deny-from-pods" (Baseline tier, priority 100)`
	imds, webpod     = "imds", "frontend/webpod"
	dbpod, dbpodFile = "backend/dbpod", "dbpod-policy.yaml"
)

// TestClusterNetworkPolicyArticle builds the scenario on one node and on
// the article's three, and checks with real connections that podgate
// enforces the cluster policies: every observation matches the policy
// engine; every pod is denied the metadata service (which it reaches
// without the agent) by the Admin rule, as the agents' flow records say;
// webpod's egress is denied by the Baseline rule while the article's pods
// are judged by their NetworkPolicies; and once dbpod has no policy of its
// own, its connection to webpod is denied by webpod's Baseline ingress.
func TestClusterNetworkPolicyArticle(t *testing.T) {
	bin, extra := buildPodgate(t)
	for _, tc := range []struct{ name, dir string }{
		{"OneNode", articleDir},
		{"ThreeNodes", articleThreeNodes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			l := NewForTest(t, Spec{Manifests: []string{tc.dir, articleCNP}, Prefix: testPrefix})
			tcp80 := table.PortSpec{Port: 80, Protocol: table.TCP}
			var pods []*Endpoint
			for _, ep := range l.Endpoints() {
				if ep.Kind == KindPod {
					pods = append(pods, ep)
				}
			}
			if len(pods) != 4 {
				t.Fatalf("%d pods, want 4", len(pods))
			}
			if ep, ok := l.Endpoint("169.254.169.254"); !ok || ep.Kind != KindOutside {
				t.Fatalf("169.254.169.254 is not an outside host of the lab: %v", ep)
			}
			// Without the agent, the lab's routing takes every pod to the
			// metadata service: what the agent denies later is policy.
			for _, p := range pods {
				ok, err := l.Probe(ctx, p.Name, imds, tcp80)
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					t.Errorf("without an agent, %s does not reach %s: the lab does not route 169.254.169.254", p.Name, imds)
				}
			}
			if t.Failed() {
				t.FailNow()
			}

			if err := l.StartAgent(ctx, bin, extra(l)...); err != nil {
				t.Fatal(err)
			}
			results, err := l.Matrix(ctx, allPorts)
			if err != nil {
				t.Fatal(err)
			}
			var tab strings.Builder
			if err := WriteTable(&tab, results); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s\n%s", Summarize(results), tab.String())
			for _, r := range Mismatches(results) {
				t.Errorf("%s %s", r.Mark(), r.String())
			}

			// What each denial must name, and what must work.
			var denied []*Result
			for i := range results {
				r := &results[i]
				switch {
				case r.FromKind == KindPod && r.To == imds:
					denied = append(denied, r)
				case r.From == webpod && r.To != webpod:
					denied = append(denied, r)
				case r.FromKind == KindPod && !r.Expected:
					denied = append(denied, r) // the article's NetworkPolicies
				case r.FromKind == KindOutside && r.To == webpod && !r.Observed:
					t.Errorf("%s: the Baseline ingress Deny matches pods only, yet it failed", r.String())
				}
			}
			waitAttributed(t, l, results)
			for _, r := range denied {
				switch {
				case r.To == imds:
					checkDenial(t, r, "egress", r.FromNode, imdsRule)
				case r.From == webpod:
					checkDenial(t, r, "egress", r.FromNode, baselineEgress)
				case r.DeniedBy != nil && r.DeniedBy.Direction == "ingress":
					checkDenial(t, r, "ingress", r.ToNode, "")
				default:
					checkDenial(t, r, "egress", r.FromNode, "")
				}
			}
			for _, pair := range [][2]string{{"frontend/apppod", "frontend/apipod"}, {"frontend/apipod", dbpod}} {
				if r := find(results, pair[0], pair[1], tcp80); r == nil || !r.Observed {
					t.Errorf("%s -> %s: the pods' NetworkPolicies allow it over the Baseline deny: %v", pair[0], pair[1], r)
				}
			}

			// dbpod without its NetworkPolicy: its egress is no longer
			// isolated, and backend is not under the Baseline tier; what
			// stops it at webpod is webpod's Baseline ingress Deny.
			names, err := l.ManifestNames()
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(names, func(n string) bool { return strings.HasSuffix(n, "-"+dbpodFile) })
			if i < 0 {
				t.Fatalf("no %s among %v", dbpodFile, names)
			}
			if err := l.RemoveManifest(names[i]); err != nil {
				t.Fatal(err)
			}
			waitObserved(t, l, dbpod, "testvm", tcp80, true)
			after := make([]Result, 0, 3)
			for _, to := range []string{webpod, imds, "frontend/apipod"} {
				r, err := l.ProbeResult(ctx, dbpod, to, tcp80)
				if err != nil {
					t.Fatal(err)
				}
				if !r.OK() {
					t.Errorf("%s %s", r.Mark(), r.String())
				}
				after = append(after, r)
			}
			waitAttributed(t, l, after)
			dbNode := after[0].FromNode
			checkDenial(t, &after[0], "ingress", after[0].ToNode, baselineIngress)
			checkDenial(t, &after[1], "egress", dbNode, imdsRule)
			if !after[2].Observed {
				t.Errorf("%s: apipod's NetworkPolicy admits backend", after[2].String())
			}
		})
	}
}

// checkDenial requires r to have been denied by the agent of node on side
// dir, naming want (or, for want "", NetworkPolicies only: the article's
// pods are judged by theirs, on either side).
func checkDenial(t *testing.T, r *Result, dir, node, want string) {
	t.Helper()
	if r.Observed {
		t.Errorf("%s: want denied", r.String())
		return
	}
	d := r.DeniedBy
	if d == nil {
		t.Errorf("%s: no agent recorded the denial", r.String())
		return
	}
	if d.Direction != dir || d.Node != node {
		t.Errorf("%s: denied on the %s side at node %s, want %s at %s", r.String(), d.Direction, d.Node, dir, node)
	}
	if want == "" {
		for _, p := range d.Policies {
			if strings.HasPrefix(p, "ClusterNetworkPolicy") {
				t.Errorf("%s: named %q, want the NetworkPolicies", r.String(), p)
			}
		}
		if len(d.Policies) == 0 {
			t.Errorf("%s: the record names no policy", r.String())
		}
		return
	}
	if !slices.Equal(d.Policies, []string{want}) {
		t.Errorf("%s: the record names %q, want %q", r.String(), d.Policies, want)
	}
}

// waitAttributed attributes the denied results from the agents' flow
// records, asking again for those still without one: a busy agent may
// record a denial well after the probe (up to a generous 30s).
func waitAttributed(t *testing.T, l *Lab, results []Result) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := l.Attribute(context.Background(), results); err != nil {
			t.Fatal(err)
		}
		missing := slices.ContainsFunc(results, func(r Result) bool { return !r.Observed && r.DeniedBy == nil })
		if !missing || time.Now().After(deadline) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitObserved probes from -> to until the observation is want, for a
// generous 30s (the agent applies a changed manifest directory after its
// debounce).
func waitObserved(t *testing.T, l *Lab, from, to string, p table.PortSpec, want bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := l.ProbeResult(context.Background(), from, to, p)
		if err != nil {
			t.Fatal(err)
		}
		if r.Expected != want {
			t.Fatalf("%s: the lab's expectation is not %v", r.String(), want)
		}
		if r.Observed == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not apply the change within 30s: %s", r.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// find returns the result of from -> to on p, or nil.
func find(results []Result, from, to string, p table.PortSpec) *Result {
	for i := range results {
		if r := &results[i]; r.From == from && r.To == to && r.Port == p {
			return r
		}
	}
	return nil
}
