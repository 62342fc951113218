// Package conformance follows the conformance tests of
// sigs.k8s.io/network-policy-api (conformance/tests, embedded in the module
// as conformance.Manifests) without a Kubernetes cluster, for podgate's
// tests: policy's offline harness judges every probe with the compiled
// table, the lab's with real connections.
//
// [ReadTests] reads each upstream test's Go source; [Run] follows it
// statement by statement: kubernetes.GetPod names the server pod,
// kubernetes.PokeServer is a probe (client pod, protocol, server address,
// port, whether it must connect), SetPodLabel and RemovePodLabel change a
// pod's labels, t.Cleanup functions run at the end of their subtest. The
// mutations of policies and namespaces (kubernetes.PatchClusterNetworkPolicy,
// kubernetes.PatchNamespace, s.Client.Delete) are Go code, ported by hand in
// mutations (mutations.go), one function per call in the order the calls
// appear. A mutation without a port makes the rest of its subtest's probes
// fail unrun.
//
// The cluster ([NewWorld]) is the base manifests
// (conformance/base/manifests.yaml): five namespaces and five two-replica
// StatefulSets, expanded into pods NAME-0 and NAME-1 with the labels the
// StatefulSet controller adds, on two nodes (worker-0 and worker-1, replica
// i on worker-(i%2)); the centaur pods are hostNetwork and have their
// node's address. Manifests are rendered as the suite renders them
// (text/template with the host network ports [HostNetworkPorts]) and read
// with policy.Load.
package conformance

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"text/template"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance"
	"sigs.k8s.io/yaml"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// HostNetworkPorts are the ports the suite renders into the manifests of
// the hostNetwork (centaur) pods' servers.
var HostNetworkPorts = []int{34345, 34346, 34347, 34348, 34349, 34350, 34351, 34352}

// NodeNames are the nodes of the world, in order.
var NodeNames = []string{"worker-0", "worker-1"}

// World is the state of the cluster during one upstream test. [Run]
// changes it as the test does.
type World struct {
	tb   testing.TB
	IPv6 bool
	// M is the cluster: the base manifests, the test's, the nodes and the
	// pods of the StatefulSets.
	M *policy.Manifests
	// Pods are M's pods by "namespace/name".
	Pods map[string]*corev1.Pod
	// Version counts the changes Run made.
	Version int
}

// Options of [NewWorld].
type Options struct {
	// IPv6 gives pods and nodes IPv6 addresses instead of IPv4 ones.
	IPv6 bool
	// NodeIPs are the addresses of the nodes of [NodeNames], in order; nil
	// means 172.18.0.2 and .3 (fc00:f853:ccd:e793::2 and ::3), kind's.
	NodeIPs []string
}

