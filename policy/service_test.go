package policy_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/yaml"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// serviceFixtures are dual-stack Services with one EndpointSlice per
// family, over the pods of world() plus two DNS pods in kube-system.
const serviceFixtures = `
apiVersion: v1
kind: Service
metadata: {name: mixed, namespace: x}
spec:
  clusterIP: 10.96.0.1
  clusterIPs: [10.96.0.1, "fd00:96::1"]
  ports: [{name: http, port: 80, targetPort: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: mixed-v4, namespace: x, labels: {kubernetes.io/service-name: mixed}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.3]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: mixed-v6, namespace: x, labels: {kubernetes.io/service-name: mixed}}
addressType: IPv6
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
- addresses: ["fd00::1"]
- addresses: ["fd00::3"]
---
apiVersion: v1
kind: Service
metadata: {name: ready-a, namespace: x}
spec:
  clusterIPs: [10.96.0.2, "fd00:96::2"]
  ports: [{port: 80}]
---
# x/c is not ready (ready false, even though serving): ignored.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ready-a-1, namespace: x, labels: {kubernetes.io/service-name: ready-a}}
addressType: IPv4
ports: [{port: 80}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ready-a-2, namespace: x, labels: {kubernetes.io/service-name: ready-a}}
addressType: IPv6
ports: [{port: 80}]
endpoints:
- addresses: ["fd00::1"]
- addresses: ["fd00::3"]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec:
  clusterIPs: [10.96.0.3, "fd00:96::3"]
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: empty-1, namespace: x, labels: {kubernetes.io/service-name: empty}}
addressType: IPv4
ports: [{port: 80}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: named, namespace: x}
spec:
  clusterIPs: [10.96.0.4, "fd00:96::4"]
  ports:
  - {name: web, port: 80, targetPort: http}
  - {name: other, port: 81, targetPort: 9999}
---
# Service port web (80) is endpoint port 8080, x/b's container port http.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: named-1, namespace: x, labels: {kubernetes.io/service-name: named}}
addressType: IPv4
ports: [{name: web, port: 8080}, {name: other, port: 9999}]
endpoints:
- addresses: [10.0.0.2]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: named-2, namespace: x, labels: {kubernetes.io/service-name: named}}
addressType: IPv6
ports: [{name: web, port: 8080}, {name: other, port: 9999}]
endpoints:
- addresses: ["fd00::2"]
---
# A Service in front of an address outside the cluster (a hand-made slice).
apiVersion: v1
kind: Service
metadata: {name: external, namespace: z}
spec:
  clusterIPs: [10.96.0.5, "fd00:96::5"]
  ports: [{port: 443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: external-1, namespace: z, labels: {kubernetes.io/service-name: external}}
addressType: IPv4
ports: [{port: 443}]
endpoints:
- addresses: [192.0.2.10]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: external-2, namespace: z, labels: {kubernetes.io/service-name: external}}
addressType: IPv6
ports: [{port: 443}]
endpoints:
- addresses: ["2001:db8::10"]
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-1, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  nodeName: node-2
  containers: [{name: coredns, image: coredns, ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]}]
status: {phase: Running, podIP: 10.0.9.1, podIPs: [{ip: 10.0.9.1}, {ip: "fd00::901"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-2, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  nodeName: node-3
  containers: [{name: coredns, image: coredns, ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]}]
status: {phase: Running, podIP: 10.0.9.2, podIPs: [{ip: 10.0.9.2}, {ip: "fd00::902"}]}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::a"]
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-v4, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
endpoints:
- addresses: [10.0.9.1]
  conditions: {ready: true}
- addresses: [10.0.9.2]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-v6, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv6
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
endpoints:
- addresses: ["fd00::901"]
- addresses: ["fd00::902"]
---
# Headless: nothing to translate.
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: x}
spec:
  clusterIP: None
  ports: [{port: 80}]
`

