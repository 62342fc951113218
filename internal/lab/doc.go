// Package lab builds a Kubernetes node out of network namespaces from the
// same manifests podgate reads, runs the podgate agent on it, and checks
// with real connections that what the policy engine decides is what
// happens on the wire. `podgate lab`, `make demo`, tests and the bench
// harness use it.
//
// # Topology
//
// [Build] makes, for one node (Spec.NodeName, or the most common
// spec.nodeName among the pods):
//
//	pod netns (one per pod)         node netns                          outside netns
//	eth0: podIPs /32 /128  ─────── vethN-POD (no address)               eth0: OutsideHost IPs /32 /128
//	default via 169.254.1.1        route podIP dev vethN-POD            default via 169.254.1.1
//	  and fe80::1 onlink           lo: node IPs /32 /128                  and fe80::1 onlink
//	                               uplink0 (no address) ──────────────── eth0
//	                               route outsideIP via 169.254.0.2
//	                                 (fe80::2) dev uplink0 onlink
//	                               ip_forward=1, ipv6 forwarding=1
//	                               the agent, and its pgw0/pgk0
//
// Pod links are ptp veths in the style of Calico or the CNI ptp plugin:
// the pod end carries host addresses and default routes via link-local
// gateways marked onlink; the node end has no address, only a host route
// per pod address. The outside link looks like a node's uplink instead:
// the node reaches the outside addresses through a gateway route, so an
// agent that finds pod veths by their host routes does not take it for a
// pod. Permanent neighbour entries resolve every gateway and address on
// both sides, so nothing depends on ARP or NDP answers (an agent may still
// answer them). Pods on other nodes and pods that take no part in policy
// are left out ([Lab.Notes]). The node's addresses ([Lab.Node]) are on the
// node namespace's loopback so that the node can be a probe source
// (kubelet probes); by default they are the first free address of the /24
// (IPv6: /64) of the pods' addresses. Outside hosts (kind OutsideHost,
// apiVersion lab.podgate.dev/v1alpha1, spec.ips) share the outside
// namespace; each is an endpoint of its own, bound to its own addresses.
//
// # Services
//
// kube-proxy's part is real: for the Services of the manifests (and their
// EndpointSlices), [Build] programs kube-proxy-style DNAT in the node
// namespace's nat table with iptables-restore and ip6tables-restore (the
// Debian package iptables; Build fails with [ErrNoIPTables] when it is
// missing): PREROUTING and OUTPUT jump to PGLAB-SERVICES, which matches
// each ClusterIP, protocol and Service port and picks one of the port's
// ready backends at random (-m statistic --mode random), DNATing to the
// backend's address and target port; a pod's connection to its own
// Service is masqueraded, as kube-proxy does. Each ClusterIP also gets a
// route out of the node's loopback, so that the node's own connections
// pass the routing decision before the OUTPUT DNAT. Only the node
// namespace is changed, and it is deleted with the lab. Backends that are
// not lab endpoints (pods of other nodes) are left out, with a note.
// [Lab.Services] lists what was programmed; a probe's destination may be a
// ClusterIP or "Service namespace/name" (never its source), and its echo
// servers run on the backends. The DNAT follows the manifests given to
// Build: [Lab.Apply] changes what the agent sees, not the node's DNAT.
//
// Names: the lab's ID is PREFIX-PID-XXXXXX (prefix "pglab" by default);
// namespaces are ID-node, ID-NAMESPACE.POD and ID-outside; the lab's
// directory os.TempDir()/ID holds the agent's manifest directory, the agent
// log and an owner record. Nothing in the caller's own network namespace
// is changed.
//
// # Agent
//
// [Lab.StartAgent] runs `podgate agent --manifests DIR --node-name NODE
// --metrics-addr 127.0.0.1:PORT` in the node namespace and waits for
// /readyz, asked from inside the node namespace ([Lab.HTTPClient]).
// [Lab.StopAgent] signals it and waits. Give each lab's agent its own
// state directory (`--state-dir` under [Lab.Dir], as `podgate lab` does):
// agents of labs running at the same time must not share /run/podgate. The
// manifest directory is the
// lab's own copy: [Lab.Apply], [Lab.WriteManifest] and
// [Lab.RemoveManifest] change it atomically, file by file, while the agent
// watches it, and recompile the lab's expectations.
//
// # Probes
//
// Probes ([Lab.Probe], [Lab.ProbeResult], [Lab.Matrix]) are real
// connections from a socket created in the source's namespace (inside
// [netns.Namespace.Do]; a socket keeps its namespace), bound to the
// source's address, to echo servers bound to the destination's address:
// TCP connect and echo, UDP echo with retries, SCTP association and echo,
// ICMP or ICMPv6 echo answered by the destination's kernel. Each probe is
// bounded by Spec.ProbeTimeout; Matrix runs Spec.Parallel at a time and
// repeats a timed-out probe that was expected to work ([MatrixRetries]).
// [Lab.Dial] returns a connection to an echo server for longer transfers.
//
// SCTP: the lab machines' kernel has no SCTP, so associations run in user
// space (github.com/pion/sctp) over raw IP sockets of protocol 132. pion
// always uses ports 5000/5000; a shim between pion and the socket rewrites
// the common header's ports (and recomputes the CRC32c) so that each
// association carries the probe's ports on the wire, and checks the
// CRC32c of what it receives. See sctp.go.
//
// # Expectations
//
// Each result carries what was expected: with [EnforcerPodgate] the
// policy table compiled from the agent's manifests decides
// ([PolicyExpectation]: a pod to itself is always allowed, the node as a
// source too; a probe to a Service needs the source's egress, judged
// against every ready backend, and every backend's ingress); with
// [EnforcerNone] everything is expected to work
// ([AllowAll]). [Judge] re-judges results against another expectation;
// [WriteTable] prints truth tables whose cells show agreement ("." and
// "X") or disagreement ("!" allowed but expected denied, "?" denied but
// expected allowed).
//
// # Cleanup
//
// [Lab.Close] stops the agent, closes every socket, deletes every
// namespace and removes the directory; [Build] does the same when it
// fails. A lab killed with SIGKILL leaves its namespaces (and perhaps its
// agent) behind: [Cleanup] finds them by prefix under /run/netns, checks
// that the owner is gone, stops processes still in them and deletes them.
//
// Everything needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW).
package lab
