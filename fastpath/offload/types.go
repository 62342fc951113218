package offload

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// IP protocol numbers a flow can have.
const (
	ProtoTCP  = 6
	ProtoUDP  = 17
	ProtoSCTP = 132
)

// Dir is the direction of a packet within its flow: [DirAB] when the
// packet's source is the key's endpoint A, [DirBA] when it is B.
type Dir uint8

// Directions.
const (
	DirAB Dir = 0
	DirBA Dir = 1
)

// Key is a flow's key in the flows map, one entry for both directions
// (struct flow_key in bpf/offload.h; same layout). Build it with [MakeKey].
//
// Canonical order: endpoint A is the lower of the two endpoints, comparing
// (address, port) with the 16 address bytes as an unsigned big-endian
// number first and the port in host order second; when both endpoints are
// equal the packet's source is A. An IPv4 address takes the first 4 bytes
// of its 16 (the rest zero) and Family 4; an IPv6 address all 16 bytes and
// Family 6. The BPF programs compute the same key from a packet's headers,
// so a key that is not canonical never matches a packet (Install rejects
// it).
type Key struct {
	A, B [16]byte
	// PortA and PortB are the endpoints' ports in network byte order (as
	// in the packet); [Key.Ports] returns them in host order.
	PortA, PortB [2]byte
	Proto        uint8 // ProtoTCP, ProtoUDP or ProtoSCTP
	Family       uint8 // 4 or 6
	_            [2]byte
}

// MakeKey returns the key of a packet from (src, sport) to (dst, dport)
// and the packet's direction. IPv4-mapped IPv6 addresses count as IPv4.
// If src and dst are not of the same family, or are not valid, the key has
// Family 0 and matches no packet. It does not allocate.
func MakeKey(src, dst netip.Addr, proto uint8, sport, dport uint16) (Key, Dir) {
	src, dst = src.Unmap(), dst.Unmap()
	var k Key
	k.Proto = proto
	switch {
	case src.Is4() && dst.Is4():
		s, d := src.As4(), dst.As4()
		copy(k.A[:], s[:])
		copy(k.B[:], d[:])
		k.Family = 4
	case src.Is6() && dst.Is6():
		k.A, k.B = src.As16(), dst.As16()
		k.Family = 6
	default:
		return Key{Proto: proto}, DirAB
	}
	binary.BigEndian.PutUint16(k.PortA[:], sport)
	binary.BigEndian.PutUint16(k.PortB[:], dport)
	if !endpointLess(k.B, dport, k.A, sport) {
		return k, DirAB
	}
	k.A, k.B = k.B, k.A
	k.PortA, k.PortB = k.PortB, k.PortA
	return k, DirBA
}

// endpointLess reports whether (x, xp) < (y, yp) in the canonical order.
func endpointLess(x [16]byte, xp uint16, y [16]byte, yp uint16) bool {
	if c := bytes.Compare(x[:], y[:]); c != 0 {
		return c < 0
	}
	return xp < yp
}

// Addrs returns the two endpoints' addresses (4-byte addresses for
// Family 4).
func (k Key) Addrs() (a, b netip.Addr) {
	if k.Family == 4 {
		return netip.AddrFrom4([4]byte(k.A[:4])), netip.AddrFrom4([4]byte(k.B[:4]))
	}
	return netip.AddrFrom16(k.A), netip.AddrFrom16(k.B)
}

// Ports returns the two endpoints' ports in host byte order.
func (k Key) Ports() (a, b uint16) {
	return binary.BigEndian.Uint16(k.PortA[:]), binary.BigEndian.Uint16(k.PortB[:])
}

// String returns the key as "proto a:port <-> b:port", for logs; it
// allocates.
func (k Key) String() string {
	a, b := k.Addrs()
	pa, pb := k.Ports()
	return fmt.Sprintf("%d %v <-> %v", k.Proto, netip.AddrPortFrom(a, pa), netip.AddrPortFrom(b, pb))
}

// validate reports why the BPF programs could never match k, or nil.
func (k *Key) validate() error {
	switch k.Family {
	case 4:
		if [12]byte(k.A[4:]) != [12]byte{} || [12]byte(k.B[4:]) != [12]byte{} {
			return fmt.Errorf("family 4 key with bytes beyond the IPv4 address")
		}
	case 6:
	default:
		return fmt.Errorf("family %d is not 4 or 6", k.Family)
	}
	switch k.Proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
	default:
		return fmt.Errorf("protocol %d is not TCP, UDP or SCTP", k.Proto)
	}
	pa, pb := k.Ports()
	if endpointLess(k.B, pb, k.A, pa) {
		return fmt.Errorf("endpoints not in canonical order (use MakeKey)")
	}
	return nil
}

