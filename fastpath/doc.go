// Package fastpath is podgate's data plane: one worker goroutine that owns
// the ports (AF_XDP sockets: the one on the gateway end of the kernel leg,
// which receives every frame the engine handles, and a transmit-only one
// on each local pod's host-side veth), the connection-tracking table and
// the counters, and forwards or drops every frame it receives. The node's
// plumbing (veths, routes, programs) is package node's; this package sees
// only ports and frames.
//
// # Reading order
//
// engine.go: the [Engine], its ports and the commands that change them;
// process.go: a frame's way from receive to forward or drop; verdict.go:
// how a packet is judged (conntrack, the policy table, cuts); and then the
// packages below: packet (parsing and rewriting), conntrack (the flow
// table), xsk (AF_XDP sockets and the XDP program), offload (the kernel's
// established-flow table, programmed from kernelflows.go). Around them:
// accounting.go and counters.go (what is counted), metrics.go, events.go
// and flowlog.go (flow records), idle.go (waiting for work).
//
// # Topology
//
// A pod's frames reach the worker on the kernel port: the offload's TC
// program on the pod's veth punts every frame it does not forward itself
// to the kernel leg, marked with the veth's index ([offload.PuntedFrom]).
// A pod's default gateway is its host-side veth: the worker answers the
// pod's ARP and neighbor solicitations with that veth's MAC, out of the
// pod's port. Frames between
// two local pods are switched here after one policy decision (the source's
// egress and the destination's ingress). Everything else goes through the
// kernel leg: frames from pods to other addresses leave on the kernel port
// (egress judged), frames from the kernel to pods arrive there (ingress
// judged; the source's egress too when the source is a local pod, which is
// how Service traffic that kube-proxy DNATed back to a local pod is judged
// after DNAT; the replies of such a flow go back through the kernel leg,
// whose conntrack reverses the DNAT). The worker answers the kernel's ARP
// and neighbor solicitations for local pod addresses with the kernel
// port's MAC.
//
// # Per packet
//
// Parse (bounds-checked, [packet.Parse]); for IP: anti-spoofing (a pod may
// send only from its own addresses), conntrack lookup; a tracked flow
// whose verdict was computed with an older policy table is judged again
// (and cut if now denied, unless [Config.KeepEstablished]); a new flow is
// judged by the [table.Table] and inserted if allowed; ICMP errors pass
// when they relate to a tracked flow; fragments follow their first
// fragment. Forwarded frames are copied into a frame of the output port,
// their TTL or hop limit decremented, their MACs rewritten and partial
// TCP/UDP checksums (left by checksum offload in the sending pod) completed.
//
// A local pod whose address the policy table does not know yet is treated
// as deny-all ("unknown_endpoint"): the port exists before the table knows
// the pod, and nothing may reach it against its policies in that window.
//
// Nothing allocates, locks or makes a system call per packet: ports are
// flushed once per batch, the policy table is an atomic snapshot loaded once
// per batch, counters are worker-local and published with atomic stores
// once per batch.
package fastpath
