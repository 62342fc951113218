package packet

import "net/netip"

// EtherType values that the parser knows.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeVLAN = 0x8100 // 802.1Q tag
	EtherTypeIPv6 = 0x86DD
)

// Header lengths in bytes.
const (
	EthernetHeaderLen = 14
	VLANTagLen        = 4
	IPv4MinHeaderLen  = 20
	IPv6HeaderLen     = 40
	ARPLen            = 28 // Ethernet/IPv4 ARP
)

// MaxExtensionHeaders is the number of IPv6 extension headers that [Parse]
// walks before it gives up with [TooManyExtHeaders].
const MaxExtensionHeaders = 8

// IP protocol numbers (IPv4 protocol, IPv6 next header).
const (
	ProtoHopByHop = 0
	ProtoICMP     = 1
	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoESP      = 50
	ProtoAH       = 51
	ProtoICMPv6   = 58
	ProtoNoNext   = 59
	ProtoDestOpts = 60
	ProtoSCTP     = 132
)

// TCP flags as found in byte 13 of the TCP header ([Packet.TCPFlags]).
const (
	TCPFlagFIN = 0x01
	TCPFlagSYN = 0x02
	TCPFlagRST = 0x04
	TCPFlagPSH = 0x08
	TCPFlagACK = 0x10
	TCPFlagURG = 0x20
	TCPFlagECE = 0x40
	TCPFlagCWR = 0x80
)

// ICMP (v4) types.
const (
	ICMPEchoReply      = 0
	ICMPDestUnreach    = 3
	ICMPSourceQuench   = 4
	ICMPRedirect       = 5
	ICMPEchoRequest    = 8
	ICMPTimeExceeded   = 11
	ICMPParamProblem   = 12
	ICMPTimestamp      = 13
	ICMPTimestampReply = 14
	ICMPInfoRequest    = 15
	ICMPInfoReply      = 16
	ICMPAddrMask       = 17
	ICMPAddrMaskReply  = 18
)

// ICMPv6 types.
const (
	ICMPv6DestUnreach     = 1
	ICMPv6PacketTooBig    = 2
	ICMPv6TimeExceeded    = 3
	ICMPv6ParamProblem    = 4
	ICMPv6EchoRequest     = 128
	ICMPv6EchoReply       = 129
	ICMPv6RouterSolicit   = 133
	ICMPv6RouterAdvert    = 134
	ICMPv6NeighborSolicit = 135
	ICMPv6NeighborAdvert  = 136
	ICMPv6Redirect        = 137
)

// ARP operations.
const (
	ARPRequest = 1
	ARPReply   = 2
)

// L3Kind is the network-layer protocol of a parsed frame.
type L3Kind uint8

// L3 kinds. A frame that [Parse] accepts is always IPv4, IPv6 or ARP.
const (
	L3None L3Kind = iota
	L3IPv4
	L3IPv6
	L3ARP
)

// String returns "ipv4", "ipv6", "arp" or "none".
func (k L3Kind) String() string {
	switch k {
	case L3IPv4:
		return "ipv4"
	case L3IPv6:
		return "ipv6"
	case L3ARP:
		return "arp"
	}
	return "none"
}

// NAFlags are the flags of an NDP neighbor advertisement (byte 4 of the
// message).
type NAFlags uint8

// Neighbor advertisement flags (RFC 4861 section 4.4).
const (
	NARouter    NAFlags = 0x80
	NASolicited NAFlags = 0x40
	NAOverride  NAFlags = 0x20
)

