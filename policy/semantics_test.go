package policy_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// world is a dual-stack cluster the semantics tests share. Every pod has an
// IPv4 and an IPv6 address so each case runs once per family.
func world() *policy.Cluster {
	host := newPod("x", "host", []string{"172.18.0.2", "fc00::2"}, "app=a")
	host.Spec.HostNetwork = true
	done := newPod("x", "done", []string{"10.0.0.9", "fd00::9"}, "app=a")
	done.Status.Phase = corev1.PodSucceeded
	failed := newPod("x", "failed", []string{"10.0.0.8", "fd00::8"}, "app=a")
	failed.Status.Phase = corev1.PodFailed
	return &policy.Cluster{
		Namespaces: []*corev1.Namespace{
			newNamespace("x", "ns=x", "team=blue"),
			newNamespace("v", "ns=v", "team=red"),
			newNamespace("z", "ns=z"),
		},
		Pods: []*corev1.Pod{
			withPorts(newPod("x", "a", []string{"10.0.0.1", "fd00::1"}, "app=a", "tier=web"),
				corev1.ContainerPort{Name: "http", ContainerPort: 80},
				corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}),
			withPorts(newPod("x", "b", []string{"10.0.0.2", "fd00::2"}, "app=b"),
				corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
			newPod("x", "c", []string{"10.0.0.3", "fd00::3"}),
			withPorts(newPod("v", "a", []string{"10.0.1.1", "fd00::101"}, "app=a"),
				corev1.ContainerPort{Name: "http", ContainerPort: 80},
				corev1.ContainerPort{Name: "assoc", ContainerPort: 9000, Protocol: corev1.ProtocolSCTP}),
			newPod("v", "b", []string{"10.0.1.2", "fd00::102"}, "app=b", "tier=db"),
			newPod("z", "a", []string{"10.0.2.1", "fd00::201"}, "app=a"),
			newPod("w", "a", []string{"10.0.3.1", "fd00::301"}, "app=a"), // namespace w is not declared
			host, done, failed,
			newPod("x", "pending", nil, "app=a"),
		},
	}
}

// Placeholders in policies and connection ends, per family.
var families = map[string]map[string]string{
	"IPv4": {
		"NETX": "10.0.0.0/24", "NETY": "10.0.1.0/24", "ALL": "10.0.0.0/16", "XA": "10.0.0.1/32",
		"OUTNET": "192.0.2.0/24", "HOSTBITS": "10.0.0.77/24", "OUT": "192.0.2.10", "NODE": "172.18.0.2",
		"GONE": "10.0.0.9", "FAILED": "10.0.0.8",
	},
	"IPv6": {
		"NETX": "fd00::/120", "NETY": "fd00::100/120", "ALL": "fd00::/112", "XA": "fd00::1/128",
		"OUTNET": "2001:db8::/64", "HOSTBITS": "fd00::77/120", "OUT": "2001:db8::10", "NODE": "fc00::2",
		"GONE": "fd00::9", "FAILED": "fd00::8",
	},
}

func substitute(s string, fam map[string]string) string {
	keys := slices.Collect(maps.Keys(fam))
	// Longest first, so that $OUTNET is not read as $OUT followed by NET.
	slices.SortFunc(keys, func(a, b string) int { return len(b) - len(a) })
	for _, k := range keys {
		s = strings.ReplaceAll(s, "$"+k, fam[k])
	}
	return s
}

type conn struct {
	from, to string // "ns/pod" or "$PLACEHOLDER"
	proto    table.Protocol
	port     uint16
	want     bool
}

func tcp(from, to string, port uint16, want bool) conn { return conn{from, to, table.TCP, port, want} }
func udp(from, to string, port uint16, want bool) conn { return conn{from, to, table.UDP, port, want} }
func sctp(from, to string, port uint16, want bool) conn {
	return conn{from, to, table.SCTP, port, want}
}
func icmp(from, to string, want bool) conn { return conn{from, to, table.ICMP, 0, want} }

