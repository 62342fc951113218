package policy_test

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// The incremental compiler (Compiler.UpdatePods) is checked against full
// compiles of the same objects: random clusters (with Services and
// cluster policies), random sequences of pod changes, and now and then a
// change of a policy or namespace that needs a full compile. After every
// step the table must equal a full compile's, in a canonical form that
// does not depend on how identities and groups are numbered (pods are
// compared by what selects them and what they select), and give the same
// verdict for every connection between the pods, outside addresses and
// ClusterIPs; and the previous table must not have changed.

// canonTable is a table without identity and group numbers.
type canonTable struct {
	Endpoints       []canonEndpoint
	Addrs           int // entries of the address index
	Policies        []table.PolicyInfo
	Namespaces      []string
	Warnings        []string
	Stats           table.CompileStats
	Services        []table.ServiceInfo
	ServiceAddrs    []table.ServiceAddr
	ClusterPolicies []table.ClusterPolicyInfo
	ClusterRules    []table.ClusterRuleInfo
	// ClusterSelected are, per cluster policy, the endpoints it selects;
	// ClusterCompiled its rules.
	ClusterSelected [][]int
	ClusterCompiled [][2][]canonClusterRule
}

type canonEndpoint struct {
	Namespace, Name, Node string
	Labels                map[string]string
	IPs                   []netip.Addr
	ByAddr                []int32 // the index of each address
	NamedPorts            []string
	// Peer is the first endpoint with the same identity.
	Peer int
	// Groups and Tiers without policies are none.
	Groups [2]canonGroup
	Tiers  [2][2]canonTierGroup
}

type canonGroup struct {
	Policies []int32
	Rules    []canonRule
}

type canonRule struct {
	Ref      table.RuleRef
	AllPeers bool
	Peers    []int // endpoints
	Blocks   []table.IPBlock
	Ports    canonPorts
}

type canonPorts struct {
	All     bool
	Entries []string
}

type canonTierGroup struct {
	Policies []int32
	Rules    []canonClusterRule
}

type canonClusterRule struct {
	Ref    string
	Action table.Action
	All    bool
	Peers  []int
	Blocks []netip.Prefix
	Nodes  []netip.Addr
	Ports  canonPorts
}

// canonOpts compare canonical tables: addresses by value, nil like
// empty.
var canonOpts = cmp.Options{cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}), cmpopts.EquateEmpty()}

// canonString prints a canonical table: comparing the printed forms is
// much faster than cmp, which explains the differences when they differ.
func canonString(c canonTable) string { return fmt.Sprintf("%+v", c) }

// rawString prints everything a table's spec holds, bitset words and
// identity numbers included (the address indexes by pointer: they are
// never modified, only replaced): published tables must not change at
// all, not even in what no lookup of theirs can see.
func rawString(t *table.Table) string { return fmt.Sprintf("%+v", *t.Spec()) }

// canonDiff returns the differences of two canonical tables, or "".
func canonDiff(x, y canonTable) string {
	if canonString(x) == canonString(y) {
		return ""
	}
	if d := cmp.Diff(x, y, canonOpts); d != "" {
		return d
	}
	return fmt.Sprintf("printed differently:\n%+v\n%+v", x, y)
}

