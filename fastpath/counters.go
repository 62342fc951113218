package fastpath

import (
	"fmt"
	"sync/atomic"

	"github.com/podgate/podgate/fastpath/packet"
)

// Drop is why the fastpath dropped a frame. The first values are the
// parser's statuses ([packet.Status]); the rest are the fastpath's own.
type Drop uint8

// Drop reasons beyond the parser's.
const (
	// DropDeniedEgress: the source pod's egress policy denies the flow.
	DropDeniedEgress Drop = packet.NumStatuses + iota
	// DropDeniedIngress: the destination pod's ingress policy denies it.
	DropDeniedIngress
	// DropUnknownEndpoint: a local pod's address is not (yet) in the policy
	// table; its traffic is denied until it is.
	DropUnknownEndpoint
	// DropSpoofedSource: a pod sent from an address that is not its own.
	DropSpoofedSource
	// DropSpoofedMAC: a pod sent from a MAC other than its own.
	DropSpoofedMAC
	// DropNoRoute: the kernel leg sent a frame for an address that is not a
	// local pod's.
	DropNoRoute
	// DropNotRouted: multicast, broadcast, link-local or other traffic that
	// the gateway does not route (DHCP, MLD, router solicitations, ...).
	DropNotRouted
	// DropInvalidTCP: invalid TCP flags, or a TCP packet that does not fit
	// its flow's state, or cannot start one (SYN-ACK, FIN, RST without a
	// flow).
	DropInvalidTCP
	// DropICMPUnrelated: an ICMP error that relates to no tracked flow.
	DropICMPUnrelated
	// DropFragmentNoState: a non-first fragment whose first fragment was not
	// seen (or was denied).
	DropFragmentNoState
	// DropTxRingFull: no free frame or TX slot on the output port.
	DropTxRingFull
	// DropTooBig: the frame does not fit a frame of the output port.
	DropTooBig
	// DropNeighbor: an ARP or NDP message the gateway consumed or ignored
	// (replies and gratuitous messages; requests it answers are not drops).
	DropNeighbor
	// DropNoNeighbor: the destination pod's MAC is not known (it was not
	// given and the pod has sent nothing yet).
	DropNoNeighbor
	// DropTCPNoFlow: a TCP segment without SYN of a connection that no
	// flow tracks, outside the pick-up window after a start: it cannot
	// start a flow (connections start with a SYN).
	DropTCPNoFlow
	// DropNoPort: a frame punted by the TC program of a veth that is no
	// (longer a) port of the engine.
	DropNoPort
	// DropConntrackFull: the flow table is full and the pod that would own
	// the new flow holds its fair share of it, with no flow of its own to
	// make room (see conntrack.Table.InsertFor).
	DropConntrackFull

	// NumDrops is the number of Drop values.
	NumDrops = int(DropConntrackFull) + 1
)

// String returns the reason as a snake_case metric label.
func (d Drop) String() string {
	if d < packet.NumStatuses {
		return packet.Status(d).String()
	}
	switch d {
	case DropDeniedEgress:
		return "denied_egress"
	case DropDeniedIngress:
		return "denied_ingress"
	case DropUnknownEndpoint:
		return "unknown_endpoint"
	case DropSpoofedSource:
		return "spoofed_source"
	case DropSpoofedMAC:
		return "spoofed_mac"
	case DropNoRoute:
		return "no_route"
	case DropNotRouted:
		return "not_routed"
	case DropInvalidTCP:
		return "invalid_tcp"
	case DropICMPUnrelated:
		return "icmp_unrelated"
	case DropFragmentNoState:
		return "fragment_no_state"
	case DropTxRingFull:
		return "tx_ring_full"
	case DropTooBig:
		return "too_big"
	case DropNeighbor:
		return "neighbor"
	case DropNoNeighbor:
		return "no_neighbor"
	case DropTCPNoFlow:
		return "tcp_no_flow"
	case DropNoPort:
		return "no_port"
	case DropConntrackFull:
		return "conntrack_full"
	}
	return fmt.Sprintf("drop_%d", uint8(d))
}

// Path is the way a forwarded frame took.
type Path uint8

// Paths of forwarded frames.
const (
	// PodToPod: between two local pods.
	PodToPod Path = iota
	// PodToKernel: from a local pod out of the kernel leg (egress).
	PodToKernel
	// KernelToPod: from the kernel leg to a local pod (ingress).
	KernelToPod
	// GatewayReply: ARP replies, neighbor advertisements and TCP resets
	// that the gateway made and sent.
	GatewayReply

	// NumPaths is the number of Path values.
	NumPaths = int(GatewayReply) + 1
)

