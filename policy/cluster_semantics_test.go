package policy_test

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// clusterWorld is world() with two nodes: node-1 (role=worker) owns the
// $NODE address that the hostNetwork pod x/host has, node-2 (role=infra)
// owns $NODE2.
func clusterWorld() *policy.Cluster {
	c := world()
	c.Nodes = []*corev1.Node{
		newNode("node-1", []string{"172.18.0.2", "fc00::2"}, "role=worker", "kubernetes.io/os=linux"),
		newNode("node-2", []string{"172.18.0.3", "fc00::3"}, "role=infra", "kubernetes.io/os=linux"),
	}
	return c
}

func newNode(name string, ips []string, kv ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labelsOf(kv...)}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	return n
}

func init() {
	for _, fam := range []map[string]string{families["IPv4"], families["IPv6"]} {
		if fam["NODE"] == "172.18.0.2" {
			fam["NODE2"], fam["OUTNET2"] = "172.18.0.3", "198.51.100.0/24"
		} else {
			fam["NODE2"], fam["OUTNET2"] = "fc00::3", "2001:db8:1::/64"
		}
	}
}

// addDocs parses manifests of NetworkPolicy, ClusterNetworkPolicy,
// AdminNetworkPolicy and BaselineAdminNetworkPolicy into c, strictly.
func addDocs(t testing.TB, c *policy.Cluster, docs ...string) {
	t.Helper()
	for _, doc := range docs {
		var h struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &h); err != nil {
			t.Fatalf("parse: %v\n%s", err, doc)
		}
		var obj any
		switch h.Kind {
		case "NetworkPolicy":
			c.Policies = append(c.Policies, mustPolicy(t, doc))
			continue
		case policy.KindClusterNetworkPolicy:
			p := &npav1beta1.ClusterNetworkPolicy{}
			c.ClusterNetworkPolicies, obj = append(c.ClusterNetworkPolicies, p), p
		case policy.KindAdminNetworkPolicy:
			p := &npav1alpha1.AdminNetworkPolicy{}
			c.AdminNetworkPolicies, obj = append(c.AdminNetworkPolicies, p), p
		case policy.KindBaselineAdminNetworkPolicy:
			p := &npav1alpha1.BaselineAdminNetworkPolicy{}
			c.BaselineAdminNetworkPolicies, obj = append(c.BaselineAdminNetworkPolicies, p), p
		default:
			t.Fatalf("unknown kind %q", h.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("parse %s: %v\n%s", h.Kind, err, doc)
		}
	}
}

// Manifest headers for the tests.
const (
	np   = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
	cnp  = "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\n"
	anp  = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n"
	banp = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\n"
)

