package conntrack

import (
	"testing"

	"github.com/podgate/podgate/policy/table"
)

// TestNoAllocs checks that nothing allocates at steady state: a full table
// with churn (evictions, expiries, deletes).
func TestNoAllocs(t *testing.T) {
	const n = 1000
	ct := newTable(t, n)
	keys := benchKeys(4 * n)
	now := int64(1)
	for i := range n {
		e, _ := ct.Insert(keys[i], now)
		ct.Update(e, Original, syn, 60, now)
	}
	i := 0
	next := func() Key { i = (i + 1) % len(keys); return keys[i] }
	check := func(name string, f func()) {
		t.Helper()
		if got := testing.AllocsPerRun(500, f); got != 0 {
			t.Errorf("%s: %v allocations per run, want 0", name, got)
		}
	}
	check("Lookup", func() { ct.Lookup(next(), now) })
	check("LookupRelated", func() { ct.LookupRelated(next(), now) })
	check("Insert (evicting)", func() { now += 1000; ct.Insert(next(), now) })
	check("InsertEstablished", func() { now += 1000; ct.InsertEstablished(next(), now) })
	check("Lookup+Update", func() {
		now += 1000
		k := next()
		if e, d := ct.Lookup(k, now); e != nil {
			ct.Update(e, d, ack, 1500, now)
		} else {
			e, _ := ct.Insert(k, now)
			ct.Update(e, Original, syn, 60, now)
		}
	})
	check("Count", func() {
		if e, d := ct.Lookup(next(), now); e != nil {
			ct.Count(e, d, 100)
		}
	})
	check("Expire", func() { now += sec; ct.Expire(now, 4) })
	check("Delete", func() {
		if e, _ := ct.Lookup(next(), now); e != nil {
			ct.Delete(e)
		}
	})
	src, dst := mustAddr("10.0.0.1"), mustAddr("10.0.0.2")
	id := uint32(0)
	check("InsertFragment", func() {
		id++
		e, _ := ct.Lookup(next(), now)
		ct.InsertFragment(MakeFragKey(src, dst, table.UDP, id), e, Original, true, now)
	})
	check("LookupFragment", func() { ct.LookupFragment(MakeFragKey(src, dst, table.UDP, id), now) })
	check("MakeKey", func() { _ = MakeKey(src, dst, table.TCP, 1, 2) })
	check("ClassifyNewTCP", func() { _ = ClassifyNewTCP(syn) })
	check("Stats", func() { _ = ct.Stats() })
	count := 0
	check("Range", func() { ct.Range(now, func(*Entry) bool { count++; return true }) })
	checkInvariants(t, ct)
}
