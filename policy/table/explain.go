package table

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
)

// RuleInfo names one rule of a policy, e.g. "backend/dbpod-policy
// ingress[0]".
type RuleInfo struct {
	Policy    string    `json:"policy"`
	Direction Direction `json:"-"`
	Index     int       `json:"index"`
}

// String returns "namespace/name direction[index]".
func (r RuleInfo) String() string { return fmt.Sprintf("%s %s[%d]", r.Policy, r.Direction, r.Index) }

// MarshalText lets RuleInfo print as its String in JSON.
func (r RuleInfo) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Rule describes ref for direction dir.
func (t *Table) Rule(dir Direction, ref RuleRef) RuleInfo {
	return RuleInfo{Policy: t.spec.Policies[ref.Policy].String(), Direction: dir, Index: int(ref.Index)}
}

// SideExplanation explains one direction of a connection.
type SideExplanation struct {
	Direction string `json:"direction"`
	// Pod is "namespace/name", or empty when the address is not a pod's.
	Pod     string `json:"pod,omitempty"`
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason"`
	// Selecting are the policies that isolate the pod for this direction.
	Selecting []string `json:"selecting,omitempty"`
	// Allowing are all rules that allow the connection (the first decided).
	Allowing []RuleInfo `json:"allowing,omitempty"`
	// Tier is what decided, in a table with cluster policies: "Admin",
	// "NetworkPolicy", "Baseline" or "default"; empty in tables without
	// cluster policies and for sides that are not pods.
	Tier string `json:"tier,omitempty"`
	// ClusterSelecting are the cluster policies with rules for this
	// direction that select the pod, in precedence order.
	ClusterSelecting []string `json:"clusterSelecting,omitempty"`
	// ClusterRule is the cluster policy rule that decided (Accept or
	// Deny), if one did.
	ClusterRule *ClusterRuleInfo `json:"clusterRule,omitempty"`
	// Passed are the rules whose Pass action handed the decision on to the
	// next tier.
	Passed []ClusterRuleInfo `json:"passed,omitempty"`
	// Service is "namespace/name" when the destination is a Service's
	// ClusterIP (egress side only).
	Service string `json:"service,omitempty"`
	// Backends are the Service's ready endpoints the egress side was
	// judged against, each with its own decision.
	Backends []BackendExplanation `json:"backends,omitempty"`
	// Detail is a sentence for people.
	Detail string `json:"detail"`
}

// BackendExplanation is the egress decision for one ready endpoint of a
// Service.
type BackendExplanation struct {
	// Pod is "namespace/name", or empty when the address is no pod's.
	Pod     string     `json:"pod,omitempty"`
	Addr    netip.Addr `json:"ip"`
	Port    uint16     `json:"port"`
	Allowed bool       `json:"allowed"`
	Reason  string     `json:"reason"`
	// Rule is the first rule that allows it, when one does.
	Rule *RuleInfo `json:"rule,omitempty"`
	// ClusterRule is the cluster policy rule that decided, if one did.
	ClusterRule *ClusterRuleInfo `json:"clusterRule,omitempty"`
}

// String returns "pod (ip) port N: allow by RULE" or "... deny".
func (b BackendExplanation) String() string {
	who := b.Addr.String()
	if b.Pod != "" {
		who = fmt.Sprintf("%s (%s)", b.Pod, b.Addr)
	}
	s := fmt.Sprintf("%s port %d: %s", who, b.Port, verdictWord(b.Allowed))
	switch {
	case b.Rule != nil:
		s += " by " + b.Rule.String()
	case b.ClusterRule != nil:
		s += " by " + b.ClusterRule.String()
	case b.Reason != AllowedByRule.String() && b.Reason != Denied.String():
		s += " (" + b.Reason + ")"
	}
	return s
}

func verdictWord(allowed bool) string {
	if allowed {
		return "allow"
	}
	return "deny"
}

// Explanation is the verdict for one connection and why.
type Explanation struct {
	From     string          `json:"from"`
	FromAddr netip.Addr      `json:"fromIP"`
	To       string          `json:"to"`
	ToAddr   netip.Addr      `json:"toIP"`
	Protocol string          `json:"protocol"`
	Port     uint16          `json:"port,omitempty"`
	Verdict  string          `json:"verdict"`
	Egress   SideExplanation `json:"egress"`
	Ingress  SideExplanation `json:"ingress"`
}

