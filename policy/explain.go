package policy

import (
	"fmt"
	"io"
	"net/netip"
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
	return RuleInfo{Policy: t.policies[ref.Policy].String(), Direction: dir, Index: int(ref.Index)}
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
	// Detail is a sentence for people.
	Detail string `json:"detail"`
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
	e.Egress = t.explainSide(Egress, v.Egress, s, d, dst, proto, port, d)
	e.Ingress = t.explainSide(Ingress, v.Ingress, d, s, src, proto, port, d)
	return e
}

func (t *Table) describe(ep int32, a netip.Addr) string {
	if ep >= 0 {
		return t.endpoints[ep].String()
	}
	return a.String()
}

func (t *Table) explainSide(dir Direction, dec Decision, self, peer int32, peerAddr netip.Addr, proto Protocol, port uint16, dstEp int32) SideExplanation {
	se := SideExplanation{Direction: dir.String(), Allowed: dec.Allowed(), Reason: dec.Reason.String()}
	if self >= 0 {
		se.Pod = t.endpoints[self].String()
	}
	for _, p := range t.Selecting(self, dir) {
		se.Selecting = append(se.Selecting, t.policies[p].String())
	}
	side := map[Direction]string{Egress: "the source", Ingress: "the destination"}[dir]
	switch dec.Reason {
	case NotPod:
		se.Detail = fmt.Sprintf("%s is not a pod: no policy applies to its %s", side, dir)
	case Loopback:
		se.Detail = "a pod's traffic to itself never leaves its network namespace: always allowed"
	case NotIsolated:
		se.Detail = fmt.Sprintf("no policy with policyType %s selects %s: all %s is allowed", typeName(dir), se.Pod, dir)
	case AllowedByRule, Denied:
		g := &t.groups[t.hot[self].groups[dir]]
		peerID := int32(-1)
		if peer >= 0 {
			peerID = t.hot[peer].identity
		}
		if !proto.HasPorts() {
			port = 0
		}
		for i := range g.rules {
			if g.rules[i].matches(t, peerID, peerAddr, proto, port, dstEp) {
				se.Allowing = append(se.Allowing, t.Rule(dir, g.rules[i].ref))
			}
		}
		if dec.Reason == Denied {
			se.Detail = fmt.Sprintf("%s is isolated for %s by %s and no rule of it allows this (%d %s rules)",
				se.Pod, dir, strings.Join(se.Selecting, ", "), len(g.rules), dir)
		} else {
			se.Detail = fmt.Sprintf("%s is isolated for %s by %s; allowed by %s",
				se.Pod, dir, strings.Join(se.Selecting, ", "), se.Allowing[0])
		}
	}
	return se
}

func typeName(d Direction) string {
	if d == Egress {
		return "Egress"
	}
	return "Ingress"
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
