package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Lint checks of cluster policies, on the compiled table (so "the current
// pods" are the manifests' pods):
//
//   - a policy whose subject selects no pod;
//   - a rule whose peers match no pod, node or network;
//   - a rule that an earlier rule of the same policy shadows: the earlier
//     one matches every connection it matches, so it is never reached;
//   - two policies of one tier with the same priority that select the same
//     pods for the same direction: the API leaves the order of their rules
//     undefined, so one may shadow the other;
//   - a Baseline Deny in force: it denies the connections of pods that no
//     NetworkPolicy selects for that direction, so no NetworkPolicy relaxes
//     it (only one that selects those pods would, and it would then decide
//     all of that direction's traffic for them).

const maxNamedPods = 5

func (l *linter) clusterPolicies() {
	t := l.t
	if t.tiers == nil {
		return
	}
	byID := make([][]int32, len(t.identities))
	for i := range t.endpoints {
		id := t.endpoints[i].identity
		byID[id] = append(byID[id], int32(i))
	}
	podsOf := func(ids []int32, keep func(ep int32) bool) []string {
		var out []string
		for _, id := range ids {
			for _, ep := range byID[id] {
				if keep == nil || keep(ep) {
					out = append(out, t.endpoints[ep].String())
				}
			}
		}
		return out
	}
	for pi, info := range t.clusterPolicies {
		obj := info.String()
		if len(t.cpSelected[pi]) == 0 {
			l.add(obj, "spec.subject", "selects no pod")
		}
		for dir := Ingress; dir <= Egress; dir++ {
			rules := t.cpRules[pi][dir]
			for k := range rules {
				path := fmt.Sprintf("spec.%s[%d]", dir, k)
				r := &rules[k]
				if r.matchesNothing() {
					l.add(obj, path+"."+peersField(dir), "matches no pod, node or network in the manifests")
					continue
				}
				for m := 0; m < k; m++ {
					if rules[m].covers(r) {
						l.add(obj, path, fmt.Sprintf("is never reached for the current pods: spec.%s[%d] (%s) comes first and matches every connection it matches",
							dir, m, rules[m].action))
						break
					}
				}
			}
		}
	}
	// Same tier and priority, overlapping subjects.
	for i := range t.clusterPolicies {
		for j := i + 1; j < len(t.clusterPolicies); j++ {
			a, b := t.clusterPolicies[i], t.clusterPolicies[j]
			if a.Tier != b.Tier || a.Priority != b.Priority {
				continue
			}
			for dir := Ingress; dir <= Egress; dir++ {
				if len(t.cpRules[i][dir]) == 0 || len(t.cpRules[j][dir]) == 0 {
					continue
				}
				common := intersect(t.cpSelected[i], t.cpSelected[j])
				if len(common) == 0 {
					continue
				}
				l.add(b.String(), "spec.priority", fmt.Sprintf(
					"has the same priority (%d) in the %s tier as %s, and both select %s for %s: the API leaves the order of their rules undefined, so either may shadow the other (podgate evaluates %s first); give them different priorities",
					b.Priority, b.Tier, a, namePods(podsOf(common, nil)), dir, a))
			}
		}
	}
	// Baseline Deny rules in force.
	for pi, info := range t.clusterPolicies {
		if info.Tier != BaselineTier {
			continue
		}
		for dir := Ingress; dir <= Egress; dir++ {
			pods := podsOf(t.cpSelected[pi], func(ep int32) bool { return t.hot[ep].groups[dir] < 0 })
			if len(pods) == 0 {
				continue
			}
			for k := range t.cpRules[pi][dir] {
				r := &t.cpRules[pi][dir][k]
				if r.action != Deny || r.matchesNothing() {
					continue
				}
				l.add(info.String(), fmt.Sprintf("spec.%s[%d]", dir, k), fmt.Sprintf(
					"Baseline Deny in force: no NetworkPolicy with policyType %s selects %s, so no NetworkPolicy relaxes it; "+
						"a NetworkPolicy that selects a pod for %s replaces the Baseline tier for that pod and must then allow all the %s it needs",
					typeName(dir), namePods(pods), typeName(dir), dir))
			}
		}
	}
}

func namePods(pods []string) string {
	if len(pods) > maxNamedPods {
		return fmt.Sprintf("%s and %d more pods", strings.Join(pods[:maxNamedPods], ", "), len(pods)-maxNamedPods)
	}
	if len(pods) == 1 {
		return "pod " + pods[0]
	}
	return "pods " + strings.Join(pods, ", ")
}

func intersect(a, b []int32) []int32 {
	var out []int32
	for _, x := range a {
		for _, y := range b {
			if x == y {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

// matchesNothing reports whether the rule's peers match no connection.
func (r *clusterRule) matchesNothing() bool {
	if r.all || len(r.blocks) > 0 || len(r.nodes) > 0 {
		return false
	}
	for _, w := range r.peers {
		if w != 0 {
			return false
		}
	}
	return true
}

// covers reports whether r matches every connection that o matches (for
// the pods, nodes and named ports of the table it was compiled for).
func (r *clusterRule) covers(o *clusterRule) bool {
	if !r.ports.covers(&o.ports) {
		return false
	}
	if r.all {
		return true
	}
	if o.all || !o.peers.subsetOf(r.peers) {
		return false
	}
	for _, b := range o.blocks {
		if !r.containsPrefix(b) {
			return false
		}
	}
	for _, n := range o.nodes {
		if !r.containsPrefix(netip.PrefixFrom(n, n.BitLen())) {
			return false
		}
	}
	return true
}

func (r *clusterRule) containsPrefix(p netip.Prefix) bool {
	for _, b := range r.blocks {
		if b.Bits() <= p.Bits() && b.Contains(p.Addr()) {
			return true
		}
	}
	if p.IsSingleIP() {
		for _, n := range r.nodes {
			if n == p.Addr() {
				return true
			}
		}
	}
	return false
}

// covers reports whether m admits every protocol and port that o admits.
func (m *portMatch) covers(o *portMatch) bool {
	if m.all {
		return true
	}
	if o.all {
		return false
	}
	for _, oe := range o.entries {
		covered := false
		for _, e := range m.entries {
			if e.proto != oe.proto {
				continue
			}
			if oe.name >= 0 {
				covered = covered || e.name == oe.name || (e.name < 0 && e.lo == 1 && e.hi == 65535)
			} else {
				covered = covered || (e.name < 0 && e.lo <= oe.lo && oe.hi <= e.hi)
			}
		}
		if !covered {
			return false
		}
	}
	return true
}

// subsetOf reports whether every member of b is in o.
func (b bitset) subsetOf(o bitset) bool {
	for i, w := range b {
		var ow uint64
		if i < len(o) {
			ow = o[i]
		}
		if w&^ow != 0 {
			return false
		}
	}
	return true
}
