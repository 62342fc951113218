package conntrack

// index is an open-addressing hash index with linear probing that maps a
// key's hash to a position in a fixed array of records. Each slot is one
// uint64: the low 32 bits of the hash (the tag) in the high half and the
// record's position plus one in the low half; 0 is an empty slot. The home
// slot of a hash is tag & mask, so a slot's home is known without reading
// its record, which deletion by backward shift needs (no tombstones, so
// probe sequences never degrade under churn).
//
// The index has at least 4/3 as many slots as records and at least one
// empty slot, so every probe loop ends. Lookups are written out by the
// tables themselves because they compare their own records.
type index struct {
	slots []uint64
	mask  uint64
}

// newIndex sizes an index for n records: the next power of two of at least
// n*4/3+1 slots, so the load factor stays at or below 3/4.
func newIndex(mem *arena, n int) index {
	want := uint64(n) + uint64(n)/3 + 1
	size := uint64(8)
	for size < want {
		size <<= 1
	}
	return index{slots: makeArray[uint64](mem, int(size)), mask: size - 1}
}

func slotOf(h uint64, id uint32) uint64 { return uint64(uint32(h))<<32 | uint64(id) }

// insert adds record id (position + 1) with hash h. The caller makes sure
// the record is not in the index yet.
func (x *index) insert(h uint64, id uint32) {
	for pos := uint64(uint32(h)) & x.mask; ; pos = (pos + 1) & x.mask {
		if x.slots[pos] == 0 {
			x.slots[pos] = slotOf(h, id)
			return
		}
	}
}

// remove deletes record id with hash h and reports whether it was there.
func (x *index) remove(h uint64, id uint32) bool {
	want := slotOf(h, id)
	for pos := uint64(uint32(h)) & x.mask; ; pos = (pos + 1) & x.mask {
		s := x.slots[pos]
		if s == want {
			x.removeAt(pos)
			return true
		}
		if s == 0 {
			return false
		}
	}
}

// removeAt empties slot hole and shifts later slots of the same cluster back
// so that every remaining record is still reachable from its home slot.
func (x *index) removeAt(hole uint64) {
	for j := (hole + 1) & x.mask; ; j = (j + 1) & x.mask {
		s := x.slots[j]
		if s == 0 {
			break
		}
		home := uint64(uint32(s>>32)) & x.mask
		// The record at j may stay if its home lies cyclically in (hole, j].
		if (j-home)&x.mask < (j-hole)&x.mask {
			continue
		}
		x.slots[hole] = s
		hole = j
	}
	x.slots[hole] = 0
}
