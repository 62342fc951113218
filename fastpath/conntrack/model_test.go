package conntrack

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/policy/table"
)

// The model is the table's specification written the simple way: a map of
// flows, eviction by scanning for the least recently seen one, no index, no
// lists. The TCP state machine itself (tcpStep) is shared; it is tested on
// its own in tcp_test.go.

type endpoint struct {
	addr [16]byte
	port uint16
}

type modelKey struct {
	lo, hi endpoint
	proto  table.Protocol
	v6     bool
}

func modelKeyOf(k Key) (mk modelKey, reversed bool) {
	s, d := endpoint{k.Src, k.SrcPort}, endpoint{k.Dst, k.DstPort}
	c := bytes.Compare(s.addr[:], d.addr[:])
	if c > 0 || (c == 0 && s.port > d.port) {
		s, d, reversed = d, s, true
	}
	return modelKey{s, d, k.Proto, k.IPv6}, reversed
}

// flowView is what the test compares between table and model.
type flowView struct {
	Key               Key
	State             TCPState
	Replied           bool
	LastSeen, Expires int64
	Packets, Bytes    [2]uint64
	Generation        uint64
}

// tierOf is the eviction tier of a flow: 1 for flows that are not
// assured (half-open or closed TCP, unreplied UDP, ICMP), 2 for the others.
func tierOf(v flowView) int {
	switch v.Key.Proto {
	case table.TCP:
		switch v.State {
		case TCPSynSent, TCPSynSent2, TCPSynRecv, TCPTimeWait, TCPClose:
			return 1
		}
		return 2
	case table.UDP:
		if v.Replied {
			return 2
		}
		return 1
	case table.ICMP, table.ICMPv6:
		return 1
	}
	return 2
}

type modelFlow struct {
	flowView
	fin uint8
}

type model struct {
	capacity int
	to       Timeouts
	flows    map[modelKey]*modelFlow
}

func (m *model) timeout(f *modelFlow) int64 {
	switch f.Key.Proto {
	case table.TCP:
		switch f.State {
		case TCPSynSent, TCPSynSent2:
			return int64(m.to.TCPSynSent)
		case TCPSynRecv:
			return int64(m.to.TCPSynRecv)
		case TCPEstablished:
			return int64(m.to.TCPEstablished)
		case TCPFinWait:
			return int64(m.to.TCPFinWait)
		case TCPCloseWait:
			return int64(m.to.TCPCloseWait)
		case TCPLastAck:
			return int64(m.to.TCPLastAck)
		case TCPTimeWait:
			return int64(m.to.TCPTimeWait)
		case TCPClose:
			return int64(m.to.TCPClose)
		}
	case table.UDP:
		if f.Replied {
			return int64(m.to.UDPStream)
		}
		return int64(m.to.UDP)
	case table.ICMP, table.ICMPv6:
		return int64(m.to.ICMP)
	}
	return int64(m.to.Generic)
}

func (m *model) lookup(k Key, now int64) (*modelFlow, Dir) {
	mk, _ := modelKeyOf(k)
	f := m.flows[mk]
	if f == nil || f.Expires <= now {
		return nil, Original
	}
	if k == f.Key {
		return f, Original
	}
	return f, Reply
}

// insert returns whether a live flow was evicted.
func (m *model) insert(k Key, st TCPState, now int64) (evicted bool, expired bool) {
	mk, _ := modelKeyOf(k)
	if f, ok := m.flows[mk]; ok {
		expired = f.Expires <= now
		delete(m.flows, mk)
	} else if len(m.flows) == m.capacity {
		var victim *modelFlow
		var vk modelKey
		for fk, f := range m.flows {
			switch {
			case victim == nil:
			case f.Expires <= now && victim.Expires > now:
			case f.Expires <= now && (f.Expires < victim.Expires || f.Expires == victim.Expires && f.LastSeen < victim.LastSeen):
			case f.Expires > now && victim.Expires > now &&
				(tierOf(f.flowView) < tierOf(victim.flowView) || tierOf(f.flowView) == tierOf(victim.flowView) && f.LastSeen < victim.LastSeen):
			default:
				continue
			}
			victim, vk = f, fk
		}
		expired = victim.Expires <= now
		evicted = !expired
		delete(m.flows, vk)
	}
	f := &modelFlow{flowView: flowView{Key: k, LastSeen: now}}
	if k.Proto == table.TCP {
		f.State = st
	}
	f.Expires = now + m.timeout(f)
	m.flows[mk] = f
	return evicted, expired
}

