package policy_test

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance"
	"sigs.k8s.io/yaml"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// The conformance tests of sigs.k8s.io/network-policy-api v0.3.0
// (conformance/tests, embedded in the module as conformance.Manifests) run
// through the offline evaluator.
//
// The harness reads each upstream test's Go source and follows it
// statement by statement: kubernetes.GetPod names the server pod,
// kubernetes.PokeServer is a probe (client pod, protocol, server address,
// port, whether it must connect), SetPodLabel and RemovePodLabel change a
// pod's labels, t.Cleanup functions run at the end of their subtest. The
// mutations of policies and namespaces (kubernetes.PatchClusterNetworkPolicy,
// kubernetes.PatchNamespace, s.Client.Delete) are Go code, ported by hand in
// confMutations below, one function per call in the order the calls
// appear. A mutation without a port fails its subtest.
//
// The cluster is the base manifests (conformance/base/manifests.yaml): five
// namespaces and five two-replica StatefulSets, expanded into pods
// NAME-0 and NAME-1 with the labels the StatefulSet controller adds, on two
// nodes; the centaur pods are hostNetwork and have their node's address. Manifests are rendered as the suite renders them
// (text/template with the host network ports 34345-34352) and read with
// policy.Load. Everything runs once with IPv4 and once with IPv6 addresses.

var confHostNetworkPorts = []int{34345, 34346, 34347, 34348, 34349, 34350, 34351, 34352}

// confWorld is the state of the cluster during one upstream test.
type confWorld struct {
	t    *testing.T
	ipv6 bool
	m    *policy.Manifests
	pods map[string]*corev1.Pod // "namespace/name"
}

func (w *confWorld) cnp(name string) *npav1beta1.ClusterNetworkPolicy {
	for _, p := range w.m.ClusterNetworkPolicies {
		if p.Name == name {
			return p
		}
	}
	w.t.Fatalf("no ClusterNetworkPolicy %s", name)
	return nil
}

func (w *confWorld) namespace(name string) *corev1.Namespace {
	for _, ns := range w.m.Namespaces {
		if ns.Name == name {
			return ns
		}
	}
	w.t.Fatalf("no namespace %s", name)
	return nil
}

func (w *confWorld) podIP(nsName string) string {
	p, ok := w.pods[nsName]
	if !ok {
		w.t.Fatalf("no pod %s", nsName)
	}
	return p.Status.PodIP
}

func swap[T any](s []T, i, j int) { s[i], s[j] = s[j], s[i] }

// swapEgress and swapIngress are the upstream tests' most common mutation:
// exchange two rules of a policy.
func swapEgress(name string, i, j int) func(*confWorld) {
	return func(w *confWorld) { swap(w.cnp(name).Spec.Egress, i, j) }
}

func swapIngress(name string, i, j int) func(*confWorld) {
	return func(w *confWorld) { swap(w.cnp(name).Spec.Ingress, i, j) }
}

func namedPortEgress(name string, i int, port string) func(*confWorld) {
	return func(w *confWorld) {
		w.cnp(name).Spec.Egress[i].Protocols = []npav1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: port}}
	}
}

func namedPortIngress(name string, i int, port string) func(*confWorld) {
	return func(w *confWorld) {
		w.cnp(name).Spec.Ingress[i].Protocols = []npav1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: port}}
	}
}

func setNamespaceLabels(name string, labels map[string]string) func(*confWorld) {
	return func(w *confWorld) { w.namespace(name).Labels = labels }
}

// allowPodIPs inserts, before the other egress rules of the policy, an
// Accept rule to the addresses of two pods (the inline CIDR tests).
func allowPodIPs(name, pod1, pod2 string) func(*confWorld) {
	return func(w *confWorld) {
		mask := "/32"
		if w.ipv6 {
			mask = "/128"
		}
		rule := npav1beta1.ClusterNetworkPolicyEgressRule{
			Name: "allow-egress-to-specific-podIPs", Action: "Accept",
			To: []npav1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []npav1beta1.CIDR{
				npav1beta1.CIDR(w.podIP(pod1) + mask), npav1beta1.CIDR(w.podIP(pod2) + mask),
			}}},
		}
		p := w.cnp(name)
		p.Spec.Egress = append([]npav1beta1.ClusterNetworkPolicyEgressRule{rule}, p.Spec.Egress...)
	}
}

const (
	gryffindor = "network-policy-conformance-gryffindor"
	slytherin  = "network-policy-conformance-slytherin"
	hufflepuff = "network-policy-conformance-hufflepuff"
	ravenclaw  = "network-policy-conformance-ravenclaw"
)

