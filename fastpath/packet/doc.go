// Package packet parses and rewrites the Ethernet frames that the podgate
// fastpath receives from AF_XDP sockets.
//
// Every frame of every local pod reaches user space, so every frame must be
// treated as hostile: [Parse] checks every bound itself and never panics on
// packet bytes, whatever they are. It fills a [Packet] that the caller owns
// and reuses, and returns a [Status]: [OK], or the reason the frame must be
// dropped. Nothing in this package allocates, returns an error value or
// stores an interface per packet; [Status] values index a fixed array of
// counters ([NumStatuses] of them) and [Status.String] gives a metric label.
//
// # What is parsed
//
//   - Ethernet II with at most one 802.1Q tag (TPID 0x8100). A second tag
//     (QinQ), an 802.1ad outer tag (0x88A8) and 802.3 length frames are
//     [UnsupportedEtherType]. A multicast or all-zero source MAC is
//     [BadEthernet], as in the kernel's bridge.
//   - ARP for Ethernet and IPv4 only (request and reply).
//   - IPv4: options are skipped and their TLV structure is checked; the loose
//     and strict source route options are [SourceRouted], because the
//     destination address is then not the final destination and policy could
//     not be judged on it (the kernel drops them too, accept_source_route=0).
//   - IPv4 and IPv6 packets with a multicast source address, IPv4 ones
//     from 255.255.255.255 and IPv6 ones from an IPv4-mapped address are
//     dropped, as the kernel drops them.
//   - IPv6 and its extension headers Hop-by-Hop (only first), Routing,
//     Fragment (at most once), Destination Options and AH, at most
//     [MaxExtensionHeaders] of them. ESP, No Next Header and every other
//     value end the walk and become [Packet.Proto]. A Routing header with
//     Segments Left > 0 is [SourceRouted]. Jumbograms are not supported.
//   - TCP, UDP, SCTP (common header), ICMP and ICMPv6 (echo identifier; for
//     error messages the embedded packet's addresses, protocol and ports, see
//     [Embedded]); NDP router solicitation, neighbor solicitation and neighbor
//     advertisement (target, link-layer address option). All NDP messages
//     (router advertisements and redirects too) are validated as in RFC 4861
//     sections 6.1, 7.1 and 8.1, except for the checksum and the link-local
//     source of advertisements and redirects.
//
// Lengths come from the IP header, not the frame: a frame shorter than the
// IPv4 total length (or 40 + IPv6 payload length) is [Truncated], a longer
// one (Ethernet padding) is fine and the bytes past the IP packet are never
// read.
//
// # Checksums
//
// Parse verifies the IPv4 header checksum ([BadIPv4Checksum]), as the
// kernel does in ip_rcv for every packet, forwarded or not; the incremental
// TTL update of [DecrementTTL] would otherwise turn a corrupt header into a
// valid one. Parse does not verify L4 checksums, which the kernel does not
// do for forwarded packets either; besides, a frame that a pod sends through
// a veth with checksum offload may carry only the pseudo-header sum in its
// TCP/UDP checksum field (CHECKSUM_PARTIAL), which the receiving kernel
// accepts. [L4ChecksumValid] verifies the L4 checksum for packets that the
// gateway consumes itself (NDP).
//
// # Fragments
//
// There is no reassembly. A packet is a fragment when its fragment offset is
// non-zero or its more-fragments flag is set (so atomic fragments are not).
// Only the first fragment has L4 fields. Following RFC 1858, RFC 3128 and
// RFC 7112:
//
//   - a first fragment must hold the whole IPv6 header chain and the whole
//     L4 header (TCP including options, UDP 8, SCTP 12, ICMP and ICMPv6 8
//     bytes), else [TinyFragment];
//   - a non-first fragment whose offset is inside that minimum L4 header
//     (which could overwrite ports or TCP flags on reassembly), a fragment
//     with no data, a fragment with more-fragments set whose data is not a
//     multiple of 8 bytes and a fragment that would end past 65535 bytes are
//     [BadFragment].
//
// NDP messages that are fragmented are [BadNDP] (RFC 6980).
//
// # Rewriting
//
// [SetMACs], [DecrementTTL] and [ReplyARP] change a frame in place;
// [BuildNeighborAdvertisement] writes into a buffer the caller provides.
// None of them generates ICMP errors: when [DecrementTTL] returns
// [TTLExceeded] the caller drops and counts the frame, and no ICMP time
// exceeded message is sent.
//
// # Concurrency and buffers
//
// The package has no mutable state. A [Packet] must not be used by two
// goroutines at once. Parse copies what it reports (addresses, ports) out of
// the frame, so a [Packet] stays valid after the frame's buffer is reused,
// but its offsets only make sense for the frame it was parsed from.
package packet
