package policy

// bitset is a fixed-size set of small non-negative integers (identity
// numbers). It is built at compile time and only read afterwards.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int32) { b[i>>6] |= 1 << (uint(i) & 63) }

// has reports whether i is in the set. Out-of-range and negative values are
// not members.
func (b bitset) has(i int32) bool {
	w := int(i >> 6)
	if i < 0 || w >= len(b) {
		return false
	}
	return b[w]&(1<<(uint(i)&63)) != 0
}

func (b bitset) or(o bitset) {
	for i := range o {
		b[i] |= o[i]
	}
}
