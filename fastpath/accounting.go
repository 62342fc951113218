package fastpath

import (
	"net/netip"
	"sync/atomic"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/policy/table"
)

// Per-port counter indexes.
const (
	pRxPackets = iota
	pRxBytes
	pTxPackets
	pTxBytes
	pDeniedIngress // flows denied by the ingress policy of this port's pod
	pDeniedEgress  // flows denied by the egress policy of this port's pod
	pEvicted       // flows of this port's pod evicted from a full flow table
	numPortCounters
)

// portCounters are a port's counters: worker-local, published per batch.
type portCounters struct {
	local     [numPortCounters]uint64
	published [numPortCounters]uint64
	shared    [numPortCounters]atomic.Uint64
}

func (c *portCounters) publish() { publish(c.local[:], c.published[:], c.shared[:]) }

// PortStats are the counters of one port. Denied counts are packets that a
// policy of this port's pod denied (the isolated side).
type PortStats struct {
	Name               string
	Kind               PortKind
	PodIPs             []netip.Addr
	RxPackets, RxBytes uint64
	TxPackets, TxBytes uint64
	DeniedIngress      uint64
	DeniedEgress       uint64
	// Evicted counts flows of this pod (that it started, or that came to
	// it from the kernel leg) evicted to make room in a full flow table.
	Evicted uint64
}

// PortStats returns the counters of every port as of the last batch. It is
// safe to call from any goroutine.
func (e *Engine) PortStats() []PortStats {
	snap := e.snapshot.Load()
	if snap == nil {
		return nil
	}
	out := make([]PortStats, 0, len(*snap))
	for _, p := range *snap {
		c := &p.stats.shared
		out = append(out, PortStats{
			Name: p.Name, Kind: p.Kind, PodIPs: p.PodIPs,
			RxPackets: c[pRxPackets].Load(), RxBytes: c[pRxBytes].Load(),
			TxPackets: c[pTxPackets].Load(), TxBytes: c[pTxBytes].Load(),
			DeniedIngress: c[pDeniedIngress].Load(), DeniedEgress: c[pDeniedEgress].Load(),
			Evicted: c[pEvicted].Load(),
		})
	}
	return out
}

// PolicyName names a NetworkPolicy.
type PolicyName struct{ Namespace, Name string }

// PolicyCounts are what one policy decided on this node: flows its rules
// allowed, and packets denied while it isolated the pod (a denial counts
// for every policy that isolates the denying side), per direction (index
// with table.Ingress and table.Egress).
type PolicyCounts struct {
	AllowedFlows  [2]uint64
	DeniedPackets [2]uint64
}

func (c PolicyCounts) zero() bool { return c == PolicyCounts{} }

// policyCounters count per policy of one table, per direction.
type policyCounters struct {
	tab     *table.Table
	allowed [2][]atomic.Uint64
	denied  [2][]atomic.Uint64
}

// tableChanged folds the policy counts of the previous table into the
// totals and starts counting for the new one. It runs on the worker once
// per table, never per packet.
func (e *Engine) tableChanged() {
	old := e.allow.Load()
	var next *policyCounters
	if e.tab != nil {
		n := len(e.tab.Policies())
		next = &policyCounters{tab: e.tab}
		for d := range 2 {
			next.allowed[d] = make([]atomic.Uint64, n)
			next.denied[d] = make([]atomic.Uint64, n)
		}
	}
	e.allowMu.Lock()
	defer e.allowMu.Unlock()
	if old != nil {
		for i, pi := range old.tab.Policies() {
			k := PolicyName{pi.Namespace, pi.Name}
			t := e.allowTotal[k]
			for d := range 2 {
				t.AllowedFlows[d] += old.allowed[d][i].Load()
				t.DeniedPackets[d] += old.denied[d][i].Load()
			}
			if !t.zero() {
				e.allowTotal[k] = t
			}
		}
	}
	e.allow.Store(next)
}

// PolicyCounts returns the counts of every policy that allowed or denied
// something on this node. It is safe to call from any goroutine.
func (e *Engine) PolicyCounts() map[PolicyName]PolicyCounts {
	e.allowMu.Lock()
	out := make(map[PolicyName]PolicyCounts, len(e.allowTotal))
	for k, v := range e.allowTotal {
		out[k] = v
	}
	cur := e.allow.Load()
	e.allowMu.Unlock()
	if cur != nil {
		for i, pi := range cur.tab.Policies() {
			var c PolicyCounts
			for d := range 2 {
				c.AllowedFlows[d] = cur.allowed[d][i].Load()
				c.DeniedPackets[d] = cur.denied[d][i].Load()
			}
			if c.zero() {
				continue
			}
			k := PolicyName{pi.Namespace, pi.Name}
			t := out[k]
			for d := range 2 {
				t.AllowedFlows[d] += c.AllowedFlows[d]
				t.DeniedPackets[d] += c.DeniedPackets[d]
			}
			out[k] = t
		}
	}
	return out
}

