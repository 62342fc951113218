package conntrack

import (
	"math"
	"unsafe"

	"github.com/podgate/podgate/policy/table"
)

// Flows as the table holds them: directions, flags, traffic classes and
// the 128-byte Entry.

// Dir is the direction of a packet relative to its flow.
type Dir uint8

// String returns "original" or "reply".
func (d Dir) String() string {
	if d == Reply {
		return "reply"
	}
	return "original"
}

// Flags are bits that the fastpath keeps in an [Entry]. The table clears
// them on insert; bits other than FlagAllowed and FlagOffloaded are free
// for the caller and never read by the table.
type Flags uint8

// Flags that the table knows.
const (
	// FlagAllowed: the cached verdict lets the flow through. Tombstone
	// clears it.
	FlagAllowed Flags = 1 << 0
	// FlagOffloaded: the caller installed the flow in a table outside this
	// one (the kernel's established-flow table) that must forget it when
	// this one does: the table calls its release hook
	// ([Table.SetReleaseHook]) and clears the flag when such a flow is
	// released (expired, evicted, deleted, replaced by an insert of its
	// key) or tombstoned.
	FlagOffloaded Flags = 1 << 7
)

// Traffic classes: each has its own timeout and its own LRU list, so that
// within a list the least recently seen entry is also the first to expire.
// The TCP classes have the numbers of their TCPState (SYN_SENT2 shares
// SYN_SENT's class).
const (
	classFree = iota // entry not in use
	classTCPSynSent
	classTCPSynRecv
	classTCPEstablished
	classTCPFinWait
	classTCPCloseWait
	classTCPLastAck
	classTCPTimeWait
	classTCPClose
	classUDP
	classUDPStream
	classICMP
	classGeneric
	// classTombstone holds flows that policy cut ([Table.Tombstone]).
	classTombstone
	numClasses
)

// ClassNames names the classes of [Stats].EvictionsByClass, in order:
// the TCP states of their flows (SYN_SENT2 counts as SYN_SENT), "udp"
// (unreplied), "udp_stream" (replied), "icmp", "generic" (other
// protocols) and "tombstone".
var ClassNames = [numClasses - 1]string{
	"syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack", "time_wait", "close",
	"udp", "udp_stream", "icmp", "generic", "tombstone",
}

// Entry.bits.
const (
	bitSwapped = 1 << 0 // the original direction goes from endpoint b to a
	bitReplied = 1 << 1 // a packet was seen in the reply direction
	finShift   = 2      // bit finShift+d: a FIN was seen in direction d
)

// noIdx marks the end of a list and "no entry".
const noIdx = math.MaxUint32

// Entry is one tracked flow. It has no pointers and is exactly 128 bytes,
// two cache lines: the first holds what a lookup compares (key, times), the
// second what the fastpath reads and writes per packet (verdict, counters).
//
// A *Entry returned by [Table.Lookup], [Table.LookupBatch],
// [Table.LookupRelated], [Table.LookupFragment], [Table.Insert],
// [Table.InsertEstablished] or [Table.Range] stays valid until the next
// call of Insert, InsertEstablished, Delete or Expire on the table; after
// that it may describe another flow. Only the table's owning goroutine may
// use it, and never after the table itself became unreachable: the entries
// may live outside the Go heap (see [Table]), so the pointer does not keep
// them alive.
//
// The exported fields belong to the caller, which writes the verdict after
// an insert and when it re-evaluates the flow. [Table.Update] maintains the
// counters.
type Entry struct {
	k        ckey
	lastSeen int64
	expires  int64
	// filed is when the entry was last moved to the head of its LRU list:
	// lastSeen-filed < the LRU granularity.
	filed int64

	// Generation is the policy table generation ([table.Table.Generation])
	// that the verdict was computed with; 0 after insert.
	Generation uint64
	// Egress and Ingress attribute the verdict: the rules that allowed the
	// source's egress and the destination's ingress, or {-1, -1}.
	Egress, Ingress table.RuleRef
	// Packets and Bytes count the packets that Update accepted or ignored
	// and those passed to Count, per direction (index with Original and
	// Reply). Bytes sums the lengths passed.
	Packets, Bytes [2]uint64
	epoch          uint32 // incremented whenever the entry is freed or reused
	// Flags, e.g. FlagAllowed.
	Flags Flags

	state TCPState
	class uint8
	bits  uint8
}

// entrySize is the size of an Entry.
const entrySize = unsafe.Sizeof(Entry{})

// Key returns the flow's key in the original direction.
func (e *Entry) Key() Key { return e.k.key(e.bits&bitSwapped != 0) }

// State returns the TCP state, or TCPNone for other protocols.
func (e *Entry) State() TCPState { return e.state }

// LastSeen returns the time of the last packet that refreshed the entry
// (insert, or an accepted update), as passed by the caller.
func (e *Entry) LastSeen() int64 { return e.lastSeen }

// Expires returns the time at which the entry expires: LastSeen plus the
// timeout of its state.
func (e *Entry) Expires() int64 { return e.expires }

// Replied reports whether a packet was seen in the reply direction.
func (e *Entry) Replied() bool { return e.bits&bitReplied != 0 }

// Tombstoned reports whether the flow was cut by [Table.Tombstone].
func (e *Entry) Tombstoned() bool { return e.class == classTombstone }

// link is an entry's place in its class's LRU list, or in the free list
// (next only).
type link struct{ prev, next uint32 }
