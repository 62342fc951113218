package conntrack

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"sync/atomic"
	"unsafe"

	"github.com/podgate/podgate/policy/table"
)

// Dir is the direction of a packet relative to its flow.
type Dir uint8

// Directions. Original is the direction of the flow's first packet (the one
// passed to [Table.Insert]), Reply the other one.
const (
	Original Dir = 0
	Reply    Dir = 1
)

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

// Table is a bounded connection-tracking table. Its memory is allocated by
// [New]; no method allocates afterwards. On Linux its large arrays are
// mapped outside the Go heap, with transparent huge pages requested, and
// unmapped once the Table is garbage; elsewhere they are ordinary slices.
//
// A Table is not safe for concurrent use: one goroutine (the fastpath
// worker) owns it and calls every method except [Table.Stats], which any
// goroutine may call at any time.
//
// Every method that takes now expects a monotonic time in nanoseconds (for
// example one reading per batch of a monotonic clock, as an int64 offset
// from a fixed start). A now smaller than one already seen is taken as the
// latest now seen, so the table's order stays consistent.
type Table struct {
	entries []Entry
	// lru holds the list links of entry i at i, and the sentinel of class
	// c at len(entries)+c. The lists are circular and doubly linked, the
	// most recently seen entry first.
	lru   []link
	index index
	seed  seed
	// timeout per class, in nanoseconds.
	timeout [numClasses]int64
	// granularity is the minimum age of an entry's LRU position before a
	// packet moves it to the head of its list, at least 1.
	granularity int64
	free        uint32 // free list through lru[].next
	fresh       uint32 // entries at and above fresh were never used
	n           int    // entries in use
	now         int64  // the latest now seen
	cursor      int    // class at which Expire starts
	frags       fragTable
	batch       batch
	stats       counters
	// onRelease is called for entries with FlagOffloaded that stop being
	// live flows; nil if unset.
	onRelease func(*Entry)
	// onEvict is called for live flows evicted to make room; nil if unset.
	onEvict func(*Entry, Owner)
	// owners holds the owner of entry i at i; ownerN counts the flows of
	// each owner, activeOwners the owners with flows.
	owners       []uint16
	ownerN       []uint32
	activeOwners int
}

// counters are written by the owner and read by any goroutine.
type counters struct {
	entries     atomic.Uint64
	inserts     atomic.Uint64
	evictions   atomic.Uint64
	expirations atomic.Uint64
	deletes     atomic.Uint64
	tombstones  atomic.Uint64
	refusals    atomic.Uint64
	// evictedByClass counts evictions by the evicted flow's class.
	evictedByClass [numClasses]atomic.Uint64
	fragInserts    atomic.Uint64
	fragEvictions  atomic.Uint64
}

// Stats are counters of a [Table]. They only grow, except Entries.
type Stats struct {
	// Capacity is the configured maximum number of flows.
	Capacity int
	// Entries is the number of flows held, expired ones that were not
	// reclaimed yet included.
	Entries uint64
	// Inserts counts Insert and InsertEstablished calls. Inserting never
	// fails: a full table evicts.
	Inserts uint64
	// Evictions counts flows that were removed before they expired because
	// the table was full.
	Evictions uint64
	// Expirations counts expired flows that were reclaimed, by Expire or
	// by an insert that reused them.
	Expirations uint64
	// Deletes counts flows removed by Delete.
	Deletes uint64
	// Tombstones counts flows turned into tombstones by Tombstone.
	Tombstones uint64
	// Refusals counts InsertFor calls that found no room.
	Refusals uint64
	// EvictionsByClass splits Evictions by the evicted flow's state:
	// index with the names of [ClassNames].
	EvictionsByClass [numClasses - 1]uint64
	// FragInserts counts fragmented packets recorded by InsertFragment;
	// FragEvictions those replaced before their timeout because the
	// fragment table was full (their later fragments then find nothing).
	FragInserts, FragEvictions uint64
}