// String returns the path as a snake_case metric label.
func (p Path) String() string {
	switch p {
	case PodToPod:
		return "pod_to_pod"
	case PodToKernel:
		return "pod_to_kernel"
	case KernelToPod:
		return "kernel_to_pod"
	case GatewayReply:
		return "reply"
	}
	return fmt.Sprintf("path_%d", uint8(p))
}

// Counter indexes. The layout is flat so that publication is one loop.
const (
	cRxPackets  = 0
	cRxBytes    = 1
	cFwdPackets = 2                      // + Path
	cFwdBytes   = cFwdPackets + NumPaths // + Path
	cDrops      = cFwdBytes + NumPaths   // + Drop
	cFlowsNew   = cDrops + NumDrops      // flows allowed and inserted
	cFlowsCut   = cFlowsNew + 1          // established flows cut by a new table
	cRechecks   = cFlowsCut + 1          // flows judged again after a table change
	cBatches    = cRechecks + 1
	cCutDrops   = cBatches + 1  // packets dropped on the tombstone of a cut flow
	cResets     = cCutDrops + 1 // TCP resets sent for cut connections
	// cOffloaded is a gauge: flows in the kernel's table.
	cOffloaded       = cResets + 1
	cOffloadInstalls = cOffloaded + 1       // flows installed in the kernel
	cOffloadRemoves  = cOffloadInstalls + 1 // flows removed from it
	cOffloadErrors   = cOffloadRemoves + 1  // failed calls of the flow table
	numCounters      = cOffloadErrors + 1
)

// counters are the worker's own counters (plain integers) and their
// published copy (atomics), written once per batch.
type counters struct {
	local     [numCounters]uint64
	published [numCounters]uint64
	shared    [numCounters]atomic.Uint64
}

func (c *counters) drop(d Drop)         { c.local[cDrops+int(d)]++ }
func (c *counters) add(i int, n uint64) { c.local[i] += n }

// publish stores the counters that changed since the last publication.
func (c *counters) publish() { publish(c.local[:], c.published[:], c.shared[:]) }

// publish stores in shared the local counters that differ from their last
// published value, and records them as published. It runs once per batch
// on the worker; the three slices have the same length.
func publish(local, published []uint64, shared []atomic.Uint64) {
	for i := range local {
		if local[i] != published[i] {
			published[i] = local[i]
			shared[i].Store(local[i])
		}
	}
}

// Stats is a snapshot of the fastpath's counters. Counters only grow.
type Stats struct {
	RxPackets, RxBytes uint64
	// Forwarded packets and bytes, by [Path].
	FwdPackets, FwdBytes [NumPaths]uint64
	// Drops by [Drop] reason.
	Drops [NumDrops]uint64
	// FlowsNew counts flows judged allowed and tracked; FlowsCut
	// established flows that a new policy table denied; Rechecks flows
	// judged again after a table change.
	FlowsNew, FlowsCut, Rechecks uint64
	// Batches counts receive batches that had frames.
	Batches uint64
	// CutDrops counts packets dropped on the tombstone of a cut flow
	// (they are also counted in Drops, under the reason of the cut);
	// Resets the TCP resets sent to the senders of such packets.
	CutDrops, Resets uint64
	// Offloaded is the number of flows in the kernel's table now;
	// OffloadInstalls and OffloadRemoves count flows installed in and
	// removed from it, OffloadErrors failed calls of it.
	Offloaded, OffloadInstalls, OffloadRemoves, OffloadErrors uint64
}

func (c *counters) snapshot() Stats {
	var s Stats
	s.RxPackets = c.shared[cRxPackets].Load()
	s.RxBytes = c.shared[cRxBytes].Load()
	for p := range NumPaths {
		s.FwdPackets[p] = c.shared[cFwdPackets+p].Load()
		s.FwdBytes[p] = c.shared[cFwdBytes+p].Load()
	}
	for d := range NumDrops {
		s.Drops[d] = c.shared[cDrops+d].Load()
	}
	s.FlowsNew = c.shared[cFlowsNew].Load()
	s.FlowsCut = c.shared[cFlowsCut].Load()
	s.Rechecks = c.shared[cRechecks].Load()
	s.Batches = c.shared[cBatches].Load()
	s.CutDrops = c.shared[cCutDrops].Load()
	s.Resets = c.shared[cResets].Load()
	s.Offloaded = c.shared[cOffloaded].Load()
	s.OffloadInstalls = c.shared[cOffloadInstalls].Load()
	s.OffloadRemoves = c.shared[cOffloadRemoves].Load()
	s.OffloadErrors = c.shared[cOffloadErrors].Load()
	return s
}