func TestClusterPolicySemantics(t *testing.T) {
	tests := []struct {
		name  string
		docs  []string
		conns []conn
	}{
		{
			name: "an Admin Deny overrides a NetworkPolicy that allows",
			docs: []string{np + `
metadata: {name: allow-v, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: v}}}]}]}`, cnp + `
metadata: {name: deny-v}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: b}}}}]}]`},
			conns: []conn{tcp("v/a", "x/a", 80, true), tcp("v/b", "x/a", 80, false), tcp("v/b", "x/c", 80, false), tcp("z/a", "x/a", 80, false)},
		},
		{
			name: "an Admin Accept overrides a NetworkPolicy that isolates",
			docs: []string{np + `
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}`, cnp + `
metadata: {name: accept-v}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Accept, from: [{namespaces: {matchLabels: {ns: v}}}]}]`},
			conns: []conn{tcp("v/a", "x/a", 80, true), icmp("v/b", "x/c", true), tcp("z/a", "x/a", 80, false), tcp("x/b", "x/a", 80, false)},
		},
		{
			name: "an egress Accept does not decide the destination's ingress",
			docs: []string{np + `
metadata: {name: deny-all, namespace: v}
spec: {podSelector: {}, policyTypes: [Ingress]}`, cnp + `
metadata: {name: accept}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{namespaces: {}}]}]`},
			conns: []conn{tcp("x/a", "v/a", 80, false), tcp("x/a", "z/a", 80, true)},
		},
		{
			name: "within a tier the lower priority wins",
			docs: []string{cnp + `
metadata: {name: a-accept}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Accept, from: [{namespaces: {matchLabels: {ns: v}}}]}]`, cnp + `
metadata: {name: b-deny}
spec:
  tier: Admin
  priority: 6
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]`},
			conns: []conn{tcp("v/a", "x/a", 80, true), tcp("z/a", "x/a", 80, false), tcp("v/a", "z/a", 80, false)},
		},
		{
			name: "within a policy the first matching rule wins",
			docs: []string{cnp + `
metadata: {name: ordered}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {action: Deny, to: [{namespaces: {matchLabels: {ns: v}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
  - {action: Accept, to: [{namespaces: {matchLabels: {ns: v}}}]}
  - {action: Deny, to: [{namespaces: {}}]}`},
			conns: []conn{tcp("x/a", "v/a", 80, false), tcp("x/a", "v/a", 81, true), udp("x/a", "v/a", 80, true), tcp("x/a", "z/a", 81, false), tcp("x/a", "$OUT", 80, true)},
		},
		{
			name: "Pass hands the decision to NetworkPolicy",
			docs: []string{np + `
metadata: {name: allow-va, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: v}}, podSelector: {matchLabels: {app: a}}}]}]}`, cnp + `
metadata: {name: pass-v}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {action: Pass, from: [{namespaces: {matchLabels: {ns: v}}}]}
  - {action: Deny, from: [{namespaces: {}}]}`, cnp + `
metadata: {name: accept-all-later}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {}}]}]`},
			conns: []conn{tcp("v/a", "x/a", 80, true), tcp("v/b", "x/a", 80, false), tcp("z/a", "x/a", 80, false), tcp("z/a", "v/a", 80, true)},
		},
		{
			name: "Pass without a NetworkPolicy goes on to the Baseline tier, then the default",
			docs: []string{cnp + `
metadata: {name: pass}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress: [{action: Pass, to: [{namespaces: {}}]}]`, cnp + `
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress: [{action: Deny, to: [{namespaces: {matchLabels: {ns: v}}}]}]`},
			conns: []conn{tcp("x/a", "v/a", 80, false), tcp("x/a", "z/a", 80, true), tcp("z/a", "v/a", 80, true)},
		},
		{
			name: "the Baseline tier applies only where no NetworkPolicy selects the pod for the direction",
			docs: []string{np + `
metadata: {name: a-egress-only, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress], egress: [{}]}`, np + `
metadata: {name: b-ingress, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: v}}, podSelector: {matchLabels: {app: a}}}]}]}`, cnp + `
metadata: {name: default-deny}
spec:
  tier: Baseline
  priority: 10
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
  egress: [{action: Deny, to: [{networks: [$OUTNET]}]}]`},
			conns: []conn{
				tcp("v/a", "x/a", 80, false), // x/a's ingress: no NetworkPolicy, the Baseline denies
				tcp("v/a", "x/b", 80, true),  // x/b's ingress: its NetworkPolicy allows, the Baseline does not apply
				tcp("v/b", "x/b", 80, false), // ... and denies, even where the Baseline would deny too
				tcp("x/a", "$OUT", 80, true), // x/a's egress: its NetworkPolicy allows all
				tcp("x/b", "$OUT", 80, false),
				tcp("$OUT", "x/a", 80, true), // ingress peers are pods only
			},
		},
		{
			name: "Baseline rules by priority, Pass goes to the default, and a policy without rules for a direction leaves it alone",
			docs: []string{cnp + `
metadata: {name: accept-web}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {tier: web}}}}]}]`, cnp + `
metadata: {name: pass-z}
spec:
  tier: Baseline
  priority: 2
  subject: {namespaces: {}}
  ingress: [{action: Pass, from: [{namespaces: {matchLabels: {ns: z}}}]}]`, cnp + `
metadata: {name: deny-rest}
spec:
  tier: Baseline
  priority: 3
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]`},
			conns: []conn{tcp("x/a", "x/b", 80, true), tcp("v/b", "x/b", 80, false), tcp("v/a", "x/b", 80, false), tcp("z/a", "v/b", 80, true), tcp("x/c", "z/a", 80, false), tcp("x/b", "$OUT", 80, true)},
		},
		{
			name: "subjects: pods selects by namespace and pod labels, namespaces by namespace labels, undeclared namespaces too",
			docs: []string{cnp + `
metadata: {name: pods-subject}
spec:
  tier: Admin
  priority: 1
  subject: {pods: {namespaceSelector: {matchLabels: {team: red}}, podSelector: {matchLabels: {app: a}}}}
  egress: [{action: Deny, to: [{networks: [$OUTNET]}]}]`, cnp + `
metadata: {name: all-namespaces}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: [$OUTNET2]}]}]`},
			conns: []conn{
				tcp("v/a", "$OUT", 80, false), tcp("v/b", "$OUT", 80, true), tcp("x/a", "$OUT", 80, true),
				tcp("w/a", "198.51.100.1", 80, false), tcp("x/c", "198.51.100.1", 80, false),
			},
		},
		{
			name: "peers: pods ANDs its selectors, an empty namespaceSelector matches every namespace, peers are ORed",
			docs: []string{cnp + `
metadata: {name: peers}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: z}}}
  ingress:
  - action: Accept
    from:
    - pods: {namespaceSelector: {matchLabels: {team: red}}, podSelector: {matchLabels: {tier: db}}}
    - pods: {namespaceSelector: {}, podSelector: {matchLabels: {tier: web}}}
  - {action: Deny, from: [{namespaces: {}}]}`},
			conns: []conn{tcp("v/b", "z/a", 80, true), tcp("x/a", "z/a", 80, true), tcp("v/a", "z/a", 80, false), tcp("x/b", "z/a", 80, false), tcp("w/a", "z/a", 80, false)},
		},
		{
			name: "networks match addresses, also pods' own",
			docs: []string{cnp + `
metadata: {name: nets}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {action: Deny, to: [{networks: [$XA, $NETY]}]}
  - {action: Accept, to: [{networks: [$ALL]}]}
  - {action: Deny, to: [{networks: [$OUTNET]}]}`, np + `
metadata: {name: egress-deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}`},
			conns: []conn{tcp("x/b", "x/a", 80, false), tcp("x/b", "v/a", 80, false), tcp("x/a", "x/b", 80, true), tcp("x/a", "z/a", 80, true), tcp("x/a", "$OUT", 80, false), tcp("x/a", "$NODE", 80, false)},
		},
		{
			name: "nodes peers match the selected nodes' addresses, whoever uses them",
			docs: []string{cnp + `
metadata: {name: nodes}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{nodes: {matchLabels: {role: worker}}}], protocols: [{tcp: {destinationPort: {number: 10250}}}]}
  - {action: Deny, to: [{nodes: {matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}}]}`},
			conns: []conn{tcp("x/a", "$NODE", 10250, true), tcp("x/a", "$NODE", 22, false), tcp("x/a", "$NODE2", 10250, false), tcp("v/a", "$NODE2", 22, false), tcp("x/a", "$OUT", 22, true), tcp("x/a", "v/a", 22, true)},
		},
		{
			name: "protocols: none matches everything, ICMP included; numbers, inclusive ranges, UDP and SCTP",
			docs: []string{cnp + `
metadata: {name: ports}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - action: Accept
    from: [{namespaces: {}}]
    protocols:
    - tcp: {destinationPort: {number: 80}}
    - tcp: {destinationPort: {range: {start: 8000, end: 8080}}}
    - udp: {destinationPort: {number: 53}}
    - sctp: {destinationPort: {range: {start: 9000, end: 9001}}}
  - {action: Deny, from: [{namespaces: {matchLabels: {ns: v}}}]}`},
			conns: []conn{
				tcp("v/a", "x/a", 80, true), tcp("v/a", "x/a", 8000, true), tcp("v/a", "x/a", 8080, true), tcp("v/a", "x/a", 8081, false),
				tcp("v/a", "x/a", 7999, false), udp("v/a", "x/a", 53, true), udp("v/a", "x/a", 80, false), tcp("v/a", "x/a", 53, false),
				sctp("v/a", "x/a", 9001, true), sctp("v/a", "x/a", 80, false), icmp("v/a", "x/a", false), icmp("z/a", "x/a", true),
			},
		},
		{
			name: "named ports resolve on the destination pod with the container port's protocol",
			docs: []string{cnp + `
metadata: {name: named}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{namespaces: {}}], protocols: [{destinationNamedPort: http}, {destinationNamedPort: dns}]}
  - {action: Deny, to: [{namespaces: {}}]}`},
			conns: []conn{
				tcp("v/b", "x/a", 80, true), tcp("v/b", "x/b", 8080, true), tcp("v/b", "x/b", 80, false), udp("v/b", "x/a", 53, true),
				tcp("v/b", "x/a", 53, false), tcp("v/b", "x/c", 80, false), sctp("x/a", "v/a", 80, false),
			},
		},
		{
			name: "an ingress Deny from every namespace leaves sources that are not pods alone",
			docs: []string{cnp + `
metadata: {name: deny-pods}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]`},
			conns: []conn{tcp("x/b", "x/a", 80, false), tcp("$OUT", "x/a", 80, true), tcp("$NODE", "x/a", 80, true), tcp("x/a", "x/a", 80, true)},
		},
		{
			name: "domainNames peers match nothing: an allow-list of names accepts nothing",
			docs: []string{cnp + `
metadata: {name: fqdn}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {action: Accept, to: [{domainNames: [example.com, "*.example.org"]}]}
  - {action: Accept, to: [{networks: [$NETY]}]}
  - {action: Deny, to: [{networks: [$OUTNET]}]}`},
			conns: []conn{tcp("x/a", "$OUT", 443, false), tcp("x/a", "v/a", 443, true)},
		},
		{
			name: "v1alpha1: AdminNetworkPolicy Allow is Accept, BaselineAdminNetworkPolicy follows Baseline ClusterNetworkPolicies",
			docs: []string{anp + `
metadata: {name: allow-v}
spec:
  priority: 3
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {action: Allow, from: [{namespaces: {matchLabels: {ns: v}}}], ports: [{portNumber: {port: 80}}, {portRange: {protocol: UDP, start: 50, end: 60}}, {namedPort: assoc}]}
  - {action: Deny, from: [{namespaces: {matchLabels: {ns: v}}}]}`, banp + `
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]`, cnp + `
metadata: {name: baseline-accept-z}
spec:
  tier: Baseline
  priority: 1000
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {matchLabels: {ns: z}}}]}]`},
			conns: []conn{
				tcp("v/a", "x/a", 80, true), udp("v/a", "x/a", 55, true), tcp("v/a", "x/a", 55, false), udp("v/a", "x/a", 80, false),
				tcp("z/a", "x/a", 80, true), tcp("x/b", "x/a", 80, false), tcp("x/b", "v/b", 80, false), sctp("v/a", "x/a", 9000, false),
			},
		},
		{
			name: "AdminNetworkPolicy named ports and Pass",
			docs: []string{anp + `
metadata: {name: named}
spec:
  priority: 3
  subject: {namespaces: {matchLabels: {ns: v}}}
  ingress:
  - {action: Pass, from: [{namespaces: {matchLabels: {ns: x}}}], ports: [{namedPort: assoc}]}
  - {action: Deny, from: [{namespaces: {}}]}`},
			conns: []conn{sctp("x/a", "v/a", 9000, true), sctp("x/a", "v/a", 9001, false), tcp("x/a", "v/a", 9000, false)},
		},
	}
	for _, tc := range tests {
		for _, famName := range []string{"IPv4", "IPv6"} {
			fam := families[famName]
			t.Run(tc.name+"/"+famName, func(t *testing.T) {
				c := clusterWorld()
				for _, doc := range tc.docs {
					addDocs(t, c, substitute(doc, fam))
				}
				tab := mustCompile(t, c)
				for _, cn := range tc.conns {
					if famName == "IPv6" && strings.Contains(cn.from+cn.to, "198.51.100.1") {
						cn.from, cn.to = strings.ReplaceAll(cn.from, "198.51.100.1", "2001:db8:1::1"), strings.ReplaceAll(cn.to, "198.51.100.1", "2001:db8:1::1")
					}
					checkConn(t, tab, cn, fam, famName)
				}
			})
		}
	}
}