// New returns an empty table for cfg, after [Config.SetDefaults].
func New(cfg Config) (*Table, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new conntrack table: %w", err)
	}
	s := cfg.Seed
	if s == 0 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("new conntrack table: read random seed: %w", err)
		}
		s = binary.LittleEndian.Uint64(b[:])
	}
	var mem arena
	t := &Table{
		entries:     makeArray[Entry](&mem, cfg.Capacity),
		owners:      makeArray[uint16](&mem, cfg.Capacity),
		ownerN:      make([]uint32, cfg.MaxOwners),
		lru:         makeArray[link](&mem, cfg.Capacity+numClasses),
		index:       newIndex(&mem, cfg.Capacity),
		seed:        newSeed(s),
		free:        noIdx,
		frags:       newFragTable(&mem, cfg.FragCapacity, int64(cfg.FragTimeout)),
		granularity: max(1, int64(cfg.LRUGranularity)),
	}
	mem.releaseWith(t)
	for i, f := range cfg.Timeouts.fields() {
		t.timeout[i+1] = int64(*f.d)
	}
	for c := uint8(1); c < numClasses; c++ {
		s := t.sentinel(c)
		t.lru[s] = link{prev: s, next: s}
	}
	return t, nil
}

// Cap returns the table's capacity.
func (t *Table) Cap() int { return len(t.entries) }

// Len returns the number of flows held, expired ones not yet reclaimed
// included.
func (t *Table) Len() int { return t.n }

// MemoryBytes returns the memory that the table allocated: entries, LRU
// links, hash index and fragment table.
func (t *Table) MemoryBytes() int {
	const entrySize, linkSize, slotSize, ownerSize, countSize = 128, 8, 8, 2, 4
	return len(t.entries)*(entrySize+ownerSize) + len(t.lru)*linkSize + len(t.index.slots)*slotSize +
		len(t.ownerN)*countSize + t.frags.memoryBytes()
}

// Stats returns the table's counters. It is safe for concurrent use.
func (t *Table) Stats() Stats {
	var byClass [numClasses - 1]uint64
	for c := range byClass {
		byClass[c] = t.stats.evictedByClass[c+1].Load()
	}
	return Stats{
		EvictionsByClass: byClass,
		Capacity:         len(t.entries),
		Entries:          t.stats.entries.Load(),
		Inserts:          t.stats.inserts.Load(),
		Evictions:        t.stats.evictions.Load(),
		Expirations:      t.stats.expirations.Load(),
		Deletes:          t.stats.deletes.Load(),
		Tombstones:       t.stats.tombstones.Load(),
		Refusals:         t.stats.refusals.Load(),
		FragInserts:      t.stats.fragInserts.Load(),
		FragEvictions:    t.stats.fragEvictions.Load(),
	}
}

// clock returns now, or the latest now seen if that is later.
func (t *Table) clock(now int64) int64 {
	if now < t.now {
		return t.now
	}
	t.now = now
	return now
}

// deadline returns now plus the timeout of class c, saturated.
func (t *Table) deadline(now int64, c uint8) int64 { return addSat(now, t.timeout[c]) }

// addSat returns now+d for d > 0, or math.MaxInt64 if that overflows.
func addSat(now, d int64) int64 {
	if now > math.MaxInt64-d {
		return math.MaxInt64
	}
	return now + d
}

func (t *Table) sentinel(c uint8) uint32 { return uint32(len(t.entries)) + uint32(c) }

func (t *Table) unlink(i uint32) {
	l := t.lru[i]
	t.lru[l.prev].next = l.next
	t.lru[l.next].prev = l.prev
}

func (t *Table) pushFront(i uint32, c uint8) {
	s := t.sentinel(c)
	h := t.lru[s].next
	t.lru[i] = link{prev: s, next: h}
	t.lru[h].prev = i
	t.lru[s].next = i
}

// tail returns the least recently seen entry of class c, or noIdx.
func (t *Table) tail(c uint8) uint32 {
	i := t.lru[t.sentinel(c)].prev
	if i >= uint32(len(t.entries)) {
		return noIdx
	}
	return i
}