// Packet is what [Parse] learns about one frame. It is a plain value that
// the caller owns and reuses for every frame; Parse overwrites all of it.
// Addresses and ports are copies, offsets index the parsed frame.
//
// After Parse returned a Status other than [OK] the fields are partly filled
// and must not be relied upon.
type Packet struct {
	// Ethernet.
	DstMAC, SrcMAC [6]byte
	HasVLAN        bool   // the frame had one 802.1Q tag
	VLANTCI        uint16 // tag control information: PCP, DEI, VLAN ID (low 12 bits)
	EtherType      uint16 // after the VLAN tag, if any

	// L3 is IPv4, IPv6 or ARP.
	L3 L3Kind

	// L3Off is the offset of the IP or ARP header in the frame, L3Len the
	// length of the IP packet as its header claims (IPv4 total length, 40 +
	// IPv6 payload length, 28 for ARP). Bytes at and past L3Off+L3Len are
	// padding and were not looked at.
	L3Off, L3Len int
	// L4Off is the offset of the upper-layer header: after IPv4 options and
	// IPv6 extension headers. For a non-first fragment it is the offset of
	// the fragment's data. PayloadOff is the offset just past the L4 header
	// (TCP options included, 8 for UDP, ICMP and ICMPv6, 12 for SCTP), or
	// L4Off for other protocols and non-first fragments. For ARP both are
	// L3Off+28.
	L4Off, PayloadOff int

	// Src and Dst are the IP source and destination addresses: 4-byte
	// addresses for IPv4, 16-byte ones for IPv6. An IPv6 Src is never
	// IPv4-mapped (such packets are [BadIPv6]); an IPv6 Dst may be, and must
	// not be unmapped before a policy lookup. For ARP see [ARP].
	Src, Dst netip.Addr
	// Proto is the upper-layer protocol: IPv4 protocol, or the IPv6 next
	// header after the extension headers (ProtoESP, ProtoNoNext or any
	// unknown value end the walk). For a non-first IPv6 fragment it is the
	// Next Header of the Fragment header, which may be an extension header.
	Proto uint8
	// TTL is the IPv4 TTL or IPv6 hop limit, as received.
	TTL uint8

	// Fragmented is set when the fragment offset is non-zero or the
	// more-fragments flag is set. Only a first fragment (FragOffset 0) has
	// L4 fields.
	Fragmented    bool
	MoreFragments bool
	DontFragment  bool   // IPv4 DF flag
	FragOffset    uint16 // in bytes
	// FragID is the IPv4 identification (16 bits, always set for IPv4) or
	// the IPv6 Fragment header's identification (if there is one).
	FragID uint32

	// HasPorts is set for TCP, UDP and SCTP packets that are not non-first
	// fragments: SrcPort and DstPort are valid.
	HasPorts         bool
	SrcPort, DstPort uint16
	// TCPFlags is byte 13 of the TCP header (see TCPFlagSYN etc.).
	TCPFlags uint8

	// ICMPType and ICMPCode are set for ICMP over IPv4 and ICMPv6 over IPv6.
	ICMPType, ICMPCode uint8
	// HasICMPID is set for ICMP queries (echo, timestamp, information and
	// address mask requests and replies) and ICMPv6 echo: ICMPID is their
	// identifier, the "port" by which conntrack keys them.
	HasICMPID bool
	ICMPID    uint16
	// ICMPError is set for ICMP destination unreachable, source quench,
	// redirect, time exceeded and parameter problem, and ICMPv6 destination
	// unreachable, packet too big, time exceeded and parameter problem.
	// Inner then describes the packet that caused the error.
	ICMPError bool
	Inner     Embedded

	// ARP is filled when L3 is L3ARP.
	ARP ARP
	// NDP is filled for router solicitations, neighbor solicitations and
	// neighbor advertisements.
	NDP NDP
}

// Embedded is the packet quoted in an ICMP or ICMPv6 error message: as sent
// by the flow's endpoint, so its Src is the local end of the flow that the
// error relates to.
type Embedded struct {
	Src, Dst netip.Addr
	Proto    uint8
	// HasPorts is set when Proto is TCP, UDP or SCTP and the quoted packet
	// is not a non-first fragment.
	HasPorts         bool
	SrcPort, DstPort uint16
	// ICMPType and ICMPCode are set when the quoted packet is ICMP (or
	// ICMPv6) and not a non-first fragment; HasICMPID and ICMPID as in
	// [Packet].
	ICMPType, ICMPCode uint8
	HasICMPID          bool
	ICMPID             uint16
}

// ARP holds the fields of an Ethernet/IPv4 ARP message.
type ARP struct {
	Op                   uint16 // ARPRequest or ARPReply
	SenderMAC, TargetMAC [6]byte
	SenderIP, TargetIP   netip.Addr
}

// NDP holds the fields of an NDP router solicitation, neighbor solicitation
// or neighbor advertisement.
type NDP struct {
	// Target is the target address of a solicitation or advertisement.
	Target netip.Addr
	// Flags are the neighbor advertisement's R, S and O flags.
	Flags NAFlags
	// HasLinkAddr is set when the message carries a source link-layer
	// address option (solicitations) or a target link-layer address option
	// (advertisements); LinkAddr is its address (the first one if there are
	// several).
	HasLinkAddr bool
	LinkAddr    [6]byte
}
