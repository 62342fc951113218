package conntrack

import (
	"fmt"

	"github.com/podgate/podgate/fastpath/packet"
)

// TCPState is the connection-tracking state of a TCP flow, with the numbers
// and meanings of the kernel's nf_conntrack (TCP_CONNTRACK_*), so that tools
// can show familiar names. Non-TCP entries are in TCPNone.
type TCPState uint8

// TCP states.
const (
	TCPNone        TCPState = iota // not TCP
	TCPSynSent                     // SYN seen in the original direction
	TCPSynRecv                     // SYN-ACK seen
	TCPEstablished                 // handshake completed (or flow picked up mid-stream)
	TCPFinWait                     // FIN seen in one direction
	TCPCloseWait                   // that FIN acknowledged by the other side
	TCPLastAck                     // FIN seen in both directions
	TCPTimeWait                    // last ACK seen
	TCPClose                       // RST seen
	TCPSynSent2                    // SYN seen in both directions (simultaneous open)
)

// String returns the kernel's name of the state (e.g. "ESTABLISHED").
func (s TCPState) String() string {
	switch s {
	case TCPNone:
		return "NONE"
	case TCPSynSent:
		return "SYN_SENT"
	case TCPSynRecv:
		return "SYN_RECV"
	case TCPEstablished:
		return "ESTABLISHED"
	case TCPFinWait:
		return "FIN_WAIT"
	case TCPCloseWait:
		return "CLOSE_WAIT"
	case TCPLastAck:
		return "LAST_ACK"
	case TCPTimeWait:
		return "TIME_WAIT"
	case TCPClose:
		return "CLOSE"
	case TCPSynSent2:
		return "SYN_SENT2"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// Result is what [Table.Update] made of a packet.
type Result uint8

// Results of [Table.Update]. Only TCP produces anything but Accepted.
const (
	// Accepted: the packet fits the flow. Counters, last-seen time, expiry
	// and state were updated.
	Accepted Result = iota
	// Ignored: the packet does not advance the state but may be legitimate
	// (the kernel's "ignore": a SYN on an established flow, a retransmitted
	// SYN-ACK, a reply ACK before the SYN-ACK). Counters were updated; the
	// state, last-seen time and expiry were not, so such packets cannot keep
	// a flow alive. Forward it.
	Ignored
	// Invalid: the packet does not fit the flow's state (a FIN before the
	// handshake, an original-direction SYN-ACK, ...) or its flags are invalid
	// (see [ValidTCPFlags]). Nothing was updated. Drop and count it.
	Invalid
	// Restart: a SYN in the reply direction of a flow in TIME_WAIT or CLOSE,
	// that is, the old responder opens a new connection on the same 5-tuple.
	// Nothing was updated. The old verdict was judged for the other
	// direction and does not apply: [Table.Delete] the entry and handle the
	// packet as the first packet of a new flow.
	Restart
)

// String returns a short lower-case name, usable as a metric label.
func (r Result) String() string {
	switch r {
	case Accepted:
		return "accepted"
	case Ignored:
		return "ignored"
	case Invalid:
		return "invalid"
	case Restart:
		return "restart"
	}
	return fmt.Sprintf("result-%d", uint8(r))
}

// tcpFlagMask keeps the flags that decide validity and state: FIN, SYN,
// RST, ACK and URG. PSH, ECE and CWR may accompany any combination.
const tcpFlagMask = packet.TCPFlagFIN | packet.TCPFlagSYN | packet.TCPFlagRST | packet.TCPFlagACK | packet.TCPFlagURG

// validTCPFlags has bit f set for each valid value f of flags&tcpFlagMask:
// the combinations the kernel accepts (tcp_valid_flags) and nothing else.
const validTCPFlags uint64 = 1<<packet.TCPFlagSYN | 1<<(packet.TCPFlagSYN|packet.TCPFlagURG) | 1<<(packet.TCPFlagSYN|packet.TCPFlagACK) |
	1<<packet.TCPFlagRST | 1<<(packet.TCPFlagRST|packet.TCPFlagACK) |
	1<<(packet.TCPFlagFIN|packet.TCPFlagACK) | 1<<(packet.TCPFlagFIN|packet.TCPFlagACK|packet.TCPFlagURG) |
	1<<packet.TCPFlagACK | 1<<(packet.TCPFlagACK|packet.TCPFlagURG)

// ValidTCPFlags reports whether a TCP header's flags are a combination that
// a TCP stack may send: SYN, SYN-ACK, RST, RST-ACK, FIN-ACK or ACK, each
// optionally with URG (not SYN-ACK), PSH, ECE and CWR. No flags, SYN with FIN
// or RST, FIN without ACK, all flags and the like are invalid: the fastpath
// drops and counts such packets whether or not the flow is tracked.
func ValidTCPFlags(flags uint8) bool {
	return validTCPFlags>>(flags&tcpFlagMask)&1 != 0
}

// NewTCP says what a TCP packet without a conntrack entry may do.
type NewTCP uint8

// Values of [ClassifyNewTCP].
const (
	// NewTCPInvalid: the flags are invalid ([ValidTCPFlags]); drop.
	NewTCPInvalid NewTCP = iota
	// NewTCPOpen: a SYN without ACK opens a connection: judge it by policy
	// and [Table.Insert] it.
	NewTCPOpen
	// NewTCPPickup: an ACK (possibly with data, no SYN, FIN or RST) of a
	// connection that the table does not know, e.g. after an agent restart.
	// The kernel with nf_conntrack_tcp_loose=1 picks such connections up as
	// established: judge the packet by policy and [Table.InsertEstablished]
	// it, or drop it to be strict.
	NewTCPPickup
	// NewTCPNoFlow: a SYN-ACK, FIN or RST without a flow. It cannot start
	// one (the kernel calls it invalid); drop it.
	NewTCPNoFlow
)

// String returns a short lower-case name, usable as a metric label.
func (n NewTCP) String() string {
	switch n {
	case NewTCPInvalid:
		return "invalid"
	case NewTCPOpen:
		return "open"
	case NewTCPPickup:
		return "pickup"
	case NewTCPNoFlow:
		return "no-flow"
	}
	return fmt.Sprintf("new-tcp-%d", uint8(n))
}

// ClassifyNewTCP classifies the flags of a TCP packet that has no conntrack
// entry.
func ClassifyNewTCP(flags uint8) NewTCP {
	if !ValidTCPFlags(flags) {
		return NewTCPInvalid
	}
	switch {
	case flags&(packet.TCPFlagSYN|packet.TCPFlagACK) == packet.TCPFlagSYN:
		return NewTCPOpen
	case flags&(packet.TCPFlagSYN|packet.TCPFlagFIN|packet.TCPFlagRST) == 0: // valid, so ACK is set
		return NewTCPPickup
	}
	return NewTCPNoFlow
}

// tcpStep is the TCP state machine: the state after a packet with flags in
// direction dir of a flow in state st, of which finSeen has bit d set when a
// FIN was seen in direction d. It follows the kernel's tcp_conntracks
// table, except that it tells a retransmitted FIN (or the FIN sender's own
// ACK) from the other side's FIN (or ACK), which the kernel cannot tell
// without sequence numbers. Sequence numbers and windows are not tracked.
func tcpStep(st TCPState, dir Dir, flags uint8, finSeen uint8) (TCPState, Result) {
	if !ValidTCPFlags(flags) || st == TCPNone || st > TCPSynSent2 {
		return st, Invalid
	}
	ownFin := finSeen>>(dir&1)&1 != 0
	switch {
	case flags&packet.TCPFlagRST != 0:
		return TCPClose, Accepted

	case flags&(packet.TCPFlagSYN|packet.TCPFlagACK) == packet.TCPFlagSYN:
		if dir == Original {
			switch st {
			case TCPSynSent, TCPSynSent2: // retransmitted SYN
				return st, Accepted
			case TCPTimeWait, TCPClose: // reopened connection (RFC 1122)
				return TCPSynSent, Accepted
			}
			return st, Ignored // the receiver answers with RST or a SYN-ACK
		}
		switch st {
		case TCPSynSent, TCPSynSent2: // simultaneous open
			return TCPSynSent2, Accepted
		case TCPTimeWait, TCPClose:
			return st, Restart
		}
		return st, Invalid

	case flags&packet.TCPFlagSYN != 0: // SYN-ACK
		switch st {
		case TCPSynSent:
			if dir == Reply {
				return TCPSynRecv, Accepted
			}
			return st, Invalid // the client cannot send SYN then SYN-ACK
		case TCPSynSent2:
			return TCPSynRecv, Accepted
		}
		return st, Ignored // retransmitted or late SYN-ACK

	case flags&packet.TCPFlagFIN != 0: // FIN-ACK
		switch st {
		case TCPSynSent, TCPSynSent2:
			return st, Invalid
		case TCPSynRecv, TCPEstablished:
			return TCPFinWait, Accepted
		case TCPFinWait, TCPCloseWait:
			if ownFin { // retransmitted FIN
				return st, Accepted
			}
			return TCPLastAck, Accepted
		}
		return st, Accepted // LAST_ACK, TIME_WAIT, CLOSE: retransmissions

	default: // ACK
		switch st {
		case TCPSynSent, TCPSynSent2:
			if dir == Original {
				return st, Invalid // no SYN-ACK yet
			}
			return st, Ignored // might be a half-open connection
		case TCPSynRecv:
			if dir == Original {
				return TCPEstablished, Accepted
			}
			return st, Accepted
		case TCPFinWait:
			if ownFin {
				return st, Accepted
			}
			return TCPCloseWait, Accepted
		case TCPLastAck:
			return TCPTimeWait, Accepted
		}
		return st, Accepted // ESTABLISHED, CLOSE_WAIT, TIME_WAIT, CLOSE
	}
}