// find returns the position of the entry with key c and hash h, or noIdx.
func (t *Table) find(c *ckey, h uint64) uint32 {
	tag := uint32(h)
	slots, mask := t.index.slots, t.index.mask
	for pos := uint64(tag) & mask; ; pos = (pos + 1) & mask {
		s := slots[pos]
		if s == 0 {
			return noIdx
		}
		if uint32(s>>32) == tag {
			i := uint32(s) - 1
			if i < uint32(len(t.entries)) && t.entries[i].k.equal(c) {
				return i
			}
		}
	}
}

// owned returns the position of e if e is an entry of t that is in use.
func (t *Table) owned(e *Entry) (uint32, bool) {
	off := uintptr(unsafe.Pointer(e)) - uintptr(unsafe.Pointer(unsafe.SliceData(t.entries)))
	if e == nil || off >= uintptr(len(t.entries))*entrySize || off%entrySize != 0 {
		return 0, false
	}
	i := uint32(off / entrySize)
	return i, t.entries[i].class != classFree
}

// Lookup finds the flow of a packet with key k, in either direction, and
// returns it with the packet's direction. It returns nil if the flow is not
// tracked or has expired at now. Lookup changes nothing: call
// [Table.Update] to account the packet. For a table much larger than the
// CPU caches, [Table.LookupBatch] is several times faster per packet.
func (t *Table) Lookup(k Key, now int64) (*Entry, Dir) {
	now = t.clock(now)
	var c ckey
	swapped := canon(&k, &c)
	i := t.find(&c, t.seed.hash(&c))
	if i == noIdx {
		return nil, Original
	}
	e := &t.entries[i]
	if e.expires <= now {
		return nil, Original
	}
	return e, Dir((uint8(b2u64(swapped)) ^ e.bits) & bitSwapped)
}

// LookupRelated finds the flow that an ICMP or ICMPv6 error message relates
// to. inner is the key of the packet quoted in the error, exactly as
// quoted: Src and SrcPort are the quoted packet's source, Dst and DstPort
// its destination (for a quoted ICMP echo, the identifier as both ports),
// Proto its protocol; do not reverse it. The quoted packet is one that an
// endpoint of the flow sent, and the error travels back to that endpoint,
// so the returned Dir is the direction of the error message: the reverse of
// the quoted packet's direction (an error about an original-direction
// packet travels in the reply direction).
//
// The caller should also check that the error's outer destination is
// inner.Src, the endpoint that sent the quoted packet; the outer source may
// be any router on the path. Like Lookup, it changes nothing; errors should
// not keep a flow alive, so do not Update the flow for them.
func (t *Table) LookupRelated(inner Key, now int64) (*Entry, Dir) {
	e, d := t.Lookup(inner, now)
	if e == nil {
		return nil, Original
	}
	return e, d ^ 1
}

// Insert starts tracking the flow of a packet with key k, whose direction
// becomes the Original direction, and returns the new entry with Flags 0,
// Generation 0 and rules {-1, -1}: the caller records the verdict in it and
// then calls [Table.Update] for the packet. A TCP flow starts in SYN_SENT:
// insert TCP flows only for packets that [ClassifyNewTCP] calls
// NewTCPOpen. UDP flows start unreplied, ICMP and ICMPv6 queries and other
// protocols in their own classes. ICMP errors are never inserted (see
// [Table.LookupRelated]).
//
// If the flow is already tracked, its entry is reset for the new flow (its
// direction may change). Otherwise, when the table is full, an expired flow
// is reused if there is one (the one that expired first), else the least
// recently seen flow is evicted, and evicted is true; either way the
// returned entry is the old flow's, reused. Insert never fails. Pointers to
// entries obtained before are invalidated (see [Table.LookupBatch] for
// which ones).
func (t *Table) Insert(k Key, now int64) (e *Entry, evicted bool) {
	e, r := t.insert(&k, 0, TCPSynSent, now)
	return e, r == InsertEvicted
}