// serviceAddrs are the connection-end placeholders of the Service tests,
// per family.
var serviceAddrs = map[string]map[string]string{
	"IPv4": {"MIXED": "10.96.0.1", "READYA": "10.96.0.2", "EMPTY": "10.96.0.3", "NAMED": "10.96.0.4", "EXTERNAL": "10.96.0.5",
		"DNS": "10.96.0.10", "SVCNET": "10.96.0.0/16", "NOSVC": "10.96.0.99"},
	"IPv6": {"MIXED": "fd00:96::1", "READYA": "fd00:96::2", "EMPTY": "fd00:96::3", "NAMED": "fd00:96::4", "EXTERNAL": "fd00:96::5",
		"DNS": "fd00:96::a", "SVCNET": "fd00:96::/112", "NOSVC": "fd00:96::99"},
}

// decodeObjects decodes multi-document YAML into typed objects, strictly.
func decodeObjects(t testing.TB, docs string) []any {
	t.Helper()
	var out []any
	for _, doc := range strings.Split(docs, "\n---\n") {
		var h struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &h); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch h.Kind {
		case "Service":
			obj = &corev1.Service{}
		case "EndpointSlice":
			obj = &discoveryv1.EndpointSlice{}
		case "Pod":
			obj = &corev1.Pod{}
		case "Namespace":
			obj = &corev1.Namespace{}
		default:
			t.Fatalf("kind %q in\n%s", h.Kind, doc)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		out = append(out, obj)
	}
	return out
}

// withServices adds the objects of docs to c.
func withServices(t testing.TB, c *policy.Cluster, docs string) *policy.Cluster {
	t.Helper()
	for _, o := range decodeObjects(t, docs) {
		switch o := o.(type) {
		case *corev1.Service:
			c.Services = append(c.Services, o)
		case *discoveryv1.EndpointSlice:
			c.EndpointSlices = append(c.EndpointSlices, o)
		case *corev1.Pod:
			c.Pods = append(c.Pods, o)
		case *corev1.Namespace:
			c.Namespaces = append(c.Namespaces, o)
		}
	}
	return c
}

