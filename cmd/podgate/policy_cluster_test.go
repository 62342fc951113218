package main

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/internal/test/testutil"
)

// The article's example with the cluster policies of
// deploy/examples/aks-network-policies/cluster-network-policies: an Admin
// Deny of the instance metadata service for every pod, a Baseline default
// deny for the frontend namespace, and webpod, a frontend pod that no
// NetworkPolicy selects.
var articleCNP = filepath.Join(article, "cluster-network-policies")

func TestArticleClusterPoliciesMatrix(t *testing.T) {
	out, stderr, err := podgate(t, "policy", "matrix", "-f", article, "-f", articleCNP, "--ports", "80/TCP")
	if err != nil {
		t.Fatalf("matrix: %v\n%s", err, stderr)
	}
	want := []string{
		"80/TCP (rows: from, columns: to; . allow, X deny)",
		"                 backend/dbpod  frontend/apipod  frontend/apppod  frontend/webpod",
		"backend/dbpod    .              X                X                X",
		"frontend/apipod  .              .                X                X",
		"frontend/apppod  X              .                .                X",
		// webpod: the Baseline tier denies its egress (no NetworkPolicy
		// selects it) but for DNS, and its ingress from pods.
		"frontend/webpod  X              X                X                .",
	}
	if diff := cmp.Diff(want, tableLines(out)); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
}

func TestArticleClusterPoliciesCheck(t *testing.T) {
	const testVM, imds = "10.0.0.4", "169.254.169.254"
	imdsRule := `ClusterNetworkPolicy deny-instance-metadata egress[0] "deny-imds" (Admin tier, priority 10)`
	tests := []struct {
		from, to, proto, port string
		want                  string
		explanations          []string
		tier                  map[string]string // side -> tier
	}{
		// The Admin tier keeps every pod away from the metadata service,
		// whatever NetworkPolicy says (and before it is consulted).
		{"frontend/apipod", imds, "TCP", "80", "deny", []string{"the Admin tier decides: " + imdsRule + " denies it (Deny)"}, map[string]string{"egress": "Admin"}},
		{"backend/dbpod", imds, "TCP", "80", "deny", []string{imdsRule}, map[string]string{"egress": "Admin"}},
		{"frontend/webpod", imds, "UDP", "53", "deny", []string{imdsRule}, map[string]string{"egress": "Admin"}},
		// The Baseline default deny governs webpod, which no
		// NetworkPolicy selects.
		{"frontend/webpod", "frontend/apipod", "TCP", "80", "deny", []string{
			"no NetworkPolicy with policyType Egress selects frontend/webpod",
			`the Baseline tier decides: ClusterNetworkPolicy frontend-default-deny egress[1] "deny-everything-else" (Baseline tier, priority 100) denies it (Deny)`,
		}, map[string]string{"egress": "Baseline", "ingress": "NetworkPolicy"}},
		{"frontend/apppod", "frontend/webpod", "TCP", "80", "deny", []string{
			`the Baseline tier decides: ClusterNetworkPolicy frontend-default-deny ingress[0] "deny-from-pods" (Baseline tier, priority 100) denies it (Deny)`,
		}, map[string]string{"egress": "NetworkPolicy", "ingress": "Baseline"}},
		// ClusterNetworkPolicy ingress peers are pods: the test VM is not
		// matched, and the default allows.
		{testVM, "frontend/webpod", "TCP", "80", "allow", []string{
			"no rule of the Baseline tier (ClusterNetworkPolicy frontend-default-deny, priority 100) matches", "all ingress is allowed by default",
		}, map[string]string{"ingress": "default"}},
		// The article's pods keep their NetworkPolicies: the Baseline tier
		// does not apply to them.
		{testVM, "frontend/apipod", "TCP", "80", "allow", []string{"allowed by frontend/apipod-policy ingress[0]"}, map[string]string{"ingress": "NetworkPolicy"}},
		{"frontend/apipod", "backend/dbpod", "TCP", "80", "allow", []string{"allowed by frontend/apipod-policy egress[0]", "allowed by backend/dbpod-policy ingress[0]"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.from+" to "+tc.to+" "+tc.port+"/"+tc.proto, func(t *testing.T) {
			args := []string{"policy", "check", "-f", article, "-f", articleCNP, "--from", tc.from, "--to", tc.to, "--protocol", tc.proto, "--port", tc.port}
			runCheck(t, args, tc.want, tc.explanations)
			jout, _, _ := podgate(t, append(args, "-o", "json")...)
			var e struct {
				Verdict string
				Egress  struct{ Tier string }
				Ingress struct{ Tier string }
			}
			if err := json.Unmarshal([]byte(jout), &e); err != nil || e.Verdict != tc.want {
				t.Fatalf("-o json verdict = %q (%v), want %q", e.Verdict, err, tc.want)
			}
			for side, tier := range tc.tier {
				got := map[string]string{"egress": e.Egress.Tier, "ingress": e.Ingress.Tier}[side]
				if got != tier {
					t.Errorf("-o json %s tier = %q, want %q", side, got, tier)
				}
			}
		})
	}
}

// TestCheckExplainsPass: an Admin Pass hands the decision to NetworkPolicy
// and, for pods no NetworkPolicy selects, to the Baseline tier.
func TestCheckExplainsPass(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "cnp.yaml"), `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: backend-decides}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: backend}}}
  ingress:
  - name: frontend-to-backend
    action: Pass
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: frontend}}}]
  - name: nothing-else
    action: Deny
    from: [{namespaces: {}}]
`)
	base := []string{"policy", "check", "-f", article, "-f", dir, "--to", "backend/dbpod", "--port", "80"}
	out, _, err := podgate(t, append(base, "--from", "frontend/apipod")...)
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	for _, w := range []string{
		`ClusterNetworkPolicy backend-decides ingress[0] "frontend-to-backend" (Admin tier, priority 5) passes it on (Pass) to NetworkPolicy and the Baseline tier`,
		"backend/dbpod is isolated for ingress by backend/dbpod-policy; allowed by backend/dbpod-policy ingress[0]",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("explanation does not say %q:\n%s", w, out)
		}
	}
	jout, _, _ := podgate(t, append(base, "--from", "frontend/apipod", "-o", "json")...)
	var e struct {
		Ingress struct {
			Tier   string
			Passed []struct {
				Policy, Name, Action, Tier string
			}
		}
	}
	if err := json.Unmarshal([]byte(jout), &e); err != nil {
		t.Fatal(err)
	}
	if e.Ingress.Tier != "NetworkPolicy" || len(e.Ingress.Passed) != 1 || e.Ingress.Passed[0].Name != "frontend-to-backend" || e.Ingress.Passed[0].Action != "Pass" || e.Ingress.Passed[0].Tier != "Admin" {
		t.Errorf("-o json ingress = %+v, want the Pass rule and the NetworkPolicy tier", e.Ingress)
	}
	// The App pod passes too, and the DB pod's NetworkPolicy denies it.
	out, _, err = podgate(t, append(base, "--from", "frontend/apppod")...)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(out, "passes it on (Pass)") || !strings.Contains(out, "no rule of it allows this") {
		t.Errorf("apppod -> dbpod: err %v, want denied by NetworkPolicy after the Pass:\n%s", err, out)
	}
}