// confMutations are the hand-ported mutations, by upstream test
// (ShortName) and subtest name, in the order of the calls.
var confMutations = map[string]map[string][]func(*confWorld){
	"CNPAdminTierEgressNamedPort": {
		"Should support an 'allow-egress' policy for named port": {namedPortEgress("egress-tcp", 5, "web")},
	},
	"CNPAdminTierIngressNamedPort": {
		"Should support an 'allow-ingress' policy for named port": {namedPortIngress("ingress-udp", 5, "dns")},
	},
	"CNPBaselineTierEgressNamedPort": {
		"Should support an 'allow-egress' policy for named port": {namedPortEgress("default", 3, "dns")},
	},
	"CNPBaselineTierIngressNamedPort": {
		"Should support an 'allow-ingress' policy for named port": {namedPortIngress("default", 3, "web")},
	},
	"CNPAdminTierEgressInlineCIDRPeers": {
		"Should support a 'deny-egress' rule policy for egress-cidr-peer": {
			setNamespaceLabels(slytherin, map[string]string{"conformance-house": "denied-namespace-label"}),
			setNamespaceLabels(slytherin, map[string]string{"conformance-house": "slytherin"}),
		},
		"Should support an 'allow-egress' rule policy for egress-cidr-peer": {
			allowPodIPs("inline-cidr-as-peers-example", ravenclaw+"/luna-lovegood-0", hufflepuff+"/cedric-diggory-0"),
		},
	},
	"CNPBaselineTierEgressInlineCIDRPeers": {
		"Should support a 'deny-egress' rule policy for egress-cidr-peer": {
			setNamespaceLabels(slytherin, map[string]string{"conformance-house": "denied-namespace-label"}),
			setNamespaceLabels(slytherin, map[string]string{"conformance-house": "slytherin"}),
		},
		"Should support an 'allow-egress' rule policy for egress-cidr-peer": {
			allowPodIPs("default", ravenclaw+"/luna-lovegood-0", hufflepuff+"/cedric-diggory-0"),
		},
	},
	"CNPAdminTierIntegration": {
		"Should support a 'pass-ingress' policy for admin CNP and respect the match for network policy": {
			func(w *confWorld) {
				w.cnp("pass-example").Spec.Ingress[0].Action = npav1beta1.ClusterNetworkPolicyRuleActionPass
			},
		},
		"Should support a 'pass-egress' policy for admin CNP and respect the match for network policy": {
			func(w *confWorld) {
				w.cnp("pass-example").Spec.Egress[0].Action = npav1beta1.ClusterNetworkPolicyRuleActionPass
			},
		},
		"Should support a 'pass-ingress' policy for admin CNP and respect the match for baseline cluster network policy": {
			func(w *confWorld) {
				w.m.Policies = slices.DeleteFunc(w.m.Policies, func(np *networkingv1.NetworkPolicy) bool {
					return np.Namespace == gryffindor && np.Name == "allow-gress-from-to-slytherin-to-gryffindor"
				})
			},
		},
	},
	"CNPAdminTierPriorityField": {
		"Should respect admin CNP priority field; thus passing both ingress and egress traffic over to baseline CNP": {
			func(w *confWorld) { w.cnp("old-priority-60-new-priority-40-example").Spec.Priority = 40 },
		},
	},
}

func init() {
	// The rule-order tests of every protocol and direction swap the same
	// rules.
	for _, tier := range []string{"Admin", "Baseline"} {
		for _, proto := range []string{"TCP", "UDP", "SCTP"} {
			for _, dir := range []string{"egress", "ingress"} {
				name := fmt.Sprintf("%s-%s", dir, strings.ToLower(proto))
				swapFn := swapEgress
				if dir == "ingress" {
					swapFn = swapIngress
				}
				if tier == "Baseline" {
					name = "default"
				}
				test := fmt.Sprintf("CNP%sTier%s%s", tier, strings.ToUpper(dir[:1])+dir[1:], proto)
				m := map[string][]func(*confWorld){
					fmt.Sprintf("Should support an 'deny-%s' policy for %s protocol; ensure rule ordering is respected", dir, proto): {swapFn(name, 0, 1)},
				}
				if tier == "Admin" {
					m[fmt.Sprintf("Should support an 'pass-%s' policy for %s protocol; ensure rule ordering is respected", dir, proto)] = []func(*confWorld){swapFn(name, 0, 2)}
					m[fmt.Sprintf("Should support a 'pass-%s' policy for %s protocol at the specified port", dir, proto)] = []func(*confWorld){swapFn(name, 3, 4)}
				}
				confMutations[test] = m
			}
		}
	}
	both := func(name string, e1, e2, i1, i2 int) func(*confWorld) {
		return func(w *confWorld) { swapEgress(name, e1, e2)(w); swapIngress(name, i1, i2)(w) }
	}
	confMutations["CNPAdminTierGress"] = map[string][]func(*confWorld){
		"Should support an 'deny-gress' policy across different protocols":                       {both("gress-rules", 0, 1, 0, 1)},
		"Should support an 'pass-gress' policy across different protocols":                       {both("gress-rules", 0, 2, 0, 2)},
		"Should support a 'pass-gress' policy across different protocols at the specified ports": {both("gress-rules", 3, 4, 3, 4)},
	}
	confMutations["CNPBaselineTierGress"] = map[string][]func(*confWorld){
		"Should support an 'deny-gress' policy across different protocols": {both("default", 0, 1, 0, 1)},
	}
}

