package conntrack

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/podgate/podgate/policy/table"
)

// lruFlow is what a flow table built on golang-lru would keep per flow: the
// same information as Entry without the key and links.
type lruFlow struct {
	state             TCPState
	flags             Flags
	swapped           bool
	lastSeen, expires int64
	generation        uint64
	egress, ingress   table.RuleRef
	packets, bytes    [2]uint64
}

// lruTable is a flow table built the obvious way on golang-lru's
// simplelru.LRU: canonical key to *lruFlow, one allocation per new flow.
type lruTable struct {
	c *simplelru.LRU[ckey, *lruFlow]
}

func newLRUTable(tb testing.TB, n int) *lruTable {
	c, err := simplelru.NewLRU[ckey, *lruFlow](n, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return &lruTable{c}
}

func (t *lruTable) lookup(k *Key) (*lruFlow, Dir) {
	var c ckey
	swapped := canon(k, &c)
	f, ok := t.c.Get(c)
	if !ok {
		return nil, Original
	}
	if swapped != f.swapped {
		return f, Reply
	}
	return f, Original
}

func (t *lruTable) insert(k *Key, now int64) (*lruFlow, bool) {
	var c ckey
	swapped := canon(k, &c)
	f := &lruFlow{
		state: TCPSynSent, swapped: swapped, lastSeen: now, expires: now + 120*sec,
		flags: FlagAllowed, generation: 1,
		egress: table.RuleRef{Policy: -1, Index: -1}, ingress: table.RuleRef{Policy: -1, Index: -1},
	}
	return f, t.c.Add(c, f)
}

func (f *lruFlow) update(d Dir, length int, now int64) {
	f.packets[d]++
	f.bytes[d] += uint64(length)
	f.lastSeen = now
	f.expires = now + int64(5*24*time.Hour)
}

// BenchmarkVsGolangLRU compares the table with golang-lru's simplelru.LRU
// used as a flow table:
//
//   - op=get: per-packet lookup and counter update of an established flow,
//     random flows (as BenchmarkLookupHit, without the TCP state machine).
//   - op=add: insert of a new flow into a full table, evicting.
//   - op=gc: one full garbage collection with the full table live (ns/op is
//     the GC's duration; it is what every GC cycle of the agent pays).
func BenchmarkVsGolangLRU(b *testing.B) {
	for _, n := range benchSizes {
		keys := benchKeys(n)
		pk := packets(keys)
		b.Run(fmt.Sprintf("op=get/impl=conntrack/flows=%d", n), func(b *testing.B) {
			ct := newTable(b, n)
			now := int64(sec)
			for _, k := range keys {
				e, _ := ct.InsertEstablished(k, now)
				e.Flags, e.Generation = FlagAllowed, 1
			}
			b.ReportAllocs()
			i, bad := 0, 0
			for b.Loop() {
				e, d := ct.Lookup(pk[i], now)
				if e.Flags&FlagAllowed == 0 || e.Generation != 1 {
					bad++
				}
				ct.Update(e, d, ack, 1500, now)
				if i++; i == len(pk) {
					i = 0
				}
				if i&63 == 0 {
					now += 10_000
				}
			}
			if bad != 0 {
				b.Fatalf("%d bad lookups", bad)
			}
		})
		b.Run(fmt.Sprintf("op=get/impl=golang-lru/flows=%d", n), func(b *testing.B) {
			lt := newLRUTable(b, n)
			now := int64(sec)
			for i := range keys {
				lt.insert(&keys[i], now)
			}
			b.ReportAllocs()
			i, bad := 0, 0
			for b.Loop() {
				f, d := lt.lookup(&pk[i])
				if f.flags&FlagAllowed == 0 || f.generation != 1 {
					bad++
				}
				f.update(d, 1500, now)
				if i++; i == len(pk) {
					i = 0
				}
				if i&63 == 0 {
					now += 10_000
				}
			}
			if bad != 0 {
				b.Fatalf("%d bad lookups", bad)
			}
		})
		b.Run(fmt.Sprintf("op=add/impl=conntrack/flows=%d", n), func(b *testing.B) {
			ct := newTable(b, n)
			now := int64(sec)
			for i := range n {
				ct.Insert(benchKey(uint32(i)), now)
			}
			b.ReportAllocs()
			next := uint32(n)
			for b.Loop() {
				ct.Insert(benchKey(next), now)
				if next++; next == 1<<24 {
					next = 0
				}
				if next&63 == 0 {
					now += 10_000
				}
			}
		})
		b.Run(fmt.Sprintf("op=add/impl=golang-lru/flows=%d", n), func(b *testing.B) {
			lt := newLRUTable(b, n)
			now := int64(sec)
			for i := range n {
				k := benchKey(uint32(i))
				lt.insert(&k, now)
			}
			b.ReportAllocs()
			next := uint32(n)
			for b.Loop() {
				k := benchKey(next)
				lt.insert(&k, now)
				if next++; next == 1<<24 {
					next = 0
				}
				if next&63 == 0 {
					now += 10_000
				}
			}
		})
		b.Run(fmt.Sprintf("op=gc/impl=conntrack/flows=%d", n), func(b *testing.B) {
			ct := newTable(b, n)
			for _, k := range keys {
				ct.InsertEstablished(k, sec)
			}
			benchGC(b)
			runtime.KeepAlive(ct)
		})
		b.Run(fmt.Sprintf("op=gc/impl=golang-lru/flows=%d", n), func(b *testing.B) {
			lt := newLRUTable(b, n)
			for i := range keys {
				lt.insert(&keys[i], sec)
			}
			benchGC(b)
			runtime.KeepAlive(lt)
		})
	}
}

// benchGC times full garbage collections and reports the live heap.
func benchGC(b *testing.B) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	for b.Loop() {
		runtime.GC()
	}
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(ms.HeapObjects), "heap-objects")
}