// Explain decides a connection like [Table.Lookup] and says why: which
// policies select each side and every rule that allows it.
func (t *Table) Explain(src, dst netip.Addr, proto Protocol, port uint16) Explanation {
	v := t.Lookup(src, dst, proto, port)
	s, d := t.resolve(src), t.resolve(dst)
	e := Explanation{
		From: t.describe(s, src), FromAddr: src,
		To: t.describe(d, dst), ToAddr: dst,
		Protocol: proto.String(),
		Verdict:  "deny",
	}
	if proto.HasPorts() {
		e.Port = port
	}
	if v.Allowed() {
		e.Verdict = "allow"
	}
	svc, isSvc := t.ServiceByAddr(dst)
	if isSvc {
		e.To = "Service " + svc.String()
	}
	if isSvc && s >= 0 && t.judgedOnBackends(s) && t.servicePort(dst, proto, port) != nil {
		// Judged against the backends: explain each.
		e.Egress = SideExplanation{Direction: Egress.String(), Pod: t.spec.Endpoints[s].String(), Allowed: v.Egress.Allowed(), Reason: v.Egress.Reason.String()}
		for _, p := range t.Selecting(s, Egress) {
			e.Egress.Selecting = append(e.Egress.Selecting, t.spec.Policies[p].String())
		}
		e.Egress.ClusterSelecting = t.clusterSelectingNames(s, Egress)
	} else {
		e.Egress = t.explainSide(Egress, v.Egress, s, d, dst, proto, port, d)
	}
	if isSvc && s >= 0 {
		t.explainService(&e.Egress, v.Egress, s, svc, dst, proto, port)
	}
	e.Ingress = t.explainSide(Ingress, v.Ingress, d, s, src, proto, port, d)
	if isSvc {
		t.explainServiceIngress(&e.Ingress, svc, s, src, dst, proto, port)
	}
	return e
}

// explainServiceIngress adds to the ingress side of a connection to the
// ClusterIP dst of svc what the backends' ingress will say after
// kube-proxy's DNAT; the side itself is not a pod's and allows.
func (t *Table) explainServiceIngress(se *SideExplanation, svc ServiceInfo, s int32, src, dst netip.Addr, proto Protocol, port uint16) {
	se.Service = svc.String()
	sp := t.servicePort(dst, proto, port)
	if sp == nil {
		se.Detail = fmt.Sprintf("the destination is Service %s's ClusterIP, which kube-proxy does not translate for this port: no policy applies to it", svc)
		return
	}
	var parts []string
	for i := range sp.Backends {
		b := &sp.Backends[i]
		bd := t.decide(Ingress, b.Endpoint, s, src, proto, b.Port, b.Endpoint)
		if b.Endpoint < 0 {
			bd = Decision{Reason: NotPod, Endpoint: -1, Rule: noRule}
		}
		be := t.backendExplanation(Ingress, b, bd, t.tierRule(Ingress, b.Endpoint, s, src, proto, b.Port, b.Endpoint))
		se.Backends = append(se.Backends, be)
		parts = append(parts, be.String())
	}
	se.Detail = fmt.Sprintf("the destination is Service %s's ClusterIP, not a pod: each backend's ingress is judged after kube-proxy's DNAT, on its node: %s",
		svc, strings.Join(parts, "; "))
}

func (t *Table) describe(ep int32, a netip.Addr) string {
	if ep >= 0 {
		return t.spec.Endpoints[ep].String()
	}
	return a.String()
}

// explainService completes the egress explanation of a connection to the
// ClusterIP dst of svc: the decision of every ready backend, or why the
// ClusterIP was judged as an address.
func (t *Table) explainService(se *SideExplanation, dec Decision, s int32, svc ServiceInfo, dst netip.Addr, proto Protocol, port uint16) {
	se.Service = svc.String()
	portName := fmt.Sprintf("%d/%s", port, proto)
	if !proto.HasPorts() {
		portName = proto.String()
	}
	sp := t.servicePort(dst, proto, port)
	if sp == nil {
		why := "has no port " + portName
		if _, has := t.ServiceBackends(dst, proto, port); has {
			why = "has no ready endpoints for " + portName
		}
		se.Detail = fmt.Sprintf("destination is Service %s, which %s: judged on its ClusterIP as an address (ipBlocks only); %s", svc, why, se.Detail)
		return
	}
	if dec.Reason == NotIsolated {
		se.Detail = fmt.Sprintf("destination is Service %s (%s for %s); %s", svc, readyEndpoints(len(sp.Backends)), portName, se.Detail)
		return
	}
	se.Detail = fmt.Sprintf("%s is subject to egress policy (%s); ", se.Pod, strings.Join(append(slices.Clone(se.Selecting), se.ClusterSelecting...), ", "))
	var parts []string
	for i := range sp.Backends {
		b := &sp.Backends[i]
		bd := t.decide(Egress, s, b.Endpoint, b.Addr, proto, b.Port, b.Endpoint)
		be := t.backendExplanation(Egress, b, bd, t.tierRule(Egress, s, b.Endpoint, b.Addr, proto, b.Port, b.Endpoint))
		se.Backends = append(se.Backends, be)
		parts = append(parts, be.String())
	}
	se.Allowing = nil
	if dec.Reason == AllowedByRule {
		se.Allowing = []RuleInfo{t.Rule(Egress, dec.Rule)}
	}
	if isClusterDecision(dec.Reason) {
		// The backend whose decision is the side's: the first denied, or
		// else the first that is not the source itself.
		for i, b := range se.Backends {
			if b.Allowed == dec.Allowed() && b.Reason == dec.Reason.String() && b.ClusterRule != nil {
				se.ClusterRule = se.Backends[i].ClusterRule
				break
			}
		}
	}
	verdict := "every one allows it"
	if !dec.Allowed() {
		verdict = "denied unless every one allows it (kube-proxy picks one after the gateway)"
	}
	se.Detail += fmt.Sprintf("destination is Service %s; egress judged against its %s for %s: %s; %s",
		svc, readyEndpoints(len(sp.Backends)), portName, strings.Join(parts, "; "), verdict)
}