// confTest is one upstream conformance test, read from its source.
type confTest struct {
	file      string
	shortName string
	manifests []string
	body      *ast.BlockStmt
	consts    map[string]string
}

// readConfTests parses the upstream tests.
func readConfTests(t *testing.T) []confTest {
	t.Helper()
	fset := token.NewFileSet()
	consts := map[string]string{}
	var files []*ast.File
	var names []string
	err := fs.WalkDir(conformance.Manifests, "tests", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		src, err := conformance.Manifests.ReadFile(path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(fset, path, src, 0)
		if err != nil {
			return err
		}
		files, names = append(files, f), append(names, path)
		ast.Inspect(f, func(n ast.Node) bool {
			if vs, ok := n.(*ast.ValueSpec); ok {
				for i, id := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							consts[id.Name], _ = strconv.Unquote(lit.Value)
						}
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatalf("read the upstream conformance tests: %v", err)
	}
	var out []confTest
	for i, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			cl, ok := n.(*ast.CompositeLit)
			if !ok || exprString(cl.Type) != "suite.ConformanceTest" {
				return true
			}
			ct := confTest{file: names[i], consts: consts}
			for _, e := range cl.Elts {
				kv := e.(*ast.KeyValueExpr)
				switch kv.Key.(*ast.Ident).Name {
				case "ShortName":
					ct.shortName = stringLit(t, kv.Value, consts)
				case "Manifests":
					for _, m := range kv.Value.(*ast.CompositeLit).Elts {
						ct.manifests = append(ct.manifests, stringLit(t, m, consts))
					}
				case "Test":
					ct.body = kv.Value.(*ast.FuncLit).Body
				}
			}
			out = append(out, ct)
			return false
		})
	}
	return out
}

func exprString(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name
	case *ast.SelectorExpr:
		return exprString(x.X) + "." + x.Sel.Name
	case *ast.StarExpr:
		return "*" + exprString(x.X)
	case *ast.UnaryExpr:
		return x.Op.String() + exprString(x.X)
	case *ast.IndexExpr:
		return exprString(x.X) + "[" + exprString(x.Index) + "]"
	case *ast.BasicLit:
		return x.Value
	case *ast.CallExpr:
		return exprString(x.Fun) + "(...)"
	}
	return fmt.Sprintf("%T", e)
}

func stringLit(t *testing.T, e ast.Expr, consts map[string]string) string {
	t.Helper()
	switch x := e.(type) {
	case *ast.BasicLit:
		s, err := strconv.Unquote(x.Value)
		if err != nil {
			t.Fatalf("string literal %s: %v", x.Value, err)
		}
		return s
	case *ast.Ident:
		if s, ok := consts[x.Name]; ok {
			return s
		}
	}
	t.Fatalf("not a string constant: %s", exprString(e))
	return ""
}

// confResult counts what a run did.
type confResult struct {
	probes, passed int
	failures       []string
	unported       []string
}

// confRun follows the statements of one upstream test.
type confRun struct {
	t      *testing.T
	ct     confTest
	w      *confWorld
	res    *confResult
	vars   map[string]string // variable -> "namespace/pod"
	mutN   map[string]int    // subtest -> mutations done
	sub    string
	broken string // why the subtest cannot go on (an unported mutation)
}

func (r *confRun) block(b *ast.BlockStmt) {
	for _, st := range b.List {
		r.stmt(st)
	}
}

func (r *confRun) stmt(st ast.Stmt) {
	switch s := st.(type) {
	case *ast.ExprStmt:
		if call, ok := s.X.(*ast.CallExpr); ok {
			r.call(call, nil)
		}
	case *ast.AssignStmt:
		for i, rhs := range s.Rhs {
			if call, ok := rhs.(*ast.CallExpr); ok && i < len(s.Lhs) {
				r.call(call, s.Lhs[i])
			}
		}
	case *ast.DeclStmt, *ast.IfStmt, *ast.DeferStmt:
		// Declarations and the inline CIDR test's choice of mask: part
		// of the hand-ported mutations.
	default:
		r.t.Fatalf("%s: statement %T is not understood", r.ct.file, st)
	}
}