func TestServiceEgress(t *testing.T) {
	tests := []struct {
		name     string
		policies []string
		conns    []conn
	}{
		{
			name: "egress to a Service is allowed when every ready backend is",
			policies: []string{`
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: 80}]}]`},
			conns: []conn{
				tcp("z/a", "$MIXED", 80, true), tcp("z/a", "x/a", 80, true), tcp("z/a", "x/c", 80, true),
				tcp("z/a", "$MIXED", 81, false), // no such Service port: the ClusterIP is judged, and no ipBlock covers it
				udp("z/a", "$MIXED", 80, false), // nor UDP
				icmp("z/a", "$MIXED", false),    // ICMP is never translated
			},
		},
		{
			name: "one denied backend denies the Service",
			policies: []string{`
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}]}]`},
			conns: []conn{
				tcp("z/a", "x/a", 80, true), tcp("z/a", "x/c", 80, false),
				tcp("z/a", "$MIXED", 80, false),
				// ready-a has the same two pods, but x/c is not ready.
				tcp("z/a", "$READYA", 80, true),
			},
		},
		{
			name: "a Service without ready endpoints is judged on its ClusterIP",
			policies: []string{`
metadata: {name: p, namespace: z}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}]}]`, `
metadata: {name: svcnet, namespace: v}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: $SVCNET}}]}]`},
			conns: []conn{
				tcp("z/a", "$EMPTY", 80, false), tcp("v/a", "$EMPTY", 80, true),
				tcp("z/a", "$MIXED", 80, true), // its backends are pods
				tcp("v/a", "$MIXED", 80, false),
				// A port the Service does not have, and an address that is no
				// Service's: judged as addresses.
				tcp("v/a", "$MIXED", 82, true), tcp("z/a", "$MIXED", 82, false),
				tcp("v/a", "$NOSVC", 80, true), tcp("z/a", "$NOSVC", 80, false),
			},
		},
		{
			name: "a numbered target port must be allowed, not the Service port",
			policies: []string{`
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 8080}]}]`, `
metadata: {name: p80, namespace: v}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 80}]}]`},
			conns: []conn{
				tcp("z/a", "$NAMED", 80, true), tcp("v/a", "$NAMED", 80, false),
				// Not a Service port: judged as an address, which the rule
				// without peers allows.
				tcp("z/a", "$NAMED", 8080, true), tcp("v/a", "$NAMED", 8080, false),
			},
		},
		{
			name: "a named port resolves on the backend pod",
			policies: []string{`
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]`},
			conns: []conn{
				tcp("z/a", "$NAMED", 80, true),  // x/b:8080 is its container port http
				tcp("z/a", "$NAMED", 81, false), // x/b:9999 is not
			},
		},
		{
			name: "a backend that is no pod is judged by ipBlocks",
			policies: []string{`
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: $OUTNET}}]}]`, `
metadata: {name: p, namespace: v}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}]}]`},
			conns: []conn{tcp("z/a", "$EXTERNAL", 443, true), tcp("v/a", "$EXTERNAL", 443, false)},
		},
		{
			name: "DNS through the kube-dns ClusterIP with the usual allow rule",
			policies: []string{`
metadata: {name: deny-all-but-dns, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports:
    - {protocol: UDP, port: 53}`},
			conns: []conn{
				udp("z/a", "$DNS", 53, true), tcp("z/a", "$DNS", 53, false),
				udp("z/a", "$MIXED", 80, false), tcp("z/a", "$MIXED", 80, false),
				udp("z/a", "kube-system/coredns-1", 53, true),
			},
		},
		{
			name: "a source that is not isolated for egress is not judged",
			conns: []conn{
				tcp("z/a", "$MIXED", 80, true), tcp("$OUT", "$MIXED", 80, true), udp("x/a", "$DNS", 53, true),
			},
		},
	}
	for _, tc := range tests {
		for _, famName := range []string{"IPv4", "IPv6"} {
			fam := maps.Clone(families[famName])
			maps.Copy(fam, serviceAddrs[famName])
			t.Run(tc.name+"/"+famName, func(t *testing.T) {
				c := withServices(t, world(), serviceFixtures)
				for _, doc := range tc.policies {
					c.Policies = append(c.Policies, mustPolicy(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"+substitute(doc, fam)))
				}
				tab := mustCompile(t, c)
				if w := tab.Warnings(); len(w) > 0 {
					t.Errorf("warnings: %q", w)
				}
				for _, cn := range tc.conns {
					src := endAddr(t, tab, cn.from, fam, famName)
					dst := endAddr(t, tab, cn.to, fam, famName)
					proto := cn.proto
					if proto == table.ICMP && famName == "IPv6" {
						proto = table.ICMPv6
					}
					v := tab.Lookup(src, dst, proto, cn.port)
					if v.Allowed() != cn.want {
						e := tab.Explain(src, dst, proto, cn.port)
						t.Errorf("%s -> %s %s/%d: allowed=%v, want %v\n  egress: %s\n  ingress: %s",
							cn.from, cn.to, proto, cn.port, v.Allowed(), cn.want, e.Egress.Detail, e.Ingress.Detail)
					}
					if _, isSvc := tab.ServiceByAddr(dst); isSvc && v.Ingress.Reason != table.NotPod {
						t.Errorf("%s -> %s: ingress reason %s, want not-pod for a Service destination", cn.from, cn.to, v.Ingress.Reason)
					}
					if got := tab.Egress(src, dst, proto, cn.port); got != v.Egress {
						t.Errorf("%s -> %s: Egress() = %+v, Lookup().Egress = %+v", cn.from, cn.to, got, v.Egress)
					}
					if got := tab.Ingress(src, dst, proto, cn.port); got != v.Ingress {
						t.Errorf("%s -> %s: Ingress() = %+v, Lookup().Ingress = %+v", cn.from, cn.to, got, v.Ingress)
					}
				}
			})
		}
	}
}

// TestServiceDNSWithoutServicesIsDenied is the problem the Service index
// solves: without Services, the kube-dns ClusterIP is an address that no
// ipBlock covers, and the usual DNS rule does not allow it.
func TestServiceDNSWithoutServicesIsDenied(t *testing.T) {
	c := withServices(t, world(), serviceFixtures)
	c.Services, c.EndpointSlices = nil, nil
	c.Policies = append(c.Policies, mustPolicy(t, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 53}]`))
	tab := mustCompile(t, c)
	za, _ := tab.EndpointByName("z", "a")
	src := tab.Endpoint(za).IPs[0]
	if d := tab.Egress(src, addr(t, "10.96.0.10"), table.UDP, 53); d.Allowed() {
		t.Errorf("without Services: %+v, want denied", d)
	}
	if d := tab.Egress(src, addr(t, "10.0.9.1"), table.UDP, 53); !d.Allowed() {
		t.Errorf("to the DNS pod itself: %+v, want allowed", d)
	}
}

func TestServiceDecisionAndExplanation(t *testing.T) {
	c := withServices(t, world(), serviceFixtures)
	c.Policies = append(c.Policies, mustPolicy(t, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-a, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}]}, {ports: [{port: 8080}]}]`))
	tab := mustCompile(t, c)
	src := addr(t, "10.0.2.1") // z/a

	d := tab.Egress(src, addr(t, "10.96.0.2"), table.TCP, 80)
	if d.Reason != table.AllowedByRule || tab.Rule(table.Egress, d.Rule).String() != "z/to-a egress[0]" {
		t.Errorf("ready-a: %+v", d)
	}
	e := tab.Explain(src, addr(t, "10.96.0.1"), table.TCP, 80)
	if e.Verdict != "deny" || e.To != "Service x/mixed" || e.Egress.Service != "x/mixed" || len(e.Egress.Backends) != 2 {
		t.Fatalf("explanation: %+v", e)
	}
	for _, w := range []string{
		"destination is Service x/mixed; egress judged against its 2 ready endpoints for 80/TCP",
		"x/a (10.0.0.1) port 80: allow by z/to-a egress[0]",
		"x/c (10.0.0.3) port 80: deny",
	} {
		if !strings.Contains(e.Egress.Detail, w) {
			t.Errorf("egress detail lacks %q: %s", w, e.Egress.Detail)
		}
	}
	if e.Ingress.Reason != "not-pod" || !e.Ingress.Allowed || len(e.Ingress.Backends) != 2 ||
		!strings.Contains(e.Ingress.Detail, "each backend's ingress is judged after kube-proxy's DNAT, on its node: x/a (10.0.0.1) port 80: allow (not-isolated)") {
		t.Errorf("ingress: %+v", e.Ingress)
	}
	var text bytes.Buffer
	if err := e.WriteText(&text); err != nil || !strings.Contains(text.String(), "DENY: z/a (10.0.2.1) -> Service x/mixed (10.96.0.1) TCP port 80") {
		t.Errorf("text (%v):\n%s", err, text.String())
	}
	if _, err := json.Marshal(e); err != nil {
		t.Error(err)
	}
	// Named target port: allowed by the rule on 8080.
	e = tab.Explain(src, addr(t, "10.96.0.4"), table.TCP, 80)
	if e.Verdict != "allow" || !strings.Contains(e.Egress.Detail, "x/b (10.0.0.2) port 8080: allow by z/to-a egress[1]") {
		t.Errorf("named: %s %s", e.Verdict, e.Egress.Detail)
	}
	// Judged on the ClusterIP, and why.
	for _, tc := range []struct {
		dst  string
		port uint16
		want string
	}{
		{"10.96.0.3", 80, "destination is Service x/empty, which has no ready endpoints for 80/TCP: judged on its ClusterIP"},
		{"10.96.0.1", 81, "destination is Service x/mixed, which has no port 81/TCP: judged on its ClusterIP"},
	} {
		e := tab.Explain(src, addr(t, tc.dst), table.TCP, tc.port)
		if e.Verdict != "deny" || !strings.Contains(e.Egress.Detail, tc.want) {
			t.Errorf("%s:%d: %s %s", tc.dst, tc.port, e.Verdict, e.Egress.Detail)
		}
	}
	if got := tab.Stats(); got.Services != 6 || got.ServiceBackends != 20 {
		t.Errorf("stats: %d Services, %d backends; want 6 (headless left out), 20", got.Services, got.ServiceBackends)
	}
	if _, ok := tab.ServiceByAddr(addr(t, "10.0.0.1")); ok {
		t.Error("a pod address is a Service")
	}
	b, ok := tab.ServiceBackends(addr(t, "fd00:96::4"), table.TCP, 80)
	if !ok || len(b) != 1 || b[0].Addr != addr(t, "fd00::2") || b[0].Port != 8080 || tab.Endpoint(b[0].Endpoint).String() != "x/b" {
		t.Errorf("backends of named/IPv6: %+v %v", b, ok)
	}
}

