package packet

// Status says whether a frame passed the parser's checks ([OK]) or why it
// is dropped. It is a small integer so that metrics can keep one counter
// per status in a fixed array of [NumStatuses].
type Status uint8

// Statuses returned by [Parse] and the rewrite helpers.
const (
	// OK: the frame parsed (or was rewritten) and may be processed further.
	OK Status = iota
	// Truncated: the frame ends before the Ethernet, VLAN, ARP or IP header,
	// or before the end of the IP packet as its header claims.
	Truncated
	// BadEthernet: the source MAC is multicast, broadcast or all zeros.
	BadEthernet
	// UnsupportedEtherType: not IPv4, IPv6 or ARP after at most one 802.1Q
	// tag.
	UnsupportedEtherType
	// BadIPv4: version not 4, IHL < 5, total length smaller than the
	// header, malformed options, or a multicast or limited broadcast
	// source address.
	BadIPv4
	// BadIPv4Checksum: the IPv4 header checksum does not verify.
	BadIPv4Checksum
	// BadIPv6: version not 6, or a multicast or IPv4-mapped source
	// address.
	BadIPv6
	// BadIPv6ExtHeader: an extension header runs past the packet, a
	// Hop-by-Hop header that is not first, a second Fragment header, or an
	// AH header shorter than its fixed part.
	BadIPv6ExtHeader
	// TooManyExtHeaders: more than [MaxExtensionHeaders] IPv6 extension
	// headers.
	TooManyExtHeaders
	// SourceRouted: an IPv4 loose or strict source route option, or an IPv6
	// Routing header with Segments Left > 0.
	SourceRouted
	// BadFragment: a fragment without data, a non-last fragment whose data
	// is not a multiple of 8 bytes, a fragment ending past 65535 bytes, or a
	// non-first fragment that overlaps the minimum L4 header.
	BadFragment
	// TinyFragment: a first fragment that does not hold the whole IPv6
	// header chain and L4 header.
	TinyFragment
	// BadTCP: shorter than 20 bytes, data offset < 5 or past the packet.
	BadTCP
	// BadUDP: shorter than 8 bytes, or the UDP length is < 8 or larger than
	// the IP payload.
	BadUDP
	// BadSCTP: shorter than the common header and one chunk header, or a
	// first chunk whose length is < 4 or runs past the packet.
	BadSCTP
	// BadICMP: ICMP (v4) shorter than 8 bytes, or an error message whose
	// embedded IPv4 header or first L4 bytes are missing.
	BadICMP
	// BadICMPv6: ICMPv6 shorter than 8 bytes, or an error message whose
	// embedded IPv6 header chain or first L4 bytes are missing.
	BadICMPv6
	// BadNDP: an NDP message that fails the validity checks of RFC 4861
	// (hop limit 255, code 0, length, options, a target that is neither
	// multicast nor IPv4-mapped, addresses) or is fragmented.
	BadNDP
	// BadARP: not Ethernet/IPv4 ARP, or an operation other than request or
	// reply.
	BadARP
	// TTLExceeded: the IPv4 TTL or IPv6 hop limit is 1 or 0, so the packet
	// must not be forwarded. Returned only by [DecrementTTL], never by
	// [Parse].
	TTLExceeded

	// NumStatuses is the number of Status values; every Status is below
	// it.
	NumStatuses = iota
)

// String returns the status as a snake_case metric label, such as
// "bad_ipv4_checksum", or "unknown" for a value not below [NumStatuses]. The
// strings are constants; String does not allocate.
func (r Status) String() string {
	switch r {
	case OK:
		return "ok"
	case Truncated:
		return "truncated"
	case BadEthernet:
		return "bad_ethernet"
	case UnsupportedEtherType:
		return "unsupported_ethertype"
	case BadIPv4:
		return "bad_ipv4"
	case BadIPv4Checksum:
		return "bad_ipv4_checksum"
	case BadIPv6:
		return "bad_ipv6"
	case BadIPv6ExtHeader:
		return "bad_ipv6_ext_header"
	case TooManyExtHeaders:
		return "too_many_ext_headers"
	case SourceRouted:
		return "source_routed"
	case BadFragment:
		return "bad_fragment"
	case TinyFragment:
		return "tiny_fragment"
	case BadTCP:
		return "bad_tcp"
	case BadUDP:
		return "bad_udp"
	case BadSCTP:
		return "bad_sctp"
	case BadICMP:
		return "bad_icmp"
	case BadICMPv6:
		return "bad_icmpv6"
	case BadNDP:
		return "bad_ndp"
	case BadARP:
		return "bad_arp"
	case TTLExceeded:
		return "ttl_exceeded"
	}
	return "unknown"
}