// InsertEstablished is [Table.Insert] for a TCP packet that picks up a
// connection in the middle (see NewTCPPickup): the flow starts in
// ESTABLISHED, and the packet's direction becomes Original even if the
// packet was in fact sent by the connection's responder. For other
// protocols it is Insert.
func (t *Table) InsertEstablished(k Key, now int64) (e *Entry, evicted bool) {
	e, r := t.insert(&k, 0, TCPEstablished, now)
	return e, r == InsertEvicted
}

// Owner is who a flow counts against when the table is full: the local
// pod that started it, say. 0 is nobody. An owner below
// [Config.MaxOwners].
type Owner uint16

// Insertion says how [Table.InsertFor] found room.
type Insertion uint8

// Insertions.
const (
	// InsertFree: a free entry, or the flow's own (it was tracked).
	InsertFree Insertion = iota
	// InsertExpired: an expired flow's entry was reused.
	InsertExpired
	// InsertEvicted: a live flow was evicted.
	InsertEvicted
	// InsertRefused: the table is full, the owner holds its fair share or
	// more, and none of its flows could make room: nothing was inserted.
	InsertRefused
)

// InsertFor is [Table.Insert] (established false) or
// [Table.InsertEstablished] (true) for a flow of owner, which makes room
// in a full table as [Table] describes: expired flows first, then not
// assured flows before established ones, and an owner that holds its fair
// share (the capacity divided among the owners that hold flows) or more
// only at the expense of its own flows. It returns nil and InsertRefused
// when it cannot make room.
func (t *Table) InsertFor(k Key, owner Owner, established bool, now int64) (*Entry, Insertion) {
	st := TCPSynSent
	if established {
		st = TCPEstablished
	}
	if int(owner) >= len(t.ownerN) {
		owner = 0
	}
	return t.insert(&k, owner, st, now)
}

func (t *Table) insert(k *Key, owner Owner, st TCPState, now int64) (*Entry, Insertion) {
	now = t.clock(now)
	var c ckey
	swapped := canon(k, &c)
	h := t.seed.hash(&c)
	// In a full table, choose the victim first and start loading its
	// hash slot, so that its cache miss overlaps with that of the new
	// key's slot in find.
	v, vh, vkind := uint32(noIdx), uint64(0), victimRefuse
	full := t.free == noIdx && t.fresh == uint32(len(t.entries))
	if full {
		v, vkind = t.victim(now, owner)
		if v != noIdx {
			vh = t.seed.hash(&t.entries[v].k)
			t.batch.sink += t.index.slots[uint64(uint32(vh))&t.index.mask]
		}
	}
	res := InsertFree
	i := t.find(&c, h)
	switch {
	case i != noIdx:
		if t.entries[i].expires <= now {
			t.stats.expirations.Add(1)
		}
		t.released(&t.entries[i])
		t.unlink(i)
	case full && v == noIdx:
		t.stats.refusals.Add(1)
		return nil, InsertRefused
	case v != noIdx:
		next := t.lru[v].prev // the next victim of this class, or its sentinel
		if vkind == victimExpired {
			t.stats.expirations.Add(1)
			res = InsertExpired
		} else {
			ve := &t.entries[v]
			t.stats.evictions.Add(1)
			t.stats.evictedByClass[ve.class].Add(1)
			if t.onEvict != nil {
				t.onEvict(ve, Owner(t.owners[v]))
			}
			res = InsertEvicted
		}
		t.releaseHashed(v, vh)
		if next < uint32(len(t.entries)) {
			// Start loading what the next eviction reads (the next
			// victim's key and list neighbour).
			t.batch.sink += t.entries[next].k.a0 + uint64(t.lru[t.lru[next].prev].next)
		}
		i = t.alloc()
		t.index.insert(h, i+1)
		t.n++
	default:
		i = t.alloc()
		t.index.insert(h, i+1)
		t.n++
		t.stats.entries.Store(uint64(t.n))
	}
	t.setOwner(i, owner)
	e := &t.entries[i]
	var cls uint8
	switch c.proto() {
	case table.TCP:
		cls = uint8(st)
	case table.UDP:
		cls, st = classUDP, TCPNone
	case table.ICMP, table.ICMPv6:
		cls, st = classICMP, TCPNone
	default:
		cls, st = classGeneric, TCPNone
	}
	*e = Entry{
		k:        c,
		lastSeen: now,
		expires:  t.deadline(now, cls),
		filed:    now,
		epoch:    e.epoch + 1,
		Egress:   table.RuleRef{Policy: -1, Index: -1},
		Ingress:  table.RuleRef{Policy: -1, Index: -1},
		state:    st,
		class:    cls,
		bits:     uint8(b2u64(swapped)),
	}
	t.pushFront(i, cls)
	t.stats.inserts.Add(1)
	return e, res
}

