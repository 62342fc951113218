package conntrack

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/podgate/podgate/policy/table"
)

// benchKey returns the i-th of 2^24 distinct IPv4 TCP keys: client
// 10.x.y.z (from i) to one of 256 servers, port 80 or 443.
func benchKey(i uint32) Key {
	var k Key
	k.Src[10], k.Src[11], k.Dst[10], k.Dst[11] = 0xff, 0xff, 0xff, 0xff
	binary.BigEndian.PutUint32(k.Src[12:], 10<<24|i&0xffffff)
	binary.BigEndian.PutUint32(k.Dst[12:], 10<<24|200<<16|(i*2654435761)>>24)
	k.SrcPort = uint16(1024 + i%60000)
	k.DstPort = 80
	if i&1 != 0 {
		k.DstPort = 443
	}
	k.Proto = table.TCP
	return k
}

// benchKeys returns n distinct keys in random order.
func benchKeys(n int) []Key {
	keys := make([]Key, n)
	for i := range keys {
		keys[i] = benchKey(uint32(i))
	}
	r := rand.New(rand.NewPCG(1, 1))
	r.Shuffle(n, func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	return keys
}

var benchSizes = []int{100_000, 1_000_000}

// lookupSizes adds a table that fits the CPU caches, to show the cost of
// the computation alone.
var lookupSizes = []int{1000, 100_000, 1_000_000}

// established fills ct with keys as established TCP flows.
func established(b *testing.B, ct *Table, keys []Key, now int64) {
	for _, k := range keys {
		e, ev := ct.Insert(k, now)
		if ev {
			b.Fatal("eviction while filling")
		}
		ct.Update(e, Original, syn, 60, now)
		ct.Update(e, Reply, synAck, 60, now)
		ct.Update(e, Original, ack, 60, now)
	}
}

// packets returns the packets of the benchmark: every flow once, in random
// order, half of them in the reply direction.
func packets(keys []Key) []Key {
	pk := make([]Key, len(keys))
	r := rand.New(rand.NewPCG(2, 2))
	for i, k := range keys {
		if r.IntN(2) == 0 {
			k = k.Reverse()
		}
		pk[i] = k
	}
	r.Shuffle(len(pk), func(i, j int) { pk[i], pk[j] = pk[j], pk[i] })
	return pk
}

// BenchmarkLookupHit is the per-packet work for an established flow:
// Lookup and Update, packets of random flows (the worst case for caches).
// now advances by 10 µs every 64 packets, like batches.
func BenchmarkLookupHit(b *testing.B) {
	for _, n := range lookupSizes {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			ct := newTable(b, n)
			keys := benchKeys(n)
			now := int64(sec)
			established(b, ct, keys, now)
			pk := packets(keys)
			b.ReportAllocs()
			i, bad := 0, 0
			for b.Loop() {
				e, d := ct.Lookup(pk[i], now)
				if ct.Update(e, d, ack, 1500, now) != Accepted {
					bad++
				}
				if i++; i == len(pk) {
					i = 0
				}
				if i&63 == 0 {
					now += 10_000
				}
			}
			if bad != 0 {
				b.Fatalf("%d lookups failed", bad)
			}
		})
	}
}

// BenchmarkLookupHitBurst is BenchmarkLookupHit with 4 consecutive
// packets per flow, as TCP bursts arrive in one batch.
func BenchmarkLookupHitBurst(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			ct := newTable(b, n)
			keys := benchKeys(n)
			now := int64(sec)
			established(b, ct, keys, now)
			pk := packets(keys)
			b.ReportAllocs()
			i, j, bad := 0, 0, 0
			for b.Loop() {
				e, d := ct.Lookup(pk[i], now)
				if ct.Update(e, d, ack, 1500, now) != Accepted {
					bad++
				}
				if j++; j == 4 {
					j = 0
					if i++; i == len(pk) {
						i = 0
					}
				}
				if (i*4+j)&63 == 0 {
					now += 10_000
				}
			}
			if bad != 0 {
				b.Fatalf("%d lookups failed", bad)
			}
		})
	}
}

// BenchmarkInsertEvict inserts new flows into a full table: every insert
// evicts the least recently seen flow. It includes the failed lookup of
// the new key.
func BenchmarkInsertEvict(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			ct := newTable(b, n)
			now := int64(sec)
			for i := range n {
				ct.Insert(benchKey(uint32(i)), now)
			}
			b.ReportAllocs()
			next := uint32(n)
			for b.Loop() {
				if _, ev := ct.Insert(benchKey(next), now); !ev {
					b.Fatal("no eviction")
				}
				if next++; next == 1<<24 {
					next = 0
				}
				if next&63 == 0 {
					now += 10_000
				}
			}
			if st := ct.Stats(); st.Entries != uint64(n) {
				b.Fatalf("stats %+v", st)
			}
		})
	}
}

// BenchmarkExpire measures reclaiming expired flows, per flow.
func BenchmarkExpire(b *testing.B) {
	const n = 100_000
	ct := newTable(b, n)
	b.ReportAllocs()
	now := int64(0)
	for b.Loop() {
		if ct.Len() == 0 {
			b.StopTimer()
			now += 1000 * sec
			for i := range n {
				ct.Insert(benchKey(uint32(i)), now)
			}
			now += 1000 * sec
			b.StartTimer()
		}
		ct.Expire(now, 1)
	}
}

// BenchmarkLookupBatch is BenchmarkLookupHit with the lookups of 64
// packets done by one LookupBatch, followed by their Updates; ns/op is per
// packet.
func BenchmarkLookupBatch(b *testing.B) {
	for _, n := range lookupSizes {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			ct := newTable(b, n)
			keys := benchKeys(n)
			now := int64(sec)
			established(b, ct, keys, now)
			pk := packets(keys)
			const batch = 64
			var (
				es   [batch]*Entry
				dirs [batch]Dir
			)
			b.ReportAllocs()
			i, bad, done := 0, 0, 0
			for b.Loop() {
				if done == batch {
					done = 0
				}
				if done == 0 {
					if i+batch > len(pk) {
						i = 0
					}
					now += 10_000
					ct.LookupBatch(pk[i:i+batch], now, es[:], dirs[:])
					i += batch
				}
				if ct.Update(es[done], dirs[done], ack, 1500, now) != Accepted {
					bad++
				}
				done++
			}
			if bad != 0 {
				b.Fatalf("%d lookups failed", bad)
			}
		})
	}
}