// checkConn decides cn in tab and checks the verdict, and that the
// one-sided lookups and Explain agree with Lookup.
func checkConn(t *testing.T, tab *table.Table, cn conn, fam map[string]string, famName string) {
	t.Helper()
	src, dst := connAddr(t, tab, cn.from, fam, famName), connAddr(t, tab, cn.to, fam, famName)
	proto := cn.proto
	if proto == table.ICMP && famName == "IPv6" {
		proto = table.ICMPv6
	}
	v := tab.Lookup(src, dst, proto, cn.port)
	e := tab.Explain(src, dst, proto, cn.port)
	if v.Allowed() != cn.want {
		t.Errorf("%s -> %s %s/%d: allowed=%v, want %v\n  egress: %s\n  ingress: %s",
			cn.from, cn.to, proto, cn.port, v.Allowed(), cn.want, e.Egress.Detail, e.Ingress.Detail)
	}
	if (e.Verdict == "allow") != v.Allowed() || e.Egress.Allowed != v.Egress.Allowed() || e.Ingress.Allowed != v.Ingress.Allowed() {
		t.Errorf("%s -> %s: Explain %+v disagrees with Lookup %+v", cn.from, cn.to, e, v)
	}
	if got := tab.Egress(src, dst, proto, cn.port); got != v.Egress {
		t.Errorf("%s -> %s: Egress() = %+v, Lookup().Egress = %+v", cn.from, cn.to, got, v.Egress)
	}
	if got := tab.Ingress(src, dst, proto, cn.port); got != v.Ingress {
		t.Errorf("%s -> %s: Ingress() = %+v, Lookup().Ingress = %+v", cn.from, cn.to, got, v.Ingress)
	}
}