// NewWorld renders and loads the base manifests and the test's, adds the
// nodes and expands the StatefulSets into pods: set S's replica i has the
// address 10.244.S.(10+i) (fd00:10:244:S::(10+i)), a hostNetwork one its
// node's.
func NewWorld(tb testing.TB, o Options, manifests []string) *World {
	tb.Helper()
	dir := tb.TempDir()
	var paths []string
	for i, name := range append([]string{"base/manifests.yaml"}, manifests...) {
		src, err := conformance.Manifests.ReadFile(name)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl, err := template.New(name).Parse(string(src))
		if err != nil {
			tb.Fatal(err)
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, struct{ HostNetworkPorts []int }{HostNetworkPorts}); err != nil {
			tb.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("%02d-%s", i, filepath.Base(name)))
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			tb.Fatal(err)
		}
		paths = append(paths, p)
	}
	m, err := policy.Load(paths...)
	if err != nil {
		tb.Fatalf("Load: %v", err)
	}
	w := &World{tb: tb, IPv6: o.IPv6, M: m, Pods: map[string]*corev1.Pod{}}
	nodeIP := func(n int) string {
		if o.NodeIPs != nil {
			return o.NodeIPs[n]
		}
		if o.IPv6 {
			return fmt.Sprintf("fc00:f853:ccd:e793::%d", n+2)
		}
		return fmt.Sprintf("172.18.0.%d", n+2)
	}
	for n, name := range NodeNames {
		m.Nodes = append(m.Nodes, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": name}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP(n)}}},
		})
	}
	sets := 0
	for _, obj := range m.Other {
		if obj.Kind != "StatefulSet" {
			tb.Fatalf("%s: unexpected %s %s", obj.Source, obj.Kind, obj.Name)
		}
		var ss appsv1.StatefulSet
		if err := yaml.Unmarshal(obj.JSON, &ss); err != nil {
			tb.Fatal(err)
		}
		for i := range int(*ss.Spec.Replicas) {
			p := &corev1.Pod{ObjectMeta: *ss.Spec.Template.ObjectMeta.DeepCopy(), Spec: *ss.Spec.Template.Spec.DeepCopy()}
			p.Namespace, p.Name = ss.Namespace, fmt.Sprintf("%s-%d", ss.Name, i)
			// The labels the StatefulSet controller adds to its pods.
			p.Labels = cloneLabels(p.Labels)
			p.Labels[appsv1.StatefulSetPodNameLabel] = p.Name
			p.Labels[appsv1.PodIndexLabel] = strconv.Itoa(i)
			p.Labels[appsv1.ControllerRevisionHashLabelKey] = ss.Name + "-5d8f7c9b6c"
			node := i % len(NodeNames)
			p.Spec.NodeName = NodeNames[node]
			ip := nodeIP(node)
			if !p.Spec.HostNetwork {
				ip = fmt.Sprintf("10.244.%d.%d", sets, i+10)
				if o.IPv6 {
					ip = fmt.Sprintf("fd00:10:244:%d::%d", sets, i+10)
				}
			}
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: nodeIP(node)}
			m.Pods = append(m.Pods, p)
			w.Pods[p.Namespace+"/"+p.Name] = p
		}
		sets++
	}
	m.Other = nil
	return w
}

// cnp returns the world's ClusterNetworkPolicy of that name.
func (w *World) cnp(name string) *npav1beta1.ClusterNetworkPolicy {
	for _, p := range w.M.ClusterNetworkPolicies {
		if p.Name == name {
			return p
		}
	}
	w.tb.Fatalf("no ClusterNetworkPolicy %s", name)
	return nil
}

// namespace returns the world's namespace of that name.
func (w *World) namespace(name string) *corev1.Namespace {
	for _, ns := range w.M.Namespaces {
		if ns.Name == name {
			return ns
		}
	}
	w.tb.Fatalf("no namespace %s", name)
	return nil
}

// PodIP returns the address of the pod "namespace/name".
func (w *World) PodIP(nsName string) string {
	p, ok := w.Pods[nsName]
	if !ok {
		w.tb.Fatalf("no pod %s", nsName)
	}
	return p.Status.PodIP
}

// YAML returns the world as one manifest file: its namespaces, nodes,
// pods, NetworkPolicies and cluster policies, which policy.Load reads back
// into the same cluster.
func (w *World) YAML() ([]byte, error) {
	var buf bytes.Buffer
	add := func(apiVersion, kind string, obj any) error {
		b, err := yaml.Marshal(obj)
		if err != nil {
			return fmt.Errorf("world as YAML: %s: %w", kind, err)
		}
		fmt.Fprintf(&buf, "---\napiVersion: %s\nkind: %s\n", apiVersion, kind)
		buf.Write(b)
		return nil
	}
	c := &w.M.Cluster
	for _, o := range c.Namespaces {
		if err := add("v1", "Namespace", struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}{o.ObjectMeta}); err != nil {
			return nil, err
		}
	}
	for _, o := range c.Nodes {
		if err := add("v1", "Node", struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
			Status   corev1.NodeStatus `json:"status"`
		}{o.ObjectMeta, o.Status}); err != nil {
			return nil, err
		}
	}
	for _, o := range c.Pods {
		if err := add("v1", "Pod", struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
			Spec     corev1.PodSpec    `json:"spec"`
			Status   corev1.PodStatus  `json:"status"`
		}{o.ObjectMeta, o.Spec, o.Status}); err != nil {
			return nil, err
		}
	}
	for _, o := range c.Policies {
		if err := add("networking.k8s.io/v1", "NetworkPolicy", struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
			Spec     any               `json:"spec"`
		}{o.ObjectMeta, o.Spec}); err != nil {
			return nil, err
		}
	}
	for _, o := range c.ClusterNetworkPolicies {
		if err := add("policy.networking.k8s.io/v1beta1", "ClusterNetworkPolicy", struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
			Spec     any               `json:"spec"`
		}{o.ObjectMeta, o.Spec}); err != nil {
			return nil, err
		}
	}
	if len(c.AdminNetworkPolicies)+len(c.BaselineAdminNetworkPolicies)+len(c.Services) > 0 {
		return nil, fmt.Errorf("world as YAML: AdminNetworkPolicies, BaselineAdminNetworkPolicies and Services are not written")
	}
	return buf.Bytes(), nil
}

