package conntrack

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/podgate/podgate/policy/table"
)

// Key is the 5-tuple of a packet as it travels: source and destination
// address and port and the IP protocol. It is a plain value without
// pointers; build it with [MakeKey] or fill it directly.
//
// Addresses are 16 bytes: an IPv4 address is stored IPv4-mapped
// (::ffff:a.b.c.d, as [netip.Addr.As16] returns it) with IPv6 false; IPv6
// set means both addresses are IPv6, so an IPv6 packet that carries an
// IPv4-mapped address never matches an IPv4 flow.
//
// For protocols without ports set SrcPort and DstPort to 0, except for ICMP
// and ICMPv6 queries (echo request and reply): there the caller passes the
// query identifier as both SrcPort and DstPort, so that a request and its
// reply are the two directions of one flow.
type Key struct {
	Src, Dst         [16]byte
	SrcPort, DstPort uint16
	Proto            table.Protocol
	IPv6             bool
	_                [2]byte // 40 bytes: arrays of keys keep 8-byte words aligned
}

// MakeKey returns the Key of a packet from src to dst. The addresses must be
// of the same family (4-byte IPv4 or 16-byte IPv6 addresses as the packet
// parser reports them); the family is taken from src. For ICMP and ICMPv6
// queries pass the identifier as both sport and dport. It does not allocate.
func MakeKey(src, dst netip.Addr, proto table.Protocol, sport, dport uint16) Key {
	return Key{
		Src:     src.As16(),
		Dst:     dst.As16(),
		SrcPort: sport,
		DstPort: dport,
		Proto:   proto,
		IPv6:    src.Is6(),
	}
}

// Reverse returns the key of a packet travelling the other way.
func (k Key) Reverse() Key {
	k.Src, k.Dst = k.Dst, k.Src
	k.SrcPort, k.DstPort = k.DstPort, k.SrcPort
	return k
}

// Addrs returns the source and destination addresses as [netip.Addr]: 4-byte
// addresses when IPv6 is false, 16-byte ones otherwise.
func (k Key) Addrs() (src, dst netip.Addr) {
	return addrOf(k.Src, k.IPv6), addrOf(k.Dst, k.IPv6)
}

// String returns the key as "proto src:port -> dst:port", for logs and
// tools; it allocates.
func (k Key) String() string {
	s, d := k.Addrs()
	return fmt.Sprintf("%v %v -> %v", k.Proto, netip.AddrPortFrom(s, k.SrcPort), netip.AddrPortFrom(d, k.DstPort))
}

func addrOf(b [16]byte, v6 bool) netip.Addr {
	a := netip.AddrFrom16(b)
	if !v6 {
		a = a.Unmap()
	}
	return a
}

// ckey is a flow's canonical key: the two endpoints ordered so that both
// directions of a flow give the same ckey. Endpoint a is the lower one,
// comparing (address, port) as a 144-bit big-endian number. Addresses are
// held as big-endian words so that comparing and hashing are a few
// register operations.
type ckey struct {
	a0, a1 uint64 // endpoint a's address
	b0, b1 uint64 // endpoint b's address
	// meta is portA<<48 | portB<<32 | proto<<8 | ipv6.
	meta uint64
}

// canon stores the canonical key of k in c and reports whether k's source
// is endpoint b (the packet travels from b to a). It writes through a
// pointer rather than returning a ckey: returning the struct made it three
// times slower.
func canon(k *Key, c *ckey) (swapped bool) {
	s0 := binary.BigEndian.Uint64(k.Src[0:8])
	s1 := binary.BigEndian.Uint64(k.Src[8:16])
	d0 := binary.BigEndian.Uint64(k.Dst[0:8])
	d1 := binary.BigEndian.Uint64(k.Dst[8:16])
	sp, dp := uint64(k.SrcPort), uint64(k.DstPort)
	// Borrow of dst - src over (address, port): set when dst < src.
	_, borrow := bits.Sub64(dp, sp, 0)
	_, borrow = bits.Sub64(d1, s1, borrow)
	_, borrow = bits.Sub64(d0, s0, borrow)
	m := -borrow // all ones when swapping
	x0, x1, xp := (s0^d0)&m, (s1^d1)&m, (sp^dp)&m
	c.a0, c.a1, c.b0, c.b1 = s0^x0, s1^x1, d0^x0, d1^x1
	c.meta = (sp^xp)<<48 | (dp^xp)<<32 | uint64(k.Proto)<<8 | b2u64(k.IPv6)
	return borrow != 0
}

// key rebuilds the Key of a packet in the direction given by swapped
// (false: from a to b).
func (c *ckey) key(swapped bool) Key {
	var k Key
	binary.BigEndian.PutUint64(k.Src[0:8], c.a0)
	binary.BigEndian.PutUint64(k.Src[8:16], c.a1)
	binary.BigEndian.PutUint64(k.Dst[0:8], c.b0)
	binary.BigEndian.PutUint64(k.Dst[8:16], c.b1)
	k.SrcPort = uint16(c.meta >> 48)
	k.DstPort = uint16(c.meta >> 32)
	k.Proto = c.proto()
	k.IPv6 = c.meta&1 != 0
	if swapped {
		return k.Reverse()
	}
	return k
}

func (c *ckey) proto() table.Protocol { return table.Protocol(c.meta >> 8) }

func (c *ckey) equal(d *ckey) bool {
	return (c.a0^d.a0)|(c.a1^d.a1)|(c.b0^d.b0)|(c.b1^d.b1)|(c.meta^d.meta) == 0
}

func b2u64(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// seed keys the hash function; it is drawn at random per table unless
// [Config.Seed] fixes it.
type seed [5]uint64

// newSeed expands s into five words with splitmix64.
func newSeed(s uint64) seed {
	var out seed
	for i := range out {
		s += 0x9e3779b97f4a7c15
		z := s
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		out[i] = z ^ (z >> 31) | 1
	}
	return out
}

// mix folds the 128-bit product of a and b.
func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// hash hashes a canonical key. The low 32 bits are used (slot tag and home
// slot), so they must depend on every input bit: the folded 128-bit
// products make sure of that.
func (s *seed) hash(c *ckey) uint64 {
	h := mix(c.a0^s[0], c.a1^s[1])
	h = mix(h^c.b0^s[2], c.b1^s[3])
	return mix(h^c.meta, s[4])
}
