package conntrack

// Tombstones of cut flows, and what a user that keeps flows elsewhere too
// (the fastpath's kernel offload) needs: a release hook, stable indexes,
// Touch for packets counted elsewhere, and Scan.

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
