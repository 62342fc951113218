package policy_test

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podgate/podgate/policy"
)

// TestTrustedCompileAgreesAndKeepsInputs: a cluster that the API server
// would accept compiles to the same verdicts trusted (selectors of
// matchLabels built without validation, defaulted policies not copied)
// and untrusted, and neither compile modifies its input.
func TestTrustedCompileAgreesAndKeepsInputs(t *testing.T) {
	c := scaleCluster(20, 5, 60)
	// Policies as the API server stores them (defaulted), and one that
	// still needs its defaults, with set-based selectors.
	for i, np := range c.Policies {
		c.Policies[i] = policy.DefaultNetworkPolicy(np)
	}
	raw := mustPolicy(t, npHeader+`spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [app-1, app-2]}]}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: team-1}}, podSelector: {}}], ports: [{port: 80}]}]
  egress: [{to: [{podSelector: {matchLabels: {tier: web}}}]}]`)
	raw.Namespace = ""
	c.Policies = append(c.Policies, raw, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns-3", Name: "all"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	})
	before := &policy.Cluster{}
	for _, np := range c.Policies {
		before.Policies = append(before.Policies, np.DeepCopy())
	}
	for _, p := range c.Pods {
		before.Pods = append(before.Pods, p.DeepCopy())
	}
	untrusted := mustCompile(t, c)
	trusted, err := policy.CompileWith(c, policy.Options{Trusted: true})
	if err != nil {
		t.Fatal(err)
	}
	if !apiequality.Semantic.DeepEqual(before.Policies, c.Policies) || !apiequality.Semantic.DeepEqual(before.Pods, c.Pods) {
		t.Fatal("compiling modified its input")
	}
	if u, tr := untrusted.Stats(), trusted.Stats(); u.Identities != tr.Identities || u.Groups != tr.Groups || u.Rules != tr.Rules {
		t.Fatalf("stats differ: untrusted %+v, trusted %+v", u, tr)
	}
	for _, q := range queries(untrusted, 4000) {
		if u, tr := untrusted.Lookup(q.src, q.dst, q.proto, q.port), trusted.Lookup(q.src, q.dst, q.proto, q.port); u != tr {
			t.Fatalf("%v → %v %v/%d: untrusted %+v, trusted %+v", q.src, q.dst, q.proto, q.port, u, tr)
		}
	}
}
