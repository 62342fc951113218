// Package netns is a small lab helper for Linux network namespaces, used by
// tests, the demo and the bench harness to build a node out of namespaces.
//
// Namespaces made here are named: they are bind-mounted under /run/netns,
// exactly like the ones made by `ip netns add`, so `ip netns list` and
// `ip netns exec NAME ...` see them while they exist. As iproute2 does,
// /run/netns is first made a mount of its own with shared propagation, so
// that another program's `ip netns add` cannot hide them (and make their
// deletion fail with EBUSY).
//
// Thread discipline. A network namespace belongs to an OS thread, not to a
// process. Nothing in this package ever changes the namespace of a thread it
// did not lock for itself: every switch happens on a fresh goroutine that is
// locked to its OS thread; the thread is switched into the target namespace,
// the work runs, and the thread is switched back. If switching back fails the
// goroutine exits without unlocking, so the Go runtime destroys that thread
// instead of reusing it. The calling process's own network namespace (the
// host's, in a test) is never configured by this package: links, addresses,
// routes and neighbours are set through a [netlink.Handle] whose sockets were
// opened inside the target namespace.
//
// Kernel objects keep the namespace they were created in. A socket opened
// inside [Namespace.Do] stays in that namespace and may be used from any
// goroutine afterwards, which is how tests run TCP/UDP probes in a pod
// namespace without switching threads per packet.
//
// Deleting a namespace removes its name and drops this package's reference;
// the kernel destroys the namespace (and every veth with an end in it) once
// the last reference (open sockets, processes, file descriptors) is gone.
//
// All functions need CAP_SYS_ADMIN and CAP_NET_ADMIN (root in practice);
// [NewForTest] skips the test when not running as root.
package netns
