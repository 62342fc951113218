package policy

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"net/netip"
)

// addrIndex maps addresses to endpoint indexes. It is an open-addressing
// hash table with linear probing, sized to at most half full, with compact
// slots (8 bytes for IPv4, 24 for IPv6) so that a lookup costs about one
// cache miss; Go's map with netip.Addr keys hashes and compares 24-byte
// keys. The hash is seeded per table. It is built once and then only read.
type addrIndex struct {
	seed  uint64
	v4    []slot4
	v6    []slot6
	mask4 uint64
	mask6 uint64
	n     int
}

// A slot holds ep+1, so that a zero slot is empty.
type slot4 struct {
	key uint32
	ep1 int32
}

type slot6 struct {
	hi, lo uint64
	ep1    int32
}

const hashMul = 0x9E3779B97F4A7C15 // 2^64 / golden ratio

func newAddrIndex(n4, n6 int) *addrIndex {
	size := func(n int) int {
		if n == 0 {
			return 0
		}
		return 1 << bits.Len(uint(2*n-1)) // a power of two >= 2n
	}
	x := &addrIndex{seed: rand.Uint64() | 1}
	if s := size(n4); s > 0 {
		x.v4, x.mask4 = make([]slot4, s), uint64(s-1)
	}
	if s := size(n6); s > 0 {
		x.v6, x.mask6 = make([]slot6, s), uint64(s-1)
	}
	return x
}

func (x *addrIndex) hash4(k uint32) uint64 { return ((uint64(k) ^ x.seed) * hashMul) >> 32 }

func (x *addrIndex) hash6(hi, lo uint64) uint64 {
	h := (hi ^ x.seed) * hashMul
	h = (h ^ lo ^ (h >> 29)) * hashMul
	return h >> 32
}

func split6(a netip.Addr) (uint64, uint64) {
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

// insert adds a → ep and reports false if a is already present. The index
// must have been sized for it.
func (x *addrIndex) insert(a netip.Addr, ep int32) bool {
	if a.Is4() {
		b := a.As4()
		k := binary.BigEndian.Uint32(b[:])
		for i := x.hash4(k) & x.mask4; ; i = (i + 1) & x.mask4 {
			s := &x.v4[i]
			if s.ep1 == 0 {
				*s = slot4{key: k, ep1: ep + 1}
				x.n++
				return true
			}
			if s.key == k {
				return false
			}
		}
	}
	hi, lo := split6(a)
	for i := x.hash6(hi, lo) & x.mask6; ; i = (i + 1) & x.mask6 {
		s := &x.v6[i]
		if s.ep1 == 0 {
			*s = slot6{hi: hi, lo: lo, ep1: ep + 1}
			x.n++
			return true
		}
		if s.hi == hi && s.lo == lo {
			return false
		}
	}
}

// get returns the endpoint of a, or -1.
func (x *addrIndex) get(a netip.Addr) int32 {
	if a.Is4() {
		if len(x.v4) == 0 {
			return -1
		}
		b := a.As4()
		k := binary.BigEndian.Uint32(b[:])
		for i := x.hash4(k) & x.mask4; ; i = (i + 1) & x.mask4 {
			s := &x.v4[i]
			if s.ep1 == 0 {
				return -1
			}
			if s.key == k {
				return s.ep1 - 1
			}
		}
	}
	if len(x.v6) == 0 || !a.Is6() {
		return -1
	}
	hi, lo := split6(a)
	for i := x.hash6(hi, lo) & x.mask6; ; i = (i + 1) & x.mask6 {
		s := &x.v6[i]
		if s.ep1 == 0 {
			return -1
		}
		if s.hi == hi && s.lo == lo {
			return s.ep1 - 1
		}
	}
}