// backendExplanation describes the decision bd for the Service backend b.
func (t *Table) backendExplanation(dir Direction, b *Backend, bd Decision, cref ClusterRuleRef) BackendExplanation {
	be := BackendExplanation{Addr: b.Addr, Port: b.Port, Allowed: bd.Allowed(), Reason: bd.Reason.String()}
	if b.Endpoint >= 0 {
		be.Pod = t.spec.Endpoints[b.Endpoint].String()
	}
	if bd.Reason == AllowedByRule {
		r := t.Rule(dir, bd.Rule)
		be.Rule = &r
	}
	if isClusterDecision(bd.Reason) && cref.Valid() {
		r := t.ClusterRule(cref)
		be.ClusterRule = &r
	}
	return be
}

// isClusterDecision reports whether a cluster policy rule made a decision
// with this reason.
func isClusterDecision(r Reason) bool {
	return r == AdminAccepted || r == AdminDenied || r == BaselineAccepted || r == BaselineDenied
}

// clusterSelectingNames names the cluster policies with rules for dir that
// select the pod ep, in precedence order.
func (t *Table) clusterSelectingNames(ep int32, dir Direction) []string {
	var out []string
	for tier := AdminTier; tier <= BaselineTier; tier++ {
		for _, p := range t.ClusterSelecting(ep, tier, dir) {
			info := t.spec.ClusterPolicies[p]
			out = append(out, fmt.Sprintf("%s (%s, priority %d)", info, info.Tier, info.Priority))
		}
	}
	return out
}

func (t *Table) explainSide(dir Direction, dec Decision, self, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) SideExplanation {
	se := t.explainNetworkPolicySide(dir, dec, self, peer, peerAddr, proto, port, dstEp)
	if t.tiers != nil && self >= 0 && dec.Reason != NotPod && dec.Reason != Loopback {
		t.explainTiers(&se, dir, dec, self, peer, peerAddr, proto, port, dstEp)
	}
	return se
}

// explainTiers rewrites the explanation of a side that the tiers decided
// (or passed through): which tier decided, by which rule, and what Pass
// rules handed the decision on.
func (t *Table) explainTiers(se *SideExplanation, dir Direction, dec Decision, self, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) {
	se.ClusterSelecting = t.clusterSelectingNames(self, dir)
	peerID, port := t.tierArgs(peer, proto, port)
	describe := func(r *ClusterRule) ClusterRuleInfo { return t.ClusterRule(r.Ref) }
	var parts []string
	th := &t.tiers[self]
	if g := th.groups[AdminTier][dir]; g >= 0 {
		names := t.policyNames(t.spec.TierGroups[g].Policies)
		switch r := t.spec.TierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); {
		case r == nil:
			parts = append(parts, fmt.Sprintf("no rule of the Admin tier (%s) matches", names))
		case r.Action == Pass:
			info := describe(r)
			se.Passed = append(se.Passed, info)
			parts = append(parts, fmt.Sprintf("%s passes it on (Pass) to NetworkPolicy and the Baseline tier", info))
		default:
			info := describe(r)
			se.Tier, se.ClusterRule, se.Allowing, se.Selecting = "Admin", &info, nil, nil
			se.Detail = fmt.Sprintf("the Admin tier decides: %s %s it (%s); NetworkPolicy and the Baseline tier are not consulted", info, actionWord(r.Action), r.Action)
			return
		}
	}
	if t.hot[self].groups[dir] >= 0 {
		se.Tier = "NetworkPolicy"
		se.Detail = strings.Join(append(parts, se.Detail), "; ")
		return
	}
	if g := th.groups[BaselineTier][dir]; g >= 0 {
		parts = append(parts, fmt.Sprintf("no NetworkPolicy with policyType %s selects %s", dir.PolicyType(), se.Pod))
		names := t.policyNames(t.spec.TierGroups[g].Policies)
		switch r := t.spec.TierGroups[g].match(t, peerID, peerAddr, proto, port, dstEp); {
		case r == nil:
			parts = append(parts, fmt.Sprintf("no rule of the Baseline tier (%s) matches", names))
		case r.Action == Pass:
			info := describe(r)
			se.Passed = append(se.Passed, info)
			parts = append(parts, fmt.Sprintf("%s passes it on (Pass) to the default", info))
		default:
			info := describe(r)
			se.Tier, se.ClusterRule = "Baseline", &info
			se.Detail = strings.Join(append(parts, fmt.Sprintf("the Baseline tier decides: %s %s it (%s)", info, actionWord(r.Action), r.Action)), "; ")
			return
		}
	} else {
		parts = append(parts, fmt.Sprintf("no NetworkPolicy with policyType %s selects %s and no Baseline-tier policy applies", dir.PolicyType(), se.Pod))
	}
	se.Tier = "default"
	se.Detail = strings.Join(append(parts, fmt.Sprintf("all %s is allowed by default", dir)), "; ")
}