// connAddr is endAddr that also takes literal addresses.
func connAddr(t *testing.T, tab *table.Table, s string, fam map[string]string, famName string) netip.Addr {
	t.Helper()
	if a, err := netip.ParseAddr(s); err == nil {
		return a
	}
	return endAddr(t, tab, s, fam, famName)
}

// TestClusterDecisionsNameTierAndRule checks the reasons and rules that
// decisions carry, and what Explain says about them.
func TestClusterDecisionsNameTierAndRule(t *testing.T) {
	c := clusterWorld()
	addDocs(t, c, np+`
metadata: {name: np-x, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}`, cnp+`
metadata: {name: admin}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress:
  - {name: accept-v-a, action: Accept, from: [{pods: {namespaceSelector: {matchLabels: {ns: v}}, podSelector: {matchLabels: {app: a}}}}]}
  - {name: pass-z, action: Pass, from: [{namespaces: {matchLabels: {ns: z}}}]}
  - {name: deny-v, action: Deny, from: [{namespaces: {matchLabels: {ns: v}}}]}`, cnp+`
metadata: {name: base}
spec:
  tier: Baseline
  priority: 3
  subject: {namespaces: {}}
  ingress:
  - {name: deny-z, action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}
  - {name: accept-w, action: Accept, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: w}}}]}`)
	tab := mustCompile(t, c)
	ip := func(pod string) netip.Addr { return endAddr(t, tab, pod, families["IPv4"], "IPv4") }
	tests := []struct {
		from, to    string
		reason      table.Reason
		clusterRule string // the ClusterRule's String, or "" for none
		tier        string
		detail      []string
	}{
		{"v/a", "x/a", table.AdminAccepted, `ClusterNetworkPolicy admin ingress[0] "accept-v-a" (Admin tier, priority 7)`, "Admin",
			[]string{"the Admin tier decides", "accepts it (Accept)", "NetworkPolicy and the Baseline tier are not consulted"}},
		{"v/b", "x/b", table.AdminDenied, `ClusterNetworkPolicy admin ingress[2] "deny-v" (Admin tier, priority 7)`, "Admin",
			[]string{"denies it (Deny)"}},
		{"z/a", "x/b", table.AllowedByRule, `ClusterNetworkPolicy admin ingress[1] "pass-z" (Admin tier, priority 7)`, "NetworkPolicy",
			[]string{`"pass-z" (Admin tier, priority 7) passes it on (Pass) to NetworkPolicy and the Baseline tier`, "allowed by x/np-x ingress[0]"}},
		{"z/a", "x/a", table.BaselineDenied, `ClusterNetworkPolicy base ingress[0] "deny-z" (Baseline tier, priority 3)`, "Baseline",
			[]string{"passes it on (Pass)", "no NetworkPolicy with policyType Ingress selects x/a", "the Baseline tier decides", "denies it (Deny)"}},
		{"w/a", "x/c", table.BaselineAccepted, `ClusterNetworkPolicy base ingress[1] "accept-w" (Baseline tier, priority 3)`, "Baseline",
			[]string{"no rule of the Admin tier (ClusterNetworkPolicy admin, priority 7) matches", "accepts it (Accept)"}},
		{"x/c", "x/a", table.NotIsolated, "", "default", []string{"no rule of the Baseline tier", "allowed by default"}},
		{"x/c", "v/a", table.NotIsolated, "", "default", []string{"no rule of the Baseline tier (ClusterNetworkPolicy base, priority 3) matches"}},
	}
	for _, tt := range tests {
		d := tab.Ingress(ip(tt.from), ip(tt.to), table.TCP, 80)
		if d.Reason != tt.reason {
			t.Errorf("%s -> %s: reason %s, want %s", tt.from, tt.to, d.Reason, tt.reason)
		}
		got := ""
		if ref, ok := tab.ClusterRuleOf(table.Ingress, ip(tt.from), ip(tt.to), table.TCP, 80); ok {
			got = tab.ClusterRule(ref).String()
		}
		if got != tt.clusterRule {
			t.Errorf("%s -> %s: cluster rule %q, want %q", tt.from, tt.to, got, tt.clusterRule)
		}
		if d.Reason != table.AllowedByRule && d.Rule != (table.RuleRef{Policy: -1, Index: -1}) {
			t.Errorf("%s -> %s: Rule = %+v for reason %s, want none", tt.from, tt.to, d.Rule, d.Reason)
		}
		e := tab.Explain(ip(tt.from), ip(tt.to), table.TCP, 80)
		if e.Ingress.Tier != tt.tier {
			t.Errorf("%s -> %s: explained tier %q, want %q", tt.from, tt.to, e.Ingress.Tier, tt.tier)
		}
		for _, want := range tt.detail {
			if !strings.Contains(e.Ingress.Detail, want) {
				t.Errorf("%s -> %s: detail %q does not say %q", tt.from, tt.to, e.Ingress.Detail, want)
			}
		}
	}
}