func canonical(t *table.Table) canonTable {
	s := t.Spec()
	members := func(b table.Bitset) []int {
		var out []int
		for i := range s.Endpoints {
			if b.Has(s.Endpoints[i].Identity) {
				out = append(out, i)
			}
		}
		return out
	}
	ports := func(m table.PortMatch) canonPorts {
		out := canonPorts{All: m.All}
		for _, e := range m.Entries {
			name := ""
			if e.Name >= 0 {
				name = s.PortNames[e.Name]
			}
			out.Entries = append(out.Entries, fmt.Sprintf("%s %d-%d %q", e.Proto, e.Lo, e.Hi, name))
		}
		return out
	}
	clusterRule := func(r table.ClusterRule) canonClusterRule {
		ref := "none"
		if r.Ref.Valid() {
			ref = t.ClusterRule(r.Ref).String()
		}
		return canonClusterRule{Ref: ref, Action: r.Action, All: r.All, Peers: members(r.Peers), Blocks: r.Blocks, Nodes: r.Nodes, Ports: ports(r.Ports)}
	}
	c := canonTable{
		Addrs: s.ByAddr.Len(), Policies: s.Policies, Namespaces: s.Namespaces, Warnings: s.Warnings, Stats: s.Stats,
		Services: s.Services, ServiceAddrs: s.ServiceAddrs, ClusterPolicies: s.ClusterPolicies, ClusterRules: s.ClusterRules,
	}
	// Numbers of identities and groups, and the time it took, differ.
	c.Stats.Identities, c.Stats.Groups, c.Stats.Rules, c.Stats.Duration = 0, 0, 0, 0
	first := map[int32]int{}
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		ce := canonEndpoint{Namespace: e.Namespace, Name: e.Name, Node: e.NodeName, Labels: e.Labels, IPs: e.IPs}
		for _, a := range e.IPs {
			j, ok := s.ByAddr.Get(a)
			if !ok {
				j = -1
			}
			ce.ByAddr = append(ce.ByAddr, j)
		}
		for _, np := range e.NamedPorts {
			ce.NamedPorts = append(ce.NamedPorts, fmt.Sprintf("%s %s %d", s.PortNames[np.Name], np.Proto, np.Port))
		}
		if _, ok := first[e.Identity]; !ok {
			first[e.Identity] = i
		}
		ce.Peer = first[e.Identity]
		id := s.Identities[e.Identity]
		for dir := range 2 {
			if g := id.Groups[dir]; g >= 0 {
				cg := canonGroup{Policies: s.Groups[g].Policies}
				for _, r := range s.Groups[g].Rules {
					cg.Rules = append(cg.Rules, canonRule{Ref: r.Ref, AllPeers: r.AllPeers, Peers: members(r.Peers), Blocks: r.Blocks, Ports: ports(r.Ports)})
				}
				ce.Groups[dir] = cg
			}
		}
		if s.IdentityTiers != nil {
			for tier := range 2 {
				for dir := range 2 {
					if g := s.IdentityTiers[e.Identity][tier][dir]; g >= 0 {
						cg := canonTierGroup{Policies: s.TierGroups[g].Policies}
						for _, r := range s.TierGroups[g].Rules {
							cg.Rules = append(cg.Rules, clusterRule(r))
						}
						ce.Tiers[tier][dir] = cg
					}
				}
			}
		}
		c.Endpoints = append(c.Endpoints, ce)
	}
	for p, ids := range s.ClusterSelected {
		var sel []int
		for i := range s.Endpoints {
			if slices.Contains(ids, s.Endpoints[i].Identity) {
				sel = append(sel, i)
			}
		}
		c.ClusterSelected = append(c.ClusterSelected, sel)
		var rules [2][]canonClusterRule
		for dir := range 2 {
			for _, r := range s.CompiledClusterRules[p][dir] {
				rules[dir] = append(rules[dir], clusterRule(r))
			}
		}
		c.ClusterCompiled = append(c.ClusterCompiled, rules)
	}
	return c
}

// verdict is a table's decision for one connection, with the cluster
// policy rules behind it.
type verdict struct {
	table.Verdict
	ingressRule, egressRule table.ClusterRuleRef
}

// verdicts are the decisions of t for every connection between addrs on
// a few ports.
func verdicts(t *table.Table, addrs []netip.Addr) []verdict {
	type q struct {
		proto table.Protocol
		port  uint16
	}
	queries := []q{{table.TCP, 80}, {table.TCP, 81}, {table.UDP, 82}, {table.SCTP, 81}, {table.ICMP, 0}}
	var out []verdict
	for _, src := range addrs {
		for _, dst := range addrs {
			if src.Is4() != dst.Is4() {
				continue
			}
			for _, qq := range queries {
				v := verdict{Verdict: t.Lookup(src, dst, qq.proto, qq.port)}
				v.ingressRule, _ = t.ClusterRuleOf(table.Ingress, src, dst, qq.proto, qq.port)
				v.egressRule, _ = t.ClusterRuleOf(table.Egress, src, dst, qq.proto, qq.port)
				out = append(out, v)
			}
		}
	}
	return out
}

