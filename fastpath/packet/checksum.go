package packet

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// Sum returns the Internet checksum sum (RFC 1071) of b added to initial:
// the one's complement sum of b read as big-endian 16-bit words, a last odd
// byte padded with a zero byte, folded to 16 bits but not complemented.
//
// Sums of consecutive pieces chain as Sum(b2, Sum(b1, 0)) as long as every
// piece but the last has an even length. The checksum field of a header is
// ^Sum(header with a zeroed field, pseudo-header sum); a received header
// verifies when Sum over it, field included, is 0xFFFF. Sum does not
// allocate.
func Sum(b []byte, initial uint16) uint16 {
	acc := uint64(initial)
	var carry uint64
	// 2^16 ≡ 1 (mod 2^16-1), so big-endian 64-bit words can be added with
	// end-around carry and folded at the end.
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), 0)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[8:16]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[16:24]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[24:32]), carry)
		acc += carry
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), 0)
		acc += carry
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, carry = bits.Add64(acc, uint64(binary.BigEndian.Uint32(b[0:4])), 0)
		acc += carry
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, carry = bits.Add64(acc, uint64(binary.BigEndian.Uint16(b[0:2])), 0)
		acc += carry
		b = b[2:]
	}
	if len(b) == 1 {
		acc, carry = bits.Add64(acc, uint64(b[0])<<8, 0)
		acc += carry
	}
	return fold64(acc)
}

// fold64 folds a 64-bit one's complement accumulator to 16 bits.
func fold64(acc uint64) uint16 {
	acc = (acc >> 32) + (acc & 0xFFFFFFFF)
	acc = (acc >> 32) + (acc & 0xFFFFFFFF)
	acc = (acc >> 16) + (acc & 0xFFFF)
	acc = (acc >> 16) + (acc & 0xFFFF)
	return uint16(acc)
}

// PseudoHeaderSum returns the Sum of the TCP/UDP/ICMPv6 pseudo-header: for
// IPv4 (both are 4-byte addresses) source, destination, zero, protocol and
// 16-bit length (RFC 793); otherwise the IPv6 form with a 32-bit upper-layer
// length and the next header (RFC 8200 section 8.1). length is the length
// of the L4 header and payload. It does not allocate.
func PseudoHeaderSum(src, dst netip.Addr, proto uint8, length int) uint16 {
	var acc uint64
	if src.Is4() && dst.Is4() {
		s, d := src.As4(), dst.As4()
		acc = uint64(binary.BigEndian.Uint32(s[:])) + uint64(binary.BigEndian.Uint32(d[:]))
	} else {
		s, d := src.As16(), dst.As16()
		for i := 0; i < 16; i += 4 {
			acc += uint64(binary.BigEndian.Uint32(s[i:])) + uint64(binary.BigEndian.Uint32(d[i:]))
		}
	}
	acc += uint64(uint32(length)) + uint64(proto)
	return fold64(acc)
}

// UpdateChecksum returns the checksum field that results from changing one
// 16-bit word of the checksummed data from old to new, given the current
// field check, by the incremental update of RFC 1624 (equation 3):
// HC' = ~(~HC + ~m + m'). It does not allocate.
func UpdateChecksum(check, old, new uint16) uint16 {
	acc := uint32(^check) + uint32(^old) + uint32(new)
	acc = (acc >> 16) + (acc & 0xFFFF)
	acc = (acc >> 16) + (acc & 0xFFFF)
	return ^uint16(acc)
}

// L4ChecksumValid reports whether the TCP, UDP, ICMP or ICMPv6 checksum of
// a packet that [Parse] accepted verifies. It is false for fragments, for
// other protocols (including SCTP, whose CRC32c is not checked here) and
// when frame is not the frame p was parsed from. An IPv4 UDP checksum of
// zero (none) counts as valid. Use it for packets the gateway consumes
// itself, such as NDP; forwarded packets are not verified (see the package
// documentation). It does not allocate.
func L4ChecksumValid(frame []byte, p *Packet) bool {
	if p.Fragmented || (p.L3 != L3IPv4 && p.L3 != L3IPv6) {
		return false
	}
	end := p.L3Off + p.L3Len
	if p.L4Off < 0 || p.L4Off > end || end > len(frame) {
		return false
	}
	l4 := frame[p.L4Off:end]
	var initial uint16
	switch p.Proto {
	case ProtoTCP:
	case ProtoUDP:
		if len(l4) < 8 {
			return false
		}
		ulen := int(binary.BigEndian.Uint16(l4[4:6]))
		if ulen < 8 || ulen > len(l4) {
			return false
		}
		l4 = l4[:ulen]
		if p.L3 == L3IPv4 && l4[6] == 0 && l4[7] == 0 {
			return true
		}
	case ProtoICMP:
		if p.L3 != L3IPv4 {
			return false
		}
		return Sum(l4, 0) == 0xFFFF
	case ProtoICMPv6:
		if p.L3 != L3IPv6 {
			return false
		}
	default:
		return false
	}
	initial = PseudoHeaderSum(p.Src, p.Dst, p.Proto, len(l4))
	return Sum(l4, initial) == 0xFFFF
}