// TestClusterPoliciesFailClosedWhenTrusted: an object the API server
// accepted but podgate cannot read (a peer with no known field, as from a
// newer CRD) makes an Accept rule match nothing and a Deny or Pass rule
// deny everything; untrusted, it is an error.
func TestClusterPoliciesFailClosedWhenTrusted(t *testing.T) {
	c := clusterWorld()
	addDocs(t, c, cnp+`
metadata: {name: accept-unknown}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Accept, from: [{}]}]`, cnp+`
metadata: {name: pass-unknown}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {matchLabels: {ns: v}}}
  ingress: [{action: Pass, from: [{}]}]`)
	if _, err := policy.Compile(c); err == nil || !strings.Contains(err.Error(), "spec.ingress[0].from[0]") {
		t.Fatalf("Compile: %v, want an error naming spec.ingress[0].from[0]", err)
	}
	tab, err := policy.CompileWith(c, policy.Options{Trusted: true})
	if err != nil {
		t.Fatal(err)
	}
	fam := families["IPv4"]
	for _, cn := range []conn{tcp("z/a", "x/a", 80, true), tcp("z/a", "v/a", 80, false), tcp("$OUT", "v/a", 80, false), tcp("v/a", "v/b", 80, false)} {
		checkConn(t, tab, cn, fam, "IPv4")
	}
	w := strings.Join(tab.Warnings(), "\n")
	for _, want := range []string{"ClusterNetworkPolicy accept-unknown: spec.ingress[0]: from[0]: a peer without a field podgate knows: the Accept rule ignores it",
		"ClusterNetworkPolicy pass-unknown: spec.ingress[0]: from[0]: a peer without a field podgate knows: the Pass rule denies every connection of its subject"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings do not say %q:\n%s", want, w)
		}
	}
}

