package table

import (
	"fmt"
	"strings"
)

// Protocol is an IP protocol number, as carried in the IPv4 protocol field or
// the last IPv6 next-header field.
type Protocol uint8

// IP protocols known to the policy engine. NetworkPolicy ports name only TCP,
// UDP and SCTP; any other protocol is matched only by rules without ports.
const (
	ICMP   Protocol = 1
	TCP    Protocol = 6
	UDP    Protocol = 17
	ICMPv6 Protocol = 58
	SCTP   Protocol = 132
)

// String returns the protocol's name as Kubernetes spells it (TCP, UDP,
// SCTP), ICMP or ICMPv6, or its number.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	case ICMP:
		return "ICMP"
	case ICMPv6:
		return "ICMPv6"
	}
	return fmt.Sprintf("%d", uint8(p))
}

// HasPorts reports whether the protocol carries ports that NetworkPolicy
// port rules can name.
func (p Protocol) HasPorts() bool {
	return p == TCP || p == UDP || p == SCTP
}

// ParseProtocol parses a protocol name, case-insensitively: TCP, UDP, SCTP,
// ICMP or ICMPv6.
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToUpper(s) {
	case "TCP":
		return TCP, nil
	case "UDP":
		return UDP, nil
	case "SCTP":
		return SCTP, nil
	case "ICMP":
		return ICMP, nil
	case "ICMPV6":
		return ICMPv6, nil
	}
	return 0, fmt.Errorf("unknown protocol %q: want TCP, UDP, SCTP, ICMP or ICMPv6", s)
}