// Action is what a hook does with a packet of an offloaded direction
// (enum flow_action).
type Action uint8

// Actions.
const (
	// ActNone: the direction is not offloaded. pod_ingress punts its
	// packets to the fastpath; kernel_egress lets them continue to pgw0.
	ActNone Action = 0
	// ActKernel (pod_ingress): hand the frame to the kernel unchanged, to
	// be routed (other nodes, outside, Service DNAT). The frame must be
	// addressed to the host veth's MAC (the pod's gateway MAC), or the
	// kernel drops it as another host's.
	ActKernel Action = 1
	// ActPeer (pod_ingress): the destination is a local pod. Set the
	// destination MAC to DstMAC and the source to GwMAC, decrement the TTL
	// or hop limit, and bpf_redirect_peer to OutIfindex (the destination
	// pod's host veth), straight into the pod's eth0.
	ActPeer Action = 2
	// ActRedirect (kernel_egress): the kernel routed the packet to a local
	// pod through pgk0. Set the MACs as ActPeer does (the kernel already
	// decremented the TTL) and bpf_redirect to the egress of OutIfindex.
	ActRedirect Action = 3
)

// numActions is the number of actions, the length of [Stats.Hit].
const numActions = 4

// String returns the action's name.
func (a Action) String() string {
	switch a {
	case ActNone:
		return "none"
	case ActKernel:
		return "kernel"
	case ActPeer:
		return "peer"
	case ActRedirect:
		return "redirect"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// FlowDir is one direction of a flow (struct flow_dir).
type FlowDir struct {
	// InIfindex is the interface the direction's packets must arrive on:
	// the source pod's host veth for pod_ingress, pgk0 for kernel_egress.
	// A packet of the flow arriving elsewhere is punted (pod_ingress) or
	// passed on (kernel_egress), counted as [ReasonSpoof].
	InIfindex uint32
	// OutIfindex is the destination pod's host veth (ActPeer, ActRedirect).
	OutIfindex uint32
	// SrcMAC is, for pod_ingress, the only source MAC allowed: the source
	// pod's eth0 (anti-spoofing: a pod may only hit its own flows).
	// kernel_egress does not check it.
	SrcMAC [6]byte
	// DstMAC is the destination MAC written by ActPeer and ActRedirect:
	// the destination pod's eth0.
	DstMAC [6]byte
	// GwMAC is the source MAC written by ActPeer and ActRedirect: the
	// destination pod's host veth, its gateway.
	GwMAC  [6]byte
	Action Action
	_      uint8
}

// Value is a flow's value in the flows map (struct flow_val).
type Value struct {
	// Dir holds the two directions, indexed by [Dir].
	Dir [2]FlowDir
	// Slot selects the flow's counters: [Offload.Counters](Slot, dir).
	// It must be below Config.MaxFlows.
	Slot uint32
	// Flags is not read by the BPF programs; it is the caller's.
	Flags uint32
}

func (v *Value) validate(maxFlows int) error {
	if uint64(v.Slot) >= uint64(maxFlows) {
		return fmt.Errorf("slot %d out of range [0, %d)", v.Slot, maxFlows)
	}
	for i := range v.Dir {
		d := &v.Dir[i]
		switch d.Action {
		case ActNone:
			continue
		case ActKernel:
		case ActPeer, ActRedirect:
			if d.OutIfindex == 0 {
				return fmt.Errorf("dir %d: action %v without out ifindex", i, d.Action)
			}
		default:
			return fmt.Errorf("dir %d: unknown action %d", i, uint8(d.Action))
		}
		if d.InIfindex == 0 {
			return fmt.Errorf("dir %d: action %v without in ifindex", i, d.Action)
		}
	}
	return nil
}

// Flow is a key and its value, for [Offload.Install].
type Flow struct {
	Key   Key
	Value Value
}

// Counter is the traffic of one direction of an offloaded flow since its
// slot was last reset (struct counter).
type Counter struct {
	// Packets counts skbs: a GSO super-frame counts as one packet.
	Packets uint64
	// Bytes adds up skb lengths: frames with their Ethernet header, a GSO
	// super-frame with its whole length but one set of headers.
	Bytes uint64
	// LastSeenNS is when the last packet was counted, in CLOCK_MONOTONIC
	// nanoseconds at jiffy resolution (bpf_ktime_get_coarse_ns); compare
	// with unix.ClockGettime(unix.CLOCK_MONOTONIC). 0: never.
	LastSeenNS uint64
}

// Reason says why a frame was not forwarded by an offloaded flow (enum
// reason).
type Reason uint8

// Reasons.
const (
	ReasonNotIP     Reason = iota // not IPv4 or IPv6 (ARP, ...)
	ReasonVLAN                    // VLAN tag, in the frame or in the skb (pod_ingress drops the frame)
	ReasonMalformed               // truncated or invalid header
	ReasonFragment                // IPv4 fragment or IPv6 fragment header
	ReasonICMP                    // ICMP or ICMPv6 (NDP included)
	ReasonProto                   // another protocol, an IPv6 extension header, or IPv4 options
	ReasonTCPFlags                // TCP SYN, FIN or RST, or no ACK
	ReasonTTL                     // pod_ingress: TTL or hop limit <= 1
	ReasonMiss                    // no flow
	ReasonSpoof                   // flow found, wrong interface (or source MAC)
	ReasonAction                  // flow found, its action is not for this hook
	ReasonSlot                    // flow found, its counter slot is out of range
	ReasonLease                   // the fastpath's lease on the flows expired ([Offload.Lease])
	NumReasons
)

var reasonNames = [NumReasons]string{
	"not_ip", "vlan", "malformed", "fragment", "icmp", "proto",
	"tcp_flags", "ttl", "miss", "spoof", "action", "slot", "lease",
}

// String returns the reason's name as used in metrics, e.g. "tcp_flags".
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Stats are the programs' global counters, summed over CPUs (struct
// stats).
type Stats struct {
	// Hit counts packets forwarded by offloaded flows, by [Action]:
	// Hit[ActKernel] and Hit[ActPeer] by pod_ingress, Hit[ActRedirect] by
	// kernel_egress.
	Hit [numActions]uint64
	// Punt counts pod_ingress frames sent to the fastpath, by [Reason].
	Punt [NumReasons]uint64
	// Pass counts kernel_egress frames left to continue to pgw0, by
	// [Reason].
	Pass [NumReasons]uint64
	// PuntUnset counts punts that went to the kernel unchanged because no
	// punt interface was set (no [Offload.AttachKernel]); also in Punt.
	PuntUnset uint64
	// EgressMarked counts punted pod frames kernel_egress saw on pgk0.
	EgressMarked uint64
	// RedirectErrors counts frames dropped because a redirect helper
	// failed.
	RedirectErrors uint64
	// ShortFrames counts frames without a whole Ethernet header that
	// pod_ingress dropped instead of punting (it could not mark them).
	ShortFrames uint64
	// VLANDropped counts VLAN-tagged frames pod_ingress dropped (the
	// kernel holds the tag outside the frame, and a punt would lose it);
	// also in Punt[ReasonVLAN].
	VLANDropped uint64
	// PuntLimited counts frames pod_ingress dropped instead of punting
	// because their pod was over its punt budget ([Offload.SetPuntLimit]);
	// also in Punt.
	PuntLimited uint64
}

// Punt marker: pod_ingress sets a punted frame's destination MAC to
// 06:70 followed by the pod's host veth ifindex, big-endian. 06 is a
// locally administered unicast prefix. The kernel leg's pgw0 must not have
// a MAC starting with 06:70, or frames the kernel sends to it would look
// punted.
const (
	markerByte0 = 0x06
	markerByte1 = 0x70
)

// PuntMarker returns the destination MAC pod_ingress writes into frames it
// punts from the host veth with the given ifindex.
func PuntMarker(ifindex int) [6]byte {
	i := uint32(ifindex)
	return [6]byte{markerByte0, markerByte1, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
}

// PuntedFrom decodes the punt marker: the ifindex of the pod's host veth a
// punted frame came from, and whether dstMAC is a marker at all.
func PuntedFrom(dstMAC [6]byte) (ifindex int, ok bool) {
	if dstMAC[0] != markerByte0 || dstMAC[1] != markerByte1 {
		return 0, false
	}
	i := binary.BigEndian.Uint32(dstMAC[2:])
	if i == 0 || i > 1<<31-1 {
		return 0, false
	}
	return int(i), true
}