// podChanger makes random pod changes to a cluster.
type podChanger struct {
	g       gen
	c       *policy.Cluster
	created int
	rev     int
}

func (pc *podChanger) randomPod() *corev1.Pod {
	return pc.c.Pods[pc.g.r.IntN(len(pc.c.Pods))]
}

// newAddrs returns fresh addresses, or now and then one that another pod
// or a Service has, or a Service backend's that is no pod's.
func (pc *podChanger) newAddrs() []string {
	r := pc.g.r
	pc.created++
	i := pc.created
	v4, v6 := fmt.Sprintf("10.1.%d.%d", 2+i/200, i%200+1), fmt.Sprintf("fd00:1::%x", 0x200+i)
	switch r.IntN(40) {
	case 0:
		if len(pc.c.Pods) == 0 {
			break
		}
		if p := pc.randomPod(); len(p.Status.PodIPs) > 0 {
			return []string{p.Status.PodIPs[0].IP}
		}
	case 1:
		return []string{"10.96.0.1"}
	case 2, 3, 4, 5:
		// A Service backend's address that is no pod's yet.
		if !slices.ContainsFunc(pc.c.Pods, func(p *corev1.Pod) bool { return p.Status.PodIP == "192.0.2.7" }) {
			return []string{"192.0.2.7", "2001:db8::7"}
		}
	}
	switch r.IntN(3) {
	case 0:
		return []string{v4}
	case 1:
		return []string{v6}
	}
	return []string{v4, v6}
}

func setAddrs(p *corev1.Pod, ips []string) {
	p.Status.PodIP, p.Status.PodIPs = "", nil
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
}

func (pc *podChanger) labels() map[string]string {
	l := pc.g.labels(3)
	if pc.g.r.IntN(3) == 0 {
		// A label no pod had: a new identity, as a rolling update's
		// pod-template-hash makes.
		pc.rev++
		l["rev"] = fmt.Sprint(pc.rev)
	}
	return l
}

func (pc *podChanger) ports(p *corev1.Pod) {
	p.Spec.Containers[0].Ports = nil
	for _, name := range []string{"http", "dns", "metrics", "admin"} {
		if pc.g.r.IntN(2) == 0 {
			proto := corev1.Protocol(pc.g.pick("TCP", "UDP", "SCTP"))
			withPorts(p, corev1.ContainerPort{Name: name, ContainerPort: int32(80 + pc.g.r.IntN(4)), Protocol: proto})
		}
	}
}

// change makes one random pod change and returns what it did: the pod
// as it is now (nil when deleted) and its key.
func (pc *podChanger) change() policy.PodChange {
	r := pc.g.r
	if len(pc.c.Pods) == 0 || r.IntN(5) == 0 {
		// Mostly declared namespaces, as in a real cluster.
		ns := pc.g.pick("a", "b", "c", "d")
		if len(pc.c.Namespaces) > 0 && r.IntN(10) > 0 {
			ns = pc.c.Namespaces[r.IntN(len(pc.c.Namespaces))].Name
		}
		p := newPod(ns, fmt.Sprintf("n%d", pc.created), pc.newAddrs())
		p.Labels = pc.labels()
		pc.ports(p)
		switch r.IntN(10) {
		case 0:
			setAddrs(p, nil) // pending
		case 1:
			p.Spec.HostNetwork = true
		}
		pc.c.Pods = append(pc.c.Pods, p)
		return policy.PodChange{Pod: p}
	}
	i := r.IntN(len(pc.c.Pods))
	old := pc.c.Pods[i]
	if r.IntN(5) == 0 {
		pc.c.Pods = slices.Delete(pc.c.Pods, i, i+1)
		return policy.PodChange{Namespace: old.Namespace, Name: old.Name}
	}
	// Informer objects are replaced, never modified.
	p := old.DeepCopy()
	switch r.IntN(8) {
	case 0, 1, 2:
		p.Labels = pc.labels()
	case 3:
		setAddrs(p, pc.newAddrs())
	case 4:
		switch r.IntN(3) {
		case 0:
			setAddrs(p, nil)
		case 1:
			p.Status.Phase = corev1.PodSucceeded
		default:
			p.Status.Phase = corev1.PodRunning
			if p.Status.PodIP == "" {
				setAddrs(p, pc.newAddrs())
			}
		}
	case 5:
		pc.ports(p)
	case 6:
		p.Spec.NodeName = pc.g.pick("node-1", "node-2")
	default:
		p.Labels = maps.Clone(p.Labels)
		if p.Labels == nil {
			p.Labels = map[string]string{}
		}
		p.Labels[pc.g.pick("app", "tier")] = pc.g.pick("a", "b", "c")
	}
	pc.c.Pods[i] = p
	return policy.PodChange{Pod: p}
}

