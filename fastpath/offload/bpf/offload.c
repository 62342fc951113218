// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * podgate's established-flow offload: two TC programs (attached with TCX)
 * that forward the packets of flows the Go fastpath has already allowed,
 * and send everything else to it.
 *
 * pod_ingress  TCX ingress of each pod's host veth: frames the pod sends.
 * kernel_egress TCX egress of pgk0, the kernel end of the kernel leg:
 *              frames the kernel routes toward local pods, and frames
 *              pod_ingress punted.
 *
 * The map layouts are in offload.h; fastpath/offload documents the
 * semantics for the Go side.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "offload.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/*
 * max_entries of flows and counters are placeholders: the loader sets them
 * from Config.MaxFlows.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct counter);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
} stats SEC(".maps");

/*
 * The punt budget's state: per pod host veth (skb->ifindex), the GCRA's
 * theoretical arrival time of its next punt (bpf_ktime_get_ns). LRU: a
 * node has far fewer pods than entries, and a forgotten veth only starts
 * again with a full budget.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u64);
} punt_budget SEC(".maps");

/*
 * Frames the programs do not redirect continue with TCX_NEXT (TC_ACT_UNSPEC)
 * rather than TC_ACT_OK: the programs are attached first in the TCX chain,
 * and NEXT lets programs behind them (a CNI's, say) run; when there are
 * none, the kernel handles the frame as with TC_ACT_OK.
 */
#define TC_NEXT TC_ACT_UNSPEC

/* Headers parse() may read: Ethernet, IPv4 with options, 20 bytes of L4. */
#define MAX_HDR (ETH_HLEN + 60 + 20)

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* A parsed frame: its flow key and direction, where its IP header is. */
struct pkt {
	struct flow_key key __attribute__((aligned(8)));
	__u8 dir; /* 0: the source is endpoint a */
	__u8 v6;
};

static __always_inline struct stats *get_stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

/* Loads 8 bytes as a big-endian number: byte order is comparison order. */
static __always_inline __u64 be64_at(const __u8 *p)
{
	__u64 v;

	__builtin_memcpy(&v, p, sizeof(v));
	return bpf_be64_to_cpu(v);
}

/* Orders the key canonically (see struct flow_key); returns the direction. */
static __always_inline __u8 canonicalize(struct flow_key *k)
{
	__u64 s0 = be64_at(k->a), s1 = be64_at(k->a + 8);
	__u64 d0 = be64_at(k->b), d1 = be64_at(k->b + 8);
	__u16 sp = bpf_ntohs(k->port_a), dp = bpf_ntohs(k->port_b);
	int swap;

	if (s0 != d0)
		swap = s0 > d0;
	else if (s1 != d1)
		swap = s1 > d1;
	else
		swap = sp > dp;
	if (!swap)
		return 0;
	__u8 tmp[16];
	__builtin_memcpy(tmp, k->a, 16);
	__builtin_memcpy(k->a, k->b, 16);
	__builtin_memcpy(k->b, tmp, 16);
	__be16 p = k->port_a;
	k->port_a = k->port_b;
	k->port_b = p;
	return 1;
}