// SetEvictHook makes the table call fn for every live flow it evicts to
// make room (not for expired ones), with its owner, just before the flow
// goes. fn runs on the owner's goroutine inside the table's method: it
// must not call the table's methods.
func (t *Table) SetEvictHook(fn func(e *Entry, owner Owner)) { t.onEvict = fn }

// alloc takes an unused entry, or returns noIdx if the table is full.
func (t *Table) alloc() uint32 {
	if i := t.free; i != noIdx {
		t.free = t.lru[i].next
		return i
	}
	if t.fresh < uint32(len(t.entries)) {
		t.fresh++
		return t.fresh - 1
	}
	return noIdx
}

// Eviction tiers. A full table reuses an expired flow if there is one;
// else it evicts a flow of the first tier (not assured, as the kernel's
// early_drop says: half-open and unreplied flows, closed ones, tombstones)
// before any of the second (established and replied flows), so that no
// established flow goes to admit a new one while an unreplied one exists.
var (
	tier1 = [...]uint8{classTCPSynSent, classTCPSynRecv, classTCPTimeWait, classTCPClose, classUDP, classICMP, classTombstone}
	tier2 = [...]uint8{classTCPEstablished, classTCPFinWait, classTCPCloseWait, classTCPLastAck, classUDPStream, classGeneric}
)

// Kinds of victim.
const (
	victimExpired = iota // an expired flow: reuse it
	victimEvict          // a live flow: evict it
	victimRefuse         // none: refuse the insert
)

// victim chooses the entry to reuse in a full table for a flow of owner:
//   - of the entries that expired at now, the one that expired first (then
//     the least recently seen);
//   - else, if owner holds its fair share of the table or more
//     ([Table.share]), one of its own flows, the least recently seen of
//     those at the tail of a class, first tier first, or none: the insert
//     is refused, so that one owner cannot take more than its share while
//     others need entries;
//   - else the least recently seen flow of the first tier;
//   - else of the second tier, preferring flows whose owner holds more
//     than its share.
//
// Ties go to the lower class. Only the class tails are looked at: within a
// class, the tail is the least recently seen entry and the first to
// expire.
func (t *Table) victim(now int64, owner Owner) (i uint32, kind int) {
	best := uint32(noIdx)
	var k1, k2 int64
	for c := uint8(1); c < numClasses; c++ {
		j := t.tail(c)
		if j == noIdx {
			continue
		}
		if e := &t.entries[j]; e.expires <= now && (best == noIdx || e.expires < k1 || (e.expires == k1 && e.lastSeen < k2)) {
			best, k1, k2 = j, e.expires, e.lastSeen
		}
	}
	if best != noIdx {
		return best, victimExpired
	}
	oldest := func(classes []uint8, ok func(j uint32) bool) uint32 {
		best, seen := uint32(noIdx), int64(0)
		for _, c := range classes {
			if j := t.tail(c); j != noIdx && ok(j) && (best == noIdx || t.entries[j].lastSeen < seen) {
				best, seen = j, t.entries[j].lastSeen
			}
		}
		return best
	}
	any := func(uint32) bool { return true }
	if owner != 0 && t.overShare(owner) {
		own := func(j uint32) bool { return t.owners[j] == uint16(owner) }
		if j := oldest(tier1[:], own); j != noIdx {
			return j, victimEvict
		}
		if j := oldest(tier2[:], own); j != noIdx {
			return j, victimEvict
		}
		return noIdx, victimRefuse
	}
	if j := oldest(tier1[:], any); j != noIdx {
		return j, victimEvict
	}
	if j := oldest(tier2[:], func(j uint32) bool { o := Owner(t.owners[j]); return o != 0 && t.overShare(o) }); j != noIdx {
		return j, victimEvict
	}
	if j := oldest(tier2[:], any); j != noIdx {
		return j, victimEvict
	}
	return noIdx, victimRefuse
}

