// Package lab builds a Kubernetes cluster out of network namespaces from
// the same manifests podgate reads, runs a podgate agent on each of its
// nodes, and checks with real connections that what the policy engine
// decides is what happens on the wire. `podgate lab`, `make demo`, tests
// and the bench harness use it.
//
// # Nodes
//
// [Plan] decides the nodes: every node the pods name in spec.nodeName, by
// name (Spec.Nodes adds lab-node-K up to that many; pods without
// spec.nodeName are spread over all nodes round-robin), or with
// Spec.NodeName that node alone, leaving out the pods of the others. A lab
// of one node (none named, or one) is built as below; a lab of several
// adds an underlay.
//
// # Topology of one node
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
// answer them). Pods that take no part in policy are left out
// ([Lab.Notes]). The node's addresses are on the node namespace's loopback
// so that the node can be a probe source (kubelet probes); by default they
// are the first free address of the /24 (IPv6: /64) of the pods'
// addresses (Spec.NodeIPs). Outside hosts (kind OutsideHost, apiVersion
// lab.podgate.dev/v1alpha1, spec.ips) share the outside namespace; each is
// an endpoint of its own, bound to its own addresses. An outside address
// may be IPv4 link-local, like a cloud's instance metadata service at
// 169.254.169.254, as long as it is not one of the lab's gateways
// (169.254.1.1, 169.254.0.2); IPv6 link-local addresses are not routed.
//
// # Topology of several nodes
//
//	node netns (one per node, pods as above)    underlay netns      outside netns
//	uplink0: node IPs /24 /64  ──────────────── nodeK ─┐            eth0: OutsideHost IPs
//	route otherPodCIDR via otherNodeIP                 br0 ── outside ── route nodeSubnet dev eth0
//	route otherPod/32 via otherNodeIP                  (bridge)         route pod(CIDR) via its nodeIP onlink
//	route outsideIP via 169.254.0.2 onlink
//
// The nodes and the outside namespace sit on one bridge in an underlay
// namespace, like VMs on the article's VNET or kind's nodes on a Docker
// network. Each node's addresses are on its uplink0, in the node subnets
// (Spec.NodeSubnets; by default the first /24 and /64 from
// [DefaultNodeSubnet4] and [DefaultNodeSubnet6] on that hold no address of
// the manifests). A node whose pods all lie in a /24 (/64) that holds
// nothing else of the lab has it as its pod CIDR, which the other nodes
// and the outside route to it, as kubenet or kindnet do; other pods are
// routed one by one, as Azure CNI's are. Every route between namespaces
// goes via a gateway, so no agent takes the uplink for a pod's veth; every
// address on the underlay is resolved by permanent neighbour entries.
// hostNetwork pods live in their node's namespace with its addresses
// ([KindHostNetwork]): policy sees them as that node.
//
// # Services
//
// kube-proxy's part is real: for the Services of the manifests (and their
// EndpointSlices), [Build] programs kube-proxy-style DNAT in every node
// namespace's nat table with iptables-restore and ip6tables-restore (the
// Debian package iptables; Build fails with [ErrNoIPTables] when it is
// missing): PREROUTING and OUTPUT jump to PGLAB-SERVICES, which matches
// each ClusterIP, protocol and Service port and picks one of the port's
// ready backends at random (-m statistic --mode random), DNATing to the
// backend's address and target port, on whatever node it runs; a pod's
// connection to its own Service is masqueraded, as kube-proxy does. Each
// ClusterIP also gets a route out of each node's loopback, so that the
// node's own connections pass the routing decision before the OUTPUT
// DNAT. Only the node namespaces are changed, and they are deleted with
// the lab. Backends that are not lab endpoints (pods of nodes left out
// with Spec.NodeName) are left out, with a note.
// [Lab.Services] lists what was programmed; a probe's destination may be a
// ClusterIP or "Service namespace/name" (never its source), and its echo
// servers run on the backends. The DNAT follows the manifests given to
// Build: [Lab.Apply] changes what the agents see, not the nodes' DNAT.
//
// Names: the lab's ID is PREFIX-PID-XXXXXX (prefix "pglab" by default);
// namespaces are ID-node (one node) or ID-underlay and ID-node-NAME
// (several), ID-NAMESPACE.POD and ID-outside; the lab's directory
// os.TempDir()/ID holds the agents' manifest directory, the agent logs,
// their state directories (several nodes) and an owner record. Nothing in
// the caller's own network namespace is changed.
//
// [Lab.MovePod] moves a pod to another node with new addresses, as a pod
// deleted and created again there looks on the wire: its veth is deleted
// from the old node and a new one made on the new node (same namespace),
// and the underlay's routes follow.
//
// # Agents
//
// [Node.StartAgent] runs `podgate agent --manifests DIR --node-name NODE
// --metrics-addr 127.0.0.1:PORT` in a node's namespace and waits for
// /readyz, asked from inside that namespace ([Node.HTTPClient]); all nodes
// read the same manifest directory, as a DaemonSet's agents watch one
// cluster. With Spec.AgentKubeconfig the agents watch a Kubernetes API
// server instead (--kubeconfig): one whose address is on the loopback of
// the lab's own namespace (a test's kube-apiserver) is relayed into each
// node's namespace, each agent getting a kubeconfig that names its
// node's relay. [Lab.StartAgent] starts one on every node at once;
// [Lab.StopAgent], [Lab.KillAgent] and [Lab.RestartAgent] (and the same
// methods of [Node]) stop, kill and restart them. In a lab of one node
// give the agent its own state directory (`--state-dir` under [Lab.Dir],
// as `podgate lab` does): agents of labs running at the same time must
// not share /run/podgate; in a lab of several the lab gives each node's
// agent its own ([Node.StateDir]). [Node.Metrics] and [Node.Flows] read a
// node's agent's /metrics and /flows. The manifest directory is the lab's
// own copy: [Lab.Apply], [Lab.WriteManifest] and [Lab.RemoveManifest]
// change it atomically, file by file, while the agents watch it, and
// recompile the lab's expectations.
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
// [Lab.OpenStream] opens a long-lived TCP or UDP connection on which one
// end pushes numbered lines at an interval and the other only receives
// ([Stream]): the probe for connections that a policy change must cut
// ([Stream.CheckCut]) or leave alone ([Stream.WaitFlowing]).
//
// # Who denied
//
// [Lab.Matrix] (and [Lab.Attribute] for single probes) matches every
// failed probe with the running agents' records of denied flows (their
// /flows): Result.DeniedBy names the node whose agent denied it, the side
// (egress, judged at the source's node; ingress, at the destination's)
// and the policies. It is taken from the agents, never from the
// expectation; [SummarizeDenials] counts denials recorded at the wrong
// node or not at all.
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
// policy table compiled from the agents' manifests decides
// ([PolicyExpectation]: a pod to itself is always allowed, a node or a
// hostNetwork pod to the pods of its own node too, to other nodes' pods as
// their ingress says; a probe to a Service needs the source's egress,
// judged against every ready backend, and every backend's ingress); with
// [EnforcerNone] everything is expected to work
// ([AllowAll]). [Judge] re-judges results against another expectation;
// [WriteTable] prints truth tables whose cells show agreement ("." and
// "X") or disagreement ("!" allowed but expected denied, "?" denied but
// expected allowed); with several nodes, rows and columns name their
// endpoints' nodes and denied cells the agent that denied them ("X
// egress@n1").
//
// # Cleanup
//
// [Lab.Close] stops the agents, closes every stream and socket, deletes
// every namespace and removes the directory; [Build] does the same when it
// fails. A lab killed with SIGKILL leaves its namespaces (and perhaps its
// agent) behind: [Cleanup] finds them by prefix under /run/netns, checks
// that the owner is gone, stops processes still in them (the agents) and
// deletes them.
//
// Everything needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW).
package lab
