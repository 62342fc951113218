package table

// Bitset is a fixed-size set of small non-negative integers (identity
// numbers). It is built at compile time and only read afterwards.
type Bitset []uint64

// NewBitset returns an empty set for the numbers 0 to n-1.
func NewBitset(n int) Bitset { return make(Bitset, (n+63)/64) }

// Set adds i, which must be below the size the set was made for.
func (b Bitset) Set(i int32) { b[i>>6] |= 1 << (uint(i) & 63) }

// Has reports whether i is in the set. Out-of-range and negative values are
// not members.
func (b Bitset) Has(i int32) bool {
	w := int(i >> 6)
	if i < 0 || w >= len(b) {
		return false
	}
	return b[w]&(1<<(uint(i)&63)) != 0
}

// Or adds the members of o, which must not be larger than b.
func (b Bitset) Or(o Bitset) {
	for i := range o {
		b[i] |= o[i]
	}
}

// SubsetOf reports whether every member of b is in o.
func (b Bitset) SubsetOf(o Bitset) bool {
	for i, w := range b {
		var ow uint64
		if i < len(o) {
			ow = o[i]
		}
		if w&^ow != 0 {
			return false
		}
	}
	return true
}