// TestServiceLoopback: a pod reaching itself through its own Service is
// allowed when it is the only backend, as a pod's traffic to itself is.
func TestServiceLoopback(t *testing.T) {
	c := withServices(t, world(), `
apiVersion: v1
kind: Service
metadata: {name: self, namespace: x}
spec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: self, namespace: x, labels: {kubernetes.io/service-name: self}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.3]}]`)
	c.Policies = append(c.Policies, mustPolicy(t, npHeader+"spec: {podSelector: {}, policyTypes: [Egress]}"))
	c.Policies[0].Namespace = "x"
	tab := mustCompile(t, c)
	if d := tab.Egress(addr(t, "10.0.0.3"), addr(t, "10.96.1.1"), table.TCP, 80); d.Reason != table.Loopback {
		t.Errorf("x/c to its own Service: %+v", d)
	}
	if d := tab.Egress(addr(t, "10.0.0.1"), addr(t, "10.96.1.1"), table.TCP, 80); d.Reason != table.Denied {
		t.Errorf("x/a to x/c's Service: %+v", d)
	}
}

func TestServiceWarnings(t *testing.T) {
	c := withServices(t, world(), `
apiVersion: v1
kind: Service
metadata: {name: one, namespace: x}
spec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: two, namespace: x}
spec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: pod, namespace: x}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}`)
	tab := mustCompile(t, c)
	w := strings.Join(tab.Warnings(), "\n")
	for _, want := range []string{"Services x/one and x/two both have ClusterIP 10.96.1.1", "Service x/pod has ClusterIP 10.0.0.1, which is pod x/a's address"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
}

func TestTrustedCompileOfServicesNeverPanics(t *testing.T) {
	for name, docs := range map[string]string{
		"cluster IP": "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {clusterIP: nope, ports: [{port: 80}]}",
		"port":       "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 70000}]}",
		"endpoint address": "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: x, labels: {kubernetes.io/service-name: s}}\n" +
			"addressType: IPv4\nendpoints: [{addresses: ['10.0.0.300']}]",
		"endpoint family": "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: x}\n" +
			"addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]",
		"endpoint port": "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: x}\n" +
			"addressType: IPv4\nports: [{port: -1}]\nendpoints: [{addresses: ['10.0.0.1']}]",
	} {
		t.Run(name, func(t *testing.T) {
			c := withServices(t, world(), docs)
			if _, err := policy.CompileWith(c, policy.Options{Trusted: true}); err == nil {
				t.Error("trusted compile accepted a malformed value")
			}
			if _, err := policy.Compile(c); err == nil {
				t.Error("compile accepted a malformed value")
			}
		})
	}
	// What the API server validates and compiling does not need is not
	// checked again: a bad name passes a trusted compile.
	c := withServices(t, world(), "apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name, namespace: x}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}")
	if _, err := policy.CompileWith(c, policy.Options{Trusted: true}); err != nil {
		t.Errorf("trusted: %v", err)
	}
	if _, err := policy.Compile(c); err == nil || !strings.Contains(err.Error(), "metadata.name") {
		t.Errorf("untrusted: %v", err)
	}
}
