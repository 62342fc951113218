// Package node is the node side of the podgate agent: everything that
// touches the node's network configuration, and no packets. It creates the
// kernel leg, finds the local pods' veths, gives each one a fastpath port
// (a transmit-only AF_XDP socket, and the offload's pod_ingress TC program
// on the veth), moves the routes to the pods onto the kernel leg, follows
// changes through netlink, and undoes all of it on a graceful stop or
// recovers it after a crash. It drives a [fastpath.Engine] (ports in and
// out) and the [offload.Offload] (programs on and off); neither knows it.
//
// # Topology
//
//	pod eth0 ── veth ── hostveth ─[TC pod_ingress]─ punted ─▶ pgk0 ── veth ── pgw0 ==[XDP→XSK]==▶ fastpath
//	                       ▲                                                                    │
//	                       └────────────── transmit-only AF_XDP socket on hostveth ◀────────────┘
//
// The kernel leg is a veth pair made by the Node: pgw0 (the gateway end,
// with the XDP program and the kernel port's socket, no addresses, IPv6
// address generation off so it never speaks NDP) and pgk0 (the kernel
// end, with an IPv6 link-local address only, so the kernel can resolve
// pod IPv6 addresses there; the engine answers ARP and NDP for pod
// addresses on pgw0). Its MTU is the largest pod veth MTU that fits a UMEM
// frame, at least 1500; a route via pgk0 to a pod with a smaller MTU
// carries that MTU.
//
// # Pod discovery
//
// A pod port is a veth (not the kernel leg, not enslaved, with
// [Config.InterfacePrefix] if set) with main-table host routes to pod
// addresses (/32 scope link, /128) without gateway: the route a ptp CNI
// installs (kindnet, Calico, Azure CNI transparent mode, CNI ptp). Pods
// are found from the kernel, not from the policy table, on purpose: a pod
// whose veth exists before the agent hears about it from the API server
// is intercepted anyway, and the engine denies it as an unknown endpoint
// (fail-closed) until the table knows it.
//
// # Plumbing order
//
// The kernel leg comes first: its socket, the XDP program (attached
// natively through a BPF link pinned in the offload's pin directory), the
// kernel port in the engine, then kernel_egress on pgk0, from which on
// pod_ingress punts there. For a new pod veth: remove an XDP program an
// older podgate version left there, open the transmit-only socket (queue
// 0), attach pod_ingress to the veth's TCX ingress, add the port to the
// engine with the pod's MAC (read from the veth's peer), write the state
// file, and only then replace each route `podIP dev veth` by `podIP dev
// pgk0` with the same key and attributes (route replace: the address is
// never without a route). No XDP program sits on a pod veth, so the pod
// keeps TSO and checksum offload. The state file is written before the
// move because afterwards the kernel no longer says which veth an address
// belongs to. If the port cannot be set up, the error is logged, the veth
// stays routed by the kernel without enforcement, and the next reconcile
// tries again; a port none of whose routes could be moved is detached
// again; a route on pgk0 always has its port in the engine.
//
// Until the engine knows a pod's MAC it drops the frames it would send to
// the pod (counted as no_neighbor): the pod's TCP would discard a frame to
// the broadcast address. The Node therefore reads the MAC of the veth's
// peer (the pod's eth0) through netlink (IFLA_TARGET_NETNSID) and passes
// it as PeerMAC. This matters after a restart, when pods are silent (their
// gateway neighbour entry is still valid) and nothing would teach the
// engine their MAC.
//
// Changes are followed through netlink link, route and address
// subscriptions, debounced ([Config.Debounce]), plus a full reconcile
// every [Config.ResyncInterval]. Reconciling is level-triggered: a veth
// that disappears loses its port and its routes on pgk0; a CNI that adds
// `podIP dev veth` again (a restarted pod, a new veth) gets it moved
// again; addresses that move between veths move between ports.
//
// # Stop and crash
//
// When Run's context is done, each port's routes go back on its veth
// before its program is detached (so the pod is never without a route,
// and its frames go to the kernel as soon as nobody reads its socket),
// then the port leaves the engine and its socket closes; then the kernel
// leg is deleted and the state file removed. Pods then reach each other
// and the outside through the kernel as before podgate, without
// enforcement.
//
// If the agent dies instead, its programs stay: pod_ingress on every pod
// veth and the XDP program on pgw0 are attached through BPF links pinned
// under the offload's pin directory (--bpf-dir). Closing the process's
// sockets empties the XDP program's XSKMAP, and the program then drops
// every frame: the pods' punted frames are dropped (fail-closed) while the
// agent is down, which is the point of an enforcer. Routes stay on pgk0
// and the state file stays. The next start reads the state file, reuses
// the kernel leg, re-adds the ports of the veths that still exist (same
// name and ifindex) and deletes the routes of the others. The pinned links
// are updated in place to the new programs (BPF_LINK_UPDATE), not detached
// and attached again: on veth each of those waits for an RCU grace period,
// and in between a flooding pod got 50 to 160 frames past any check in the
// tests. (A program that a podgate version before BPF links attached to
// pgw0 with netlink cannot be updated so: it is removed, then the link
// attached.) A veth whose port cannot be set up again gets its routes back
// and its program removed (unenforced, logged). Programs left on other
// veths (pod_ingress links of pods now gone, XDP programs of older
// versions) are removed on the first reconcile.
//
// Only routes the record explains are ever deleted: a route on pgk0 to an
// address that neither the state file nor the running Node recorded (the
// file was lost, or someone else added the route) may belong to a live pod
// whose veth the kernel no longer names. It stays where it is (that pod
// stays cut off) and is logged once; if the pod's route appears on its
// veth again, the Node takes it over as usual. A graceful stop then keeps
// the kernel leg (without its program) rather than delete such routes with
// it, and reports the restore as incomplete.
//
// # One agent per node
//
// [Node.Run] (or the agent, before anything else) takes an exclusive
// flock on [LockFile] in the state directory and holds it until it
// returns (the process's lifetime). A second agent with the same state
// directory fails with [ErrLocked], naming the lock file and the holder's
// PID, before it touches a program, a route or the state file: two agents
// on one node would take each other's sockets, programs, routes and state
// file apart. Agents with different state directories in one network
// namespace are not detected.
//
// A graceful stop leaves the pods unenforced until the next start; killing
// the agent (SIGKILL) instead keeps them cut off until then. Which one an
// upgrade should use is the operator's choice.
//
// # Known interactions
//
// A CNI that adds its route with `route add` (CNI ptp) fails with EEXIST
// while the route of a deleted pod with the same address is still on
// pgk0, that is for one debounce period plus a reconcile after the old
// veth disappeared; kubelet retries the sandbox. A CNI daemon that
// periodically rewrites its routes (Calico's Felix) takes them back to
// its veths; each time the route event makes the Node move them again,
// and the pod's ingress is unenforced in between.
//
// # Namespaces and threads
//
// [Node.Run] acts in the network namespace of the calling OS thread and
// locks its goroutine to that thread: netlink handles, subscriptions,
// XDP attachment and socket binding all happen there. The agent runs in
// the host's namespace; tests call Run inside netns.Namespace.Do of a node
// namespace.
package node