/*
 * parse fills p from the frame and returns REASON__MAX if the frame can
 * belong to an offloaded flow, or the reason it cannot. With ingress set
 * (pod_ingress, which decrements the TTL) a TTL or hop limit <= 1 is a
 * reason too. It may pull headers into the skb's linear part (never the
 * payload: GSO and checksum state stay as they are), so packet pointers
 * must be reloaded afterwards.
 */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p, int ingress)
{
	__u32 lin = skb->data_end - skb->data;

	if (lin < MAX_HDR && skb->len > lin)
		bpf_skb_pull_data(skb, skb->len < MAX_HDR ? skb->len : MAX_HDR);

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 l4off;
	__u8 proto, ttl;

	if ((void *)(eth + 1) > end)
		return REASON_MALFORMED;
	if (skb->vlan_present || eth->h_proto == bpf_htons(ETH_P_8021Q) ||
	    eth->h_proto == bpf_htons(ETH_P_8021AD))
		return REASON_VLAN;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return REASON_MALFORMED;
		if (ip->version != 4 || ip->ihl < 5)
			return REASON_MALFORMED;
		if ((void *)ip + ip->ihl * 4 > end)
			return REASON_MALFORMED;
		/* Options (source routes among them) are the fastpath's to judge. */
		if (ip->ihl != 5)
			return REASON_PROTO;
		if (ip->frag_off & bpf_htons(0x3fff))
			return REASON_FRAGMENT;
		proto = ip->protocol;
		if (proto == IPPROTO_ICMP)
			return REASON_ICMP;
		ttl = ip->ttl;
		__builtin_memcpy(p->key.a, &ip->saddr, 4);
		__builtin_memcpy(p->key.b, &ip->daddr, 4);
		p->key.family = 4;
		l4off = ETH_HLEN + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return REASON_MALFORMED;
		if (ip6->version != 6)
			return REASON_MALFORMED;
		proto = ip6->nexthdr;
		if (proto == IPPROTO_FRAGMENT)
			return REASON_FRAGMENT;
		if (proto == IPPROTO_ICMPV6)
			return REASON_ICMP;
		ttl = ip6->hop_limit;
		__builtin_memcpy(p->key.a, &ip6->saddr, 16);
		__builtin_memcpy(p->key.b, &ip6->daddr, 16);
		p->key.family = 6;
		p->v6 = 1;
		l4off = ETH_HLEN + sizeof(*ip6);
	} else {
		return REASON_NOT_IP;
	}

	__u8 *l4 = data + l4off;

	switch (proto) {
	case IPPROTO_TCP:
		if ((void *)(l4 + 20) > end)
			return REASON_MALFORMED;
		if ((l4[12] >> 4) < 5)
			return REASON_MALFORMED;
		/*
		 * An established connection's segments carry ACK and neither SYN,
		 * FIN nor RST; anything else (those, or an invalid combination
		 * such as no flags at all) is the fastpath's: it tracks the state
		 * and drops what is invalid.
		 */
		if ((l4[13] & (TCP_SYN | TCP_FIN | TCP_RST)) || !(l4[13] & TCP_ACK))
			return REASON_TCP_FLAGS;
		break;
	case IPPROTO_UDP:
		if ((void *)(l4 + 8) > end)
			return REASON_MALFORMED;
		break;
	case IPPROTO_SCTP:
		if ((void *)(l4 + 12) > end)
			return REASON_MALFORMED;
		break;
	default:
		return REASON_PROTO;
	}
	if (ingress && ttl <= 1)
		return REASON_TTL;
	__builtin_memcpy(&p->key.port_a, l4, 2);
	__builtin_memcpy(&p->key.port_b, l4 + 2, 2);
	p->key.proto = proto;
	p->dir = canonicalize(&p->key);
	return REASON__MAX;
}

/*
 * count adds a packet to the counters of the flow's direction and reports
 * whether the slot exists.
 */
static __always_inline int count(const struct flow_val *v, __u32 dir, __u32 len)
{
	__u32 slot = v->slot;

	if (slot >= 0x7fffffff)
		return 0;
	__u32 idx = slot * 2 + dir;
	struct counter *c = bpf_map_lookup_elem(&counters, &idx);

	if (!c)
		return 0;
	/*
	 * Coarse: jiffy resolution is plenty for idle timeouts, and cheaper.
	 * Stored before the adds, so that a reader who sees the packet
	 * counted also sees a time (on x86; weaker orders may lag).
	 */
	*(volatile __u64 *)&c->last_seen_ns = bpf_ktime_get_coarse_ns();
	__sync_fetch_and_add(&c->packets, 1);
	__sync_fetch_and_add(&c->bytes, len);
	return 1;
}

