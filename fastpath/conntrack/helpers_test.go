package conntrack

import (
	"net/netip"
	"testing"
	"time"

	"github.com/podgate/podgate/policy/table"
)

const sec = int64(time.Second)

// newTable returns a table with a fixed seed and the given capacity.
func newTable(tb testing.TB, capacity int) *Table {
	tb.Helper()
	t, err := New(Config{Capacity: capacity, FragCapacity: 8, Seed: 42})
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// key4 returns the key of an IPv4 packet "a:ap -> b:bp".
func key4(a string, ap uint16, b string, bp uint16, proto table.Protocol) Key {
	return MakeKey(netip.MustParseAddr(a), netip.MustParseAddr(b), proto, ap, bp)
}

func tcpKey(a string, ap uint16, b string, bp uint16) Key { return key4(a, ap, b, bp, table.TCP) }
func udpKey(a string, ap uint16, b string, bp uint16) Key { return key4(a, ap, b, bp, table.UDP) }

// mustInsert inserts k and fails if that evicted something.
func mustInsert(tb testing.TB, t *Table, k Key, now int64) *Entry {
	tb.Helper()
	e, evicted := t.Insert(k, now)
	if evicted {
		tb.Fatalf("Insert(%v) evicted", k)
	}
	return e
}

// checkInvariants verifies the table's internal structure: the LRU lists,
// the free list, the hash index and the entries agree, each list is sorted
// by last-seen time and expiry, and the counters match.
func checkInvariants(tb testing.TB, t *Table) {
	tb.Helper()
	n := len(t.entries)
	seen := make([]bool, n)
	inUse := 0
	for c := uint8(1); c < numClasses; c++ {
		s := t.sentinel(c)
		prev := s
		var last int64 = 1<<63 - 1
		for i := t.lru[s].next; i != s; i = t.lru[i].next {
			if i >= uint32(n) {
				tb.Fatalf("class %d: link to %d", c, i)
			}
			if seen[i] {
				tb.Fatalf("class %d: entry %d twice", c, i)
			}
			seen[i] = true
			inUse++
			e := &t.entries[i]
			if t.lru[i].prev != prev {
				tb.Fatalf("class %d: entry %d prev %d, want %d", c, i, t.lru[i].prev, prev)
			}
			if e.class != c {
				tb.Fatalf("entry %d in list %d has class %d", i, c, e.class)
			}
			if j, ok := t.owned(e); !ok || j != i {
				tb.Fatalf("owned(entry %d) = %d, %v", i, j, ok)
			}
			if e.filed > last {
				tb.Fatalf("class %d: entry %d filed %d after newer entry %d", c, i, e.filed, last)
			}
			if d := e.lastSeen - e.filed; d < 0 || d >= t.granularity {
				tb.Fatalf("entry %d seen %d after it was filed, granularity %d", i, d, t.granularity)
			}
			last = e.filed
			if want := t.deadline(e.lastSeen, c); e.expires != want {
				tb.Fatalf("entry %d expires %d, want %d", i, e.expires, want)
			}
			if e.k.proto() == table.TCP && c != classTombstone {
				wc := uint8(e.state)
				if e.state == TCPSynSent2 {
					wc = classTCPSynSent
				}
				if wc != c {
					tb.Fatalf("entry %d state %v in class %d", i, e.state, c)
				}
			}
			if got := t.find(&e.k, t.seed.hash(&e.k)); got != i {
				tb.Fatalf("entry %d: find returns %d", i, got)
			}
			prev = i
		}
		if t.lru[s].prev != prev {
			tb.Fatalf("class %d: tail %d, want %d", c, t.lru[s].prev, prev)
		}
	}
	if inUse != t.n {
		tb.Fatalf("%d entries in lists, n = %d", inUse, t.n)
	}
	free := 0
	for i := t.free; i != noIdx; i = t.lru[i].next {
		if i >= t.fresh || seen[i] {
			tb.Fatalf("free list holds %d (fresh %d, in use %v)", i, t.fresh, seen[i])
		}
		if t.entries[i].class != classFree {
			tb.Fatalf("free entry %d has class %d", i, t.entries[i].class)
		}
		seen[i] = true
		free++
	}
	if inUse+free != int(t.fresh) {
		tb.Fatalf("%d in use + %d free != %d used", inUse, free, t.fresh)
	}
	checkIndex(tb, &t.index, inUse)
	if got := t.Stats().Entries; got != uint64(t.n) {
		tb.Fatalf("Stats().Entries = %d, want %d", got, t.n)
	}
}

// checkIndex verifies that the index holds want records, each reachable
// from its home slot without crossing an empty slot.
func checkIndex(tb testing.TB, x *index, want int) {
	tb.Helper()
	got := 0
	for pos, s := range x.slots {
		if s == 0 {
			continue
		}
		got++
		home := uint64(uint32(s>>32)) & x.mask
		for p := home; p != uint64(pos); p = (p + 1) & x.mask {
			if x.slots[p] == 0 {
				tb.Fatalf("slot %d (home %d) unreachable: empty slot %d", pos, home, p)
			}
		}
	}
	if got != want {
		tb.Fatalf("index holds %d records, want %d", got, want)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