// otherChange changes what pods are not: a policy or a namespace's
// labels, which needs a full compile.
func (pc *podChanger) otherChange() {
	r := pc.g.r
	switch {
	case r.IntN(2) == 0 && len(pc.c.Namespaces) > 0:
		i := r.IntN(len(pc.c.Namespaces))
		ns := pc.c.Namespaces[i].DeepCopy()
		ns.Labels = pc.g.labels(2)
		pc.c.Namespaces[i] = ns
	case len(pc.c.Policies) > 0 && r.IntN(2) == 0:
		pc.c.Policies = slices.Delete(slices.Clone(pc.c.Policies), 0, 1)
	default:
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("later%d", pc.created), Namespace: pc.g.pick("a", "b", "c")}}
		pc.created++
		np.Spec.PodSelector = *pc.g.selector()
		r := networkingv1.NetworkPolicyIngressRule{Ports: pc.g.ports(), From: []networkingv1.NetworkPolicyPeer{pc.g.peer()}}
		np.Spec.Ingress = append(np.Spec.Ingress, r)
		pc.c.Policies = append(slices.Clone(pc.c.Policies), np)
	}
}

func incrementalAddrs(c *policy.Cluster) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, p := range c.Pods {
		for _, ip := range p.Status.PodIPs {
			add(ip.IP)
		}
	}
	for _, a := range clusterIPs(c) {
		add(a.String())
	}
	for _, s := range []string{"192.0.2.7", "2001:db8::7", "10.9.9.9"} {
		add(s)
	}
	return out
}

// fallbackReason classifies an ErrNeedCompile.
func fallbackReason(err error) string {
	msg := err.Error()
	for _, r := range []string{"invalid object", "a Service's ClusterIP", "which no Namespace declares", "warnings about pod addresses", "two pods have address"} {
		if strings.Contains(msg, r) {
			return r
		}
	}
	return msg
}

