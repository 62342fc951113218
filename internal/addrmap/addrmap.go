// Package addrmap is a compact hash map from IP addresses to small values,
// built once and then only read: an open-addressing table with linear
// probing, at most half full, with 8-byte slots for IPv4 (plus the value)
// and 24-byte ones for IPv6, so that a lookup costs about one cache miss.
// Go's map with netip.Addr keys hashes and compares 24-byte keys. The hash
// is seeded per map. A Map is safe for concurrent reads once built.
package addrmap

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"net/netip"
)

// Map maps addresses to values of type V. Create it with [New].
type Map[V any] struct {
	seed  uint64
	v4    []slot4
	v6    []slot6
	vals  []V
	mask4 uint64
	mask6 uint64
	n4    int
	n6    int
}

// A slot holds the value's index + 1, so that a zero slot is empty.
type slot4 struct {
	key uint32
	ep1 int32
}

type slot6 struct {
	hi, lo uint64
	ep1    int32
}

const hashMul = 0x9E3779B97F4A7C15 // 2^64 / golden ratio

// New returns a map sized for n4 IPv4 and n6 IPv6 addresses; inserting
// more of a family than it was sized for fails.
func New[V any](n4, n6 int) *Map[V] {
	size := func(n int) int {
		if n == 0 {
			return 0
		}
		return 1 << bits.Len(uint(2*n-1)) // a power of two >= 2n
	}
	x := &Map[V]{seed: rand.Uint64() | 1}
	if s := size(n4); s > 0 {
		x.v4, x.mask4 = make([]slot4, s), uint64(s-1)
	}
	if s := size(n6); s > 0 {
		x.v6, x.mask6 = make([]slot6, s), uint64(s-1)
	}
	return x
}

func (x *Map[V]) hash4(k uint32) uint64 { return ((uint64(k) ^ x.seed) * hashMul) >> 32 }

func (x *Map[V]) hash6(hi, lo uint64) uint64 {
	h := (hi ^ x.seed) * hashMul
	h = (h ^ lo ^ (h >> 29)) * hashMul
	return h >> 32
}

func split6(a netip.Addr) (uint64, uint64) {
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

// Insert adds a → v. It reports false, and changes nothing, when a is
// already present, is not a valid address, or its family is full.
func (x *Map[V]) Insert(a netip.Addr, v V) bool {
	if !a.IsValid() {
		return false
	}
	if a.Is4() {
		if (x.n4+1)*2 > len(x.v4) {
			return false
		}
		b := a.As4()
		k := binary.BigEndian.Uint32(b[:])
		for i := x.hash4(k) & x.mask4; ; i = (i + 1) & x.mask4 {
			s := &x.v4[i]
			if s.ep1 == 0 {
				x.vals = append(x.vals, v)
				*s = slot4{key: k, ep1: int32(len(x.vals))}
				x.n4++
				return true
			}
			if s.key == k {
				return false
			}
		}
	}
	if (x.n6+1)*2 > len(x.v6) {
		return false
	}
	hi, lo := split6(a)
	for i := x.hash6(hi, lo) & x.mask6; ; i = (i + 1) & x.mask6 {
		s := &x.v6[i]
		if s.ep1 == 0 {
			x.vals = append(x.vals, v)
			*s = slot6{hi: hi, lo: lo, ep1: int32(len(x.vals))}
			x.n6++
			return true
		}
		if s.hi == hi && s.lo == lo {
			return false
		}
	}
}

// Get returns the value of a and whether a is present.
func (x *Map[V]) Get(a netip.Addr) (V, bool) {
	var zero V
	if a.Is4() {
		if len(x.v4) == 0 {
			return zero, false
		}
		b := a.As4()
		k := binary.BigEndian.Uint32(b[:])
		for i := x.hash4(k) & x.mask4; ; i = (i + 1) & x.mask4 {
			s := &x.v4[i]
			if s.ep1 == 0 {
				return zero, false
			}
			if s.key == k {
				return x.vals[s.ep1-1], true
			}
		}
	}
	if len(x.v6) == 0 || !a.Is6() {
		return zero, false
	}
	hi, lo := split6(a)
	for i := x.hash6(hi, lo) & x.mask6; ; i = (i + 1) & x.mask6 {
		s := &x.v6[i]
		if s.ep1 == 0 {
			return zero, false
		}
		if s.hi == hi && s.lo == lo {
			return x.vals[s.ep1-1], true
		}
	}
}

// Len returns the number of addresses in the map.
func (x *Map[V]) Len() int { return x.n4 + x.n6 }
