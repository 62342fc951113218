package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/internal/test/testutil"
)

const article = "../../deploy/examples/aks-network-policies"

// podgate runs the command tree with args and returns stdout, stderr and
// the error.
func podgate(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCommand(&out, &errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

type matrixEntry struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Verdict  string `json:"verdict"`
}

func TestArticleMatrixJSON(t *testing.T) {
	out, stderr, err := podgate(t, "policy", "matrix", "-f", article, "--ports", "80/TCP,81/UDP", "-o", "json")
	if err != nil {
		t.Fatalf("matrix: %v\n%s", err, stderr)
	}
	var got []matrixEntry
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not one JSON array: %v\n%s", err, out)
	}
	// Every ordered pair, a pod with itself included, for each port.
	allow := map[string]bool{
		"backend/dbpod>backend/dbpod": true, "frontend/apipod>frontend/apipod": true, "frontend/apppod>frontend/apppod": true,
		// Criterion 1 and 4: the API pod reaches the DB pod on TCP 80.
		"frontend/apipod>backend/dbpod/80/TCP": true,
		// Criterion 3 and 4: the App pod reaches the API pod on TCP 80.
		"frontend/apppod>frontend/apipod/80/TCP": true,
	}
	pods := []string{"backend/dbpod", "frontend/apipod", "frontend/apppod"}
	var want []matrixEntry
	for _, p := range []struct {
		port  int
		proto string
	}{{80, "TCP"}, {81, "UDP"}} {
		for _, from := range pods {
			for _, to := range pods {
				v := "deny"
				if allow[from+">"+to] || allow[from+">"+to+"/"+strings.Join([]string{itoa(p.port), p.proto}, "/")] {
					v = "allow"
				}
				want = append(want, matrixEntry{From: from, To: to, Port: p.port, Protocol: p.proto, Verdict: v})
			}
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("matrix (-want +got):\n%s", diff)
	}
	if !strings.Contains(stderr, "skipped OutsideHost testvm") {
		t.Errorf("stderr does not note the skipped OutsideHost:\n%s", stderr)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestArticleCriteria(t *testing.T) {
	const testVM = "10.0.0.4"
	tests := []struct {
		criterion        string
		from, to, proto  string
		port             string
		want             string
		wantExplanations []string
	}{
		// 1. DB Pod can only receive ingress request from API Pod and nothing else.
		{"1", "frontend/apipod", "backend/dbpod", "TCP", "80", "allow", []string{"allowed by backend/dbpod-policy ingress[0]"}},
		{"1", "frontend/apppod", "backend/dbpod", "TCP", "80", "deny", []string{"frontend/apppod is isolated for egress by frontend/apppod-policy"}},
		{"1", testVM, "backend/dbpod", "TCP", "80", "deny", []string{"backend/dbpod is isolated for ingress by backend/dbpod-policy"}},
		{"1", "frontend/apipod", "backend/dbpod", "TCP", "5432", "deny", nil},
		{"1", "frontend/apipod", "backend/dbpod", "UDP", "80", "deny", nil},
		// 2. Egress from DB Pod is not allowed.
		{"2", "backend/dbpod", "frontend/apipod", "TCP", "80", "deny", []string{"backend/dbpod is isolated for egress by backend/dbpod-policy"}},
		{"2", "backend/dbpod", testVM, "TCP", "22", "deny", nil},
		{"2", "backend/dbpod", "8.8.8.8", "UDP", "53", "deny", nil},
		{"2", "backend/dbpod", "frontend/apppod", "ICMP", "", "deny", nil},
		// 3. App Pod and API Pod can receive ingress request from anywhere within the VNET.
		{"3", testVM, "frontend/apppod", "TCP", "80", "allow", []string{"allowed by frontend/apppod-policy ingress[0]"}},
		{"3", testVM, "frontend/apipod", "TCP", "80", "allow", []string{"allowed by frontend/apipod-policy ingress[0]"}},
		{"3", "10.0.255.254", "frontend/apipod", "TCP", "80", "allow", nil},
		{"3", "10.1.0.4", "frontend/apipod", "TCP", "80", "deny", nil}, // outside the VNET
		{"3", testVM, "frontend/apppod", "TCP", "443", "deny", nil},    // the policies name TCP 80 only
		// 4. Egress from App Pod to API Pod and API Pod to Backend Namespace is only permitted.
		{"4", "frontend/apppod", "frontend/apipod", "TCP", "80", "allow", []string{"allowed by frontend/apppod-policy egress[0]"}},
		{"4", "frontend/apppod", testVM, "TCP", "80", "deny", nil},
		{"4", "frontend/apipod", "frontend/apppod", "TCP", "80", "deny", []string{"frontend/apipod is isolated for egress by frontend/apipod-policy"}},
		{"4", "frontend/apipod", testVM, "TCP", "80", "deny", nil},
		{"4", "frontend/apipod", "backend/dbpod", "TCP", "80", "allow", []string{"allowed by frontend/apipod-policy egress[0]"}},
	}
	for _, tc := range tests {
		t.Run("criterion "+tc.criterion+" "+tc.from+" to "+tc.to+" "+tc.port+"/"+tc.proto, func(t *testing.T) {
			args := []string{"policy", "check", "-f", article, "--from", tc.from, "--to", tc.to, "--protocol", tc.proto}
			if tc.port != "" {
				args = append(args, "--port", tc.port)
			}
			runCheck(t, args, tc.want, tc.wantExplanations)
			// The JSON form agrees.
			jout, _, _ := podgate(t, append(args, "-o", "json")...)
			var e struct{ Verdict string }
			if err := json.Unmarshal([]byte(jout), &e); err != nil || e.Verdict != tc.want {
				t.Errorf("-o json verdict = %q (%v), want %q", e.Verdict, err, tc.want)
			}
		})
	}
}

func TestMatrixTable(t *testing.T) {
	out, _, err := podgate(t, "policy", "matrix", "-f", article, "--ports", "80/TCP")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"80/TCP (rows: from, columns: to; . allow, X deny)",
		"                 backend/dbpod  frontend/apipod  frontend/apppod",
		"backend/dbpod    .              X                X",
		"frontend/apipod  .              .                X",
		"frontend/apppod  X              .                .",
	}
	if diff := cmp.Diff(want, tableLines(out)); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
}

// runCheck runs podgate with args (a policy check) and checks the verdict
// (exit status and first line) and that the output says every one of
// explanations.
func runCheck(t *testing.T, args []string, want string, explanations []string) {
	t.Helper()
	out, _, err := podgate(t, args...)
	var ee *exitError
	switch {
	case want == "allow" && err != nil:
		t.Fatalf("check failed: %v\n%s", err, out)
	case want == "deny" && (!errors.As(err, &ee) || ee.code != 2):
		t.Fatalf("check: err = %v, want exit status 2 (denied)\n%s", err, out)
	}
	if !strings.HasPrefix(out, strings.ToUpper(want)+":") {
		t.Errorf("verdict line = %q, want %s", strings.SplitN(out, "\n", 2)[0], strings.ToUpper(want))
	}
	for _, w := range explanations {
		if !strings.Contains(out, w) {
			t.Errorf("explanation does not say %q:\n%s", w, out)
		}
	}
}

// tableLines splits a matrix table into lines without trailing blanks.
func tableLines(out string) []string {
	var got []string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		got = append(got, strings.TrimRight(l, " "))
	}
	return got
}

func TestLint(t *testing.T) {
	out, _, err := podgate(t, "policy", "lint", "-f", article)
	if err != nil {
		t.Fatal(err)
	}
	for _, pod := range []string{"backend/dbpod", "frontend/apipod", "frontend/apppod"} {
		if !strings.Contains(out, "Pod "+pod+": is isolated for egress") || !strings.Contains(out, "no rule allows DNS") {
			t.Errorf("lint does not warn that %s cannot resolve names:\n%s", pod, out)
		}
	}
	// The article's "one dash" warning: two peers where one was meant.
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "np.yaml"), `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dbpod-policy, namespace: backend}
spec:
  podSelector: {matchLabels: {run: dbpod}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: frontend}}
    - podSelector: {matchLabels: {run: apipod}}
  - from:
    - namespaceSelector: {matchLabels: {team: nobody}}
    ports: [{port: web}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
    ports: [{port: 53, protocol: UDP}]
`)
	out, _, err = podgate(t, "policy", "lint", "-f", filepath.Join(article, "pods.yaml"), "-f", filepath.Join(article, "namespaces.yaml"), "-f", dir, "--fail-on-warning")
	if err == nil {
		t.Error("--fail-on-warning with findings did not fail")
	}
	for _, w := range []string{
		"NetworkPolicy backend/dbpod-policy: spec.ingress[0].from: peers [0] (namespaceSelector only) and [1] (podSelector only) are ORed",
		"spec.ingress[0].from[1].podSelector: matches no pod in namespace backend",
		"spec.ingress[1].from[0].namespaceSelector: matches no namespace",
		`spec.ingress[1].ports[0].port: named port "web"/TCP is declared by no pod`,
	} {
		if !strings.Contains(out, w) {
			t.Errorf("lint does not say %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "Pod backend/dbpod: is isolated for egress") {
		t.Errorf("lint warns about DNS although UDP 53 to kube-system is allowed:\n%s", out)
	}
}

func TestPolicyCommandErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"policy", "matrix", "-f", article, "--ports", "80/ICMP"}, "--ports"},
		{[]string{"policy", "matrix", "-f", article, "--ports", "http/TCP"}, "port must be a number"},
		{[]string{"policy", "matrix", "-f", article, "-o", "yaml"}, `--output "yaml"`},
		{[]string{"policy", "matrix"}, `required flag(s) "filename"`},
		{[]string{"policy", "check", "-f", article, "--from", "backend/nope", "--to", "10.0.0.4", "--port", "80"}, "--from backend/nope: no such pod"},
		{[]string{"policy", "check", "-f", article, "--from", "nonsense", "--to", "10.0.0.4", "--port", "80"}, "want namespace/pod or an IP address"},
		{[]string{"policy", "check", "-f", article, "--from", "backend/dbpod", "--to", "fd00::1", "--port", "80"}, "no address of the family"},
		{[]string{"policy", "check", "-f", article, "--from", "backend/dbpod", "--to", "10.0.0.4"}, "--port: must be from 1 to 65535"},
		{[]string{"policy", "check", "-f", article, "--from", "backend/dbpod", "--to", "10.0.0.4", "--protocol", "GRE"}, "--protocol"},
		{[]string{"policy", "check", "-f", article, "--from", "backend/dbpod", "--to", "10.0.0.4", "--protocol", "ICMP", "--port", "3"}, "ICMP has no ports"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, _, err := podgate(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
