// Package xsk is the AF_XDP port layer of podgate's fastpath: one AF_XDP
// socket per interface queue, each with its own UMEM, and the small XDP
// program that redirects every frame of an interface into its socket.
//
// # Data path
//
// A [Socket] owns a UMEM of Config.NumFrames frames and the four rings of
// the AF_XDP ABI. Frame bookkeeping is O(1): a stack of free frame indices
// and one ownership byte per frame, no scans. A worker goroutine runs
// batches:
//
//	n := s.Receive(batch)            // RX ring → caller, consumer published once
//	for _, f := range batch[:n] {
//		out, ok := t.Alloc()         // frame on the destination socket
//		... copy(t.Bytes(out), s.Bytes(f)), rewrite, out.Len = ...
//		s.Release(f)                 // back to s's free frames at once
//		t.Transmit(out)
//	}
//	s.Flush(); t.Flush()             // fill/TX producers published, ≤1 sendto each
//
// Forwarding between ports copies the frame: every port has its own UMEM,
// so a port's memory is never referenced by another port's rings and a slow
// port cannot hold another port's buffers. When every socket is idle the
// worker sleeps in one poll(2) on all of them ([Poller]).
//
// No method allocates, locks or makes a system call per frame. Flush makes
// at most one sendto(2) per batch, only if TX frames are pending and the
// kernel asked for a wakeup (XDP_USE_NEED_WAKEUP, used when the kernel has
// it; in copy mode the kernel always asks, as it only transmits inside
// sendto or poll). The per-call TX budget of copy mode (32 frames) is raised
// to the ring size where the kernel allows it (XDP_MAX_TX_SKB_BUDGET, Linux
// 6.17+), so one sendto sends the whole batch.
//
// The copy costs little: the user-space side of forwarding a 1514-byte
// frame is about 50 ns with the copy and 15 ns without (BenchmarkForwardBatch),
// against microseconds the kernel spends per frame in copy-mode RX and TX
// (veth has no zero-copy AF_XDP, so a shared UMEM would only save the
// user-space copy).
//
// This package does not use github.com/asavie/xdp: its socket scans every
// frame per call, sends one sendto per Transmit and is configured through
// package globals; its XDP program needs two map lookups per frame and is
// attached through those globals.
//
// # XDP program and attach mode
//
// [Program] is per interface: an XSKMAP and `bpf_redirect_map(&xsks,
// rx_queue_index, fallback)`. It is attached through a BPF link
// (cilium/ebpf's link.AttachXDP), which the kernel never lets replace a
// program it does not own. [Program.AttachPinned] pins the link on a
// bpffs, so that the program outlives a crashed process (its frames are
// then dropped: fail closed), and a restarted podgate updates the pinned
// link in place. [RemoveStale] removes the programs that older podgate
// versions attached with netlink (to pod veths, and to the kernel leg),
// recognised by [ProgramName].
//
// On veth use [Native] mode. Both modes redirect into AF_XDP sockets (copy
// mode), but only native mode keeps every frame within a UMEM frame:
// attaching a native XDP program to a veth makes the kernel clear TSO/GSO
// (NETIF_F_GSO_SOFTWARE) on its peer and cap the peer MTU, so the pod
// segments TCP itself, and veth refuses frames above the receiving end's
// MTU (plus 18 bytes). In [Generic] mode the program sees the peer's TSO
// super-frames (up to 64 KiB); the kernel drops those at the socket
// (counted in Stats.RxDropped) and bulk TCP stalls, unless the pod's own
// interface limits GSO (gso_max_size, or ethtool -K eth0 tso off), a
// setting inside the pod's namespace that podgate does not own. See the
// package tests (TestTCPBulk, TestGenericModeTSO, TestOpenChecksFrameSize).
//
// Frames a pod sends with checksum offload (the default on veth, and native
// XDP does not turn it off) reach the socket with a partial TCP/UDP
// checksum (only the pseudo-header sum in the checksum field): the skb's
// CHECKSUM_PARTIAL state does not survive the trip through XDP into user
// space, and the descriptor says nothing about it. Whoever forwards such a
// frame must complete the checksum (verify, and recompute when wrong); the
// frames a socket transmits leave as CHECKSUM_NONE and the receiving stack
// verifies them. In the package tests every TCP frame of a bulk transfer
// needed completing.
//
// # Namespaces
//
// Open, the Program's attach methods, Detach and Close, QueryXDP and
// RemoveStale act in the network namespace of the calling OS thread; tests wrap them in
// netns.Namespace.Do. After Open, a socket may be used from any thread.
package xsk