static __always_inline int mac_eq(const __u8 *x, const __u8 *y)
{
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] &&
	       x[4] == y[4] && x[5] == y[5];
}

/*
 * rewrite sets the frame's MACs from d. With ttl set it also decrements the
 * IPv4 TTL (updating the header checksum incrementally, as the kernel's
 * ip_decrease_ttl does) or the IPv6 hop limit; parse made sure they are > 1.
 * It reports false if the headers are no longer there.
 */
static __always_inline int rewrite(struct __sk_buff *skb, const struct flow_dir *d, __u8 v6, int ttl)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	__builtin_memcpy(eth->h_dest, d->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, d->gw_mac, ETH_ALEN);
	if (!ttl)
		return 1;
	if (v6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return 0;
		ip6->hop_limit--;
		return 1;
	}
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end)
		return 0;
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xffff));
	ip->ttl--;
	return 1;
}

/*
 * over_budget reports whether the veth ifindex has used up its punt budget
 * (config punt_interval_ns, punt_tolerance_ns), and charges the frame to
 * it if not. GCRA, the virtual-scheduling form of a token bucket: one
 * 64-bit theoretical arrival time (tat) per veth; a frame conforms if tat
 * is at most tolerance ahead of now, and then pushes tat one interval on.
 * Concurrent frames of one veth on several CPUs race on tat without
 * atomics: at worst a few extra frames conform, never fewer.
 */
static __always_inline int over_budget(const struct config *cfg, __u32 ifindex)
{
	__u64 interval = cfg->punt_interval_ns;

	if (interval == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 *tat = bpf_map_lookup_elem(&punt_budget, &ifindex);

	if (!tat) {
		__u64 next = now + interval;

		/* On failure (never for an LRU map) the frame goes unlimited. */
		bpf_map_update_elem(&punt_budget, &ifindex, &next, BPF_ANY);
		return 0;
	}
	__u64 t = *tat;

	if (t < now)
		t = now;
	if (t - now > cfg->punt_tolerance_ns)
		return 1;
	*tat = t + interval;
	return 0;
}

/*
 * punt sends a pod's frame to the Go fastpath: the destination MAC becomes
 * the marker 06:70 + the pod's host veth ifindex (big-endian), and the frame
 * is redirected to the egress of config.punt_ifindex (pgk0), whose peer
 * pgw0 feeds the AF_XDP socket. Without a punt interface (0: tests, or no
 * kernel leg attached) the frame goes to the kernel unchanged. A frame over
 * the veth's punt budget (over_budget) is dropped before it takes a place
 * in the fastpath's socket.
 */
static __always_inline int punt(struct __sk_buff *skb, struct stats *st, int reason)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (st && reason >= 0 && reason < REASON__MAX)
		st->punt[reason]++;
	if (!cfg || cfg->punt_ifindex == 0) {
		if (st)
			st->punt_unset++;
		return TC_NEXT;
	}
	__u32 out = cfg->punt_ifindex;
	__u32 ifindex = skb->ifindex;

	if (over_budget(cfg, ifindex)) {
		if (st)
			st->punt_limited++;
		return TC_ACT_SHOT;
	}
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end) {
		/* Nothing to mark: the fastpath could not tell whose it is. */
		if (st)
			st->short_frame++;
		return TC_ACT_SHOT;
	}

	eth->h_dest[0] = PUNT_MARK0;
	eth->h_dest[1] = PUNT_MARK1;
	eth->h_dest[2] = ifindex >> 24;
	eth->h_dest[3] = ifindex >> 16;
	eth->h_dest[4] = ifindex >> 8;
	eth->h_dest[5] = ifindex;
	long rc = bpf_redirect(out, 0);

	if (rc != TC_ACT_REDIRECT) {
		if (st)
			st->redirect_err++;
		return TC_ACT_SHOT;
	}
	return rc;
}

/*
 * leased reports whether the flows map may be used: the fastpath's lease
 * has not expired (or there is none).
 */
