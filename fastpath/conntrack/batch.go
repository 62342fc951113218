package conntrack

// BatchSize is the number of keys that [Table.LookupBatch] looks up
// together; longer batches are processed in chunks of BatchSize.
const BatchSize = 64

// batch is the scratch space of LookupBatch.
type batch struct {
	c    [BatchSize]ckey
	h    [BatchSize]uint64
	sw   [BatchSize]bool
	sink uint64 // keeps the prefetching loads alive
}

// LookupBatch does [Table.Lookup] for every key: entries[i] and dirs[i]
// receive the results for keys[i] (up to the shortest of the three
// slices). It gives the same results as a loop of Lookups but is much
// faster for large tables: a lookup is two dependent memory accesses (hash
// index, then entry) that miss the CPU caches when the table is larger than
// them, and LookupBatch issues those of a whole chunk of keys together, so
// that their latencies overlap instead of adding up. It also loads what
// [Table.Update] will touch. Call it with the keys of a receive batch, then
// Update each packet's entry, with the same now.
//
// The results are those at the time of the call. While the caller works
// through the batch, an insert or delete can make some of them stale:
//   - a nil result, if an earlier packet of the batch inserted the same
//     flow: once anything was inserted, Lookup a nil result again before
//     inserting;
//   - a result equal to the entry that Insert returned (the entry of an
//     evicted flow is reused for the new flow) or that was passed to
//     Delete: Lookup that packet again.
func (t *Table) LookupBatch(keys []Key, now int64, entries []*Entry, dirs []Dir) {
	n := min(len(keys), len(entries), len(dirs))
	now = t.clock(now)
	for off := 0; off < n; off += BatchSize {
		end := min(off+BatchSize, n)
		t.lookupChunk(keys[off:end], now, entries[off:end], dirs[off:end])
	}
}

func (t *Table) lookupChunk(keys []Key, now int64, entries []*Entry, dirs []Dir) {
	b := &t.batch
	slots, mask := t.index.slots, t.index.mask
	keys = keys[:min(len(keys), BatchSize)]
	// Hash everything first: no memory accesses but the keys.
	for i := range keys {
		b.sw[i] = canon(&keys[i], &b.c[i])
		b.h[i] = t.seed.hash(&b.c[i])
	}
	// Load the home slots: independent loads, all in flight at once.
	var sink uint64
	for i := range keys {
		sink += slots[uint64(uint32(b.h[i]))&mask]
	}
	// Load the entries of the home slots, both cache lines.
	for i := range keys {
		s := slots[uint64(uint32(b.h[i]))&mask]
		if j := uint32(s) - 1; uint32(s>>32) == uint32(b.h[i]) && j < uint32(len(t.entries)) {
			e := &t.entries[j]
			sink += e.k.a0 + e.Generation
		}
	}
	// For the entries that Update will move in their LRU list, load their
	// links, then their neighbours' links.
	for i := range keys {
		s := slots[uint64(uint32(b.h[i]))&mask]
		if j := uint32(s) - 1; uint32(s>>32) == uint32(b.h[i]) && j < uint32(len(t.entries)) {
			if now-t.entries[j].filed >= t.granularity {
				sink += uint64(t.lru[j].next)
			}
		}
	}
	for i := range keys {
		s := slots[uint64(uint32(b.h[i]))&mask]
		if j := uint32(s) - 1; uint32(s>>32) == uint32(b.h[i]) && j < uint32(len(t.entries)) {
			if now-t.entries[j].filed >= t.granularity {
				l := t.lru[j]
				sink += uint64(t.lru[l.prev].next) + uint64(t.lru[l.next].prev)
			}
		}
	}
	b.sink = sink
	// The lookups proper, from the caches.
	for i := range keys {
		entries[i], dirs[i] = nil, Original
		j := t.find(&b.c[i], b.h[i])
		if j == noIdx {
			continue
		}
		e := &t.entries[j]
		if e.expires <= now {
			continue
		}
		entries[i] = e
		dirs[i] = Dir((uint8(b2u64(b.sw[i])) ^ e.bits) & bitSwapped)
	}
}