func actionWord(a Action) string {
	switch a {
	case Deny:
		return "denies"
	case Pass:
		return "passes"
	}
	return "accepts"
}

func (t *Table) policyNames(idx []int32) string {
	names := make([]string, len(idx))
	for i, p := range idx {
		info := t.spec.ClusterPolicies[p]
		names[i] = fmt.Sprintf("%s, priority %d", info, info.Priority)
	}
	return strings.Join(names, "; ")
}

func (t *Table) explainNetworkPolicySide(dir Direction, dec Decision, self, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) SideExplanation {
	se := SideExplanation{Direction: dir.String(), Allowed: dec.Allowed(), Reason: dec.Reason.String()}
	if self >= 0 {
		se.Pod = t.spec.Endpoints[self].String()
	}
	for _, p := range t.Selecting(self, dir) {
		se.Selecting = append(se.Selecting, t.spec.Policies[p].String())
	}
	side := map[Direction]string{Egress: "the source", Ingress: "the destination"}[dir]
	switch dec.Reason {
	case NotPod:
		se.Detail = fmt.Sprintf("%s is not a pod: no policy applies to its %s", side, dir)
	case Loopback:
		se.Detail = "a pod's traffic to itself never leaves its network namespace: always allowed"
	case NotIsolated:
		se.Detail = fmt.Sprintf("no policy with policyType %s selects %s: all %s is allowed", dir.PolicyType(), se.Pod, dir)
	case AllowedByRule, Denied:
		if t.hot[self].groups[dir] < 0 {
			break // decided by a cluster policy: explainTiers says why
		}
		g := &t.spec.Groups[t.hot[self].groups[dir]]
		peerID := int32(-1)
		if peer >= 0 {
			peerID = t.hot[peer].identity
		}
		if !proto.HasPorts() {
			port = 0
		}
		for i := range g.Rules {
			if g.Rules[i].matches(t, peerID, peerAddr, proto, port, dstEp) {
				se.Allowing = append(se.Allowing, t.Rule(dir, g.Rules[i].Ref))
			}
		}
		if dec.Reason == Denied {
			se.Detail = fmt.Sprintf("%s is isolated for %s by %s and no rule of it allows this (%d %s rules)",
				se.Pod, dir, strings.Join(se.Selecting, ", "), len(g.Rules), dir)
		} else {
			se.Detail = fmt.Sprintf("%s is isolated for %s by %s; allowed by %s",
				se.Pod, dir, strings.Join(se.Selecting, ", "), se.Allowing[0])
		}
	}
	return se
}

func readyEndpoints(n int) string {
	if n == 1 {
		return "1 ready endpoint"
	}
	return fmt.Sprintf("%d ready endpoints", n)
}

// WriteText prints an explanation for people.
func (e *Explanation) WriteText(w io.Writer) error {
	port := ""
	if e.Port != 0 {
		port = fmt.Sprintf(" port %d", e.Port)
	}
	verdict := "ALLOW"
	if e.Verdict != "allow" {
		verdict = "DENY"
	}
	_, err := fmt.Fprintf(w, "%s: %s (%s) -> %s (%s) %s%s\n", verdict, e.From, e.FromAddr, e.To, e.ToAddr, e.Protocol, port)
	if err != nil {
		return err
	}
	for _, s := range []SideExplanation{e.Egress, e.Ingress} {
		mark := "allow"
		if !s.Allowed {
			mark = "deny"
		}
		if _, err := fmt.Fprintf(w, "  %-8s %-5s %s\n", s.Direction+":", mark, s.Detail); err != nil {
			return err
		}
		if len(s.Allowing) > 1 {
			var names []string
			for _, r := range s.Allowing {
				names = append(names, r.String())
			}
			if _, err := fmt.Fprintf(w, "                 also allowed by: %s\n", strings.Join(names[1:], ", ")); err != nil {
				return err
			}
		}
	}
	return nil
}