func (m *model) update(f *modelFlow, dir Dir, flags uint8, length int, now int64) Result {
	res := Accepted
	if f.Key.Proto == table.TCP {
		st, r := tcpStep(f.State, dir, flags, f.fin)
		if r >= Invalid {
			return r
		}
		res = r
		if r == Accepted {
			if st == TCPSynSent && (f.State == TCPTimeWait || f.State == TCPClose) {
				f.Packets, f.Bytes, f.Replied, f.fin = [2]uint64{}, [2]uint64{}, false, 0
			}
			if flags&packet.TCPFlagFIN != 0 {
				f.fin |= 1 << dir
			}
			f.State = st
		}
	}
	f.Packets[dir]++
	f.Bytes[dir] += uint64(length)
	if res == Ignored {
		return res
	}
	if dir == Reply {
		f.Replied = true
	}
	f.LastSeen = now
	f.Expires = now + m.timeout(f)
	return res
}

func (m *model) expired(now int64) []modelKey {
	var out []modelKey
	for k, f := range m.flows {
		if f.Expires <= now {
			out = append(out, k)
		}
	}
	return out
}

func (m *model) views() map[Key]flowView {
	out := map[Key]flowView{}
	for _, f := range m.flows {
		out[f.Key] = f.flowView
	}
	return out
}

func viewOf(e *Entry) flowView {
	return flowView{
		Key: e.Key(), State: e.State(), Replied: e.Replied(),
		LastSeen: e.LastSeen(), Expires: e.Expires(),
		Packets: e.Packets, Bytes: e.Bytes, Generation: e.Generation,
	}
}

// tableViews returns every flow the table holds, expired ones included.
func tableViews(t *Table) map[Key]flowView {
	out := map[Key]flowView{}
	for i := range t.entries[:t.fresh] {
		if e := &t.entries[i]; e.class != classFree {
			out[e.Key()] = viewOf(e)
		}
	}
	return out
}

// source supplies the random choices of a model run.
type source interface {
	next() uint32
	done() bool
}

type randSource struct {
	r *rand.Rand
	n int
}

func (s *randSource) next() uint32 { s.n--; return s.r.Uint32() }
func (s *randSource) done() bool   { return s.n <= 0 }

type byteSource struct{ b []byte }

func (s *byteSource) next() uint32 {
	if len(s.b) == 0 {
		return 0
	}
	v := uint32(s.b[0])
	s.b = s.b[1:]
	return v
}
func (s *byteSource) done() bool { return len(s.b) == 0 }

var modelFlags = []uint8{syn, synAck, ack, psh, fin, rst, rstAck, 0, syn | packet.TCPFlagFIN}

// universe returns n distinct keys over a few addresses, IPv4 and IPv6,
// with TCP, UDP, ICMP and another protocol.
func universe(r *rand.Rand, n int) []Key {
	addrs := []netip.Addr{
		mustAddr("10.0.0.1"), mustAddr("10.0.0.2"), mustAddr("10.0.1.1"), mustAddr("192.0.2.7"),
	}
	addrs6 := []netip.Addr{mustAddr("fd00::1"), mustAddr("fd00::2"), mustAddr("2001:db8::9")}
	protos := []table.Protocol{table.TCP, table.TCP, table.UDP, table.UDP, table.ICMP, table.SCTP, 47}
	seen := map[modelKey]bool{}
	var out []Key
	for len(out) < n {
		set := addrs
		if r.IntN(3) == 0 {
			set = addrs6
		}
		p := protos[r.IntN(len(protos))]
		sp, dp := uint16(r.IntN(4)), uint16(r.IntN(4))
		if p == table.ICMP {
			if set[0].Is6() {
				p = table.ICMPv6
			}
			dp = sp
		}
		k := MakeKey(set[r.IntN(len(set))], set[r.IntN(len(set))], p, sp, dp)
		if mk, _ := modelKeyOf(k); !seen[mk] {
			seen[mk] = true
			out = append(out, k)
		}
	}
	return out
}