// share is an owner's fair share of the table: the capacity divided among
// the owners that hold flows (o included).
func (t *Table) share(o Owner) int {
	n := t.activeOwners
	if t.ownerN[o] == 0 {
		n++
	}
	return len(t.entries) / max(1, n)
}

// overShare reports whether owner o holds its fair share or more.
func (t *Table) overShare(o Owner) bool { return int(t.ownerN[o]) >= t.share(o) }

// setOwner makes o the owner of entry i, whose owner was old.
func (t *Table) setOwner(i uint32, o Owner) {
	old := Owner(t.owners[i])
	if old == o {
		return
	}
	if old != 0 {
		if t.ownerN[old]--; t.ownerN[old] == 0 {
			t.activeOwners--
		}
	}
	if o != 0 {
		if t.ownerN[o]++; t.ownerN[o] == 1 {
			t.activeOwners++
		}
	}
	t.owners[i] = uint16(o)
}

// Owner returns the owner of flow e, 0 if it has none or is not an entry
// of t in use.
func (t *Table) Owner(e *Entry) Owner {
	i, ok := t.owned(e)
	if !ok {
		return 0
	}
	return Owner(t.owners[i])
}

// OwnerFlows returns how many flows owner o holds. Only the owner of the
// table may call it.
func (t *Table) OwnerFlows(o Owner) int {
	if int(o) >= len(t.ownerN) {
		return 0
	}
	return int(t.ownerN[o])
}

// release frees entry i, which is in use.
func (t *Table) release(i uint32) { t.releaseHashed(i, t.seed.hash(&t.entries[i].k)) }

// releaseHashed is release for an entry whose key hashes to h.
func (t *Table) releaseHashed(i uint32, h uint64) {
	e := &t.entries[i]
	t.released(e)
	t.setOwner(i, 0)
	t.index.remove(h, i+1)
	t.unlink(i)
	e.class = classFree
	e.epoch++
	t.lru[i] = link{prev: noIdx, next: t.free}
	t.free = i
	t.n--
}

// Update accounts a packet of length bytes in direction dir of flow e:
// counters, TCP state (from tcpFlags, ignored for other protocols), UDP
// reply upgrade, last-seen time, expiry and LRU position. See [Result] for
// what to do with the packet. It returns Invalid, changing nothing, if e is
// nil or not an entry of t in use.
func (t *Table) Update(e *Entry, dir Dir, tcpFlags uint8, length int, now int64) Result {
	i, ok := t.owned(e)
	if !ok {
		return Invalid
	}
	now = t.clock(now)
	dir &= 1
	cls := e.class
	res := Accepted
	switch {
	case cls == classTombstone:
		// A cut flow: no state machine; every packet keeps it alive.
	case e.k.proto() == table.TCP:
		st, r := tcpStep(e.state, dir, tcpFlags, e.bits>>finShift)
		if r >= Invalid {
			return r
		}
		res = r
		if r == Accepted {
			if st == TCPSynSent && (e.state == TCPTimeWait || e.state == TCPClose) {
				// Reopened in the original direction: a new connection
				// with the same 5-tuple and orientation, so the same
				// verdict.
				e.Packets, e.Bytes = [2]uint64{}, [2]uint64{}
				e.bits &= bitSwapped
			}
			if tcpFlags&TCPFlagFIN != 0 {
				e.bits |= 1 << (finShift + dir)
			}
			e.state = st
			cls = uint8(st)
			if st == TCPSynSent2 {
				cls = classTCPSynSent
			}
		}
	case e.k.proto() == table.UDP:
		if dir == Reply {
			cls = classUDPStream
		}
	}
	e.Packets[dir]++
	if length > 0 {
		e.Bytes[dir] += uint64(length)
	}
	if res == Ignored {
		return Ignored
	}
	if dir == Reply {
		e.bits |= bitReplied
	}
	t.refresh(i, e, cls, now)
	return Accepted
}

