package policy_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/internal/test/testutil"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

const npHeader = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns1}\n"

const (
	svcHeader = "apiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: ns1}\n"
	esHeader  = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: svc-1, namespace: ns1, labels: {kubernetes.io/service-name: svc}}\n"
)

func TestLoadRejectsBadInputNamingFileObjectAndField(t *testing.T) {
	tests := []struct {
		name    string
		content string
		// want are substrings the error must contain.
		want []string
	}{
		{"endPort without port", npHeader + "spec: {podSelector: {}, ingress: [{ports: [{endPort: 90}]}]}",
			[]string{"document 1", "NetworkPolicy ns1/np", "spec.ingress[0].ports[0].endPort", "may not be specified when `port` is not specified"}},
		{"endPort with a named port", npHeader + "spec: {podSelector: {}, egress: [{ports: [{port: http, endPort: 90}]}]}",
			[]string{"spec.egress[0].ports[0].endPort", "may not be specified when `port` is non-numeric"}},
		{"endPort below port", npHeader + "spec: {podSelector: {}, ingress: [{ports: [{port: 100, endPort: 90}]}]}",
			[]string{"spec.ingress[0].ports[0].endPort", "must be greater than or equal to `port`"}},
		{"port out of range", npHeader + "spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
			[]string{"spec.ingress[0].ports[0].port", "between 1 and 65535"}},
		{"bad port name", npHeader + "spec: {podSelector: {}, ingress: [{ports: [{port: Not_A_Name}]}]}",
			[]string{"spec.ingress[0].ports[0].port", "Not_A_Name"}},
		{"unknown protocol", npHeader + "spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP, port: 1}]}]}",
			[]string{"spec.ingress[0].ports[0].protocol", `Unsupported value: "ICMP"`}},
		{"bad CIDR", npHeader + "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
			[]string{"spec.ingress[0].from[0].ipBlock.cidr", "must be a valid CIDR"}},
		{"empty CIDR", npHeader + "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: ''}}]}]}",
			[]string{"spec.ingress[0].from[0].ipBlock.cidr", "Required value"}},
		{"except outside cidr", npHeader + "spec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
			[]string{"spec.egress[0].to[0].ipBlock.except[0]", "must be a strict subset of `cidr`"}},
		{"except equal to cidr", npHeader + "spec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]}",
			[]string{"spec.egress[0].to[0].ipBlock.except[0]", "strict subset"}},
		{"ipBlock with another peer", npHeader + "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
			[]string{"spec.ingress[0].from[0]", "may not specify both ipBlock and another peer"}},
		{"empty peer", npHeader + "spec: {podSelector: {}, ingress: [{from: [{}]}]}",
			[]string{"spec.ingress[0].from[0]", "must specify a peer"}},
		{"bad operator", npHeader + "spec: {podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}",
			[]string{"spec.podSelector.matchExpressions[0].operator", "Equals"}},
		{"In without values", npHeader + "spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}",
			[]string{"spec.podSelector.matchExpressions[0].values", "must be specified when `operator` is 'In' or 'NotIn'"}},
		{"bad label key", npHeader + "spec: {podSelector: {matchLabels: {'bad key': x}}}",
			[]string{"spec.podSelector.matchLabels", "bad key"}},
		{"bad policyType", npHeader + "spec: {podSelector: {}, policyTypes: [Both]}",
			[]string{"spec.policyTypes[0]", `Unsupported value: "Both"`}},
		{"unknown field", npHeader + "spec: {podSelectr: {}}",
			[]string{"NetworkPolicy ns1/np", `unknown field "spec.podSelectr"`}},
		{"field with wrong case", npHeader + "spec: {podselector: {}}",
			[]string{`unknown field "spec.podselector"`}},
		{"duplicate field", npHeader + "spec: {podSelector: {}, podSelector: {}}",
			[]string{"document 1", "podSelector"}},
		{"bad name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {podSelector: {}}",
			[]string{"NetworkPolicy default/Bad_Name", "metadata.name"}},
		{"missing kind", "apiVersion: v1\nmetadata: {name: x}", []string{"document 1", "kind: Required value"}},
		{"missing apiVersion", "kind: Pod\nmetadata: {name: x}", []string{"Pod x: apiVersion: Required value"}},
		{"old apiVersion", "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: {}}",
			[]string{"NetworkPolicy default/x", "apiVersion", `"extensions/v1beta1"`, "networking.k8s.io/v1"}},
		{"bad pod IP", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nstatus: {podIP: 10.0.0.300}",
			[]string{"Pod a/p", "status.podIP", "must be a valid IP address"}},
		{"podIP differs from podIPs", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.2}]}",
			[]string{"Pod default/p", "status.podIP", "must match status.podIPs[0]"}},
		{"two IPs of one family", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]}",
			[]string{"status.podIPs[1].ip", "one IP for each IP family"}},
		{"bad container port", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 0, name: http}]}]}",
			[]string{"spec.containers[0].ports[0].containerPort"}},
		{"bad namespace name", "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad.NS}", []string{"Namespace Bad.NS", "metadata.name"}},
		{"bad label value", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok, labels: {a: 'not ok'}}", []string{"Namespace ok", "metadata.labels"}},
		{"malformed YAML", "apiVersion: v1\nkind: [Pod\n", []string{"document 1"}},
		{"not an object", "- a\n- b\n", []string{"document 1", "not a Kubernetes object"}},
		{"Service cluster IP", svcHeader + "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}",
			[]string{"Service ns1/svc", "spec.clusterIP", "must be a valid IP address"}},
		{"Service cluster IPs", svcHeader + "spec: {clusterIPs: [10.96.0.1, 10.96.0.2], ports: [{port: 80}]}",
			[]string{"Service ns1/svc", "spec.clusterIPs[1]", "one IP for each IP family"}},
		{"Service clusterIPs[0] differs", svcHeader + "spec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], ports: [{port: 80}]}",
			[]string{"spec.clusterIPs[0]", "must match `clusterIP`"}},
		{"Service None with an address", svcHeader + "spec: {clusterIPs: [None, 10.96.0.2]}",
			[]string{"spec.clusterIPs[0]", "`None` must be the only value"}},
		{"Service port out of range", svcHeader + "spec: {clusterIP: 10.96.0.1, ports: [{port: 0}]}",
			[]string{"Service ns1/svc", "spec.ports[0].port", "between 1 and 65535"}},
		{"Service protocol", svcHeader + "spec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: ICMP}]}",
			[]string{"spec.ports[0].protocol", `Unsupported value: "ICMP"`}},
		{"Service ports without names", svcHeader + "spec: {ports: [{port: 80}, {port: 81, name: b}]}",
			[]string{"spec.ports[0].name", "must be specified when there is more than one port"}},
		{"Service duplicate port name", svcHeader + "spec: {ports: [{port: 80, name: a}, {port: 81, name: a}]}",
			[]string{"spec.ports[1].name", "Duplicate value"}},
		{"Service duplicate port", svcHeader + "spec: {ports: [{port: 80, name: a}, {port: 80, name: b}]}",
			[]string{"spec.ports[1]", "Duplicate value"}},
		{"Service type", svcHeader + "spec: {type: Mesh}", []string{"spec.type", `Unsupported value: "Mesh"`}},
		{"Service name", "apiVersion: v1\nkind: Service\nmetadata: {name: 1svc}\n", []string{"Service default/1svc", "metadata.name"}},
		{"Service unknown field", svcHeader + "spec: {clusterIp: 10.96.0.1}", []string{"Service ns1/svc", `unknown field "spec.clusterIp"`}},
		{"EndpointSlice address", esHeader + "addressType: IPv4\nendpoints: [{addresses: [10.0.0.256]}]",
			[]string{"EndpointSlice ns1/svc-1", "endpoints[0].addresses[0]", "must be a valid IP address"}},
		{"EndpointSlice address family", esHeader + "addressType: IPv6\nendpoints: [{addresses: [10.0.0.1]}]",
			[]string{"endpoints[0].addresses[0]", "must be an IPv6 address"}},
		{"EndpointSlice no addresses", esHeader + "addressType: IPv4\nendpoints: [{addresses: []}]",
			[]string{"endpoints[0].addresses", "at least 1"}},
		{"EndpointSlice addressType", esHeader + "endpoints: []", []string{"EndpointSlice ns1/svc-1", "addressType: Required value"}},
		{"EndpointSlice port", esHeader + "addressType: IPv4\nports: [{port: 65536}]",
			[]string{"ports[0].port", "between 1 and 65535"}},
		{"EndpointSlice port protocol", esHeader + "addressType: IPv4\nports: [{port: 80, protocol: GRE}]",
			[]string{"ports[0].protocol", `Unsupported value: "GRE"`}},
		{"EndpointSlice duplicate port name", esHeader + "addressType: IPv4\nports: [{port: 80}, {port: 81}]",
			[]string{"ports[1].name", "Duplicate value"}},
		{"EndpointSlice unknown field", esHeader + "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], condition: {}}]",
			[]string{"EndpointSlice ns1/svc-1", `unknown field "endpoints[0].condition"`}},
		{"EndpointSlice old apiVersion", "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: x}\naddressType: IPv4",
			[]string{"EndpointSlice default/x", "apiVersion", "discovery.k8s.io/v1"}},
		{"duplicate object", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
			[]string{"document 2", "Namespace a", "already declared at", "document 1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := testutil.WriteFile(t, filepath.Join(t.TempDir(), "m.yaml"), tc.content)
			_, err := policy.Load(p)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			msg := err.Error()
			for _, w := range append([]string{p}, tc.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not mention %q:\n%s", w, msg)
				}
			}
		})
	}
}

