/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Shared definitions of podgate's established-flow offload: the layouts of
 * the BPF maps' keys and values. They are an API between the BPF programs
 * (offload.c) and the Go fastpath: fastpath/offload/types.go declares the
 * same layouts, and TestLayout checks them against the BTF of the compiled
 * object. Change both together.
 */
#ifndef PODGATE_OFFLOAD_H
#define PODGATE_OFFLOAD_H

#include <linux/types.h>

/*
 * The key of a flow, one entry for both directions.
 *
 * Canonical order: endpoint a is the lower of (address, port) of the two
 * endpoints, comparing the 16 address bytes as an unsigned big-endian
 * number and then the port in host order; on a tie (both endpoints equal)
 * the packet's source is a. An IPv4 address is stored in the first 4 bytes
 * with the other 12 zero and family 4; IPv6 uses all 16 bytes and family 6.
 * A packet travels in direction 0 when its source is a, in direction 1
 * when its source is b. Ports are in network byte order. pad is zero.
 */
struct flow_key {
	__u8 a[16];
	__u8 b[16];
	__be16 port_a;
	__be16 port_b;
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP */
	__u8 family; /* 4 or 6 */
	__u8 pad[2];
};

/* What to do with a packet of an offloaded direction (flow_dir.action). */
enum flow_action {
	ACT_NONE = 0,     /* not offloaded: punt (pod_ingress), pass (kernel_egress) */
	ACT_KERNEL = 1,   /* pod_ingress: hand the frame to the kernel unchanged */
	ACT_PEER = 2,     /* pod_ingress: rewrite, bpf_redirect_peer to a local pod */
	ACT_REDIRECT = 3, /* kernel_egress: rewrite, bpf_redirect to a pod's host veth */
	ACT__MAX,
};

/* One direction of a flow. */
struct flow_dir {
	__u32 in_ifindex;  /* interface the packets must arrive on */
	__u32 out_ifindex; /* ACT_PEER, ACT_REDIRECT: host veth of the destination pod */
	__u8 src_mac[6];   /* pod_ingress: the only source MAC allowed (the pod's eth0) */
	__u8 dst_mac[6];   /* new destination MAC: the destination pod's eth0 */
	__u8 gw_mac[6];    /* new source MAC: the destination pod's host veth */
	__u8 action;       /* enum flow_action */
	__u8 pad;
};

/*
 * The value of a flow. dir[0] is for packets from a to b, dir[1] from b to
 * a. slot selects the counters (counters[slot*2 + direction]). flags is not
 * read by the programs: it is the Go side's.
 */
struct flow_val {
	struct flow_dir dir[2];
	__u32 slot;
	__u32 flags;
};

/*
 * Per-direction counters of an offloaded flow. packets and bytes count
 * skbs and skb->len (the frame with its Ethernet header; a GSO super-frame
 * counts once, with its whole length), added atomically. last_seen_ns is
 * bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC at jiffy resolution.
 */
struct counter {
	__u64 packets;
	__u64 bytes;
	__u64 last_seen_ns;
};

/* The single entry of the config map. */
struct config {
	__u32 punt_ifindex; /* pgk0; 0: pod_ingress passes misses to the kernel */
	__u32 flags;        /* reserved, 0 */
	/*
	 * The fastpath's lease on the flows map: after this CLOCK_MONOTONIC
	 * time no flow is used (every frame is punted or passed on, as a
	 * miss would be), so that an agent that died stops forwarding on its
	 * verdicts within the lease. 0: no lease (the flows are always used).
	 */
	__u64 lease_until_ns;
	/*
	 * The punt budget of each pod's host veth (GCRA, see punt() in
	 * offload.c): a veth may punt one frame per punt_interval_ns on
	 * average, and punt_tolerance_ns / punt_interval_ns + 1 frames back
	 * to back. 0: unlimited (the default). The Go side sets both from a
	 * rate and a burst.
	 */
	__u64 punt_interval_ns;
	__u64 punt_tolerance_ns;
};

/* Why a frame was not forwarded by an offloaded flow. */
enum reason {
	REASON_NOT_IP = 0,    /* not IPv4 or IPv6 (ARP, NDP rides on ICMPv6) */
	REASON_VLAN = 1,      /* VLAN tag, in the frame or in the skb (pod_ingress drops it) */
	REASON_MALFORMED = 2, /* truncated or invalid header */
	REASON_FRAGMENT = 3,  /* IPv4 fragment, IPv6 fragment header */
	REASON_ICMP = 4,      /* ICMP or ICMPv6 */
	REASON_PROTO = 5,     /* another protocol, an IPv6 extension header, IPv4 options */
	REASON_TCP_FLAGS = 6, /* TCP SYN, FIN or RST, or no ACK */
	REASON_TTL = 7,       /* pod_ingress: TTL or hop limit <= 1 */
	REASON_MISS = 8,      /* no flow */
	REASON_SPOOF = 9,     /* flow found, wrong interface or source MAC */
	REASON_ACTION = 10,   /* flow found, its action is not for this hook */
	REASON_SLOT = 11,     /* flow found, its counter slot is out of range */
	REASON_LEASE = 12,    /* the fastpath's lease on the flows expired */
	REASON__MAX,
};

/* Global counters, one copy per CPU (the stats map). */
struct stats {
	__u64 hit[ACT__MAX];       /* packets forwarded by offloaded flows, by action */
	__u64 punt[REASON__MAX];   /* pod_ingress: frames punted, by reason */
	__u64 pass[REASON__MAX];   /* kernel_egress: frames left to pgw0, by reason */
	__u64 punt_unset;          /* pod_ingress: punts passed to the kernel, punt_ifindex 0 */
	__u64 egress_marked;       /* kernel_egress: punted pod frames seen */
	__u64 redirect_err;        /* redirect helpers that failed (frame dropped) */
	__u64 short_frame;         /* pod_ingress: frames without an Ethernet header, dropped */
	__u64 vlan_dropped;        /* pod_ingress: VLAN-tagged frames, dropped (also in punt[REASON_VLAN]) */
	__u64 punt_limited;        /* pod_ingress: punts over the veth's budget, dropped (also in punt[]) */
};

/* Punt marker: destination MAC 06:70:ii:ii:ii:ii, ii = ifindex big-endian. */
#define PUNT_MARK0 0x06
#define PUNT_MARK1 0x70

#endif
