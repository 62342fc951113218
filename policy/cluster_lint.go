package policy

import (
	"fmt"
	"strings"

	"github.com/podgate/podgate/policy/table"
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
	spec := t.Spec()
	if len(spec.ClusterPolicies) == 0 {
		return
	}
	byID := make([][]int32, len(spec.Identities))
	for i := range spec.Endpoints {
		id := spec.Endpoints[i].Identity
		byID[id] = append(byID[id], int32(i))
	}
	podsOf := func(ids []int32, keep func(ep int32) bool) []string {
		var out []string
		for _, id := range ids {
			for _, ep := range byID[id] {
				if keep == nil || keep(ep) {
					out = append(out, spec.Endpoints[ep].String())
				}
			}
		}
		return out
	}
	for pi, info := range spec.ClusterPolicies {
		obj := info.String()
		if len(spec.ClusterSelected[pi]) == 0 {
			l.add(obj, "spec.subject", "selects no pod")
		}
		for dir := table.Ingress; dir <= table.Egress; dir++ {
			rules := spec.CompiledClusterRules[pi][dir]
			for k := range rules {
				path := fmt.Sprintf("spec.%s[%d]", dir, k)
				r := &rules[k]
				if r.MatchesNothing() {
					l.add(obj, path+"."+peersField(dir), "matches no pod, node or network in the manifests")
					continue
				}
				for m := 0; m < k; m++ {
					if rules[m].Covers(r) {
						l.add(obj, path, fmt.Sprintf("is never reached for the current pods: spec.%s[%d] (%s) comes first and matches every connection it matches",
							dir, m, rules[m].Action))
						break
					}
				}
			}
		}
	}
	// Same tier and priority, overlapping subjects.
	for i := range spec.ClusterPolicies {
		for j := i + 1; j < len(spec.ClusterPolicies); j++ {
			a, b := spec.ClusterPolicies[i], spec.ClusterPolicies[j]
			if a.Tier != b.Tier || a.Priority != b.Priority {
				continue
			}
			for dir := table.Ingress; dir <= table.Egress; dir++ {
				if len(spec.CompiledClusterRules[i][dir]) == 0 || len(spec.CompiledClusterRules[j][dir]) == 0 {
					continue
				}
				common := intersect(spec.ClusterSelected[i], spec.ClusterSelected[j])
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
	for pi, info := range spec.ClusterPolicies {
		if info.Tier != table.BaselineTier {
			continue
		}
		for dir := table.Ingress; dir <= table.Egress; dir++ {
			pods := podsOf(spec.ClusterSelected[pi], func(ep int32) bool { return !t.Isolated(ep, dir) })
			if len(pods) == 0 {
				continue
			}
			for k := range spec.CompiledClusterRules[pi][dir] {
				r := &spec.CompiledClusterRules[pi][dir][k]
				if r.Action != table.Deny || r.MatchesNothing() {
					continue
				}
				l.add(info.String(), fmt.Sprintf("spec.%s[%d]", dir, k), fmt.Sprintf(
					"Baseline Deny in force: no NetworkPolicy with policyType %s selects %s, so no NetworkPolicy relaxes it; "+
						"a NetworkPolicy that selects a pod for %s replaces the Baseline tier for that pod and must then allow all the %s it needs",
					dir.PolicyType(), namePods(pods), dir.PolicyType(), dir))
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