// TestTablesWithoutClusterPoliciesDecideAsBefore: a cluster policy that
// selects no pod must not change any decision (every decision of the
// differential test's random clusters is compared).
func TestTablesWithoutClusterPoliciesDecideAsBefore(t *testing.T) {
	for seed := range 200 {
		g := newGen(uint64(seed))
		c := g.cluster()
		plain := mustCompile(t, c)
		addDocs(t, c, cnp+`
metadata: {name: nobody}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {no: such}}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]`)
		tiered := mustCompile(t, c)
		for _, src := range allAddrs(c) {
			for _, dst := range append(allAddrs(c), clusterIPs(c)...) {
				if src.Is4() != dst.Is4() {
					continue
				}
				a, b := plain.Lookup(src, dst, table.TCP, 80), tiered.Lookup(src, dst, table.TCP, 80)
				if a != b {
					t.Fatalf("seed %d: %s -> %s: %+v without cluster policies, %+v with one that selects nothing", seed, src, dst, a, b)
				}
			}
		}
	}
}

func TestClusterPolicyValidation(t *testing.T) {
	valid := cnp + `
metadata: {name: ok}
spec:
  tier: Admin
  priority: 1000
  subject: {pods: {namespaceSelector: {}, podSelector: {}}}
  egress:
  - name: x
    action: Deny
    to: [{networks: [10.0.0.0/8, "fd00::/8"]}, {nodes: {}}, {domainNames: [a.example]}]
    protocols: [{tcp: {destinationPort: {range: {start: 1, end: 65535}}}}]`
	c := &policy.Cluster{}
	addDocs(t, c, valid)
	if el := policy.ValidateClusterNetworkPolicy(c.ClusterNetworkPolicies[0]); len(el) != 0 {
		t.Fatalf("valid policy: %v", el)
	}
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"tier", cnp + "metadata: {name: a}\nspec: {tier: Middle, priority: 1, subject: {namespaces: {}}}", []string{`spec.tier: Unsupported value: "Middle"`}},
		{"no tier", cnp + "metadata: {name: a}\nspec: {priority: 1, subject: {namespaces: {}}}", []string{"spec.tier: Required value"}},
		{"priority", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1001, subject: {namespaces: {}}}", []string{"spec.priority: Invalid value: 1001"}},
		{"subject", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {}}", []string{"spec.subject: Required value"}},
		{"two subjects", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}", []string{"spec.subject: Too many: 2"}},
		{"bad name", cnp + "metadata: {name: A_B}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}", []string{"metadata.name: Invalid value"}},
		{"action", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Allow, from: [{namespaces: {}}]}]}",
			[]string{`spec.ingress[0].action: Unsupported value: "Allow"`}},
		{"no from", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny}]}", []string{"spec.ingress[0].from: Required value"}},
		{"empty to", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: []}]}", []string{"spec.egress[0].to: Invalid value: 0"}},
		{"two peer fields", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}]}",
			[]string{"spec.egress[0].to[0]: Too many: 2"}},
		{"host bits", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.1/8]}]}]}",
			[]string{"spec.egress[0].to[0].networks[0]: Invalid value: \"10.0.0.1/8\": Invalid CIDR format provided"}},
		{"leading zero", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [010.0.0.0/8]}]}]}",
			[]string{"networks[0]: Invalid value: \"010.0.0.0/8\""}},
		{"mapped", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [\"::ffff:10.0.0.0/104\"]}]}]}",
			[]string{"IPv4-mapped"}},
		{"duplicate network", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0/8, 10.0.0.0/8]}]}]}",
			[]string{"spec.egress[0].to[0].networks[1]: Duplicate value"}},
		{"range", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {range: {start: 80, end: 80}}}}]}]}",
			[]string{"spec.ingress[0].protocols[0].udp.destinationPort.range", "Start port must be less than End port"}},
		{"port number", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {number: 65536}}}]}]}",
			[]string{"spec.ingress[0].protocols[0].sctp.destinationPort.number: Invalid value: 65536"}},
		{"tcp without port", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}]}",
			[]string{"spec.ingress[0].protocols[0].tcp: Invalid value"}},
		{"empty protocols", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}], protocols: []}]}",
			[]string{"spec.ingress[0].protocols: Invalid value: 0"}},
		{"named port with networks", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: http}]}]}",
			[]string{"spec.egress[0]: Invalid value: \"object\": networks/nodes/domainNames peer cannot be set with namedPorts"}},
		{"domain", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: [\"foo.*.com\"]}]}]}",
			[]string{"spec.egress[0].to[0].domainNames[0]: Invalid value"}},
		{"selector operator", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {matchExpressions: [{key: a, operator: Equals}]}}}",
			[]string{"spec.subject.namespaces: Invalid value", "not a label selector"}},
		{"too many rules", cnp + "metadata: {name: a}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [" + strings.Repeat("{action: Deny, from: [{namespaces: {}}]},", 26) + "]}",
			[]string{"spec.ingress: Too many: 26: must have at most 25 items"}},
		{"v1alpha1 action", anp + "metadata: {name: a}\nspec: {priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {}}]}]}",
			[]string{`spec.ingress[0].action: Unsupported value: "Accept"`}},
		{"v1alpha1 protocol", anp + "metadata: {name: a}\nspec: {priority: 1, subject: {namespaces: {}}, ingress: [{action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {protocol: ICMP, port: 1}}]}]}",
			[]string{`spec.ingress[0].ports[0].portNumber.protocol: Unsupported value: "ICMP"`}},
		{"v1alpha1 two port fields", anp + "metadata: {name: a}\nspec: {priority: 1, subject: {namespaces: {}}, ingress: [{action: Allow, from: [{namespaces: {}}], ports: [{namedPort: a, portNumber: {port: 1}}]}]}",
			[]string{`spec.ingress[0].ports[0]: Too many: 2`}},
		{"baseline name", banp + "metadata: {name: other}\nspec: {subject: {namespaces: {}}}", []string{`metadata.name: Invalid value: "other"`, `metadata.name="default"`}},
		{"baseline Pass", banp + "metadata: {name: default}\nspec: {subject: {namespaces: {}}, egress: [{action: Pass, to: [{namespaces: {}}]}]}",
			[]string{`spec.egress[0].action: Unsupported value: "Pass"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &policy.Cluster{}
			addDocs(t, c, tt.doc)
			var el field.ErrorList
			switch {
			case len(c.ClusterNetworkPolicies) > 0:
				el = policy.ValidateClusterNetworkPolicy(c.ClusterNetworkPolicies[0])
			case len(c.AdminNetworkPolicies) > 0:
				el = policy.ValidateAdminNetworkPolicy(c.AdminNetworkPolicies[0])
			default:
				el = policy.ValidateBaselineAdminNetworkPolicy(c.BaselineAdminNetworkPolicies[0])
			}
			got := el.ToAggregate()
			if got == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(got.Error(), w) {
					t.Errorf("error %q does not contain %q", got, w)
				}
			}
			if _, err := policy.Compile(c); err == nil {
				t.Error("Compile accepts it")
			}
		})
	}
}

func newGen(seed uint64) gen { return gen{rand.New(rand.NewPCG(seed, 7))} }

// allAddrs returns the addresses of the cluster's pods (live or not) and
// some outside addresses.
func allAddrs(c *policy.Cluster) []netip.Addr {
	var out []netip.Addr
	for _, p := range c.Pods {
		for _, ip := range p.Status.PodIPs {
			out = append(out, netip.MustParseAddr(ip.IP))
		}
	}
	return append(out, netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7"))
}

// TestClusterPoliciesJudgeServiceBackends: egress to a ClusterIP of a pod
// that only cluster policies govern is judged against the Service's ready
// backends, as after kube-proxy's DNAT, and attributed to the backend's
// rule.
func TestClusterPoliciesJudgeServiceBackends(t *testing.T) {
	c := clusterWorld()
	name, port, tcpProto := "http", int32(80), corev1.ProtocolTCP
	c.Services = append(c.Services, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "v", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{
			{Name: "http", Port: 8080, Protocol: corev1.ProtocolTCP},
		}},
	})
	c.EndpointSlices = append(c.EndpointSlices, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "v", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &tcpProto}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.1.1"}}, {Addresses: []string{"10.0.1.2"}}},
	})
	addDocs(t, c, cnp+`
metadata: {name: no-db}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {name: deny-db, action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {tier: db}}}}]}
  - {name: accept-v, action: Accept, to: [{namespaces: {matchLabels: {ns: v}}}]}`)
	tab := mustCompile(t, c)
	src, svc := addr(t, "10.0.0.1"), addr(t, "10.96.0.10")
	// v/b (10.0.1.2) is a db pod: the Service is denied although v/a is
	// accepted, and the denial is the second backend's rule.
	d := tab.Egress(src, svc, table.TCP, 8080)
	if d.Reason != table.AdminDenied {
		t.Fatalf("x/a -> Service v/web: %s, want admin-denied", d.Reason)
	}
	ref, ok := tab.ClusterRuleOf(table.Egress, src, svc, table.TCP, 8080)
	if !ok || tab.ClusterRule(ref).Name != "deny-db" {
		t.Errorf("ClusterRuleOf = %+v, %v; want the rule deny-db", ref, ok)
	}
	e := tab.Explain(src, svc, table.TCP, 8080)
	if e.Egress.ClusterRule == nil || e.Egress.ClusterRule.Name != "deny-db" || len(e.Egress.Backends) != 2 || e.Egress.Backends[0].ClusterRule.Name != "accept-v" {
		t.Errorf("explanation %+v: want the backends' rules accept-v and deny-db, deny-db deciding", e.Egress)
	}
	// To a port the Service does not have, the ClusterIP is an address.
	if d := tab.Egress(src, svc, table.TCP, 80); d.Reason != table.NotIsolated {
		t.Errorf("x/a -> 10.96.0.10:80: %s, want not-isolated", d.Reason)
	}
	// Without the db backend: accepted by accept-v.
	c.EndpointSlices[0].Endpoints = c.EndpointSlices[0].Endpoints[:1]
	tab = mustCompile(t, c)
	if d := tab.Egress(src, svc, table.TCP, 8080); d.Reason != table.AdminAccepted {
		t.Errorf("x/a -> Service v/web with one backend: %s, want admin-accepted", d.Reason)
	}
	if ref, ok := tab.ClusterRuleOf(table.Egress, src, svc, table.TCP, 8080); !ok || tab.ClusterRule(ref).Name != "accept-v" {
		t.Errorf("ClusterRuleOf = %+v, %v; want accept-v", ref, ok)
	}
}

// TestClusterLookupsDoNotAllocate: lookups and attribution in a table with
// cluster policies of both tiers allocate nothing.
func TestClusterLookupsDoNotAllocate(t *testing.T) {
	c := clusterWorld()
	addDocs(t, c, substitute(cnp+`