// runModel drives a table and the model with the same operations and
// compares them.
func runModel(tb testing.TB, capacity int, keys []Key, src source, checkEvery int) {
	tb.Helper()
	ct, err := New(Config{Capacity: capacity, FragCapacity: 4, Seed: 7, LRUGranularity: 1})
	if err != nil {
		tb.Fatal(err)
	}
	m := &model{capacity: capacity, to: DefaultTimeouts(), flows: map[modelKey]*modelFlow{}}
	now := int64(1)
	for op := 0; !src.done(); op++ {
		// A strictly increasing now makes last-seen times unique, so that
		// the least recently seen flow is well defined.
		now += 1 + int64(src.next()%4)*int64(src.next()%16)*sec
		k := keys[src.next()%uint32(len(keys))]
		if src.next()%2 == 0 {
			k = k.Reverse()
		}
		e, dir := ct.Lookup(k, now)
		f, mdir := m.lookup(k, now)
		if (e == nil) != (f == nil) || dir != mdir {
			tb.Fatalf("op %d: Lookup(%v): table %v %v, model %v %v", op, k, e != nil, dir, f != nil, mdir)
		}
		// Plain comparisons first: cmp.Diff, with its reflection, only
		// formats a mismatch (it made each fuzzing exec cost milliseconds).
		if e != nil {
			if v := viewOf(e); f.flowView != v {
				tb.Fatalf("op %d: flow %v (-model +table):\n%s", op, k, cmp.Diff(f.flowView, v))
			}
		}
		switch choice := src.next() % 16; {
		case choice < 7: // a packet
			if e == nil {
				st := TCPSynSent
				if src.next()%2 == 0 {
					st = TCPEstablished
				}
				var ev bool
				if st == TCPSynSent {
					e, ev = ct.Insert(k, now)
				} else {
					e, ev = ct.InsertEstablished(k, now)
				}
				mev, _ := m.insert(k, st, now)
				if ev != mev {
					tb.Fatalf("op %d: Insert(%v) evicted %v, model %v", op, k, ev, mev)
				}
				f, mdir = m.lookup(k, now)
				dir = Original
				e.Generation = uint64(op)
				f.Generation = uint64(op)
			}
			flags := modelFlags[src.next()%uint32(len(modelFlags))]
			length := int(src.next() % 1500)
			if res, mres := ct.Update(e, dir, flags, length, now), m.update(f, mdir, flags, length, now); res != mres {
				tb.Fatalf("op %d: Update: table %v, model %v", op, res, mres)
			}
		case choice < 9: // re-insert a tracked flow
			if e != nil {
				ct.Insert(k, now)
				m.insert(k, TCPSynSent, now)
			}
		case choice < 11:
			if e != nil {
				ct.Delete(e)
				mk, _ := modelKeyOf(k)
				delete(m.flows, mk)
			}
		case choice < 13:
			budget := int(src.next() % 4)
			if src.next()%2 == 0 {
				budget = capacity
			}
			exp := m.expired(now)
			n := ct.Expire(now, budget)
			if want := min(budget, len(exp)); n != want {
				tb.Fatalf("op %d: Expire(budget %d) = %d, want %d", op, budget, n, want)
			}
			// Which expired flows went depends on the class order: follow
			// the table.
			for _, mk := range exp {
				var c ckey
				canon(&m.flows[mk].Key, &c)
				if ct.find(&c, ct.seed.hash(&c)) == noIdx {
					delete(m.flows, mk)
					n--
				}
			}
			if n != 0 {
				tb.Fatalf("op %d: Expire removed %d flows that were not expired", op, -n)
			}
		default:
			// Lookup only.
		}
		if ct.Len() != len(m.flows) {
			tb.Fatalf("op %d: Len %d, model %d", op, ct.Len(), len(m.flows))
		}
		if checkEvery > 0 && op%checkEvery == 0 {
			checkInvariants(tb, ct)
			if !sameFlows(m, ct) {
				tb.Fatalf("op %d: flows (-model +table):\n%s", op, cmp.Diff(m.views(), tableViews(ct)))
			}
		}
	}
	checkInvariants(tb, ct)
	if !sameFlows(m, ct) {
		tb.Fatalf("end: flows (-model +table):\n%s", cmp.Diff(m.views(), tableViews(ct)))
	}
}

// sameFlows reports whether the table holds exactly the model's flows,
// expired ones included, without allocating: it runs after every
// operation when fuzzing.
func sameFlows(m *model, t *Table) bool {
	n := 0
	for i := range t.entries[:t.fresh] {
		e := &t.entries[i]
		if e.class == classFree {
			continue
		}
		n++
		mk, _ := modelKeyOf(e.Key())
		if f := m.flows[mk]; f == nil || f.flowView != viewOf(e) {
			return false
		}
	}
	return n == len(m.flows)
}