func TestSemantics(t *testing.T) {
	tests := []struct {
		name     string
		policies []string
		conns    []conn
	}{
		{
			name:  "no policies allow everything",
			conns: []conn{tcp("x/a", "v/b", 80, true), udp("$OUT", "x/a", 53, true), icmp("x/a", "$OUT", true), sctp("z/a", "w/a", 1, true)},
		},
		{
			name: "deny all ingress isolates only ingress",
			policies: []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}`},
			conns: []conn{
				tcp("x/b", "x/a", 80, false), tcp("v/a", "x/c", 80, false), tcp("$OUT", "x/a", 80, false),
				icmp("v/a", "x/a", false), tcp("x/a", "v/a", 80, true), tcp("x/a", "$OUT", 443, true),
				tcp("v/a", "v/b", 80, true),
			},
		},
		{
			name: "empty ingress list denies, ingress [{}] allows all",
			policies: []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, ingress: []}`, `
metadata: {name: allow-a, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, ingress: [{}]}`},
			conns: []conn{
				tcp("v/b", "x/a", 80, true), icmp("$OUT", "x/a", true), sctp("z/a", "x/a", 7, true),
				tcp("v/b", "x/b", 80, false), tcp("x/a", "x/c", 80, false),
			},
		},
		{
			name: "policyTypes default to Ingress plus Egress when egress rules exist",
			policies: []string{`
metadata: {name: eg, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  egress: [{to: [{podSelector: {matchLabels: {app: b}}}]}]`},
			conns: []conn{
				tcp("x/a", "x/b", 80, true), tcp("x/a", "x/c", 80, false), tcp("x/a", "$OUT", 80, false),
				// Ingress is isolated too, with no rules.
				tcp("x/b", "x/a", 80, false), tcp("$OUT", "x/a", 80, false),
			},
		},
		{
			name: "empty egress list does not add Egress by default",
			policies: []string{`
metadata: {name: eg, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, egress: []}`},
			conns: []conn{tcp("x/a", "$OUT", 80, true), tcp("x/b", "x/a", 80, false)},
		},
		{
			name: "explicit Egress-only policy ignores its ingress rules",
			policies: []string{`
metadata: {name: eg, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: nothing}}}]}]
  egress: [{ports: [{port: 53, protocol: UDP}]}]`},
			conns: []conn{
				tcp("x/b", "x/a", 80, true), udp("x/a", "$OUT", 53, true), tcp("x/a", "$OUT", 53, false),
				icmp("x/a", "v/a", false),
			},
		},
		{
			name: "podSelector peer matches only the policy's namespace",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]`},
			conns: []conn{tcp("x/b", "x/a", 80, true), tcp("v/b", "x/a", 80, false), tcp("x/c", "x/a", 80, false)},
		},
		{
			name: "namespaceSelector peer matches every pod of matching namespaces",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: red}}}]}]`},
			conns: []conn{tcp("v/a", "x/c", 80, true), tcp("v/b", "x/a", 80, true), tcp("x/b", "x/a", 80, false), tcp("z/a", "x/a", 80, false)},
		},
		{
			name: "namespaceSelector and podSelector in one peer are ANDed (one dash)",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: v}}
      podSelector: {matchLabels: {app: b}}`},
			conns: []conn{tcp("v/b", "x/a", 80, true), tcp("v/a", "x/a", 80, false), tcp("x/b", "x/a", 80, false)},
		},
		{
			name: "separate peers are ORed (two dashes)",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: v}}
    - podSelector: {matchLabels: {app: b}}`},
			conns: []conn{tcp("v/b", "x/a", 80, true), tcp("v/a", "x/a", 80, true), tcp("x/b", "x/a", 80, true), tcp("z/a", "x/a", 80, false), tcp("x/c", "x/a", 80, false)},
		},
		{
			name: "empty namespaceSelector matches all namespaces, also undeclared ones",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}]}]`},
			conns: []conn{tcp("v/a", "x/a", 80, true), tcp("z/a", "x/a", 80, true), tcp("w/a", "x/a", 80, true), tcp("v/b", "x/a", 80, false), tcp("$OUT", "x/a", 80, false)},
		},
		{
			name: "undeclared namespaces carry the metadata.name label",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: w}}}]}]`},
			conns: []conn{tcp("w/a", "x/b", 80, true), tcp("z/a", "x/b", 80, false)},
		},
		{
			name: "matchExpressions In, NotIn, Exists, DoesNotExist",
			policies: []string{`
metadata: {name: in, namespace: v}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [a]}]}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [red]}]}}]}]`, `
metadata: {name: exists, namespace: v}
spec:
  podSelector: {matchExpressions: [{key: tier, operator: Exists}]}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}}]}]`},
			conns: []conn{
				// v/a: from namespaces whose team is not red (x: blue, z and w: no team).
				tcp("x/b", "v/a", 80, true), tcp("z/a", "v/a", 80, true), tcp("w/a", "v/a", 80, true), tcp("v/b", "v/a", 80, false),
				// v/b (tier=db): from pods without an app label in any namespace.
				tcp("x/c", "v/b", 80, true), tcp("x/a", "v/b", 80, false),
			},
		},
		{
			name: "ipBlock with except, and ipBlocks match pod addresses",
			policies: []string{`
metadata: {name: p, namespace: v}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{ipBlock: {cidr: $ALL, except: [$XA]}}]}]`},
			conns: []conn{tcp("x/b", "v/a", 80, true), tcp("z/a", "v/a", 80, true), tcp("x/a", "v/a", 80, false), tcp("$OUT", "v/a", 80, false)},
		},
		{
			name: "ipBlock egress to outside addresses",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: $OUTNET}}]}]`},
			conns: []conn{tcp("x/a", "$OUT", 443, true), icmp("x/a", "$OUT", true), tcp("x/a", "x/b", 80, false), tcp("x/a", "$NODE", 10250, false)},
		},
		{
			name: "ipBlock CIDR with host bits set is treated as masked",
			policies: []string{`