// refresh makes entry i (e), now of class cls, seen at now.
func (t *Table) refresh(i uint32, e *Entry, cls uint8, now int64) {
	if cls != e.class || now-e.filed >= t.granularity {
		// Moving costs cache misses on the list neighbours, so an entry
		// moves at most once per granularity: the list is sorted by filed,
		// and lastSeen-filed < granularity.
		if cls != e.class || t.lru[t.sentinel(cls)].next != i {
			t.unlink(i)
			t.pushFront(i, cls)
			e.class = cls
		}
		e.filed = now
	}
	e.lastSeen = now
	e.expires = t.deadline(now, cls)
}

// Count adds a packet of length bytes to the counters of direction dir of
// flow e without running the state machine or refreshing the flow: for
// packets that belong to a flow but carry no header of their own, such as
// non-first fragments ([Table.LookupFragment]). It does nothing if e is nil
// or not an entry of t in use.
func (t *Table) Count(e *Entry, dir Dir, length int) {
	if _, ok := t.owned(e); !ok {
		return
	}
	e.Packets[dir&1]++
	if length > 0 {
		e.Bytes[dir&1] += uint64(length)
	}
}

// Tombstone turns flow e into a tombstone and reports whether it did; it
// returns false if e is nil or not an entry of t in use. A tombstone keeps
// the flow's key, direction, counters and caller fields, but leaves its
// state's class for a class of its own, with the Tombstone timeout, and
// clears [FlagAllowed]: lookups find it, so that the caller can drop both
// directions of a connection that policy cut, and no packet of it is
// taken for the first packet of a new flow. [Table.Update] on a tombstone
// runs no state machine: it counts the packet and restarts the timer, so
// a tombstone lasts until the connection has been silent for the timeout.
// An Insert of its key replaces it. Tombstoning a tombstone refreshes it.
func (t *Table) Tombstone(e *Entry, now int64) bool {
	i, ok := t.owned(e)
	if !ok {
		return false
	}
	now = t.clock(now)
	t.released(e)
	t.unlink(i)
	t.pushFront(i, classTombstone)
	e.class = classTombstone
	e.Flags &^= FlagAllowed
	e.filed, e.lastSeen = now, now
	e.expires = t.deadline(now, classTombstone)
	t.stats.tombstones.Add(1)
	return true
}

// SetReleaseHook makes the table call fn for every entry with
// [FlagOffloaded] when it stops being a live flow: just before it is
// released (expired, evicted, deleted, replaced by an insert of its key)
// or turned into a tombstone, while its key and fields still describe the
// flow. The table clears FlagOffloaded after the call. fn runs on the
// owner's goroutine inside the table's method: it must not call the
// table's methods.
func (t *Table) SetReleaseHook(fn func(e *Entry)) { t.onRelease = fn }

func (t *Table) released(e *Entry) {
	if e.Flags&FlagOffloaded != 0 {
		if t.onRelease != nil {
			t.onRelease(e)
		}
		e.Flags &^= FlagOffloaded
	}
}

// Index returns the position of e in the table, in [0, Cap()): a stable
// name for the flow while it is tracked (a slot of a table outside, such
// as the kernel's per-flow counters), reused by later flows. ok is false
// if e is not an entry of t in use.
func (t *Table) Index(e *Entry) (i uint32, ok bool) { return t.owned(e) }