func TestModel(t *testing.T) {
	for _, tc := range []struct {
		capacity, keys, ops int
	}{
		{1, 4, 20_000},
		{2, 8, 20_000},
		{7, 30, 50_000},
		{64, 80, 50_000},
		{64, 400, 50_000},
		{500, 600, 100_000},
	} {
		r := rand.New(rand.NewPCG(uint64(tc.capacity), uint64(tc.keys)))
		keys := universe(r, tc.keys)
		runModel(t, tc.capacity, keys, &randSource{r: r, n: tc.ops * 8}, 97)
	}
}

// fuzzModelMaxInput bounds the bytes of a fuzzing input FuzzModel uses
// (about 40 operations, enough to fill a table of up to 12 flows several
// times over). Each exec compares table and model after every operation,
// so its cost grows with the input, and the fuzzer minimizes every new
// interesting input with a number of execs quadratic in its length: with
// 512-byte inputs that took minutes, during which the fuzzer reported 0
// execs/s. TestModel covers long runs.
const fuzzModelMaxInput = 256

// FuzzModel runs the model comparison with choices from the fuzzer.
func FuzzModel(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	r := rand.New(rand.NewPCG(1, 2))
	for range 4 {
		b := make([]byte, 128)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzModelExec(t, data) })
}

// fuzzModelExec is one exec of FuzzModel.
func fuzzModelExec(tb testing.TB, data []byte) {
	if len(data) == 0 {
		return
	}
	data = data[:min(len(data), fuzzModelMaxInput)]
	capacity := 1 + int(data[0]%12)
	keys := universe(rand.New(rand.NewPCG(uint64(data[0]), 0)), 24)
	runModel(tb, capacity, keys, &byteSource{b: data[1:]}, 1)
}

// fuzzModelInput is a deterministic input of FuzzModel's longest size.
func fuzzModelInput() []byte {
	r := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, fuzzModelMaxInput)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestFuzzModelExecCheap keeps FuzzModel's execs cheap, measured in
// allocations (a count, not a speed): comparing table and model with
// cmp.Diff after every operation cost about 16 allocations per input byte
// (about 4,000 per exec of this size) and milliseconds per exec, and the
// fuzzer stalled minimizing its inputs.
func TestFuzzModelExecCheap(t *testing.T) {
	data := fuzzModelInput()
	allocs := testing.AllocsPerRun(20, func() { fuzzModelExec(t, data) })
	t.Logf("%.0f allocations per exec of %d bytes", allocs, len(data))
	if allocs > 200 {
		t.Errorf("a FuzzModel exec of %d bytes allocates %.0f times, want at most 200", len(data), allocs)
	}
	// A longer input costs no more: FuzzModel uses its first
	// fuzzModelMaxInput bytes.
	long := append(fuzzModelInput(), fuzzModelInput()...)
	if a := testing.AllocsPerRun(20, func() { fuzzModelExec(t, long) }); a > allocs+1 {
		t.Errorf("an exec of %d bytes allocates %.0f times, one of %d bytes %.0f", len(long), a, len(data), allocs)
	}
}

// BenchmarkFuzzModelExec measures one FuzzModel exec of the longest input.
func BenchmarkFuzzModelExec(b *testing.B) {
	data := fuzzModelInput()
	for b.Loop() {
		fuzzModelExec(b, data)
	}
}

// TestIndexChurn inserts and deletes random keys in a large table whose
// index sees long clusters, and checks every record stays reachable.
func TestIndexChurn(t *testing.T) {
	const capacity = 3000
	ct := newTable(t, capacity)
	r := rand.New(rand.NewPCG(5, 5))
	live := map[Key]*Entry{}
	var order []Key
	randKey := func() Key {
		var k Key
		binary.BigEndian.PutUint32(k.Src[12:], r.Uint32()%64)
		binary.BigEndian.PutUint32(k.Dst[12:], r.Uint32()%64)
		k.Src[10], k.Src[11], k.Dst[10], k.Dst[11] = 0xff, 0xff, 0xff, 0xff
		k.SrcPort, k.DstPort = uint16(r.IntN(8)), 80
		k.Proto = table.UDP
		return k
	}
	for op := range 200_000 {
		now := int64(op) // nothing expires
		if r.IntN(2) == 0 || len(live) == 0 {
			k := randKey()
			if e, _ := ct.Lookup(k, now); e != nil {
				continue
			}
			if len(live) == capacity {
				continue // keep evictions out of this test
			}
			e, _ := ct.Insert(k, now)
			live[k] = e
			order = append(order, k)
		} else {
			i := r.IntN(len(order))
			k := order[i]
			order[i] = order[len(order)-1]
			order = order[:len(order)-1]
			if !ct.Delete(live[k]) {
				t.Fatalf("op %d: Delete(%v) failed", op, k)
			}
			delete(live, k)
		}
		if op%5000 == 0 {
			checkInvariants(t, ct)
			for k, e := range live {
				if got, _ := ct.Lookup(k.Reverse(), now); got != e {
					t.Fatalf("op %d: %v not found", op, k)
				}
			}
		}
	}
	checkInvariants(t, ct)
}