func TestLoadReportsEveryProblemAtOnce(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "a.yaml"), npHeader+"spec: {podSelector: {}, ingress: [{ports: [{endPort: 1}]}, {from: [{}]}]}")
	testutil.WriteFile(t, filepath.Join(dir, "b.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: nope}")
	_, err := policy.Load(dir)
	if err == nil {
		t.Fatal("Load succeeded")
	}
	for _, w := range []string{"a.yaml", "spec.ingress[0].ports[0].endPort", "spec.ingress[1].from[0]", "b.yaml", "status.podIP"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not mention %q:\n%v", w, err)
		}
	}
	if !errors.Is(err, policy.ErrInvalid) {
		t.Errorf("error does not wrap ErrInvalid: %v", err)
	}
}

func TestLoadFormats(t *testing.T) {
	dir := t.TempDir()
	// Multi-document YAML with a comment-only document and a document
	// without a namespace.
	testutil.WriteFile(t, filepath.Join(dir, "multi.yaml"), `# leading comment
---
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: x}}
---
# only a comment
---
apiVersion: v1
kind: Pod
metadata: {name: p1}
status: {podIP: 10.0.0.1}
`)
	// kubectl get -o yaml prints kind: List.
	testutil.WriteFile(t, filepath.Join(dir, "list.yml"), `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p2, namespace: a, labels: {app: x}}
  status: {podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}, {ip: "fd00::2"}]}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm, namespace: a}
- apiVersion: v1
  kind: Service
  metadata: {name: svc, namespace: a}
  spec:
    clusterIP: 10.96.0.1
    ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: svc-x1, namespace: a, labels: {kubernetes.io/service-name: svc}}
  addressType: IPv4
  ports: [{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}]
  endpoints: [{addresses: [10.0.0.2], conditions: {ready: true}}]
`)
	testutil.WriteFile(t, filepath.Join(dir, "np.json"), `{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "np", "namespace": "a"},
 "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}],
          "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}}`)
	testutil.WriteFile(t, filepath.Join(dir, "notes.txt"), "not a manifest")
	m, err := policy.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ns := range m.Namespaces {
		got = append(got, "Namespace "+ns.Name)
	}
	for _, p := range m.Pods {
		got = append(got, "Pod "+p.Namespace+"/"+p.Name)
	}
	for _, np := range m.Policies {
		got = append(got, "NetworkPolicy "+np.Namespace+"/"+np.Name)
		// Defaulting happened: Ingress and Egress, protocol TCP... here UDP.
		if diff := cmp.Diff([]string{"Ingress", "Egress"}, []string{string(np.Spec.PolicyTypes[0]), string(np.Spec.PolicyTypes[1])}); diff != "" {
			t.Errorf("policyTypes (-want +got):\n%s", diff)
		}
	}
	for _, s := range m.Services {
		got = append(got, "Service "+s.Namespace+"/"+s.Name)
		// Defaulting happened: protocol TCP, clusterIPs from clusterIP.
		if s.Spec.Ports[0].Protocol != "TCP" || len(s.Spec.ClusterIPs) != 1 {
			t.Errorf("Service not defaulted: %+v", s.Spec)
		}
	}
	for _, es := range m.EndpointSlices {
		got = append(got, "EndpointSlice "+es.Namespace+"/"+es.Name)
		if es.Ports[0].Protocol == nil || *es.Ports[0].Protocol != "TCP" {
			t.Errorf("EndpointSlice port protocol not defaulted: %+v", es.Ports[0])
		}
	}
	for _, o := range m.Other {
		got = append(got, "other "+o.Kind+" "+o.Namespace+"/"+o.Name)
	}
	want := []string{"Namespace a", "Pod a/p2", "Pod default/p1", "NetworkPolicy a/np", "Service a/svc", "EndpointSlice a/svc-x1", "other ConfigMap a/cm"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
	if src := m.Sources["Pod a/p2"]; src.Doc != 1 || src.Item != 0 || !strings.HasSuffix(src.File, "list.yml") {
		t.Errorf("source of a/p2 = %v", src)
	}
	notes := strings.Join(append(m.Notes, m.SkippedNotes()...), "\n")
	for _, w := range []string{"notes.txt: skipped file", `CIDR value "10.0.0.1/8" is ambiguous`, "skipped ConfigMap a/cm", "list.yml: document 1, items[1]"} {
		if !strings.Contains(notes, w) {
			t.Errorf("notes do not mention %q:\n%s", w, notes)
		}
	}
	if strings.Contains(notes, "skipped Service") || strings.Contains(notes, "skipped EndpointSlice") {
		t.Errorf("notes skip what is read:\n%s", notes)
	}
	if src := m.Sources["EndpointSlice a/svc-x1"]; src.Item != 3 {
		t.Errorf("source of the EndpointSlice = %v", src)
	}
	tab, err := policy.Compile(&m.Cluster)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	// a/p2 is the backend of a/svc: 10.96.0.1:80 is 10.0.0.2:8080.
	if b, ok := tab.ServiceBackends(addr(t, "10.96.0.1"), table.TCP, 80); !ok || len(b) != 1 || b[0].Port != 8080 {
		t.Errorf("backends of a/svc port 80: %+v %v", b, ok)
	}
}

func TestLoadMissingPathAndEmptyDir(t *testing.T) {
	if _, err := policy.Load(filepath.Join(t.TempDir(), "nope.yaml")); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("missing file: err = %v", err)
	}
	if _, err := policy.Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no .yaml, .yml or .json files") {
		t.Errorf("empty dir: err = %v", err)
	}
	if _, err := policy.Load(); err == nil {
		t.Error("no paths: no error")
	}
}

