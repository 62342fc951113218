package conntrack

// A full table: which flow makes room for a new one (expired first, then
// flows that are not assured, then established ones), and the owners whose
// fair share of the table bounds what each may take.

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

// SetEvictHook makes the table call fn for every live flow it evicts to
// make room (not for expired ones), with its owner, just before the flow
// goes. fn runs on the owner's goroutine inside the table's method: it
// must not call the table's methods.
func (t *Table) SetEvictHook(fn func(e *Entry, owner Owner)) { t.onEvict = fn }

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
