package addrmap

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

func randAddr(r *rand.Rand) netip.Addr {
	if r.IntN(2) == 0 {
		return netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
	}
	var b [16]byte
	b[0], b[1] = 0xfd, 0
	b[14], b[15] = byte(r.IntN(4)), byte(r.IntN(256))
	return netip.AddrFrom16(b)
}

// TestAgainstGoMap fills maps of random sizes with random addresses and
// checks every lookup, present or not, against a Go map.
func TestAgainstGoMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		want := map[netip.Addr]int{}
		var keys []netip.Addr
		n := r.IntN(300)
		for range n {
			a := randAddr(r)
			if _, dup := want[a]; !dup {
				keys = append(keys, a)
			}
			want[a] = len(want)
		}
		n4, n6 := 0, 0
		for _, a := range keys {
			if a.Is4() {
				n4++
			} else {
				n6++
			}
		}
		m := New[int](n4, n6)
		for _, a := range keys {
			if !m.Insert(a, want[a]) {
				t.Fatalf("round %d: Insert(%s) failed", round, a)
			}
			if m.Insert(a, -1) {
				t.Fatalf("round %d: second Insert(%s) succeeded", round, a)
			}
		}
		if m.Len() != len(keys) {
			t.Fatalf("Len = %d, want %d", m.Len(), len(keys))
		}
		for range 1000 {
			a := randAddr(r)
			got, ok := m.Get(a)
			w, wok := want[a]
			if ok != wok || got != w {
				t.Fatalf("round %d: Get(%s) = %d, %v; want %d, %v", round, a, got, ok, w, wok)
			}
		}
	}
}

func TestFullAndInvalid(t *testing.T) {
	m := New[string](1, 0)
	if !m.Insert(netip.MustParseAddr("10.0.0.1"), "a") {
		t.Fatal("first insert failed")
	}
	if m.Insert(netip.MustParseAddr("fd00::1"), "b") {
		t.Error("insert into a family sized 0 succeeded")
	}
	if m.Insert(netip.Addr{}, "c") {
		t.Error("insert of the zero Addr succeeded")
	}
	if _, ok := m.Get(netip.Addr{}); ok {
		t.Error("Get of the zero Addr found something")
	}
	for i := 2; i < 10; i++ {
		m.Insert(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), "x")
	}
	// Lookups of absent addresses terminate however full the family is.
	if _, ok := m.Get(netip.MustParseAddr("10.9.9.9")); ok {
		t.Error("absent address found")
	}
}

func TestGetDoesNotAllocate(t *testing.T) {
	m := New[int32](1, 1)
	m.Insert(netip.MustParseAddr("10.0.0.1"), 1)
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")
	if n := testing.AllocsPerRun(100, func() { m.Get(a); m.Get(b) }); n != 0 {
		t.Errorf("Get allocates %v times", n)
	}
}