func (r *confRun) call(call *ast.CallExpr, lhs ast.Expr) {
	fn := exprString(call.Fun)
	args := call.Args
	str := func(i int) string { return stringLit(r.t, args[i], r.ct.consts) }
	switch fn {
	case "t.Run":
		name := str(0)
		saved := r.sub
		r.sub, r.broken = name, ""
		var cleanups []*ast.BlockStmt
		body := args[1].(*ast.FuncLit).Body
		for _, st := range body.List {
			if es, ok := st.(*ast.ExprStmt); ok {
				if c, ok := es.X.(*ast.CallExpr); ok && exprString(c.Fun) == "t.Cleanup" {
					cleanups = append(cleanups, c.Args[0].(*ast.FuncLit).Body)
					continue
				}
			}
			r.stmt(st)
		}
		for i := len(cleanups) - 1; i >= 0; i-- {
			r.block(cleanups[i])
		}
		r.sub = saved
	case "kubernetes.GetPod":
		r.vars[exprString(lhs)] = str(2) + "/" + str(3)
	case "kubernetes.SetPodLabel", "kubernetes.RemovePodLabel":
		p := r.w.pods[str(2)+"/"+str(3)]
		if p == nil {
			r.t.Fatalf("%s: no pod %s/%s", r.ct.file, str(2), str(3))
		}
		l := maps2(p.Labels)
		if fn == "kubernetes.SetPodLabel" {
			l[str(4)] = str(5)
		} else {
			delete(l, str(4))
		}
		p.Labels = l
	case "kubernetes.PatchClusterNetworkPolicy", "kubernetes.PatchNamespace", "s.Client.Delete":
		key := r.sub
		n := r.mutN[key]
		r.mutN[key]++
		muts := confMutations[r.ct.shortName][key]
		if n >= len(muts) {
			r.broken = fmt.Sprintf("%s / %s: mutation %d (%s) is not ported", r.ct.shortName, key, n, fn)
			r.res.unported = append(r.res.unported, r.broken)
			return
		}
		muts[n](r.w)
	case "kubernetes.PokeServer":
		r.probe(args)
	}
}