func cloneLabels(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	maps.Copy(out, m)
	return out
}

// Test is one upstream conformance test, read from its source.
type Test struct {
	// File is the source file, ShortName the test's name, Manifests the
	// manifests it applies (paths in conformance.Manifests).
	File, ShortName string
	Manifests       []string
	body            *ast.BlockStmt
	consts          map[string]string
}

// ReadTests parses the upstream tests.
func ReadTests(tb testing.TB) []Test {
	tb.Helper()
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
		tb.Fatalf("read the upstream conformance tests: %v", err)
	}
	var out []Test
	for i, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			cl, ok := n.(*ast.CompositeLit)
			if !ok || exprString(cl.Type) != "suite.ConformanceTest" {
				return true
			}
			ct := Test{File: names[i], consts: consts}
			for _, e := range cl.Elts {
				kv := e.(*ast.KeyValueExpr)
				switch kv.Key.(*ast.Ident).Name {
				case "ShortName":
					ct.ShortName = stringLit(tb, kv.Value, consts)
				case "Manifests":
					for _, m := range kv.Value.(*ast.CompositeLit).Elts {
						ct.Manifests = append(ct.Manifests, stringLit(tb, m, consts))
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

func stringLit(tb testing.TB, e ast.Expr, consts map[string]string) string {
	tb.Helper()
	switch x := e.(type) {
	case *ast.BasicLit:
		s, err := strconv.Unquote(x.Value)
		if err != nil {
			tb.Fatalf("string literal %s: %v", x.Value, err)
		}
		return s
	case *ast.Ident:
		if s, ok := consts[x.Name]; ok {
			return s
		}
	}
	tb.Fatalf("not a string constant: %s", exprString(e))
	return ""
}

// Probe is one kubernetes.PokeServer of an upstream test.
type Probe struct {
	// Test and Subtest name where the probe is.
	Test, Subtest string
	// Client and Server are pods, "namespace/name".
	Client, Server string
	Protocol       table.Protocol
	Port           uint16
	// Want is whether the connection must work.
	Want bool
	// Broken, when set, says why the probe cannot be made (a mutation
	// before it is not ported): it counts as failed.
	Broken string
}

// String returns "TEST / SUBTEST: CLIENT -> SERVER PROTO/PORT: want
// connect=WANT".
func (p Probe) String() string {
	return fmt.Sprintf("%s / %s: %s -> %s %s/%d: want connect=%v", p.Test, p.Subtest, p.Client, p.Server, p.Protocol, p.Port, p.Want)
}

// Result counts what a run did.
type Result struct {
	// Probes is how many probes the test made, Passed how many of them
	// observed what they want.
	Probes, Passed int
	// Failures describe the probes that did not (or were not run).
	Failures []string
	// Unported are the mutations without a port.
	Unported []string
}

// Add adds o's counts to r.
func (r *Result) Add(o Result) {
	r.Probes += o.Probes
	r.Passed += o.Passed
	r.Failures = append(r.Failures, o.Failures...)
	r.Unported = append(r.Unported, o.Unported...)
}

// Prober judges one probe in the world as it is at that point of the
// test, returning "" when it observes what p wants and a description of
// what went wrong otherwise. It is not called for broken probes.
type Prober func(w *World, p Probe) string

// Run follows the statements of ct in w, calling probe for every
// kubernetes.PokeServer, and checks that every ported mutation of the test
// was used. Statements it does not understand fail tb.
func Run(tb testing.TB, ct Test, w *World, probe Prober) Result {
	tb.Helper()
	res := Result{}
	r := &run{tb: tb, ct: ct, w: w, res: &res, probe: probe, vars: map[string]string{}, mutN: map[string]int{}}
	r.block(ct.body)
	for sub, muts := range mutations[ct.ShortName] {
		if r.mutN[sub] != len(muts) {
			tb.Errorf("subtest %q: %d mutations ported, upstream makes %d", sub, len(muts), r.mutN[sub])
		}
	}
	return res
}

// run follows the statements of one upstream test.
type run struct {
	tb     testing.TB
	ct     Test
	w      *World
	res    *Result
	probe  Prober
	vars   map[string]string // variable -> "namespace/pod"
	mutN   map[string]int    // subtest -> mutations done
	sub    string
	broken string // why the subtest cannot go on (an unported mutation)
}

func (r *run) block(b *ast.BlockStmt) {
	for _, st := range b.List {
		r.stmt(st)
	}
}

func (r *run) stmt(st ast.Stmt) {
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
		r.tb.Fatalf("%s: statement %T is not understood", r.ct.File, st)
	}
}

func (r *run) call(call *ast.CallExpr, lhs ast.Expr) {
	fn := exprString(call.Fun)
	args := call.Args
	str := func(i int) string { return stringLit(r.tb, args[i], r.ct.consts) }
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
		p := r.w.Pods[str(2)+"/"+str(3)]
		if p == nil {
			r.tb.Fatalf("%s: no pod %s/%s", r.ct.File, str(2), str(3))
		}
		l := cloneLabels(p.Labels)
		if fn == "kubernetes.SetPodLabel" {
			l[str(4)] = str(5)
		} else {
			delete(l, str(4))
		}
		p.Labels = l
		r.w.Version++
	case "kubernetes.PatchClusterNetworkPolicy", "kubernetes.PatchNamespace", "s.Client.Delete":
		key := r.sub
		n := r.mutN[key]
		r.mutN[key]++
		muts := mutations[r.ct.ShortName][key]
		if n >= len(muts) {
			r.broken = fmt.Sprintf("%s / %s: mutation %d (%s) is not ported", r.ct.ShortName, key, n, fn)
			r.res.Unported = append(r.res.Unported, r.broken)
			return
		}
		muts[n](r.w)
		r.w.Version++
	case "kubernetes.PokeServer":
		r.poke(args)
	}
}

// poke handles kubernetes.PokeServer(t, clientSet, kubeConfig,
// clientNamespace, clientPod, protocol, targetHost, targetPort,
// timeoutConfig, shouldConnect).
func (r *run) poke(args []ast.Expr) {
	r.res.Probes++
	str := func(i int) string { return stringLit(r.tb, args[i], r.ct.consts) }
	proto, err := table.ParseProtocol(str(5))
	if err != nil {
		r.tb.Fatal(err)
	}
	target := exprString(args[6])
	server, ok := r.vars[strings.TrimSuffix(target, ".Status.PodIP")]
	if !ok || !strings.HasSuffix(target, ".Status.PodIP") {
		r.tb.Fatalf("%s: probe target %s is not understood", r.ct.File, target)
	}
	p := Probe{
		Test: r.ct.ShortName, Subtest: r.sub,
		Client: str(3) + "/" + str(4), Server: server,
		Protocol: proto, Port: r.port(args[7]),
		Want: exprString(args[9]) == "true", Broken: r.broken,
	}
	if p.Broken != "" {
		r.res.Failures = append(r.res.Failures, p.String()+" (not run: "+p.Broken+")")
		return
	}
	if msg := r.probe(r.w, p); msg != "" {
		r.res.Failures = append(r.res.Failures, p.String()+", "+msg)
		return
	}
	r.res.Passed++
}

func (r *run) port(e ast.Expr) uint16 {
	call, ok := e.(*ast.CallExpr)
	if !ok || exprString(call.Fun) != "int32" {
		r.tb.Fatalf("port %s is not understood", exprString(e))
	}
	switch a := call.Args[0].(type) {
	case *ast.BasicLit:
		n, err := strconv.ParseUint(a.Value, 10, 16)
		if err != nil {
			r.tb.Fatal(err)
		}
		return uint16(n)
	case *ast.IndexExpr:
		if exprString(a.X) == "s.HostNetworkPorts" {
			i, err := strconv.Atoi(a.Index.(*ast.BasicLit).Value)
			if err != nil {
				r.tb.Fatal(err)
			}
			return uint16(HostNetworkPorts[i])
		}
	}
	r.tb.Fatalf("port %s is not understood", exprString(e))
	return 0
}