// recordAllowedFlow counts a new allowed flow for the policies whose rules
// allowed it, and reports it (a flow event).
func (e *Engine) recordAllowedFlow(key conntrack.Key, eg, ing table.RuleRef) {
	if a := e.allow.Load(); a != nil {
		if eg.Policy >= 0 && int(eg.Policy) < len(a.allowed[table.Egress]) {
			a.allowed[table.Egress][eg.Policy].Add(1)
		}
		if ing.Policy >= 0 && int(ing.Policy) < len(a.allowed[table.Ingress]) {
			a.allowed[table.Ingress][ing.Policy].Add(1)
		}
	}
	ev := FlowEvent{Mono: e.now, Proto: key.Proto, SrcPort: key.SrcPort, DstPort: key.DstPort, Allowed: true, Egress: eg, Ingress: ing}
	ev.Src, ev.Dst = key.Addrs()
	if e.tab != nil {
		ev.Generation = e.tab.Generation()
	}
	e.events.push(&ev)
}

// recordDenial counts a packet that verdict v denied, if policy denied it
// (or a local pod the table does not know): on the isolated pod's port and
// for its policies, and reports it (a flow event) the first time in a
// while for this flow.
func (e *Engine) recordDenial(p *packet.Packet, v verdict) {
	d := v.drop
	if d != DropDeniedEgress && d != DropDeniedIngress && d != DropUnknownEndpoint {
		return
	}
	if port := e.local(v.isolated); port != nil {
		if d == DropDeniedEgress {
			port.stats.local[pDeniedEgress]++
		} else if d == DropDeniedIngress {
			port.stats.local[pDeniedIngress]++
		}
	}
	// The NetworkPolicies that isolate the pod share a denial that they
	// made (no rule of theirs allowed the flow); a cluster policy's is its
	// own, named in the flow log.
	if a := e.allow.Load(); a != nil && d != DropUnknownEndpoint && !v.byCluster {
		dir := table.Ingress
		if d == DropDeniedEgress {
			dir = table.Egress
		}
		if ep, ok := a.tab.EndpointByAddr(v.isolated); ok {
			for _, pi := range a.tab.Selecting(ep, dir) {
				a.denied[dir][pi].Add(1)
			}
		}
	}
	key := flowKey(p)
	if !e.events.firstDenial(&key, e.now) {
		return
	}
	ev := FlowEvent{Mono: e.now, Src: p.Src, Dst: p.Dst, Proto: table.Protocol(p.Proto), SrcPort: key.SrcPort, DstPort: key.DstPort,
		Drop: d, Isolated: v.isolated, Cut: v.cut, ByCluster: v.byCluster,
		Egress: table.RuleRef{Policy: -1, Index: -1}, Ingress: table.RuleRef{Policy: -1, Index: -1}}
	if e.tab != nil {
		ev.Generation = e.tab.Generation()
	}
	e.events.push(&ev)
}

// NextEvent copies the oldest flow event into ev and reports whether there
// was one. Only one goroutine may call it.
func (e *Engine) NextEvent(ev *FlowEvent) bool { return e.events.pop(ev) }

// EventsLost counts flow events dropped because the consumer fell behind.
func (e *Engine) EventsLost() uint64 { return e.events.lost.Load() }

// evicted is the flow table's eviction hook: flow ent of owner goes to
// make room for another. It counts on the owner's port and reports the
// flow (rate limited by the flow log).
func (e *Engine) evicted(ent *conntrack.Entry, owner conntrack.Owner) {
	if p := e.byOwner[owner]; owner != 0 && p != nil {
		p.stats.local[pEvicted]++
	}
	k := ent.Key()
	ev := FlowEvent{Mono: e.now, Proto: k.Proto, SrcPort: k.SrcPort, DstPort: k.DstPort, Evicted: true,
		Egress: ent.Egress, Ingress: ent.Ingress, EvictedState: ent.State()}
	ev.Src, ev.Dst = k.Addrs()
	if e.tab != nil {
		ev.Generation = e.tab.Generation()
	}
	e.events.push(&ev)
}