func TestIncrementalAgreesWithFullCompile(t *testing.T) {
	seeds, steps := 120, 40
	if testing.Short() {
		seeds = 50
	}
	var updates, fallbacks, full, newIdentities int
	reasons := map[string]int{}
	for seed := range seeds {
		g := gen{rand.New(rand.NewPCG(uint64(seed), 11))}
		c := g.clusterWithTiers()
		opts := policy.Options{Trusted: seed%2 == 0}
		comp := policy.NewCompiler(opts)
		tab, err := comp.Compile(c)
		if err != nil {
			t.Fatalf("seed %d: Compile: %v", seed, err)
		}
		pc := &podChanger{g: g, c: c, created: 1000}
		for step := range steps {
			prev, prevRaw := tab, rawString(tab)
			what := "pods"
			if g.r.IntN(10) == 0 {
				pc.otherChange()
				what = "other"
				tab, err = comp.Compile(c)
				full++
			} else {
				var changes []policy.PodChange
				for range 1 + g.r.IntN(4) {
					changes = append(changes, pc.change())
				}
				before := prev.Stats().Identities
				tab, err = comp.UpdatePods(changes)
				switch {
				case errors.Is(err, policy.ErrNeedCompile):
					fallbacks++
					reasons[fallbackReason(err)]++
					tab, err = comp.Compile(c)
				case err == nil:
					updates++
					newIdentities += tab.Stats().Identities - before
				}
			}
			if err != nil {
				t.Fatalf("seed %d step %d (%s): %v", seed, step, what, err)
			}
			want, err := policy.CompileWith(c, opts)
			if err != nil {
				t.Fatalf("seed %d step %d: full compile: %v", seed, step, err)
			}
			wantCanon, tabCanon := canonical(want), canonical(tab)
			if canonString(tabCanon) != canonString(wantCanon) {
				t.Fatalf("seed %d step %d (%s): incremental table differs from a full compile (-full +incremental):\n%s", seed, step, what, canonDiff(wantCanon, tabCanon))
			}
			addrs := incrementalAddrs(c)
			if w, got := verdicts(want, addrs), verdicts(tab, addrs); !slices.Equal(w, got) {
				for i := range w {
					if w[i] != got[i] {
						t.Fatalf("seed %d step %d (%s): verdict %d differs: full %+v, incremental %+v", seed, step, what, i, w[i], got[i])
					}
				}
			}
			if now := rawString(prev); now != prevRaw {
				t.Fatalf("seed %d step %d (%s): the previous table changed:\nbefore: %s\nafter:  %s", seed, step, what, prevRaw, now)
			}
		}
	}
	t.Logf("%d random clusters, %d steps each: %d incremental updates (%d new identities), %d updates compiled fully, %d other changes",
		seeds, steps, updates, newIdentities, fallbacks, full)
	for _, r := range slices.Sorted(maps.Keys(reasons)) {
		t.Logf("  compiled fully: %s: %d", r, reasons[r])
	}
	if updates == 0 || fallbacks == 0 {
		t.Errorf("the test exercises too little: %d incremental updates, %d full compiles instead", updates, fallbacks)
	}
}

// TestCanonicalFormSeesDifferences makes sure the comparison above can
// fail: tables that differ in a peer, a label or an address differ in
// canonical form.
func TestCanonicalFormSeesDifferences(t *testing.T) {
	c := &policy.Cluster{
		Namespaces: []*corev1.Namespace{newNamespace("a")},
		Pods: []*corev1.Pod{
			newPod("a", "x", []string{"10.1.0.1"}, "app", "x"),
			newPod("a", "y", []string{"10.1.0.2"}, "app", "y"),
		},
		Policies: []*networkingv1.NetworkPolicy{mustPolicy(t, `
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: x}}
  ingress: [{from: [{podSelector: {matchLabels: {app: y}}}]}]
`)},
	}
	base := canonical(mustCompile(t, c))
	for name, change := range map[string]func(c *policy.Cluster){
		"peer label": func(c *policy.Cluster) { c.Pods[1] = newPod("a", "y", []string{"10.1.0.2"}, "app", "z") },
		"address":    func(c *policy.Cluster) { c.Pods[1] = newPod("a", "y", []string{"10.1.0.3"}, "app", "y") },
		"selected":   func(c *policy.Cluster) { c.Pods[0] = newPod("a", "x", []string{"10.1.0.1"}, "app", "w") },
	} {
		cc := *c
		cc.Pods = slices.Clone(c.Pods)
		change(&cc)
		if canonDiff(base, canonical(mustCompile(t, &cc))) == "" {
			t.Errorf("%s: a changed cluster has the same canonical table", name)
		}
	}
	// And the same cluster compiled twice is equal.
	if diff := canonDiff(base, canonical(mustCompile(t, c))); diff != "" {
		t.Errorf("one cluster compiled twice differs:\n%s", diff)
	}
}

