package fastpath

import (
	"net/netip"
	"sync/atomic"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/policy/table"
)

// FlowEvent is a verdict on a flow: a new flow allowed and tracked, or a
// denied one (a new flow, or a packet of a flow that policy cut). Denied
// flows are reported once in a while per flow, not per packet (see
// [eventRing.firstDenial]).
type FlowEvent struct {
	// Mono is the engine's monotonic clock (Config.Now) at the packet.
	Mono             int64
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // the ICMP identifier for ICMP queries
	Proto            table.Protocol
	// Allowed is the verdict; Drop is the reason when it is false.
	Allowed bool
	Drop    Drop
	// Isolated is the local pod whose policy denied the flow (the
	// packet's source for an egress denial of a new flow, but either end
	// for a packet of a cut flow), or the zero Addr.
	Isolated netip.Addr
	// Cut: the packet belongs to a flow that was allowed and that a newer
	// policy table denied.
	Cut bool
	// ByCluster: a rule of a cluster policy (Admin or Baseline tier)
	// denied the flow ([table.Table.ClusterRuleOf] names it).
	ByCluster bool
	// Evicted: the flow was allowed and tracked, and was evicted to make
	// room in a full flow table (its later packets are judged as a new
	// flow's, or dropped if they cannot start one); EvictedState is its
	// TCP state then.
	Evicted      bool
	EvictedState conntrack.TCPState
	// Egress and Ingress are the rules that allowed the flow, per
	// direction, or {-1, -1}; Generation is the policy table they index.
	Egress, Ingress table.RuleRef
	Generation      uint64
}

// eventRingSize is the number of events that may wait for the consumer.
const eventRingSize = 4096

// eventRing passes flow events from the worker (the only producer) to one
// consumer without locks: the producer writes a slot and then publishes
// head; the consumer reads slots below head and then publishes tail.
type eventRing struct {
	slots [eventRingSize]FlowEvent
	head  atomic.Uint64 // written by the producer
	tail  atomic.Uint64 // written by the consumer
	lost  atomic.Uint64 // events dropped because the ring was full

	// Recently reported denials, so that a denied flow's retries are not
	// reported again; direct-mapped by key hash, worker only.
	recent [1024]recentDeny
	// repeated counts denials not reported because the flow was reported
	// within denyRepeatWindow; worker only, published as a counter.
}

type recentDeny struct {
	key conntrack.Key
	at  int64
}

// denyRepeatWindow is how long a denied flow is not reported again.
const denyRepeatWindow = int64(10e9)

// push adds an event; it reports false if the ring was full.
func (r *eventRing) push(ev *FlowEvent) bool {
	h := r.head.Load()
	if h-r.tail.Load() >= eventRingSize {
		r.lost.Add(1)
		return false
	}
	r.slots[h%eventRingSize] = *ev
	r.head.Store(h + 1)
	return true
}

// pop copies the oldest event into ev; it reports false if there is none.
// Only one goroutine may pop.
func (r *eventRing) pop(ev *FlowEvent) bool {
	t := r.tail.Load()
	if t == r.head.Load() {
		return false
	}
	*ev = r.slots[t%eventRingSize]
	r.tail.Store(t + 1)
	return true
}

// firstDenial reports whether a denial of the flow with key k at now
// should be reported: not when the same flow was reported within
// denyRepeatWindow.
func (r *eventRing) firstDenial(k *conntrack.Key, now int64) bool {
	h := uint64(k.SrcPort)<<16 ^ uint64(k.DstPort) ^ uint64(k.Proto)<<32
	for _, b := range k.Src[12:] {
		h = h*31 + uint64(b)
	}
	for _, b := range k.Dst[12:] {
		h = h*131 + uint64(b)
	}
	s := &r.recent[(h^h>>17)%uint64(len(r.recent))]
	if s.key == *k && now-s.at < denyRepeatWindow {
		return false
	}
	s.key, s.at = *k, now
	return true
}