metadata: {name: p, namespace: v}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: $HOSTBITS}}]}]`},
			conns: []conn{tcp("x/a", "v/a", 80, true), tcp("x/c", "v/b", 80, true), tcp("z/a", "v/a", 80, false)},
		},
		{
			name: "numbered ports, protocol defaulting to TCP, and endPort ranges",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - ports:
    - port: 80
    - {protocol: UDP, port: 5000, endPort: 5010}`},
			conns: []conn{
				tcp("v/b", "x/a", 80, true), udp("v/b", "x/a", 80, false), tcp("v/b", "x/a", 81, false),
				udp("v/b", "x/a", 4999, false), udp("v/b", "x/a", 5000, true), udp("v/b", "x/a", 5010, true), udp("v/b", "x/a", 5011, false),
				tcp("v/b", "x/a", 5005, false), icmp("v/b", "x/a", false), sctp("v/b", "x/a", 80, false),
			},
		},
		{
			name: "protocol without port allows every port of that protocol",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{protocol: SCTP}]}]`},
			conns: []conn{sctp("v/b", "x/a", 1, true), sctp("v/b", "x/a", 65535, true), tcp("v/b", "x/a", 80, false), icmp("v/b", "x/a", false)},
		},
		{
			name: "named ports on ingress resolve on the destination pod, by name and protocol",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}]}]`},
			conns: []conn{
				tcp("v/b", "x/a", 80, true), tcp("v/b", "x/a", 8080, false), tcp("v/b", "x/b", 8080, true), tcp("v/b", "x/b", 80, false),
				udp("v/b", "x/a", 53, true), tcp("v/b", "x/a", 53, false), udp("v/b", "x/b", 53, false),
				tcp("v/b", "x/c", 80, false), // x/c declares no ports
			},
		},
		{
			name: "named ports on egress resolve on the destination pod too",
			policies: []string{`
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}, {port: assoc, protocol: SCTP}]}]`},
			conns: []conn{
				tcp("z/a", "x/a", 80, true), tcp("z/a", "x/b", 8080, true), tcp("z/a", "x/b", 80, false),
				sctp("z/a", "v/a", 9000, true), tcp("z/a", "v/a", 9000, false),
				tcp("z/a", "$OUT", 80, false), // a named port never matches an address that is not a pod
			},
		},
		{
			name: "policies are a union: each may add ports",
			policies: []string{`
metadata: {name: p80, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: 80}], from: [{podSelector: {}}]}]`, `
metadata: {name: p81, namespace: x}
spec:
  podSelector: {matchLabels: {tier: web}}
  ingress: [{ports: [{port: 81}], from: [{namespaceSelector: {}}]}]`},
			conns: []conn{tcp("x/b", "x/a", 80, true), tcp("x/b", "x/a", 81, true), tcp("v/b", "x/a", 81, true), tcp("v/b", "x/a", 80, false), tcp("x/b", "x/a", 82, false)},
		},
		{
			name: "both sides must allow: the source's egress and the destination's ingress",
			policies: []string{`
metadata: {name: in, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{namespaceSelector: {}}]}]`, `
metadata: {name: out, namespace: v}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}]}]`},
			conns: []conn{tcp("v/b", "x/b", 80, true), tcp("v/a", "x/b", 80, false), tcp("v/a", "v/b", 80, true), tcp("x/a", "x/b", 80, true)},
		},
		{
			name: "hostNetwork pods are never selected and count as the node",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]`},
			conns: []conn{
				tcp("$OUT", "$NODE", 22, true), // the hostNetwork pod is not isolated
				tcp("$NODE", "x/a", 80, false), // and does not match podSelector app=a
			},
		},
		{
			name: "terminated pods take no part; their addresses are outside",
			policies: []string{`
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]`},
			conns: []conn{tcp("$GONE", "x/b", 80, false), tcp("$FAILED", "x/b", 80, false), tcp("x/a", "x/b", 80, true), tcp("x/b", "$GONE", 80, true)},
		},
		{
			name: "a pod's traffic to itself is loopback and always allowed",
			policies: []string{`
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`},
			conns: []conn{tcp("x/a", "x/a", 80, true), icmp("x/b", "x/b", true), tcp("x/a", "x/b", 80, false)},
		},
	}
	for _, tc := range tests {
		for _, famName := range []string{"IPv4", "IPv6"} {
			fam := families[famName]
			t.Run(tc.name+"/"+famName, func(t *testing.T) {
				c := world()
				for _, doc := range tc.policies {
					c.Policies = append(c.Policies, mustPolicy(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"+substitute(doc, fam)))
				}
				tab := mustCompile(t, c)
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
					// The one-sided lookups agree with Lookup.
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

// endAddr resolves a connection end: a placeholder or a pod's address of
// the family under test.
func endAddr(t *testing.T, tab *table.Table, s string, fam map[string]string, famName string) netip.Addr {
	t.Helper()
	if strings.HasPrefix(s, "$") {
		return addr(t, substitute(s, fam))
	}
	ns, name, _ := strings.Cut(s, "/")
	i, ok := tab.EndpointByName(ns, name)
	if !ok {
		t.Fatalf("no endpoint %s", s)
	}
	for _, a := range tab.Endpoint(i).IPs {
		if a.Is4() == (famName == "IPv4") {
			return a
		}
	}
	t.Fatalf("%s has no %s address", s, famName)
	return netip.Addr{}
}

func TestDualStackPodIsOneEndpoint(t *testing.T) {
	tab := mustCompile(t, world())
	i4, ok4 := tab.EndpointByAddr(addr(t, "10.0.1.1"))
	i6, ok6 := tab.EndpointByAddr(addr(t, "fd00::101"))
	if !ok4 || !ok6 || i4 != i6 {
		t.Fatalf("dual-stack pod v/a: IPv4 -> %d,%v IPv6 -> %d,%v", i4, ok4, i6, ok6)
	}
	if got := tab.Endpoint(i4).String(); got != "v/a" {
		t.Errorf("endpoint = %s, want v/a", got)
	}
	if _, ok := tab.EndpointByName("x", "pending"); ok {
		t.Error("pod without an IP is an endpoint")
	}
	if _, ok := tab.EndpointByName("x", "host"); ok {
		t.Error("hostNetwork pod is an endpoint")
	}
	if got := fmt.Sprint(tab.Stats().Endpoints); got != "7" {
		t.Errorf("endpoints = %s, want 7", got)
	}
}