metadata: {name: admin}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - {action: Pass, to: [{nodes: {matchLabels: {role: worker}}}]}
  - {action: Deny, to: [{networks: [$OUTNET]}], protocols: [{tcp: {destinationPort: {range: {start: 1, end: 1024}}}}]}
  - {action: Accept, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: b}}}}], protocols: [{destinationNamedPort: http}]}`, families["IPv4"]), substitute(cnp+`
metadata: {name: baseline}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {matchLabels: {ns: x}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: v}}}]}]`, families["IPv4"]))
	tab := mustCompile(t, c)
	addrs := []netip.Addr{addr(t, "10.0.0.1"), addr(t, "10.0.0.2"), addr(t, "10.0.1.1"), addr(t, "192.0.2.10"), addr(t, "172.18.0.2")}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		src, dst := addrs[i%len(addrs)], addrs[(i/len(addrs))%len(addrs)]
		i++
		_ = tab.Lookup(src, dst, table.TCP, 80)
		_ = tab.Egress(src, dst, table.UDP, 53)
		_ = tab.Ingress(src, dst, table.SCTP, 9000)
		_, _ = tab.ClusterRuleOf(table.Egress, src, dst, table.TCP, 80)
	})
	if allocs != 0 {
		t.Errorf("lookups in a table with cluster policies allocate %v times per run, want 0", allocs)
	}
}