// Touch records that flow e carried packets elsewhere (the kernel
// forwarded them), the last one at time seen: if seen is later than e's
// last-seen time, e is refreshed as an accepted packet at now would
// refresh it (last-seen time, expiry, LRU position; a UDP flow with
// packets in the reply direction becomes a stream), without running the
// TCP state machine. Calling it soon after seen keeps the error small: a
// flow's last-seen time is at most that delay late. packets and bytes
// (per direction) are added to its counters. It reports false, changing
// nothing, if e is not an entry of t in use.
func (t *Table) Touch(e *Entry, seen int64, packets, bytes [2]uint64, now int64) bool {
	i, ok := t.owned(e)
	if !ok {
		return false
	}
	now = t.clock(now)
	for d := range 2 {
		e.Packets[d] += packets[d]
		e.Bytes[d] += bytes[d]
	}
	cls := e.class
	if packets[Reply] > 0 {
		e.bits |= bitReplied
		if cls == classUDP {
			cls = classUDPStream
		}
	}
	if seen > e.lastSeen || cls != e.class {
		t.refresh(i, e, cls, now)
	}
	return true
}

// Scan calls fn for up to n entries in use, starting at position from and
// wrapping around at the end of the entries ever used, and returns the
// position after the last one looked at: calling Scan again with it
// continues where this call stopped. Expired entries not yet reclaimed are
// included. fn may read and write the entry's exported fields and call
// Touch, but must not insert, delete, tombstone or expire.
func (t *Table) Scan(from uint32, n int, fn func(e *Entry)) uint32 {
	if t.fresh == 0 {
		return 0
	}
	if from >= t.fresh {
		from = 0
	}
	i := from
	for range min(n, int(t.fresh)) {
		if e := &t.entries[i]; e.class != classFree {
			fn(e)
		}
		if i++; i == t.fresh {
			i = 0
		}
	}
	return i
}

// Delete stops tracking flow e and reports whether it did; it returns
// false if e is nil or not an entry of t in use. Pointers to entries
// obtained before are invalidated.
func (t *Table) Delete(e *Entry) bool {
	i, ok := t.owned(e)
	if !ok {
		return false
	}
	t.release(i)
	t.stats.deletes.Add(1)
	t.stats.entries.Store(uint64(t.n))
	return true
}

// Expire reclaims up to budget flows that expired at now and returns how
// many it reclaimed. Its cost is proportional to that number, plus a few
// nanoseconds per traffic class: call it once per batch, or when idle, with
// a budget of a few entries. Expired flows are absent for lookups whether
// or not they were reclaimed, and inserts reuse them when the table is
// full. Pointers to entries obtained before are invalidated.
func (t *Table) Expire(now int64, budget int) int {
	now = t.clock(now)
	n := 0
	const classes = numClasses - 1
	for k := 0; k < classes && n < budget; k++ {
		c := uint8(1 + (t.cursor+k)%classes)
		for n < budget {
			i := t.tail(c)
			if i == noIdx || t.entries[i].expires > now {
				break
			}
			t.release(i)
			n++
		}
	}
	t.cursor = (t.cursor + 1) % classes
	if n > 0 {
		t.stats.expirations.Add(uint64(n))
		t.stats.entries.Store(uint64(t.n))
	}
	return n
}

// Range calls fn for every flow that has not expired at now, in no
// particular order, until fn returns false. It is for the owning goroutine
// (e.g. to publish flow lists): fn may read and write the entry's exported
// fields and may Delete it, but must not insert into the table or call
// Expire. It takes time proportional to the number of entries ever used.
func (t *Table) Range(now int64, fn func(e *Entry) bool) {
	now = t.clock(now)
	for i := range t.entries[:t.fresh] {
		e := &t.entries[i]
		if e.class != classFree && e.expires > now {
			if !fn(e) {
				return
			}
		}
	}
}
