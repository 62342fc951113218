package conntrack

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/policy/table"
)

// Directions. Original is the direction of the flow's first packet (the one
// passed to [Table.Insert]), Reply the other one.
const (
	Original Dir = 0
	Reply    Dir = 1
)

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
			if tcpFlags&packet.TCPFlagFIN != 0 {
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