func TestUpdatePodsNeedsCompileFirst(t *testing.T) {
	comp := policy.NewCompiler(policy.Options{})
	if _, err := comp.UpdatePods(nil); !errors.Is(err, policy.ErrNeedCompile) {
		t.Fatalf("UpdatePods before Compile: %v, want ErrNeedCompile", err)
	}
	c := &policy.Cluster{Namespaces: []*corev1.Namespace{newNamespace("a")}, Pods: []*corev1.Pod{newPod("a", "x", []string{"10.1.0.1"})}}
	if _, err := comp.Compile(c); err != nil {
		t.Fatal(err)
	}
	// An invalid pod is not an error of the update but needs the full
	// compile, which reports it.
	bad := newPod("a", "y", []string{"10.1.0.300"})
	if _, err := comp.UpdatePods([]policy.PodChange{{Pod: bad}}); !errors.Is(err, policy.ErrNeedCompile) {
		t.Fatalf("UpdatePods with an invalid pod: %v, want ErrNeedCompile", err)
	}
	if _, err := comp.UpdatePods(nil); !errors.Is(err, policy.ErrNeedCompile) {
		t.Fatalf("UpdatePods after a failed update: %v, want ErrNeedCompile", err)
	}
	c.Pods = append(c.Pods, bad)
	if _, err := comp.Compile(c); !errors.Is(err, policy.ErrInvalid) {
		t.Fatalf("Compile with an invalid pod: %v, want ErrInvalid", err)
	}
}

// TestUpdatePodsAsksForCompileAfterManyDeadIdentities relabels one pod
// to a new identity again and again: the identities it leaves behind are
// kept until there are more than live ones (and at least 1,024), and then
// an update asks for the full compile that drops them.
func TestUpdatePodsAsksForCompileAfterManyDeadIdentities(t *testing.T) {
	c := &policy.Cluster{
		Namespaces: []*corev1.Namespace{newNamespace("a")},
		Pods:       []*corev1.Pod{newPod("a", "x", []string{"10.1.0.1"}, "app", "x"), newPod("a", "y", []string{"10.1.0.2"}, "app", "y")},
		Policies: []*networkingv1.NetworkPolicy{mustPolicy(t, `
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: x}}
  ingress: [{from: [{podSelector: {matchExpressions: [{key: rev, operator: Exists}]}}]}]
`)},
	}
	comp := policy.NewCompiler(policy.Options{})
	if _, err := comp.Compile(c); err != nil {
		t.Fatal(err)
	}
	var tab *table.Table
	var err error
	updates := 0
	for rev := 0; ; rev++ {
		y := newPod("a", "y", []string{"10.1.0.2"}, "app", "y", "rev", fmt.Sprint(rev))
		c.Pods[1] = y
		tab, err = comp.UpdatePods([]policy.PodChange{{Pod: y}})
		if err != nil {
			break
		}
		updates++
		// x admits y in its new identity.
		if v := tab.Lookup(addr(t, "10.1.0.2"), addr(t, "10.1.0.1"), table.TCP, 80); !v.Allowed() {
			t.Fatalf("update %d: y -> x: %+v, want allowed", updates, v)
		}
		if rev > 5000 {
			t.Fatal("5,000 dead identities and no full compile asked for")
		}
	}
	if !errors.Is(err, policy.ErrNeedCompile) || !strings.Contains(err.Error(), "identities no pod has") {
		t.Fatalf("after %d updates: %v, want ErrNeedCompile for dead identities", updates, err)
	}
	if updates < 1024 {
		t.Errorf("full compile asked for after %d updates, want at least 1,024", updates)
	}
	if tab, err = comp.Compile(c); err != nil {
		t.Fatal(err)
	}
	if n := tab.Stats().Identities; n != 2 {
		t.Errorf("identities after the full compile: %d, want 2", n)
	}
	// x admits y, whatever its rev.
	if v := tab.Lookup(addr(t, "10.1.0.2"), addr(t, "10.1.0.1"), table.TCP, 80); !v.Allowed() {
		t.Errorf("y -> x: %+v, want allowed", v)
	}
}