static __always_inline int leased(void)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || cfg->lease_until_ns == 0)
		return 1;
	return bpf_ktime_get_coarse_ns() <= cfg->lease_until_ns;
}

SEC("tcx/ingress")
int pod_ingress(struct __sk_buff *skb)
{
	struct stats *st = get_stats();
	struct pkt p = {};
	int r = parse(skb, &p, 1);

	if (r == REASON_VLAN) {
		/*
		 * The kernel moved the tag into the skb before this hook, and a
		 * punted frame would lose it on the way to the AF_XDP socket:
		 * the fastpath would judge it untagged. Pods do not tag frames
		 * (the fastpath drops tagged ones); drop here.
		 */
		if (st) {
			st->punt[REASON_VLAN]++;
			st->vlan_dropped++;
		}
		return TC_ACT_SHOT;
	}
	if (r != REASON__MAX)
		return punt(skb, st, r);
	if (!leased())
		return punt(skb, st, REASON_LEASE);
	struct flow_val *v = bpf_map_lookup_elem(&flows, &p.key);

	if (!v)
		return punt(skb, st, REASON_MISS);
	__u8 dir = p.dir & 1;
	const struct flow_dir *d = &v->dir[dir];
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return punt(skb, st, REASON_MALFORMED);
	__u8 action = d->action;

	if (action != ACT_KERNEL && action != ACT_PEER)
		return punt(skb, st, REASON_ACTION);
	if (d->in_ifindex != skb->ifindex || !mac_eq(eth->h_source, d->src_mac))
		return punt(skb, st, REASON_SPOOF);
	if (!count(v, dir, skb->len))
		return punt(skb, st, REASON_SLOT);
	if (action == ACT_KERNEL) {
		if (st)
			st->hit[ACT_KERNEL]++;
		return TC_NEXT;
	}
	__u32 out = d->out_ifindex;

	if (!rewrite(skb, d, p.v6, 1))
		return punt(skb, st, REASON_MALFORMED);
	long rc = bpf_redirect_peer(out, 0);

	if (rc != TC_ACT_REDIRECT) {
		if (st)
			st->redirect_err++;
		return TC_ACT_SHOT;
	}
	if (st)
		st->hit[ACT_PEER]++;
	return rc;
}

SEC("tcx/egress")
int kernel_egress(struct __sk_buff *skb)
{
	struct stats *st = get_stats();
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *dst = data;

	if ((void *)(dst + 2) <= end && dst[0] == PUNT_MARK0 && dst[1] == PUNT_MARK1) {
		if (st)
			st->egress_marked++;
		return TC_NEXT;
	}
	struct pkt p = {};
	int r = parse(skb, &p, 0);

	if (r == REASON__MAX && !leased())
		r = REASON_LEASE;
	if (r == REASON__MAX) {
		struct flow_val *v = bpf_map_lookup_elem(&flows, &p.key);
		__u8 dir = p.dir & 1;

		if (!v)
			r = REASON_MISS;
		else if (v->dir[dir].action != ACT_REDIRECT)
			r = REASON_ACTION;
		else if (v->dir[dir].in_ifindex != skb->ifindex)
			r = REASON_SPOOF;
		else if (!count(v, dir, skb->len))
			r = REASON_SLOT;
		else {
			const struct flow_dir *d = &v->dir[dir];
			__u32 out = d->out_ifindex;

			if (!rewrite(skb, d, p.v6, 0)) {
				r = REASON_MALFORMED;
			} else {
				long rc = bpf_redirect(out, 0);

				if (rc != TC_ACT_REDIRECT) {
					if (st)
						st->redirect_err++;
					return TC_ACT_SHOT;
				}
				if (st)
					st->hit[ACT_REDIRECT]++;
				return rc;
			}
		}
	}
	if (st && r >= 0 && r < REASON__MAX)
		st->pass[r]++;
	return TC_NEXT;
}
