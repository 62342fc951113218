package conntrack

import (
	"encoding/binary"
	"net/netip"

	"github.com/podgate/podgate/policy/table"
)

// FragKey identifies the fragments of one IP packet: source, destination,
// identification and, for IPv4, protocol (RFC 791); for IPv6 the protocol
// is not part of it (RFC 8200 section 4.5) and must be 0. Addresses are
// stored as in [Key]. Build it with [MakeFragKey].
type FragKey struct {
	Src, Dst [16]byte
	// ID is the IPv4 identification (16 bits) or the IPv6 Fragment
	// header's identification.
	ID    uint32
	Proto table.Protocol
	IPv6  bool
}

// MakeFragKey returns the FragKey of a fragment from src to dst with
// identification id and (IPv4 only) protocol proto; for IPv6 proto is
// ignored, because a non-first fragment's Fragment header may name an
// extension header rather than the upper-layer protocol of the first.
func MakeFragKey(src, dst netip.Addr, proto table.Protocol, id uint32) FragKey {
	k := FragKey{Src: src.As16(), Dst: dst.As16(), ID: id, Proto: proto, IPv6: src.Is6()}
	if k.IPv6 {
		k.Proto = 0
	}
	return k
}

func fragCanon(k *FragKey) ckey {
	return ckey{
		a0:   binary.BigEndian.Uint64(k.Src[0:8]),
		a1:   binary.BigEndian.Uint64(k.Src[8:16]),
		b0:   binary.BigEndian.Uint64(k.Dst[0:8]),
		b1:   binary.BigEndian.Uint64(k.Dst[8:16]),
		meta: uint64(k.ID)<<32 | uint64(k.Proto)<<8 | b2u64(k.IPv6),
	}
}

// FragVerdict is what the first fragment of a packet decided, for its other
// fragments.
type FragVerdict struct {
	// Allowed is the first fragment's verdict.
	Allowed bool
	// Entry is the flow of the first fragment, or nil if none was recorded
	// or the flow has since been deleted, evicted or expired and its entry
	// reused. The pointer follows the rules of [Entry].
	Entry *Entry
	// Dir is the first fragment's direction in Entry's flow.
	Dir Dir
}

// fragRec.bits.
const (
	fragUsed    = 1 << 0
	fragAllowed = 1 << 1
	fragReply   = 1 << 2
)

type fragRec struct {
	k       ckey
	expires int64
	entry   uint32 // flow entry position + 1, or 0
	epoch   uint32 // the flow entry's epoch when recorded
	bits    uint8
}

// fragTable remembers first-fragment verdicts. Records are written in a
// ring: every record has the same timeout, so the oldest record, the next
// one to be overwritten, is also the first to expire. Expired records are
// absent for lookups.
type fragTable struct {
	recs    []fragRec
	index   index
	next    uint32 // ring position of the next record to write
	timeout int64
}

func newFragTable(mem *arena, n int, timeout int64) fragTable {
	return fragTable{recs: makeArray[fragRec](mem, n), index: newIndex(mem, n), timeout: timeout}
}

func (f *fragTable) memoryBytes() int {
	const recSize, slotSize = 64, 8
	return len(f.recs)*recSize + len(f.index.slots)*slotSize
}

func (f *fragTable) find(c *ckey, h uint64) uint32 {
	tag := uint32(h)
	slots, mask := f.index.slots, f.index.mask
	for pos := uint64(tag) & mask; ; pos = (pos + 1) & mask {
		s := slots[pos]
		if s == 0 {
			return noIdx
		}
		if uint32(s>>32) == tag {
			i := uint32(s) - 1
			if i < uint32(len(f.recs)) && f.recs[i].k.equal(c) {
				return i
			}
		}
	}
}

// InsertFragment records the verdict of a first fragment (fragment offset
// 0, more-fragments set) with key k, so that [Table.LookupFragment] finds it
// for the packet's other fragments during the fragment timeout. e is the
// first fragment's flow (nil if there is none, e.g. because it was denied)
// and dir its direction in that flow. If k is already recorded (a
// duplicate first fragment) its verdict is replaced and its timeout kept.
// When the fragment table is full the oldest record is replaced.
func (t *Table) InsertFragment(k FragKey, e *Entry, dir Dir, allowed bool, now int64) {
	now = t.clock(now)
	f := &t.frags
	c := fragCanon(&k)
	h := t.seed.hash(&c)
	var entry, epoch uint32
	if i, ok := t.owned(e); ok {
		entry, epoch = i+1, e.epoch
	}
	bits := uint8(fragUsed)
	if allowed {
		bits |= fragAllowed
	}
	if dir&1 == Reply {
		bits |= fragReply
	}
	if i := f.find(&c, h); i != noIdx {
		r := &f.recs[i]
		if r.expires > now {
			r.entry, r.epoch, r.bits = entry, epoch, bits
			return
		}
		f.index.remove(h, i+1)
		r.bits = 0
	}
	i := f.next
	r := &f.recs[i]
	if r.bits&fragUsed != 0 {
		f.index.remove(t.seed.hash(&r.k), i+1)
		if r.expires > now {
			t.stats.fragEvictions.Add(1)
		}
	}
	*r = fragRec{k: c, expires: addSat(now, f.timeout), entry: entry, epoch: epoch, bits: bits}
	f.index.insert(h, i+1)
	if f.next++; f.next == uint32(len(f.recs)) {
		f.next = 0
	}
	t.stats.fragInserts.Add(1)
}

// LookupFragment returns the verdict that [Table.InsertFragment] recorded
// for the packet with fragment key k, and false if there is none or it
// expired at now: a non-first fragment whose first fragment was not seen
// (or came too late, or was forgotten) should be dropped. It changes
// nothing.
func (t *Table) LookupFragment(k FragKey, now int64) (FragVerdict, bool) {
	now = t.clock(now)
	c := fragCanon(&k)
	i := t.frags.find(&c, t.seed.hash(&c))
	if i == noIdx {
		return FragVerdict{}, false
	}
	r := &t.frags.recs[i]
	if r.expires <= now {
		return FragVerdict{}, false
	}
	v := FragVerdict{Allowed: r.bits&fragAllowed != 0}
	if r.bits&fragReply != 0 {
		v.Dir = Reply
	}
	if r.entry != 0 && r.entry <= uint32(len(t.entries)) {
		e := &t.entries[r.entry-1]
		if e.epoch == r.epoch && e.class != classFree && e.expires > now {
			v.Entry = e
		}
	}
	return v, true
}