func TestLintClusterPolicies(t *testing.T) {
	out, _, err := podgate(t, "policy", "lint", "-f", article, "-f", articleCNP)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{
		"ClusterNetworkPolicy frontend-default-deny: spec.ingress[0]: Baseline Deny in force: no NetworkPolicy with policyType Ingress selects pod frontend/webpod, so no NetworkPolicy relaxes it",
		"ClusterNetworkPolicy frontend-default-deny: spec.egress[1]: Baseline Deny in force: no NetworkPolicy with policyType Egress selects pod frontend/webpod",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("lint does not say %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "deny-instance-metadata") {
		t.Errorf("lint warns about the Admin Deny of the metadata service:\n%s", out)
	}

	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "cnp.yaml"), `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: a-frontend}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: frontend}}}
  egress:
  - {action: Accept, to: [{namespaces: {}}]}
  - {action: Deny, to: [{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: backend}}, podSelector: {}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: b-api}
spec:
  tier: Admin
  priority: 7
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {run: apipod}}}}
  egress:
  - {action: Deny, to: [{networks: [10.0.0.0/16]}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: nobody}
spec:
  priority: 3
  subject: {namespaces: {matchLabels: {team: none}}}
  ingress:
  - {action: Deny, from: [{namespaces: {matchLabels: {team: none}}}]}
`)
	out, _, _ = podgate(t, "policy", "lint", "-f", filepath.Join(article, "pods.yaml"), "-f", filepath.Join(article, "namespaces.yaml"), "-f", dir)
	for _, w := range []string{
		"ClusterNetworkPolicy a-frontend: spec.egress[1]: is never reached for the current pods: spec.egress[0] (Accept) comes first and matches every connection it matches",
		"ClusterNetworkPolicy b-api: spec.priority: has the same priority (7) in the Admin tier as ClusterNetworkPolicy a-frontend, and both select pod frontend/apipod for egress",
		"AdminNetworkPolicy nobody: spec.subject: selects no pod",
		"AdminNetworkPolicy nobody: spec.ingress[0].from: matches no pod, node or network in the manifests",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("lint does not say %q:\n%s", w, out)
		}
	}
}

// TestClusterPolicyManifestErrors: invalid cluster policies are errors
// naming the file, the document, the object and the field.
func TestClusterPolicyManifestErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.yaml")
	testutil.WriteFile(t, p, `apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: bad}
spec:
  tier: Admin
  subject: {namespaces: {}}
  egress:
  - {action: Deny, to: [{networks: [10.0.0.1/8]}]}
`)
	_, _, err := podgate(t, "policy", "matrix", "-f", p)
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{p + ": document 2: ClusterNetworkPolicy bad: spec.priority: Required value", p + ": document 2: ClusterNetworkPolicy bad: spec.egress[0].to[0].networks[0]: Invalid value: \"10.0.0.1/8\""} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not say %q:\n%v", w, err)
		}
	}
	testutil.WriteFile(t, p, `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: fqdn}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{domainNames: [example.com]}]}
`)
	_, stderr, err := podgate(t, "policy", "lint", "-f", p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "spec.egress[0].to[0].domainNames: podgate does not implement domainNames (FQDN) peers") {
		t.Errorf("no warning about domainNames:\n%s", stderr)
	}
}