// TestIndexCollisions forces every record onto few home slots (identical
// low hash bits) and checks insert and backward-shift deletion.
func TestIndexCollisions(t *testing.T) {
	x := newIndex(&arena{}, 100)
	r := rand.New(rand.NewPCG(9, 9))
	present := map[uint32]uint64{} // id -> hash
	for op := range 100_000 {
		if len(present) < 100 && (r.IntN(2) == 0 || len(present) == 0) {
			id := uint32(r.IntN(1000)) + 1
			if _, ok := present[id]; ok {
				continue
			}
			h := uint64(r.IntN(3)) | uint64(r.Uint32())<<20 // homes 0, 1, 2
			x.insert(h, id)
			present[id] = h
		} else {
			for id, h := range present {
				if !x.remove(h, id) {
					t.Fatalf("op %d: remove(%d) failed", op, id)
				}
				delete(present, id)
				break
			}
		}
		if x.remove(12345, 99999) {
			t.Fatal("removed a record that is not there")
		}
		checkIndex(t, &x, len(present))
	}
}

// TestApproximateLRU checks the bounds that a coarse LRU granularity
// promises: an evicted live flow was seen less than the granularity after
// the least recently seen flow, and only when no flow had expired for
// longer than the granularity.
func TestApproximateLRU(t *testing.T) {
	const g = 10 * sec
	ct, err := New(Config{Capacity: 16, LRUGranularity: time.Duration(g), Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	keys := universe(r, 64)
	now := int64(0)
	evictions := 0
	for op := range 20_000 {
		now += int64(r.IntN(4)) * sec / 2
		k := keys[r.IntN(len(keys))]
		if e, d := ct.Lookup(k, now); e != nil {
			ct.Update(e, d, modelFlags[r.IntN(len(modelFlags))], 100, now)
			continue
		}
		before := tableViews(ct)
		if _, evicted := ct.Insert(k, now); !evicted {
			checkInvariants(t, ct)
			continue
		}
		evictions++
		after := tableViews(ct)
		minSeen := [3]int64{1<<63 - 1, 1<<63 - 1, 1<<63 - 1} // per tier
		for _, v := range before {
			tier := tierOf(v)
			minSeen[tier] = min(minSeen[tier], v.LastSeen)
			if v.Expires <= now-g {
				t.Fatalf("op %d: evicted a live flow while %v expired at %d, now %d", op, v.Key, v.Expires, now)
			}
		}
		for bk, v := range before {
			if _, ok := after[bk]; ok {
				continue
			}
			if v.Expires <= now {
				t.Fatalf("op %d: eviction reported for expired flow %v", op, bk)
			}
			tier := tierOf(v)
			if tier == 2 && minSeen[1] != 1<<63-1 {
				t.Fatalf("op %d: evicted %v (assured) while a flow that is not assured was there", op, bk)
			}
			if v.LastSeen-minSeen[tier] >= g {
				t.Fatalf("op %d: evicted %v seen at %d; least recently seen of its tier at %d", op, bk, v.LastSeen, minSeen[tier])
			}
		}
		checkInvariants(t, ct)
	}
	if evictions < 100 {
		t.Errorf("only %d evictions", evictions)
	}
}

// TestLookupBatch checks that LookupBatch returns what Lookup returns.
func TestLookupBatch(t *testing.T) {
	ct := newTable(t, 500)
	r := rand.New(rand.NewPCG(8, 8))
	keys := universe(r, 400)
	for i, k := range keys[:300] {
		e, _ := ct.Insert(k, int64(i)*sec/10) // UDP flows inserted first expire first
		ct.Update(e, Original, syn, 1, int64(i)*sec/10)
	}
	now := 40 * sec
	var batch []Key
	for range 3*BatchSize + 5 {
		k := keys[r.IntN(len(keys))]
		if r.IntN(2) == 0 {
			k = k.Reverse()
		}
		batch = append(batch, k)
	}
	es := make([]*Entry, len(batch))
	dirs := make([]Dir, len(batch))
	for i := range es {
		es[i], dirs[i] = &Entry{}, Reply // overwritten
	}
	ct.LookupBatch(batch, now, es, dirs)
	hits := 0
	for i, k := range batch {
		e, d := ct.Lookup(k, now)
		if es[i] != e || dirs[i] != d {
			t.Errorf("key %d (%v): LookupBatch %p %v, Lookup %p %v", i, k, es[i], dirs[i], e, d)
		}
		if e != nil {
			hits++
		}
	}
	if hits == 0 || hits == len(batch) {
		t.Errorf("%d hits of %d: want a mix", hits, len(batch))
	}
	// Short result slices limit the batch.
	short := make([]*Entry, 2)
	ct.LookupBatch(batch, now, short, dirs)
	ct.LookupBatch(nil, now, es, dirs)
	if n := testing.AllocsPerRun(100, func() { ct.LookupBatch(batch, now, es, dirs) }); n != 0 {
		t.Errorf("LookupBatch: %v allocations", n)
	}
}

// processBatch handles packets the way the fastpath does, with
// LookupBatch and the re-checks that its documentation asks for.
func processBatch(ct *Table, keys []Key, flags []uint8, now int64) []Result {
	es := make([]*Entry, len(keys))
	ds := make([]Dir, len(keys))
	res := make([]Result, len(keys))
	ct.LookupBatch(keys, now, es, ds)
	inserted := false
	recheck := func(from int, stale *Entry) {
		for j := from; j < len(keys); j++ {
			if es[j] == stale {
				es[j], ds[j] = ct.Lookup(keys[j], now)
			}
		}
	}
	for i, k := range keys {
		e, d := es[i], ds[i]
		if e == nil && inserted {
			e, d = ct.Lookup(k, now)
		}
		for {
			if e == nil {
				e, _ = ct.Insert(k, now)
				d, inserted = Original, true
				recheck(i+1, e)
			}
			res[i] = ct.Update(e, d, flags[i], 100, now)
			if res[i] != Restart {
				break
			}
			ct.Delete(e)
			recheck(i+1, e)
			e = nil
		}
	}
	return res
}

// processSerial handles the same packets one Lookup at a time.
func processSerial(ct *Table, keys []Key, flags []uint8, now int64) []Result {
	res := make([]Result, len(keys))
	for i, k := range keys {
		e, d := ct.Lookup(k, now)
		for {
			if e == nil {
				e, _ = ct.Insert(k, now)
				d = Original
			}
			res[i] = ct.Update(e, d, flags[i], 100, now)
			if res[i] != Restart {
				break
			}
			ct.Delete(e)
			e = nil
		}
	}
	return res
}

// TestBatchProtocol checks that processing a batch with LookupBatch and the
// documented re-checks does what one Lookup per packet does, with new flows
// seen twice in a batch, evictions of flows that have later packets in the
// batch, and restarts.
func TestBatchProtocol(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 21))
	keys := universe(r, 60)
	a, b := newTable(t, 12), newTable(t, 12)
	now := int64(0)
	for round := range 3000 {
		now += int64(r.IntN(3)) * sec
		n := 1 + r.IntN(2*BatchSize)
		batch := make([]Key, n)
		flags := make([]uint8, n)
		for i := range batch {
			batch[i] = keys[r.IntN(len(keys))]
			if r.IntN(2) == 0 {
				batch[i] = batch[i].Reverse()
			}
			flags[i] = modelFlags[r.IntN(len(modelFlags))]
		}
		ra, rb := processBatch(a, batch, flags, now), processSerial(b, batch, flags, now)
		if diff := cmp.Diff(rb, ra); diff != "" {
			t.Fatalf("round %d: results (-serial +batch):\n%s", round, diff)
		}
		if diff := cmp.Diff(tableViews(b), tableViews(a)); diff != "" {
			t.Fatalf("round %d: flows (-serial +batch):\n%s", round, diff)
		}
		a.Expire(now, 3)
		b.Expire(now, 3)
	}
	if st := a.Stats(); st.Evictions < 100 {
		t.Errorf("only %d evictions: %+v", st.Evictions, st)
	}
}