func maps2(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// probe evaluates kubernetes.PokeServer(t, clientSet, kubeConfig,
// clientNamespace, clientPod, protocol, targetHost, targetPort,
// timeoutConfig, shouldConnect).
func (r *confRun) probe(args []ast.Expr) {
	r.res.probes++
	str := func(i int) string { return stringLit(r.t, args[i], r.ct.consts) }
	client := str(3) + "/" + str(4)
	proto, err := table.ParseProtocol(str(5))
	if err != nil {
		r.t.Fatal(err)
	}
	target := exprString(args[6])
	server, ok := r.vars[strings.TrimSuffix(target, ".Status.PodIP")]
	if !ok || !strings.HasSuffix(target, ".Status.PodIP") {
		r.t.Fatalf("%s: probe target %s is not understood", r.ct.file, target)
	}
	port := r.port(args[7])
	want := exprString(args[9]) == "true"
	what := fmt.Sprintf("%s / %s: %s -> %s %s/%d: want connect=%v", r.ct.shortName, r.sub, client, server, proto, port, want)
	if r.broken != "" {
		r.res.failures = append(r.res.failures, what+" (not run: "+r.broken+")")
		return
	}
	tab, err := policy.Compile(&r.w.m.Cluster)
	if err != nil {
		r.t.Fatalf("%s: compile: %v", what, err)
	}
	src, dst := netip.MustParseAddr(r.w.podIP(client)), netip.MustParseAddr(r.w.podIP(server))
	if v := tab.Lookup(src, dst, proto, port); v.Allowed() != want {
		e := tab.Explain(src, dst, proto, port)
		r.res.failures = append(r.res.failures, fmt.Sprintf("%s, got %v\n    egress: %s\n    ingress: %s", what, v.Allowed(), e.Egress.Detail, e.Ingress.Detail))
		return
	}
	r.res.passed++
}

func (r *confRun) port(e ast.Expr) uint16 {
	call, ok := e.(*ast.CallExpr)
	if !ok || exprString(call.Fun) != "int32" {
		r.t.Fatalf("port %s is not understood", exprString(e))
	}
	switch a := call.Args[0].(type) {
	case *ast.BasicLit:
		n, err := strconv.ParseUint(a.Value, 10, 16)
		if err != nil {
			r.t.Fatal(err)
		}
		return uint16(n)
	case *ast.IndexExpr:
		if exprString(a.X) == "s.HostNetworkPorts" {
			i, err := strconv.Atoi(a.Index.(*ast.BasicLit).Value)
			if err != nil {
				r.t.Fatal(err)
			}
			return uint16(confHostNetworkPorts[i])
		}
	}
	r.t.Fatalf("port %s is not understood", exprString(e))
	return 0
}

// newConfWorld renders and loads the base manifests and the test's, and
// expands the StatefulSets into pods.
func newConfWorld(t *testing.T, ipv6 bool, manifests []string) *confWorld {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for i, name := range append([]string{"base/manifests.yaml"}, manifests...) {
		src, err := conformance.Manifests.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		tmpl, err := template.New(name).Parse(string(src))
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, struct{ HostNetworkPorts []int }{confHostNetworkPorts}); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("%02d-%s", i, filepath.Base(name)))
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	m, err := policy.Load(paths...)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	w := &confWorld{t: t, ipv6: ipv6, m: m, pods: map[string]*corev1.Pod{}}
	nodeIP := func(n int) string {
		if ipv6 {
			return fmt.Sprintf("fc00:f853:ccd:e793::%d", n+2)
		}
		return fmt.Sprintf("172.18.0.%d", n+2)
	}
	for n := range 2 {
		m.Nodes = append(m.Nodes, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("worker-%d", n), Labels: map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": fmt.Sprintf("worker-%d", n)}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP(n)}}},
		})
	}
	sets := 0
	for _, o := range m.Other {
		if o.Kind != "StatefulSet" {
			t.Fatalf("%s: unexpected %s %s", o.Source, o.Kind, o.Name)
		}
		var ss appsv1.StatefulSet
		if err := yaml.Unmarshal(o.JSON, &ss); err != nil {
			t.Fatal(err)
		}
		for i := range int(*ss.Spec.Replicas) {
			p := &corev1.Pod{ObjectMeta: *ss.Spec.Template.ObjectMeta.DeepCopy(), Spec: *ss.Spec.Template.Spec.DeepCopy()}
			p.Namespace, p.Name = ss.Namespace, fmt.Sprintf("%s-%d", ss.Name, i)
			// The labels the StatefulSet controller adds to its pods.
			p.Labels = maps2(p.Labels)
			p.Labels[appsv1.StatefulSetPodNameLabel] = p.Name
			p.Labels[appsv1.PodIndexLabel] = strconv.Itoa(i)
			p.Labels[appsv1.ControllerRevisionHashLabelKey] = ss.Name + "-5d8f7c9b6c"
			p.Spec.NodeName = m.Nodes[i%2].Name
			ip := nodeIP(i % 2)
			if !p.Spec.HostNetwork {
				ip = fmt.Sprintf("10.244.%d.%d", sets, i+10)
				if ipv6 {
					ip = fmt.Sprintf("fd00:10:244:%d::%d", sets, i+10)
				}
			}
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: nodeIP(i % 2)}
			m.Pods = append(m.Pods, p)
			w.pods[p.Namespace+"/"+p.Name] = p
		}
		sets++
	}
	return w
}

// TestUpstreamConformance runs the scenarios of the upstream conformance
// tests through the table and reports how many probes pass.
func TestUpstreamConformance(t *testing.T) {
	tests := readConfTests(t)
	if len(tests) < 28 {
		t.Fatalf("found %d upstream tests, want at least 28", len(tests))
	}
	for _, fam := range []string{"IPv4", "IPv6"} {
		total := &confResult{}
		for _, ct := range tests {
			t.Run(fam+"/"+ct.shortName, func(t *testing.T) {
				res := &confResult{}
				r := &confRun{t: t, ct: ct, w: newConfWorld(t, fam == "IPv6", ct.manifests), res: res, vars: map[string]string{}, mutN: map[string]int{}}
				r.block(ct.body)
				for sub, muts := range confMutations[ct.shortName] {
					if r.mutN[sub] != len(muts) {
						t.Errorf("subtest %q: %d mutations ported, upstream makes %d", sub, len(muts), r.mutN[sub])
					}
				}
				if res.probes == 0 {
					t.Error("no probes")
				}
				for _, f := range res.failures {
					t.Error(f)
				}
				total.probes += res.probes
				total.passed += res.passed
				total.unported = append(total.unported, res.unported...)
			})
		}
		t.Logf("%s: %d upstream tests, %d of %d probes pass, %d mutations not ported", fam, len(tests), total.passed, total.probes, len(total.unported))
	}
}
