// Package conntrack is the podgate fastpath's connection-tracking table: a
// bounded flow table with LRU eviction, per-protocol state and timeouts
// modelled on the kernel's nf_conntrack, the cached policy verdict of each
// flow, and a small table of first-fragment verdicts.
//
// # Ownership
//
// One fastpath worker goroutine owns a [Table] (a flow's two directions
// arrive on different ports, all owned by that worker). A Table is not safe
// for concurrent use and takes no locks; only [Table.Stats], whose counters
// are atomics, may be called from other goroutines (metrics scrapes).
// Pointers to entries are valid until the next insert, delete or expiry
// (see [Entry]).
//
// # Time
//
// The caller passes now, monotonic nanoseconds, read once per batch. The
// table never reads a clock.
//
// # Per batch
//
//	ct.LookupBatch(keys, now, entries, dirs) // keys from conntrack.MakeKey
//	inserted := false
//	for i := range keys {
//		e, dir := entries[i], dirs[i]
//		if e == nil && inserted {
//			e, dir = ct.Lookup(keys[i], now) // inserted by an earlier packet?
//		}
//		if e == nil || e.Generation != tbl.Generation() {
//			// New flow (TCP: see ClassifyNewTCP) or the policy changed:
//			// judge it. For a new flow:
//			//	e, _ = ct.Insert(keys[i], now); dir = Original; inserted = true
//			//	re-Lookup every later entries[j] == e
//			// and record Generation, Egress, Ingress and FlagAllowed in e.
//		}
//		switch ct.Update(e, dir, tcpFlags, length, now) {
//		case conntrack.Invalid: // drop and count
//		case conntrack.Restart: // ct.Delete(e), then handle as a new flow
//		}
//		// forward if e.Flags&conntrack.FlagAllowed != 0
//	}
//	ct.Expire(now, 64)
//
// [Table.LookupBatch] explains why the results of a batch lookup must be
// checked again after an insert.
//
// # Keys and directions
//
// A [Key] is the packet's 5-tuple with addresses as 16-byte arrays (no
// pointers). The table stores it canonically, its two endpoints ordered, so
// one lookup finds a flow from either direction and says whether the packet
// travels in the Original direction (that of the packet passed to Insert)
// or the Reply direction. ICMP and ICMPv6 queries use their identifier as
// both ports. An ICMP error is matched to the flow of the packet it quotes
// with [Table.LookupRelated]. Non-first fragments, which have no ports,
// follow the verdict of their first fragment: [Table.InsertFragment] and
// [Table.LookupFragment].
//
// # States and timeouts
//
// TCP follows the kernel's state table (SYN_SENT ... TIME_WAIT, CLOSE) driven
// by the SYN, ACK, FIN and RST flags and the direction, without sequence
// number or window checks; [ValidTCPFlags] rejects impossible flag
// combinations. UDP flows time out after 30 s until a reply is seen, then
// 120 s; ICMP queries after 30 s; other protocols after 600 s. All
// timeouts are in [Timeouts].
//
// # Data structure
//
// Entries live in one array of 128-byte, pointer-free [Entry] values, so the
// garbage collector never scans them; on Linux the large arrays are mapped
// outside the Go heap with transparent huge pages, because random accesses
// to a table of a million flows would otherwise miss the TLB as well as the
// caches. A hash index with linear probing (8-byte slots holding a 32-bit
// hash tag and the entry position, deletion by backward shift, hash keyed
// with a random seed) finds them. Every traffic class (TCP state, UDP
// unreplied or replied, ICMP, generic) has its own LRU list, linked by
// 32-bit positions in a separate array; since the timeout is the same
// within a class, each list is ordered by both last-seen time and expiry,
// so Expire and eviction only look at the class tails. A packet moves its
// flow to the head of its list at most once per [Config.LRUGranularity]
// (1 s), which keeps the list's cache misses off most packets at the price
// of that much imprecision in the LRU order. At one million flows the table
// takes about 153 bytes per flow.
//
// # Files
//
// entry.go holds the flow as stored (Entry, directions, flags, classes);
// table.go the table's lookups, inserts, updates and expiry; eviction.go
// what a full table gives up for a new flow and the owners' fair shares;
// hooks.go tombstones and what the fastpath's kernel offload uses; tcp.go
// the TCP state machine; frag.go fragment verdicts; stats.go the counters.
package conntrack