func TestCompileRejectsInvalidObjectsWithoutPanicking(t *testing.T) {
	c := world()
	c.Policies = append(c.Policies, mustPolicy(t, npHeader+"spec: {podSelector: {}, ingress: [{ports: [{endPort: 3}]}]}"))
	c.Pods = append(c.Pods, newPod("x", "bad", []string{"not-an-ip"}))
	_, err := policy.Compile(c)
	if err == nil {
		t.Fatal("Compile succeeded")
	}
	for _, w := range []string{"NetworkPolicy ns1/np", "endPort", "Pod x/bad", "status.podIPs[0].ip"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not mention %q: %v", w, err)
		}
	}
}

func TestCompileWarnsAboutSharedIPs(t *testing.T) {
	c := world()
	c.Pods = append(c.Pods, newPod("z", "twin", []string{"10.0.2.1"}))
	tab := mustCompile(t, c)
	if len(tab.Warnings()) != 1 || !strings.Contains(tab.Warnings()[0], "z/a and z/twin both have IP 10.0.2.1") {
		t.Errorf("warnings = %q", tab.Warnings())
	}
	i, _ := tab.EndpointByAddr(addr(t, "10.0.2.1"))
	if got := tab.Endpoint(i).String(); got != "z/a" {
		t.Errorf("10.0.2.1 belongs to %s, want z/a (first by name)", got)
	}
}

