package conntrack

import "sync/atomic"

// What the table counts: insertions, evictions, refusals and the rest,
// readable from any goroutine.

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
