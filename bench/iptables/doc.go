// Package iptables compiles the NetworkPolicies of one node for the
// kernel, the way iptables-based enforcers (kube-router, Calico's iptables
// mode, Azure NPM) do it: ipsets of peer addresses and per-pod chains in the
// filter table.
//
// Layout, for the IPv4 traffic of the node's own (local) pods:
//
//   - FORWARD and INPUT jump to PG-FORWARD and PG-INPUT, which accept
//     packets of tracked connections (conntrack ESTABLISHED,RELATED) first
//     and drop INVALID ones (PG-FORWARD).
//   - A local pod isolated for egress gets a chain PG-EGR-<hash>, reached
//     by its source address from both; a rule of a selecting policy that
//     matches RETURNs (the ingress side is judged next), the chain ends in
//     DROP.
//   - A local pod isolated for ingress gets a chain PG-ING-<hash>, reached
//     by its destination address from PG-FORWARD; a matching rule
//     ACCEPTs, the chain ends in DROP. Traffic from the node's own
//     addresses leaves through OUTPUT and is not judged (podgate's
//     --allow-node-to-pod).
//   - Peers are ipsets: hash:ip sets of the pod addresses a namespace and
//     pod selector pair resolves to, hash:net sets for ipBlocks (except
//     entries as nomatch, 0.0.0.0/0 as two /1 halves since hash:net takes no
//     /0). Identical sets are shared; a set's name is a hash of its
//     contents.
//   - Ports: -p PROTO --dport N or N:M; a rule without ports matches every
//     protocol. Named ports are resolved on the destination pod: for
//     ingress on the chain's pod, for egress per destination pod, whose
//     addresses are then grouped into one set per resolved port.
//
// [Compile] makes the [Rules]; [Apply] loads them into a network
// namespace with ipset and iptables-legacy-restore, [Clear] removes them,
// [SetMemory] reports the kernel memory of the sets. The bench harness
// measures this kernel baseline against podgate.
package iptables