func TestTrustedCompileStillRejectsMalformedValues(t *testing.T) {
	for name, mutate := range map[string]func(c *policy.Cluster){
		"pod IP": func(c *policy.Cluster) { c.Pods = append(c.Pods, newPod("x", "bad", []string{"not-an-ip"})) },
		"CIDR": func(c *policy.Cluster) {
			c.Policies = append(c.Policies, mustPolicy(t, npHeader+"spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: nope}}]}]}"))
		},
		"operator": func(c *policy.Cluster) {
			c.Policies = append(c.Policies, mustPolicy(t, npHeader+"spec: {podSelector: {matchExpressions: [{key: a, operator: Equals}]}}"))
		},
		"matchLabels key": func(c *policy.Cluster) {
			c.Policies = append(c.Policies, mustPolicy(t, npHeader+"spec: {podSelector: {matchLabels: {'not a key!': x}}}"))
		},
		"matchLabels value": func(c *policy.Cluster) {
			c.Policies = append(c.Policies, mustPolicy(t, npHeader+"spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: 'not a value!'}}}]}]}"))
		},
		"port": func(c *policy.Cluster) {
			c.Policies = append(c.Policies, mustPolicy(t, npHeader+"spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := world()
			mutate(c)
			if _, err := policy.CompileWith(c, policy.Options{Trusted: true}); err == nil {
				t.Error("trusted compile accepted a malformed value")
			}
		})
	}
}
