// SPDX-License-Identifier: GPL-2.0
/* sockgate kernel programs: exit points on connect (and every send with an address), listen
 * (and UDP bind) and accept (sk_lookup for TCP, cgroup_skb ingress for UDP datagrams).
 *
 * Every decision is the same lookup: each dimension (exit, user, group, program, local
 * address, local port, remote address, remote port) yields a bitmap of the rules it
 * allows; the lowest bit set in all of them is the first matching rule (linear bit vector
 * search). Summary words skip empty 64-rule blocks, so the cost barely moves with the
 * rule count. Tables are double-buffered: a decision reads the active slot once. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "sockgate.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_UNSPEC 0
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_SCTP 132
#define IPPROTO_UDPLITE 136
#define IPPROTO_MPTCP 262
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_SEQPACKET 5
#define EPERM 1
#define MSG_FASTOPEN 0x20000000
#define SIN6_LEN_RFC2133 24   /* a sockaddr_in6 without sin6_scope_id: the kernel accepts it */

/* uapi context layouts, read at their ABI offsets (vmlinux.h's CO-RE versions make clang
 * emit ctx pointer arithmetic the verifier rejects). */
#define READ_CTX(field) (*(volatile __u32 *)&(field))

struct sg_ctx_sock_addr {
	__u32 user_family;
	__u32 user_ip4;
	__u32 user_ip6[4];
	__u32 user_port;
	__u32 family;
	__u32 type;
	__u32 protocol;
};

struct sg_ctx_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;
};

struct sg_ctx_sk_lookup {
	__u64 sk;
	__u32 family;
	__u32 protocol;
	__u32 remote_ip4;
	__u32 remote_ip6[4];
	__u32 remote_port;     /* __be16 in the low half */
	__u32 local_ip4;
	__u32 local_ip6[4];
	__u32 local_port;      /* host order */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sg_config);
} sg_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SG_SLOTS);
	__type(key, __u32);
	__type(value, struct sg_policy);
} sg_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SG_SLOTS * SG_MAX_RULES);
	__type(key, __u32);
	__type(value, struct sg_rule);
} sg_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_SLOTS * SG_MAX_BITMAPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_bitmap_key);
	__type(value, struct sg_bitmap);
} sg_bitmaps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_SLOTS * SG_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_user_key);
	__type(value, __u32);
} sg_users SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_SLOTS * SG_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_id_key);
	__type(value, struct sg_group_val);
} sg_groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_SLOTS * SG_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_program_key);
	__type(value, __u32);
} sg_programs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SG_SLOTS * SG_MAX_BITMAPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_addr_key);
	__type(value, __u32);
} sg_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SG_SLOTS * SG_PORT_SIDES * SG_PROTOS * 65536);
	__type(key, __u32);
	__type(value, __u32);
} sg_ports SEC(".maps");

/* Listening sockets by (netns, family, local address, port), indexed at listen() by the
 * sockops program; accept decisions find the real listener here. A socket leaves the map
 * when it closes (sockhash semantics); a user cannot displace another's entry, since the
 * kernel lets nobody else listen at the same key. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SG_LISTENERS_MAX);
	__type(key, struct sg_owner_key);
	__type(value, __u64);
} sg_listeners SEC(".maps");

/* Listeners the sockhash refuses (sockets with a ULP: MPTCP's subflows), by the same key,
 * -> cookie; and cookie -> key, so their release removes them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_LISTENERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_owner_key);
	__type(value, __u64);
} sg_listener_cookies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_LISTENERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct sg_owner_key);
} sg_listener_keys SEC(".maps");

/* Who owns a socket in scope, by cookie (never reused): recorded at bind, listen and first
 * send, removed at release (sg_release). Not an LRU: no user can evict another's entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_OWNERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct sg_owner);
} sg_owners SEC(".maps");

/* How many listeners are marked SG_OWNER_REFUSED now: while none is, an accept decision
 * needs the listener's owner only if a rule tests it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} sg_refused_listeners SEC(".maps");

static __always_inline void refused_listeners_add(__s64 n)
{
	__u32 zero = 0;
	__s64 *c = bpf_map_lookup_elem(&sg_refused_listeners, &zero);
	if (c)
		__sync_fetch_and_add(c, n);
}

/* UDP flows (see struct sg_flow); the daemon reads their counts and removes finished ones. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_FLOWS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_flow_key);
	__type(value, struct sg_flow);
} sg_flows SEC(".maps");

/* User space only: how many of a flow's packets are journaled already. Pinned with the rest,
 * so a restarted daemon neither repeats nor skips a count. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_FLOWS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_flow_key);
	__type(value, __u64);
} sg_flows_seen SEC(".maps");

/* Rejection folding (see struct sg_rate): per user, and the counts of what was folded. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_RATES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct sg_rate);
} sg_rates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_FOLDED_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_fold_key);
	__type(value, __u64);
} sg_folded SEC(".maps");

struct {  /* user space only: how many of them are journaled (as sg_flows_seen) */
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_FOLDED_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_fold_key);
	__type(value, __u64);
} sg_folded_seen SEC(".maps");

/* Shadow differences (struct sg_shadow_key) -> calls. The daemon journals the growth. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_SHADOW_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_shadow_key);
	__type(value, __u64);
} sg_shadow SEC(".maps");

/* User space only: how many of a pair's calls are journaled already (pinned, like
 * sg_flows_seen, so a restarted daemon neither repeats nor skips a count). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SG_SHADOW_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_shadow_key);
	__type(value, __u64);
} sg_shadow_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SG_SLOTS * SG_HIT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} sg_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SG_STATS);
	__type(key, __u32);
	__type(value, __u64);
} sg_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SG_RINGBUF_BYTES);
} sg_events SEC(".maps");

/* Writing to this map-of-maps makes the kernel wait until every running program has
 * finished (synchronize_rcu), which is how a policy swap knows the old slot is free. */
struct sg_sync_inner_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sg_sync_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct sg_sync_inner_map);
} sg_sync SEC(".maps") = {
	.values = { [0] = &sg_sync_inner },
};

/* Where a decision happened and on what: everything an event records besides the identity. */
struct sg_site {
	__u64 cookie;
	__u32 family;
	__u32 ipproto;
	__u32 flags;                 /* SG_EV_* */
	__u16 lport;
	__u16 rport;
	__u8  laddr[16];
	__u8  raddr[16];
};

/* Per-CPU scratch: the caller's identity, the OR of several groups' bitmaps, and the call's
 * site and flow (on the stack they would pass 6.1's 512-byte limit). */
struct sg_scratch {
	struct sg_site site;
	struct sg_flow_key fkey;
	struct sg_flow fval;
	struct sg_owner who;
	struct sg_bitmap groups;
	struct sg_probe probe;
	__u32 hit_alone[SG_MAX_GROUPS];
	__u32 hit_membership[SG_MAX_GROUPS];
	__s32 decided_rule;          /* decide_at()'s rule */
	__u32 group_index;           /* group_dimension()'s result */
	__s32 shadow_rule;           /* the shadow decision a SG_EV_SHADOW event carries */
	__u32 shadow_generation;
	__u32 shadow_verdict;
};

/* Two per CPU: one for hooks in task context (connect, bind, listen, sends, release), one
 * for the softirq hooks (sk_lookup, cgroup_skb ingress). A softirq can run on a CPU while a
 * task-context program is half-way through a decision there (after a hardirq): sharing one
 * entry would let a datagram overwrite that decision's identity and site. */
#define SG_SCRATCH_TASK    0
#define SG_SCRATCH_SOFTIRQ 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct sg_scratch);
} sg_scratch SEC(".maps");

/* Keep the layouts in the object's BTF so user space can check its mirror against them. */
struct sg_event _sg_event_btf = {};
struct sg_probe _sg_probe_btf = {};
struct sg_shadow_key _sg_shadow_key_btf = {};
struct sg_rate _sg_rate_btf = {};
struct sg_fold_key _sg_fold_key_btf = {};

static __always_inline void stat_add(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&sg_stats, &which);
	if (v)
		*v += 1;
}

/* Bound a value for the verifier with a mask clang cannot fold away (older verifiers,
 * e.g. 6.1's, lose track of masks clang merged into the following shift). */
#define BOUND(x, mask) ({ __u64 __v = (x); asm volatile("%0 &= " #mask : "+r"(__v)); __v; })

/* Verifiers before 6.7 check a bpf_loop callback once, with the callback context's
 * initial values as constants, and hard-wire the branches that looked dead (e.g. the
 * block scan, when `sum` starts at 0). Seeding those fields from pol->zero, which is 0 at
 * run time but unknown to the verifier, keeps every branch. */
#define OPAQUE_ZERO(pol) ((__u32)(pol)->zero)

/* Index of the lowest set bit, branch-free (popcount of the bits below it): branches
 * here would multiply the states the verifier has to walk. */
static __always_inline __u32 lowest_bit(__u64 x)
{
	__u64 v = (x & -x) - 1;
	v = v - ((v >> 1) & 0x5555555555555555ULL);
	v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
	v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (v * 0x0101010101010101ULL) >> 56;
}

static __always_inline const struct sg_bitmap *bitmap(__u32 slot, __u32 index)
{
	struct sg_bitmap_key k = { .slot = slot, .index = index };
	return bpf_map_lookup_elem(&sg_bitmaps, &k);
}

static __always_inline const struct sg_bitmap *addr_bitmap(__u32 slot, __u32 side, const __u8 *addr)
{
	struct sg_addr_key k = { .prefixlen = 16 + 128, .slot = slot, .side = side };
	__builtin_memcpy(k.addr, addr, 16);
	__u32 *idx = bpf_map_lookup_elem(&sg_addrs, &k);
	return idx ? bitmap(slot, *idx) : NULL;
}

static __always_inline const struct sg_bitmap *port_bitmap(__u32 slot, __u32 side, __u32 proto, __u16 port)
{
	__u32 k = SG_PORT_INDEX(slot, side, proto & (SG_PROTOS - 1), port);
	__u32 *idx = bpf_map_lookup_elem(&sg_ports, &k);
	return idx ? bitmap(slot, *idx) : NULL;
}

/* Word loops run under bpf_loop() so the verifier checks their body once, not per word. */
struct or_words_ctx {
	struct sg_bitmap *acc;
	__u32 *membership;           /* -> scratch: membership bitmap index of each group hit */
	__u32 slot;
	__u32 nw;                    /* words in use */
};

/* Step i ORs word (i % nw) of hit (i / nw) into acc; hit 0 copies. One flat loop, so
 * nothing after it is verified once per group. */
static long or_words_step(__u32 i, void *data)
{
	struct or_words_ctx *c = data;
	if (!c->nw)
		return 1;
	__u32 hit = i / c->nw;
	__u64 w = BOUND(i % c->nw, 255);
	const struct sg_bitmap *m = bitmap(c->slot, c->membership[BOUND(hit, 31)]);
	if (!m)
		return 0;
	if (hit == 0)
		c->acc->words[w] = m->words[w];
	else
		c->acc->words[w] |= m->words[w];
	return 0;
}

struct combine_ctx {
	struct sg_bitmap *acc;
	const struct sg_bitmap *wild;
	const struct sg_bitmap *neg;
};

static long combine_step(__u32 i, void *data)
{
	struct combine_ctx *c = data;
	__u64 w = BOUND(i, 255);
	__u64 v = c->wild->words[w] | (c->acc->words[w] ^ c->neg->words[w]);
	c->acc->words[w] = v;
	if (v)
		c->acc->summary[BOUND(w >> 6, 3)] |= 1ULL << (w & 63);
	return 0;
}

/* Collect the caller's groups that some rule names (one bpf_loop step per group). */
struct group_hits_ctx {
	__u32 slot;
	__u32 hits;
	const struct sg_owner *who;
	__u32 *alone;                /* -> scratch: result bitmap of each hit alone */
	__u32 *membership;           /* -> scratch: membership bitmap of each hit */
};

static long group_hit_step(__u32 i, void *data)
{
	struct group_hits_ctx *c = data;
	struct sg_id_key k = { .slot = c->slot, .id = c->who->groups[BOUND(i, 31)] };
	struct sg_group_val *g = bpf_map_lookup_elem(&sg_groups, &k);
	if (!g)
		return 0;
	/* the same gid twice (primary also listed as supplementary) counts once */
	if (c->hits == 1 && c->alone[0] == g->alone)
		return 0;
	__u64 h = BOUND(c->hits, 31);
	c->alone[h] = g->alone;
	c->membership[h] = g->membership;
	c->hits++;
	return 0;
}

/* Group dimension: wildcard | (OR of the caller's groups' memberships ^ negated). Usually
 * the caller is in at most one group a rule names and a precomputed bitmap serves. The
 * result goes to sc->group_index: a bitmap index, or GROUPS_IN_SCRATCH (sc->groups holds
 * it). A global function called before decide_at(), not from it: each has its own frame
 * and a call chain stays within the verifier's 512-byte stack limit. */
#define GROUPS_IN_SCRATCH 0xffffffffU
#define GROUPS_NONE       0xfffffffeU   /* no such bitmap: the decision falls back */
__attribute__((noinline)) int group_dimension(struct sg_scratch *sc, __u32 slot)
{
	if (!sc)
		return 0;
	sc->group_index = GROUPS_NONE;
	const struct sg_policy *pol = bpf_map_lookup_elem(&sg_policy, &slot);
	if (!pol)
		return 0;
	const struct sg_owner *who = &sc->who;
	__u32 n = who->ngroups;
	if (n > SG_MAX_GROUPS)
		n = SG_MAX_GROUPS;
	__u32 nw = pol->nsummary * 64;
	if (nw > SG_WORDS)
		nw = SG_WORDS;

	__u32 z = OPAQUE_ZERO(pol);
	struct group_hits_ctx gc = { .slot = slot, .hits = z, .who = who, .alone = sc->hit_alone,
				     .membership = sc->hit_membership };
	bpf_loop(n, group_hit_step, &gc, 0);
	if (gc.hits == 0) {
		sc->group_index = pol->group_miss;
		return 0;
	}
	if (gc.hits == 1) {
		sc->group_index = sc->hit_alone[0];
		return 0;
	}
	struct sg_bitmap *acc = &sc->groups;
	struct or_words_ctx oc = { .acc = acc, .membership = sc->hit_membership, .slot = slot, .nw = nw };
	bpf_loop(gc.hits * nw, or_words_step, &oc, 0);
	struct combine_ctx cc = { .acc = acc, .wild = bitmap(slot, pol->group_wild),
				  .neg = bitmap(slot, pol->group_neg) };
	if (!cc.wild || !cc.neg)
		return 0;
	for (__u32 s = 0; s < SG_SUMMARY_WORDS; s++)
		acc->summary[s] = 0;
	bpf_loop(nw, combine_step, &cc, 0);
	sc->group_index = GROUPS_IN_SCRATCH;
	return 0;
}

/* The AND of the dimensions a decision uses (5 for connect/listen, 7 for accept). */
struct scan_ctx {
	const struct sg_bitmap *b[7];
	__u64 sums[SG_SUMMARY_WORDS]; /* AND of the summaries: which words can hold a match */
	__s32 rule;                  /* out: first matching rule, or -1 */
};

/* Step i tests block i (8 words = 512 rules), unrolled, if the summaries leave any
 * candidate in it. The step keeps no state but `rule`, so the verifier checks it once
 * instead of walking every iteration. Words whose summary bit is clear AND to zero. */
static __always_inline long scan_block(struct scan_ctx *c, __u32 i, const int n)
{
	__u64 blk = BOUND(i, 31);
	if (!((c->sums[blk >> 3] >> ((blk & 7) * 8)) & 0xff))
		return 0;
	__u64 base = blk * 8;
#pragma unroll
	for (int j = 0; j < 8; j++) {
		__u64 w = base + j;
		__u64 v = c->b[0]->words[w];
#pragma unroll
		for (int d = 1; d < n; d++)
			v &= c->b[d]->words[w];
		if (v) {
			c->rule = (w << 6) | lowest_bit(v);
			return 1;
		}
	}
	return 0;
}

static long scan_step5(__u32 i, void *data)
{
	return scan_block(data, i, 5);
}

static long scan_step7(__u32 i, void *data)
{
	return scan_block(data, i, 7);
}

/* The decision over the tables of `slot`. Returns the verdict; *rule gets the deciding rule
 * index or -1. */
static __always_inline int decide(__u32 slot, const struct sg_policy *pol, __u32 exit, __u32 proto,
				  const struct sg_owner *who, const __u8 *laddr, __u16 lport, const __u8 *raddr,
				  __u16 rport, struct sg_scratch *scr, __s32 *rule)
{
	*rule = -1;
	if (exit >= SG_EXITS)
		return SG_ALLOWED;
	__u8 fallback = pol->default_verdict[exit];

	__u32 z = OPAQUE_ZERO(pol);
	struct scan_ctx sc = { .rule = (__s32)z - 1 };
	struct sg_user_key uk = { .slot = slot, .exit = exit, .uid = who->uid };
	__u32 *uidx = bpf_map_lookup_elem(&sg_users, &uk);
	sc.b[0] = bitmap(slot, uidx ? *uidx : pol->user_miss[BOUND(exit, 3)]);
	struct sg_program_key pk = { .slot = slot, .dev = who->dev, .ino = who->ino };
	__u32 *pidx = bpf_map_lookup_elem(&sg_programs, &pk);
	sc.b[1] = bitmap(slot, pidx ? *pidx : pol->program_miss);
	sc.b[2] = scr->group_index == GROUPS_IN_SCRATCH ? &scr->groups : bitmap(slot, scr->group_index);
	if (exit == SG_EXIT_CONNECT) {
		sc.b[3] = addr_bitmap(slot, SG_REMOTE, raddr);
		sc.b[4] = port_bitmap(slot, SG_REMOTE, proto, rport);
		sc.b[5] = sc.b[6] = sc.b[4];
	} else {
		sc.b[3] = addr_bitmap(slot, SG_LOCAL, laddr);
		sc.b[4] = port_bitmap(slot, SG_LOCAL, proto, lport);
		sc.b[5] = sc.b[6] = sc.b[4];
		if (exit == SG_EXIT_ACCEPT) {
			sc.b[5] = addr_bitmap(slot, SG_REMOTE, raddr);
			sc.b[6] = port_bitmap(slot, SG_REMOTE, proto, rport);
		}
	}
	if (!sc.b[0] || !sc.b[1] || !sc.b[2] || !sc.b[3] || !sc.b[4] || !sc.b[5] || !sc.b[6])
		return fallback;  /* tables incomplete: only possible mid-initialisation */

	int n = exit == SG_EXIT_ACCEPT ? 7 : 5;
	__u32 nsum = pol->nsummary;
	if (nsum > SG_SUMMARY_WORDS)
		nsum = SG_SUMMARY_WORDS;
	for (int s = 0; s < SG_SUMMARY_WORDS; s++) {
		__u64 sum = s < nsum ? sc.b[0]->summary[s] : 0;
		for (int d = 1; d < 7; d++)
			if (d < n)
				sum &= sc.b[d]->summary[s];
		sc.sums[s] = sum;
	}
	if (n == 7)
		bpf_loop(nsum * 8, scan_step7, &sc, 0);
	else
		bpf_loop(nsum * 8, scan_step5, &sc, 0);
	if (sc.rule < 0)
		return fallback;
	*rule = sc.rule;
	__u32 rk = slot * SG_MAX_RULES + (sc.rule & (SG_MAX_RULES - 1));
	struct sg_rule *ri = bpf_map_lookup_elem(&sg_rules, &rk);
	return ri ? ri->verdict : fallback;
}

#define SHADOW_OFF 0xff

/* The active slot and its header, read once per decision: everything after uses them, so
 * a decision never mixes two policies. */
static __always_inline const struct sg_policy *active_policy(__u32 *slot, __u32 *shadow)
{
	__u32 zero = 0;
	struct sg_config *cfg = bpf_map_lookup_elem(&sg_config, &zero);
	if (!cfg)
		return NULL;
	*slot = cfg->active_slot;
	if (shadow)  /* read with the active slot: one consistent pair per decision */
		*shadow = (cfg->flags & SG_CFG_SHADOW) ? cfg->shadow_slot : SHADOW_OFF;
	return bpf_map_lookup_elem(&sg_policy, slot);
}

/* Counted in the slot that decided (a swap between deciding and counting must not credit
 * the other policy). */
static __always_inline void count_hit(__u32 slot, __u32 exit, __s32 rule)
{
	__u32 idx = slot * SG_HIT_SLOTS + (rule >= 0 ? (__u32)rule : SG_MAX_RULES + exit);
	__u64 *v = bpf_map_lookup_elem(&sg_hits, &idx);
	if (v)
		*v += 1;
}

/* decide() as a global function over the scratch: who decides (sc->who) at which site
 * (sc->site), by the tables of the slot in `what` (DECIDE_WHAT). Its stack is its own
 * frame, not the caller's: the hooks' frames plus a second, shadow decision would pass
 * the verifier's 512-byte limit for a call chain. The rule goes to sc->decided_rule. */
#define DECIDE_WHAT(slot, exit, proto) (((exit) & 0xff) | (((proto) & 0xff) << 8) | (((slot) & 0xf) << 20))
__attribute__((noinline)) int decide_at(struct sg_scratch *sc, __u32 what)
{
	if (!sc)
		return SG_ALLOWED;
	__u32 slot = (what >> 20) & 0xf;
	sc->decided_rule = -1;
	const struct sg_policy *pol = bpf_map_lookup_elem(&sg_policy, &slot);
	if (!pol)
		return SG_ALLOWED;  /* unreachable: the array always has the entry */
	const struct sg_site *at = &sc->site;
	return decide(slot, pol, what & 0xff, (what >> 8) & 0xff, &sc->who, at->laddr, at->lport, at->raddr,
		      at->rport, sc, &sc->decided_rule);
}

/* One decision by the tables of `slot`: the group dimension, then the rest (two calls side
 * by side, see group_dimension). The rule goes to sc->decided_rule. */
static __always_inline int decide_slot(struct sg_scratch *sc, __u32 slot, __u32 exit, __u32 proto)
{
	group_dimension(sc, slot);
	return decide_at(sc, DECIDE_WHAT(slot, exit, proto));
}

/* Supplementary groups, one bpf_loop step each (a plain loop is walked by the verifier once
 * per iteration, in every inlined copy). */
struct sup_groups_ctx {
	struct sg_owner *who;
	__u64 gids;                  /* address of group_info->gid[0] */
	int n;
};

static long sup_group_step(__u32 i, void *data)
{
	struct sup_groups_ctx *c = data;
	if ((int)i >= c->n)
		return 1;
	__u32 g;
	if (bpf_probe_read_kernel(&g, sizeof(g), (void *)(c->gids + (__u64)i * sizeof(g))))
		return 1;
	c->who->groups[(i + 1) & (SG_MAX_GROUPS - 1)] = g;
	c->who->ngroups = i + 2;
	return 0;
}

/* The current task's identity: effective ids, groups, executable. Direct BTF loads: one
 * guarded load per hop instead of a helper call (about a third of a decision's cost). */
__attribute__((noinline)) int current_identity(struct sg_owner *who, __u32 needs)
{
	if (!who)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	const struct cred *cred = task->cred;
	who->tgid = task->tgid;
	who->uid = cred->euid.val;
	who->gid = cred->egid.val;
	who->groups[0] = who->gid;
	who->ngroups = 1;
	__builtin_memcpy(who->comm, task->comm, sizeof(who->comm));
	if (needs & SG_NEED_GROUPS) {
		struct group_info *gi = cred->group_info;
		struct sup_groups_ctx gc = { .who = who, .n = gi->ngroups,
					     .gids = (__u64)gi + bpf_core_field_offset(gi->gid) };
		bpf_loop(SG_MAX_GROUPS - 1, sup_group_step, &gc, 0);
	}
	who->dev = 0;
	who->ino = 0;
	who->exe_name[0] = 0;
	if (!(needs & SG_NEED_PROGRAM))
		return 0;
	struct file *exe = task->mm->exe_file;  /* NULL for kernel threads: loads read 0 */
	struct inode *inode = exe->f_inode;
	who->ino = inode->i_ino;
	who->dev = inode->i_sb->s_dev;
	if (bpf_probe_read_kernel_str(who->exe_name, sizeof(who->exe_name), exe->f_path.dentry->d_name.name) < 0)
		who->exe_name[0] = 0;
	return 0;
}

/* Which audit levels journal this verdict: allowed TCP decisions with *NETSCK, allowed UDP
 * flows with *NETUDP, every rejection with *NETFAIL. */
static __always_inline bool wants_event(int verdict, __u32 flags, bool udp)
{
	if (verdict != SG_ALLOWED)
		return flags & SG_EMIT_REJECTED;
	return udp ? (flags & SG_EMIT_UDP) : (flags & SG_EMIT_ALLOWED);
}

/* Journal one decision: sc->who decided at sc->site. A global function (verified once per
 * program, not at every call site: 6.1's verifier in the test guest is slow), so its
 * arguments are few and packed: what = exit | verdict << 8 | is_current << 16. */
#define EMIT_WHAT(exit, verdict, is_current) ((exit) | ((verdict) << 8) | ((is_current) ? 1 << 16 : 0))
#define EMIT_SHADOW (1 << 17)     /* a shadow sample: sc->shadow_* hold the shadow's decision */
__attribute__((noinline)) int emit(struct sg_scratch *sc, __u32 what, __s32 rule, __u32 gen)
{
	if (!sc)
		return 0;
	const struct sg_owner *who = &sc->who;
	const struct sg_site *at = &sc->site;  /* every judge() caller's site lives there */
	__u32 exit = what & 0xff, verdict = (what >> 8) & 0xff;
	bool is_current = (what >> 16) & 1;
	stat_add(SG_STAT_SELECTED);
	struct sg_event *e = bpf_ringbuf_reserve(&sg_events, sizeof(*e), 0);
	if (!e) {
		stat_add(SG_STAT_DROPPED);
		return 0;
	}
	e->boot_ns = bpf_ktime_get_boot_ns();
	e->ino = who->ino;
	e->cookie = at->cookie;
	e->dev = who->dev;
	e->pid = who->tgid;
	e->euid = who->uid;
	e->egid = who->gid;
	if (is_current) {  /* real ids and thread from the task (sockops on 6.1 lacks the helpers) */
		struct task_struct *task = bpf_get_current_task_btf();
		e->uid = task->cred->uid.val;
		e->gid = task->cred->gid.val;
		e->tid = task->pid;
	} else {
		e->uid = who->uid;
		e->gid = who->gid;
		e->tid = 0;
	}
	e->rule = rule;
	e->generation = gen;
	e->exit = exit;
	e->verdict = verdict;
	e->family = at->family;
	e->flags = at->flags;
	if (what & EMIT_SHADOW) {
		e->flags |= SG_EV_SHADOW;
		e->shadow_rule = sc->shadow_rule;
		e->shadow_generation = sc->shadow_generation;
		e->shadow_verdict = sc->shadow_verdict;
	} else {
		e->shadow_rule = -1;
		e->shadow_generation = 0;
		e->shadow_verdict = 0;
	}
	__builtin_memset(e->pad2, 0, sizeof(e->pad2));
	e->protocol = at->ipproto;
	e->local_port = at->lport;
	e->remote_port = at->rport;
	e->pad = 0;
	__builtin_memcpy(e->local_addr, at->laddr, 16);
	__builtin_memcpy(e->remote_addr, at->raddr, 16);
	__builtin_memcpy(e->comm, who->comm, 16);
	__builtin_memcpy(e->exe_name, who->exe_name, 32);
	e->ngroups = who->ngroups;
	__builtin_memcpy(e->groups, who->groups, sizeof(e->groups));

	/* Batched wakeup: rejections wake the reader now; allowed events wait for a full
	 * batch (the reader also polls with a timeout). */
	__u64 wake = 0;
	if (verdict == SG_ALLOWED && !(what & EMIT_SHADOW)) {
		__u32 zero = 0;
		struct sg_config *cfg = bpf_map_lookup_elem(&sg_config, &zero);
		__u64 pending = bpf_ringbuf_query(&sg_events, BPF_RB_AVAIL_DATA);
		if (!cfg || pending < cfg->ringbuf_wakeup_bytes)
			wake = BPF_RB_NO_WAKEUP;
	}
	bpf_ringbuf_submit(e, wake);
	return 0;
}

static __always_inline void v4_mapped(__u8 *out, __u32 ip4_be)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &ip4_be, 4);
}

static __always_inline void v6_copy(__u8 *out, const __u32 *ip6)
{
	__u32 w0 = ip6[0], w1 = ip6[1], w2 = ip6[2], w3 = ip6[3];
	__builtin_memcpy(out, &w0, 4);
	__builtin_memcpy(out + 4, &w1, 4);
	__builtin_memcpy(out + 8, &w2, 4);
	__builtin_memcpy(out + 12, &w3, 4);
}

static __always_inline struct sg_scratch *scratch_of(__u32 which)
{
	return bpf_map_lookup_elem(&sg_scratch, &which);
}
#define scratch() scratch_of(SG_SCRATCH_TASK)

static __always_inline struct sg_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sg_config, &zero);
}

/* This call's site, reset (it lives in the per-CPU scratch, see struct sg_scratch). */
static __always_inline struct sg_site *new_site(struct sg_scratch *sc, __u32 family, __u32 ipproto)
{
	struct sg_site *at = &sc->site;
	__builtin_memset(at, 0, sizeof(*at));
	at->family = family;
	at->ipproto = ipproto;
	return at;
}

/* The full socket an skb belongs to, or NULL. */
static __always_inline struct bpf_sock *skb_sock(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	return sk ? bpf_sk_fullsock(sk) : NULL;
}

/* A socket's IP protocol as the class a rule's `protocol` names; -1: not ours to judge. */
static __always_inline int proto_class(__u32 ipproto)
{
	switch (ipproto) {
	case IPPROTO_TCP:
		return SG_PROTO_TCP;
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
		return SG_PROTO_UDP;
	case IPPROTO_MPTCP:
		return SG_PROTO_MPTCP;
	case IPPROTO_SCTP:
		return SG_PROTO_SCTP;
	}
	return -1;
}

static __always_inline struct sg_owner *find_owner(__u32 family, const __u8 *laddr, __u16 lport);

/* Who is deciding: the current task, or for accept the receiving socket's recorded owner
 * (`owner`, if the hook found it). Only what `needs` asks for is gathered. */
static __always_inline void identify(struct sg_scratch *sc, bool is_current, const struct sg_owner *owner,
				     __u32 needs)
{
	if (is_current) {
		current_identity(&sc->who, needs);
		return;
	}
	if (owner) {
		__builtin_memcpy(&sc->who, owner, sizeof(sc->who));
	} else {
		__builtin_memset(&sc->who, 0, sizeof(sc->who));
		sc->who.uid = SG_UID_UNKNOWN;
		sc->who.gid = SG_UID_UNKNOWN;
	}
}

/* One more under `key` in a (key -> u64 count) hash: 1 if this call made the key (its first),
 * 0 if it was there (or another CPU made it first), -1 if the map is full (counted in stat
 * `full` instead: nothing uncounted). */
static __always_inline int count_key(void *map, const void *key, __u32 full)
{
	__u64 *n = bpf_map_lookup_elem(map, key);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return 0;
	}
	__u64 one = 1;
	if (!bpf_map_update_elem(map, key, &one, BPF_NOEXIST))
		return 1;
	n = bpf_map_lookup_elem(map, key);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return 0;
	}
	stat_add(full);
	return -1;
}

/* Rejection folding: 1 if this rejection (`what`: EMIT_WHAT, bit 18 a UDP flow's first
 * datagram) is counted in sg_folded instead of sent, because its user (sc->who.uid) already
 * had `rate` rejections journaled in this window. Users past SG_RATES_MAX (thousands of
 * uids from user namespaces) are folded from their first rejection: still counted. */
#define EMIT_UDP_FLOW (1 << 18)
__attribute__((noinline)) int fold(struct sg_scratch *sc, __u32 what, __s32 rule, __u32 gen, __u32 rate)
{
	if (!sc || !rate)
		return 0;
	__u32 uid = sc->who.uid;
	__u64 now = bpf_ktime_get_boot_ns();
	struct sg_rate *r = bpf_map_lookup_elem(&sg_rates, &uid);
	if (r) {
		if (now - r->window_ns >= SG_FOLD_WINDOW_NS) {  /* a new window (two CPUs may both reset: */
			r->window_ns = now;                      /* one rejection more is sent, none lost) */
			r->events = 0;
		}
		if (__sync_fetch_and_add(&r->events, 1) < rate)
			return 0;
	} else {
		struct sg_rate fresh = { .window_ns = now, .events = 1 };
		if (!bpf_map_update_elem(&sg_rates, &uid, &fresh, BPF_NOEXIST))
			return 0;
		if (bpf_map_lookup_elem(&sg_rates, &uid))
			return 0;  /* another CPU made it first: counted from the next one */
	}
	struct sg_fold_key k = { .generation = gen, .uid = uid, .rule = rule, .exit = what & 0xff,
				 .verdict = (what >> 8) & 0xff, .udp = (what & EMIT_UDP_FLOW) ? 1 : 0 };
	count_key(&sg_folded, &k, SG_STAT_FOLDED_UNKEYED);
	return 1;
}

/* Shadow mode: where the shadow slot's policy decided a call otherwise than the active one
 * (`what`: EMIT_WHAT of the active decision), the pair of deciding rules is counted in
 * sg_shadow, and the first call of a pair is journaled whole as a sample. judge() makes
 * the shadow decision itself (decide_at beside, not inside, this call: the verifier's
 * 512-byte limit holds per call chain). A global function: verified once. */
__attribute__((noinline)) int shadow_differs(struct sg_scratch *sc, __u32 what, __s32 rule, __u32 gen)
{
	if (!sc)
		return 0;
	struct sg_shadow_key k = { .generation = gen, .shadow_generation = sc->shadow_generation, .rule = rule,
				   .shadow_rule = sc->shadow_rule, .exit = what & 0xff, .verdict = (what >> 8) & 0xff,
				   .shadow_verdict = sc->shadow_verdict };
	if (count_key(&sg_shadow, &k, SG_STAT_SHADOW_UNKEYED) == 1)  /* the pair's first call: a sample */
		emit(sc, (what & 0x1ffff) | EMIT_SHADOW, rule, gen);
	return 0;
}

/* One decision at an exit point, end to end: read the active policy once, gather what it
 * needs, decide, count the deciding rule, journal it (with the full identity) if the
 * audit levels ask, and let a shadow policy decide it too. *err gets the policy's errno;
 * *gen and *rule what decided. */
static __always_inline int judge(__u32 exit, struct sg_scratch *sc, bool is_current, const struct sg_owner *owner,
				 bool owner_later, const struct sg_site *at, __s32 *err, __u32 *gen, __s32 *rule_out)
{
	__s32 rule;
	__u32 slot, shadow;
	*err = EPERM;
	*gen = 0;
	*rule_out = -1;
	stat_add(SG_STAT_DECISIONS);
	const struct sg_policy *pol = active_policy(&slot, &shadow);
	if (!pol)
		return SG_ALLOWED;  /* unreachable: the array always has the entry */
	int cls = proto_class(at->ipproto);
	__u32 needs = shadow != SHADOW_OFF ? SG_NEED_ALL : pol->needs & SG_NEED_ALL;
	identify(sc, is_current, owner, needs);
	int verdict;
	if (at->flags & SG_EV_UNPARSED) {
		rule = SG_RULE_UNPARSED;
		verdict = SG_REJECTED;
	} else {
		verdict = decide_slot(sc, slot, exit, cls < 0 ? 0 : cls);
		rule = sc->decided_rule;
	}
	*err = pol->reject_errno;
	*gen = pol->generation;
	*rule_out = rule;
	count_hit(slot, exit, rule);
	if (shadow != SHADOW_OFF && !(at->flags & SG_EV_UNPARSED)) {
		const struct sg_policy *spol = bpf_map_lookup_elem(&sg_policy, &shadow);
		if (spol) {
			int sverdict = decide_slot(sc, shadow, exit, cls < 0 ? 0 : cls);
			count_hit(shadow, exit, sc->decided_rule);
			if (sverdict != verdict) {
				sc->shadow_rule = sc->decided_rule;
				sc->shadow_generation = spol->generation;
				sc->shadow_verdict = sverdict;
				shadow_differs(sc, EMIT_WHAT(exit, verdict, is_current), rule, pol->generation);
			}
		}
	}
	if (wants_event(verdict, pol->flags, cls == SG_PROTO_UDP)) {
		/* an accept decided without its owner (no rule tests it) still journals who owns
		 * the listener: replay and learn need it (owner_later: the hook skipped the lookup) */
		if (owner_later && !owner) {
			owner = find_owner(at->family, at->laddr, at->lport);
			identify(sc, is_current, owner, SG_NEED_ALL);
		} else if (needs != SG_NEED_ALL) {
			identify(sc, is_current, owner, SG_NEED_ALL);
		}
		__u32 what = EMIT_WHAT(exit, verdict, is_current) | ((at->flags & SG_EV_FLOW) ? EMIT_UDP_FLOW : 0);
		if (verdict == SG_ALLOWED || !fold(sc, what, rule, pol->generation, pol->fold_rate))
			emit(sc, what & 0x1ffff, rule, pol->generation);
	}
	return verdict;
}

/* Record the current task as the owner of socket `cookie` (bind, listen, first send). */
static __always_inline void record_owner(struct sg_scratch *sc, __u64 cookie, __u32 flags, bool keep_flags)
{
	current_identity(&sc->who, SG_NEED_ALL);
	sc->who.flags = flags;
	if (keep_flags) {
		struct sg_owner *old = bpf_map_lookup_elem(&sg_owners, &cookie);
		if (old)
			sc->who.flags |= old->flags;
	}
	bpf_map_update_elem(&sg_owners, &cookie, &sc->who, BPF_ANY);
}

/* cgroup hooks: 1 lets the call through; 0 refuses it (EPERM, or the policy's errno). */
static __always_inline int cgroup_verdict(int verdict, __s32 err)
{
	if (verdict != SG_REJECTED)
		return 1;
	if (err != EPERM && err > 0)
		bpf_set_retval(-err);
	return 0;
}

/* ---- UDP flows: the first datagram to (or from) a peer is decided, later ones counted --- */

static __always_inline void flow_key(struct sg_flow_key *k, __u64 cookie, const __u8 *peer, __u16 port,
				     __u32 exit, __u32 gen, __u32 uid)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->cookie = cookie;
	__builtin_memcpy(k->peer, peer, 16);
	k->peer_port = port;
	k->exit = exit;
	k->generation = gen;
	k->uid = uid;
}

/* An outbound decision: connect(), or a send with an address. A UDP datagram reuses its
 * flow's verdict if the same identity sent to the same peer under the same policy; else
 * it is decided, journaled (first of the flow) and counted from then on. One judge() per
 * caller: each inlined copy is verified again (and 6.1 in the guest is slow at it). */
static __always_inline int judge_out(struct sg_scratch *sc, struct sg_site *at, __s32 *err)
{
	__u32 slot;
	*err = EPERM;
	const struct sg_policy *pol = active_policy(&slot, NULL);
	if (!pol)
		return SG_ALLOWED;
	bool udp = proto_class(at->ipproto) == SG_PROTO_UDP && !(at->flags & SG_EV_UNPARSED);
	struct sg_flow_key *k = &sc->fkey;
	__u32 uid = 0, gid = 0, dev = 0;
	__u64 groups = 0, ino = 0, carried = 0;
	if (udp) {
		struct task_struct *task = bpf_get_current_task_btf();
		const struct cred *cred = task->cred;
		uid = cred->euid.val;
		gid = cred->egid.val;
		groups = (__u64)cred->group_info;
		struct inode *inode = task->mm->exe_file->f_inode;  /* kernel threads: loads read 0 */
		ino = inode->i_ino;
		dev = inode->i_sb->s_dev;
		flow_key(k, at->cookie, at->raddr, at->rport, SG_EXIT_CONNECT, pol->generation, uid);
		struct sg_flow *f = bpf_map_lookup_elem(&sg_flows, k);
		if (f && f->gid == gid && f->groups == groups && f->ino == ino && f->dev == dev) {
			__sync_fetch_and_add(&f->packets, 1);
			count_hit(slot, SG_EXIT_CONNECT, f->rule);
			stat_add(SG_STAT_DECISIONS);
			*err = pol->reject_errno;
			return f->verdict;
		}
		carried = f ? f->packets : 0;  /* same uid, other program: one flow, counts kept */
		at->flags |= SG_EV_FLOW;
	}
	__u32 gen;
	__s32 rule;
	int verdict = judge(SG_EXIT_CONNECT, sc, true, NULL, false, at, err, &gen, &rule);
	if (!udp)
		return verdict;
	struct sg_flow *v = &sc->fval;
	__builtin_memset(v, 0, sizeof(*v));
	v->packets = carried;
	v->ino = ino;
	v->groups = groups;
	v->dev = dev;
	v->gid = gid;
	v->rule = rule;
	v->verdict = verdict;
	flow_key(k, at->cookie, at->raddr, at->rport, SG_EXIT_CONNECT, gen, uid);
	if (bpf_map_update_elem(&sg_flows, k, v, BPF_ANY))
		stat_add(SG_STAT_FLOWS_FULL);
	/* the receiving side needs the socket's owner: record it on its first send */
	struct sg_owner *o = bpf_map_lookup_elem(&sg_owners, &at->cookie);
	if (o)
		o->flags |= SG_OWNER_FLOWS;
	else
		record_owner(sc, at->cookie, SG_OWNER_FLOWS, false);
	return verdict;
}

/* ---- connect, and sends with an address ------------------------------------------- */

static __always_inline void addr_from_ctx(struct sg_ctx_sock_addr *ctx, bool v6, __u8 *raddr)
{
	if (v6) {
		__u32 a[4] = { READ_CTX(ctx->user_ip6[0]), READ_CTX(ctx->user_ip6[1]),
			       READ_CTX(ctx->user_ip6[2]), READ_CTX(ctx->user_ip6[3]) };
		v6_copy(raddr, a);
	} else {
		v4_mapped(raddr, READ_CTX(ctx->user_ip4));
	}
}

/* cgroup/connect4/6 and cgroup/sendmsg4/6 (UDP sends with an address: the kernel runs
 * these only for unconnected sends or an explicit address; a connected send was judged at
 * connect). Every protocol that reaches a connect hook is judged (TCP, UDP, UDP-Lite,
 * SCTP, MPTCP's first subflow, TFO's implicit connect). */
static __always_inline int on_connect(struct bpf_sock_addr *raw, bool v6)
{
	struct sg_ctx_sock_addr *ctx = (struct sg_ctx_sock_addr *)raw;
	struct sg_scratch *sc = scratch();
	if (!sc)
		return 0;  /* cannot happen (array map); refuse rather than pass unjudged */
	struct sg_site *at = new_site(sc, v6 ? AF_INET6 : AF_INET, READ_CTX(ctx->protocol));
	addr_from_ctx(ctx, v6, at->raddr);
	at->rport = bpf_ntohs((__u16)READ_CTX(ctx->user_port));
	at->cookie = bpf_get_socket_cookie(raw);
	if (at->ipproto == IPPROTO_TCP && raw->sk) {  /* an MPTCP socket's first subflow is TCP */
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(raw->sk);
		if (tp && tp->is_mptcp)
			at->ipproto = IPPROTO_MPTCP;
	}
	__s32 err;
	return cgroup_verdict(judge_out(sc, at, &err), err);
}

SEC("cgroup/connect4")
int sg_connect4(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, false);
}

SEC("cgroup/connect6")
int sg_connect6(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, true);
}

SEC("cgroup/sendmsg4")
int sg_sendmsg4(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, false);
}

SEC("cgroup/sendmsg6")
int sg_sendmsg6(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx, true);
}

/* ---- listen, judged when a socket gets its local port ------------------------------ */

/* cgroup/post_bind4/6. UDP (and UDP-Lite) binds are judged by listen rules on both
 * backends. Stream sockets (TCP, MPTCP subflows, SCTP) only on the cgroup backend, where
 * bind() is where a listen rule can still refuse the call; the LSM backend judges their
 * listen() itself. The binder is recorded as the socket's owner (UDP: for inbound
 * datagrams; stream: until listen() records the listener). */
static __always_inline int on_bind(struct sg_ctx_sock *ctx, bool v6)
{
	__u32 ipproto = READ_CTX(ctx->protocol);
	__u32 src4 = v6 ? 0 : READ_CTX(ctx->src_ip4);  /* a v6 program may not read src_ip4 */
	int cls = proto_class(ipproto);
	if (cls < 0)
		return 1;
	bool udp = cls == SG_PROTO_UDP;
	struct sg_config *cfg = get_config();
	if (!udp && !(cfg && (cfg->flags & SG_CFG_LISTEN_AT_BIND)))
		return 1;
	struct sg_scratch *sc = scratch();
	if (!sc)
		return 0;
	struct sg_site *at = new_site(sc, v6 ? AF_INET6 : AF_INET, ipproto);
	if (v6) {
		__u32 a[4] = { READ_CTX(ctx->src_ip6[0]), READ_CTX(ctx->src_ip6[1]),
			       READ_CTX(ctx->src_ip6[2]), READ_CTX(ctx->src_ip6[3]) };
		v6_copy(at->laddr, a);
	} else {
		v4_mapped(at->laddr, src4);
	}
	at->lport = (__u16)READ_CTX(ctx->src_port);
	at->cookie = bpf_get_socket_cookie(ctx);
	__s32 err;
	__u32 gen;
	__s32 rule;
	int verdict = judge(SG_EXIT_LISTEN, sc, true, NULL, false, at, &err, &gen, &rule);
	if (verdict != SG_REJECTED)
		record_owner(sc, at->cookie, SG_OWNER_BIND_JUDGED, false);
	return cgroup_verdict(verdict, err);
}

SEC("cgroup/post_bind4")
int sg_bind4(struct bpf_sock *ctx)
{
	return on_bind((struct sg_ctx_sock *)ctx, false);
}

SEC("cgroup/post_bind6")
int sg_bind6(struct bpf_sock *ctx)
{
	return on_bind((struct sg_ctx_sock *)ctx, true);
}

/* A socket in scope is gone: forget its owner; if it had UDP flows, tell user space, which
 * then reads their final counts (nothing can add to them any more). */
SEC("cgroup/sock_release")
int sg_release(struct bpf_sock *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sg_owner *o = bpf_map_lookup_elem(&sg_owners, &cookie);
	if (!o)
		return 1;  /* most sockets (clients that never bound): one lookup */
	if (o->flags & SG_OWNER_INDEXED) {
		struct sg_owner_key *lk = bpf_map_lookup_elem(&sg_listener_keys, &cookie);
		if (lk)
			bpf_map_delete_elem(&sg_listener_cookies, lk);
		bpf_map_delete_elem(&sg_listener_keys, &cookie);
	}
	if (o->flags & SG_OWNER_FLOWS) {
		struct sg_event *e = bpf_ringbuf_reserve(&sg_events, sizeof(*e), 0);
		if (e) {
			__builtin_memset(e, 0, sizeof(*e));
			e->boot_ns = bpf_ktime_get_boot_ns();
			e->cookie = cookie;
			e->flags = SG_EV_RELEASED;
			bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		} else {
			stat_add(SG_STAT_DROPPED);
		}
	}
	if (o->flags & SG_OWNER_REFUSED)
		refused_listeners_add(-1);
	bpf_map_delete_elem(&sg_owners, &cookie);
	return 1;
}

/* ---- accept: refuse the connection before any listener sees it --------------------- */

static __always_inline struct sg_owner *owner_of(struct bpf_sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	__u64 cookie = tp ? tp->inet_conn.icsk_inet.sk.__sk_common.skc_cookie.counter : 0;
	bpf_sk_release(sk);
	return cookie ? bpf_map_lookup_elem(&sg_owners, &cookie) : NULL;
}

/* The owner of the listener at key k, in the sockhash or the table of refused ones. */
static __always_inline struct sg_owner *listener_at(struct sg_owner_key *k, __u16 family, const __u8 *addr)
{
	k->family = family;
	__builtin_memcpy(k->addr, addr, 16);
	struct bpf_sock *sk = bpf_map_lookup_elem(&sg_listeners, k);
	if (sk)
		return owner_of(sk);
	__u64 *cookie = bpf_map_lookup_elem(&sg_listener_cookies, k);
	return cookie ? bpf_map_lookup_elem(&sg_owners, cookie) : NULL;
}

/* The owner of the listening socket that would get this connection, in the order the
 * kernel prefers: bound to the address (an IPv4 socket, then a v6 one bound to the
 * v4-mapped address), then the wildcard (IPv4's, then IPv6's, which takes IPv4 unless
 * v6only). */
static __always_inline struct sg_owner *find_owner(__u32 family, const __u8 *laddr, __u16 lport)
{
	struct sg_config *cfg = get_config();
	struct sg_owner_key k = { .netns = cfg ? cfg->netns_ino : 0, .port = lport };
	__u8 any6[16] = {}, any4[16] = {};
	any4[10] = any4[11] = 0xff;
	struct sg_owner *o;
	if (family == AF_INET) {
		if ((o = listener_at(&k, AF_INET, laddr)) || (o = listener_at(&k, AF_INET6, laddr)) ||
		    (o = listener_at(&k, AF_INET, any4)))
			return o;
	} else if ((o = listener_at(&k, AF_INET6, laddr))) {
		return o;
	}
	if ((o = listener_at(&k, AF_INET6, any6)))
		return o;
	return NULL;
}

/* ---- listen(): record the listener (both backends); judge it if bind() did not -------- */

SEC("sockops")
int sg_listen_cb(struct bpf_sock_ops *raw)
{
	if (READ_CTX(raw->op) != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return 1;
	__u32 family = READ_CTX(raw->family);
	struct sg_config *cfg = get_config();
	struct sg_scratch *sc = scratch();
	if (!cfg || !sc)
		return 1;
	struct sg_owner_key k = { .netns = 0, .family = family, .port = (__u16)READ_CTX(raw->local_port) };
	struct sg_site *at = new_site(sc, family, IPPROTO_TCP);
	at->lport = k.port;
	if (family == AF_INET6) {
		__u32 a[4] = { READ_CTX(raw->local_ip6[0]), READ_CTX(raw->local_ip6[1]),
			       READ_CTX(raw->local_ip6[2]), READ_CTX(raw->local_ip6[3]) };
		v6_copy(k.addr, a);
	} else {
		v4_mapped(k.addr, READ_CTX(raw->local_ip4));
	}
	struct bpf_sock *bsk = raw->sk;
	if (!bsk)
		return 1;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	k.netns = tp->inet_conn.icsk_inet.sk.__sk_common.skc_net.net->ns.inum;
	if (tp->is_mptcp)
		at->ipproto = IPPROTO_MPTCP;  /* a subflow of an MPTCP listener */
	__builtin_memcpy(at->laddr, k.addr, 16);
	__u64 cookie = bpf_get_socket_cookie(raw);
	at->cookie = cookie;
	__u32 flags = 0;
	struct sg_owner *old = bpf_map_lookup_elem(&sg_owners, &cookie);
	if (old)
		flags = old->flags & (SG_OWNER_BIND_JUDGED | SG_OWNER_REFUSED);
	/* cgroup backend: a socket never bound got its port only now, so its listen is judged
	 * here. sockops cannot fail listen(): a refused listener is marked, and every
	 * connection to it is refused (sg_accept). */
	if ((cfg->flags & SG_CFG_LISTEN_AT_BIND) && !(flags & SG_OWNER_BIND_JUDGED)) {
		__s32 err;
		__u32 gen;
		__s32 rule;
		if (judge(SG_EXIT_LISTEN, sc, true, NULL, false, at, &err, &gen, &rule) == SG_REJECTED &&
		    !(flags & SG_OWNER_REFUSED)) {
			flags |= SG_OWNER_REFUSED;
			refused_listeners_add(1);
		}
	}
	if (bpf_sock_hash_update(raw, &sg_listeners, &k, BPF_ANY)) {
		bpf_map_update_elem(&sg_listener_cookies, &k, &cookie, BPF_ANY);
		bpf_map_update_elem(&sg_listener_keys, &cookie, &k, BPF_ANY);
		flags |= SG_OWNER_INDEXED;
	}
	record_owner(sc, cookie, flags, false);
	return 1;
}

SEC("sk_lookup")
int sg_accept(struct bpf_sk_lookup *raw)
{
	struct sg_ctx_sk_lookup *ctx = (struct sg_ctx_sk_lookup *)raw;
	if (READ_CTX(ctx->protocol) != IPPROTO_TCP)
		return SK_PASS;  /* UDP datagrams are judged at the receiving socket (sg_ingress) */
	struct sg_scratch *sc = scratch_of(SG_SCRATCH_SOFTIRQ);
	if (!sc)
		return SK_DROP;
	/* every field read once, unconditionally, at its fixed offset (see kernel-notes) */
	__u32 family = READ_CTX(ctx->family);
	__u32 r[4] = { READ_CTX(ctx->remote_ip6[0]), READ_CTX(ctx->remote_ip6[1]),
		       READ_CTX(ctx->remote_ip6[2]), READ_CTX(ctx->remote_ip6[3]) };
	__u32 l[4] = { READ_CTX(ctx->local_ip6[0]), READ_CTX(ctx->local_ip6[1]),
		       READ_CTX(ctx->local_ip6[2]), READ_CTX(ctx->local_ip6[3]) };
	__u32 r4 = READ_CTX(ctx->remote_ip4), l4 = READ_CTX(ctx->local_ip4);
	struct sg_site *at = new_site(sc, family, IPPROTO_TCP);
	if (family == AF_INET6) {
		v6_copy(at->laddr, l);
		v6_copy(at->raddr, r);
	} else {
		v4_mapped(at->laddr, l4);
		v4_mapped(at->raddr, r4);
	}
	at->lport = (__u16)READ_CTX(ctx->local_port);
	at->rport = bpf_ntohs((__u16)READ_CTX(ctx->remote_port));

	/* the owner is looked up when a rule (active or shadow) needs it, or while some
	 * listener's listen() was refused after the fact (cgroup backend): every connection to
	 * it is refused; else only if the decision is journaled (judge's owner_later) */
	__u32 slot, shadow, zero = 0;
	const struct sg_policy *pol = active_policy(&slot, &shadow);
	__s64 *refused = bpf_map_lookup_elem(&sg_refused_listeners, &zero);
	struct sg_owner *owner = NULL;
	if ((pol && (pol->needs & SG_NEED_OWNER)) || shadow != SHADOW_OFF || (refused && *refused > 0))
		owner = find_owner(family, at->laddr, at->lport);
	if (owner && (owner->flags & SG_OWNER_REFUSED)) {
		identify(sc, false, owner, SG_NEED_ALL);
		stat_add(SG_STAT_DECISIONS);
		count_hit(slot, SG_EXIT_ACCEPT, -1);
		__u32 what = EMIT_WHAT(SG_EXIT_ACCEPT, SG_REJECTED, false);
		if (pol && wants_event(SG_REJECTED, pol->flags, false) &&
		    !fold(sc, what, SG_RULE_LISTEN_REFUSED, pol->generation, pol->fold_rate))
			emit(sc, what, SG_RULE_LISTEN_REFUSED, pol->generation);
		return SK_DROP;
	}
	__s32 err;
	__u32 gen;
	__s32 rule;
	int verdict = judge(SG_EXIT_ACCEPT, sc, false, owner, true, at, &err, &gen, &rule);
	return verdict == SG_REJECTED ? SK_DROP : SK_PASS;
}

/* ---- accept for UDP: each datagram at the socket that receives it ------------------ */

struct sg_udp_hdr {
	__u16 source;
	__u16 dest;
	__u16 len;
	__u16 check;
};

/* The peer and local end of a packet from its headers (the data starts at the IP header
 * here): the source is the peer of an inbound packet, the destination of an outbound one.
 * IPv6 extension headers are followed a few deep. `sctp`: an SCTP packet (else UDP or
 * UDP-Lite), whose common header starts with the same two ports. Returns the transport
 * header's offset + 1; 0: not parseable. */
static __always_inline __u32 packet_peer(struct __sk_buff *skb, struct sg_site *at, bool inbound, bool sctp)
{
	__u8 *peer = inbound ? at->raddr : at->laddr, *self = inbound ? at->laddr : at->raddr;
	__u8 first;
	if (bpf_skb_load_bytes(skb, 0, &first, 1))
		return 0;
	__u32 off;
	__u8 next;
	if ((first >> 4) == 4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return 0;
		v4_mapped(peer, ip.saddr);
		v4_mapped(self, ip.daddr);
		off = (ip.ihl & 0xf) * 4;
		next = ip.protocol;
	} else if ((first >> 4) == 6) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return 0;
		__builtin_memcpy(peer, &ip6.saddr, 16);
		__builtin_memcpy(self, &ip6.daddr, 16);
		off = sizeof(ip6);
		next = ip6.nexthdr;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (next != 0 && next != 43 && next != 60)  /* hop-by-hop, routing, dest options */
				break;
			__u8 ext[2];
			if (bpf_skb_load_bytes(skb, off & 0xffff, ext, 2))
				return 0;
			next = ext[0];
			off += (ext[1] + 1) * 8;
		}
	} else {
		return 0;
	}
	if (sctp ? next != IPPROTO_SCTP : next != IPPROTO_UDP && next != IPPROTO_UDPLITE)
		return 0;
	struct sg_udp_hdr uh;
	if (bpf_skb_load_bytes(skb, off & 0xffff, &uh, sizeof(uh)))
		return 0;
	at->rport = bpf_ntohs(inbound ? uh.source : uh.dest);
	at->lport = bpf_ntohs(inbound ? uh.dest : uh.source);
	return (off & 0xffff) + 1;
}

static __always_inline int datagram_peer(struct __sk_buff *skb, struct sg_site *at, bool inbound)
{
	return packet_peer(skb, at, inbound, false) != 0;
}

#define SCTP_CHUNK_INIT 1

/* accept for SCTP (both backends; sk_lookup never sees SCTP): an INIT chunk reaching a
 * socket in scope asks for a new association, so it is an accept decision on the receiving
 * socket's owner, by its source address and ports. A refused INIT is dropped (the peer
 * retries, each INIT judged, then gives up: the client sees a timeout, never a
 * connection). Other chunks belong to associations an INIT began. A packet that cannot be
 * parsed is refused and journaled. (The addresses a multi-homed peer lists inside its INIT
 * are not judged: docs/policy.md.) */
static __always_inline int sctp_ingress(struct __sk_buff *skb, struct bpf_sock *sk)
{
	struct sg_scratch *sc = scratch_of(SG_SCRATCH_SOFTIRQ);
	if (!sc)
		return 0;
	struct sg_site *at = new_site(sc, sk->family, IPPROTO_SCTP);
	__u32 off = packet_peer(skb, at, true, true);
	__u8 chunk = 0;
	/* the first chunk's type follows the 12-byte common header */
	if (!off || bpf_skb_load_bytes(skb, (off - 1 + 12) & 0xffff, &chunk, 1)) {
		at->flags = SG_EV_UNPARSED;
		__builtin_memset(at->laddr, 0, 16);
		__builtin_memset(at->raddr, 0, 16);
	} else if (chunk != SCTP_CHUNK_INIT) {
		return 1;
	}
	at->cookie = bpf_get_socket_cookie(skb);
	struct sg_owner *owner = bpf_map_lookup_elem(&sg_owners, &at->cookie);
	__s32 err;
	__u32 gen;
	__s32 rule;
	return judge(SG_EXIT_ACCEPT, sc, false, owner, false, at, &err, &gen, &rule) == SG_REJECTED ? 0 : 1;
}

/* cgroup_skb/ingress runs for every packet a socket in scope receives; only datagrams of
 * unconnected UDP sockets are ours (a connected socket's peer was judged at connect). A
 * datagram from a peer the socket itself sent to (under this policy) is a reply: its
 * outbound flow was judged. Others are accept decisions on the receiving socket's owner. */
SEC("cgroup_skb/ingress")
int sg_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb_sock(skb);
	if (sk && sk->protocol == IPPROTO_SCTP)
		return sctp_ingress(skb, sk);
	if (!sk || (sk->protocol != IPPROTO_UDP && sk->protocol != IPPROTO_UDPLITE) || sk->dst_port)
		return 1;
	struct sg_scratch *sc = scratch_of(SG_SCRATCH_SOFTIRQ);
	if (!sc)
		return 0;
	struct sg_site *at = new_site(sc, sk->family, sk->protocol);
	at->cookie = bpf_get_socket_cookie(skb);
	if (!datagram_peer(skb, at, true)) {
		at->flags = SG_EV_UNPARSED;
		__builtin_memset(at->laddr, 0, 16);
		__builtin_memset(at->raddr, 0, 16);
	}
	__u32 slot;
	const struct sg_policy *pol = active_policy(&slot, NULL);
	if (!pol)
		return 0;
	struct sg_flow_key *k = &sc->fkey;
	struct sg_owner *owner = NULL;
	if (!(at->flags & SG_EV_UNPARSED)) {
		/* the common case first: a flow already allowed, one lookup */
		flow_key(k, at->cookie, at->raddr, at->rport, SG_EXIT_ACCEPT, pol->generation, 0);
		struct sg_flow *f = bpf_map_lookup_elem(&sg_flows, k);
		if (f && f->verdict != SG_REJECTED) {
			__sync_fetch_and_add(&f->packets, 1);
			count_hit(slot, SG_EXIT_ACCEPT, f->rule);
			stat_add(SG_STAT_DECISIONS);
			return 1;
		}
		/* a reply to what this socket's owner sent (the outbound flow's key has its uid) */
		owner = bpf_map_lookup_elem(&sg_owners, &at->cookie);
		if (owner) {
			flow_key(k, at->cookie, at->raddr, at->rport, SG_EXIT_CONNECT, pol->generation, owner->uid);
			struct sg_flow *out = bpf_map_lookup_elem(&sg_flows, k);
			if (out && out->verdict != SG_REJECTED)
				return 1;
		}
		if (f) {  /* a refused flow */
			__sync_fetch_and_add(&f->packets, 1);
			count_hit(slot, SG_EXIT_ACCEPT, f->rule);
			stat_add(SG_STAT_DECISIONS);
			stat_add(SG_STAT_UDP_DROPPED);
			return 0;
		}
		at->flags |= SG_EV_FLOW;
	} else {
		owner = bpf_map_lookup_elem(&sg_owners, &at->cookie);
	}
	__s32 err;
	__u32 gen;
	__s32 rule;
	int verdict = judge(SG_EXIT_ACCEPT, sc, false, owner, false, at, &err, &gen, &rule);
	if (!(at->flags & SG_EV_UNPARSED)) {
		struct sg_flow *v = &sc->fval;
		__builtin_memset(v, 0, sizeof(*v));
		v->rule = rule;
		v->verdict = verdict;
		flow_key(k, at->cookie, at->raddr, at->rport, SG_EXIT_ACCEPT, gen, 0);
		if (bpf_map_update_elem(&sg_flows, k, v, BPF_ANY))
			stat_add(SG_STAT_FLOWS_FULL);
		else if (owner)
			owner->flags |= SG_OWNER_FLOWS;
	}
	if (verdict == SG_REJECTED) {
		stat_add(SG_STAT_UDP_DROPPED);
		return 0;
	}
	return 1;
}

/* cgroup_skb/egress, cgroup backend: the kernel runs no connect hook for UDP-Lite (it has
 * no pre_connect), so a connected UDP-Lite socket's sends without an address reach no
 * other hook. Its datagrams are judged here instead, per flow like every UDP send (the
 * sender is the current task: UDP transmits in the sendmsg call); a refused one fails the
 * send with EPERM. Every other packet returns at once. */
SEC("cgroup_skb/egress")
int sg_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb_sock(skb);
	if (!sk || sk->protocol != IPPROTO_UDPLITE || !sk->dst_port)
		return 1;
	struct sg_scratch *sc = scratch();
	if (!sc)
		return 0;
	struct sg_site *at = new_site(sc, sk->family, IPPROTO_UDPLITE);
	at->cookie = bpf_get_socket_cookie(skb);
	if (!datagram_peer(skb, at, false))
		at->flags = SG_EV_UNPARSED;
	__s32 err;
	return judge_out(sc, at, &err) == SG_REJECTED ? 0 : 1;
}

/* ---- LSM backend: connect(), sends with an address and listen() themselves ---------- */

/* LSM hooks see every task on the host; the scope is the cgroup stored here at load. */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sg_scope SEC(".maps");

static __always_inline int lsm_verdict(int verdict, __s32 err)
{
	if (verdict != SG_REJECTED)
		return 0;
	return err > 0 ? -err : -EPERM;
}

/* An LSM hook's sock if the caller is in scope and it is an IPv4/IPv6 socket of a protocol
 * sockgate judges (TCP, UDP, UDP-Lite, MPTCP, SCTP); NULL otherwise (raw sockets need
 * CAP_NET_RAW and are out of scope, see docs/policy.md). */
static __always_inline struct sock *lsm_scoped_sock(struct socket *sock, __u16 *family, __u16 *protocol)
{
	if (bpf_current_task_under_cgroup(&sg_scope, 0) != 1)
		return NULL;
	struct sock *sk = sock->sk;  /* a BTF pointer (helpers taking a socket want one) */
	if (!sk)
		return NULL;
	*family = BPF_CORE_READ(sk, __sk_common.skc_family);
	*protocol = BPF_CORE_READ(sk, sk_protocol);
	if ((*family != AF_INET && *family != AF_INET6) || proto_class(*protocol) < 0)
		return NULL;
	return sk;
}

/* The destination of a connect() or send: a sockaddr of `len` bytes in kernel memory.
 * Returns 1 parsed, 0 AF_UNSPEC (a disconnect: nothing to judge), -1 not parseable (the
 * call is refused: it is never left to the kernel). */
static __always_inline int sockaddr_peer(const struct sockaddr *sa, int len, struct sg_site *at)
{
	__u16 fam = 0;
	if (len < (int)sizeof(fam) || bpf_probe_read_kernel(&fam, sizeof(fam), &sa->sa_family))
		return -1;
	if (fam == AF_UNSPEC)
		return 0;
	if (fam == AF_INET && len >= (int)sizeof(struct sockaddr_in)) {
		struct sockaddr_in sin;
		if (bpf_probe_read_kernel(&sin, sizeof(sin), sa))
			return -1;
		v4_mapped(at->raddr, sin.sin_addr.s_addr);
		at->rport = bpf_ntohs(sin.sin_port);
		return 1;
	}
	if (fam == AF_INET6 && len >= SIN6_LEN_RFC2133) {
		struct { __u16 family; __u16 port; __u32 flowinfo; __u8 addr[16]; } sin6;
		if (bpf_probe_read_kernel(&sin6, sizeof(sin6), sa))
			return -1;
		__builtin_memcpy(at->raddr, sin6.addr, 16);
		at->rport = bpf_ntohs(sin6.port);
		return 1;
	}
	return -1;
}

static __always_inline int lsm_judge_connect(struct sock *sk, __u16 skfam, __u16 protocol,
					     const struct sockaddr *sa, int len)
{
	struct sg_scratch *sc = scratch();
	if (!sc)
		return -EPERM;
	struct sg_site *at = new_site(sc, skfam, protocol);
	int parsed = sockaddr_peer(sa, len, at);
	if (parsed == 0)
		return 0;
	if (parsed < 0)
		at->flags = SG_EV_UNPARSED;
	at->cookie = bpf_get_socket_cookie(sk);
	if (BPF_CORE_READ(sk, sk_type) == SOCK_STREAM && protocol == IPPROTO_TCP) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
		if (tp && tp->is_mptcp)
			at->ipproto = IPPROTO_MPTCP;
	}
	__s32 err;
	return lsm_verdict(judge_out(sc, at, &err), err);
}

SEC("lsm/socket_connect")
int BPF_PROG(sg_lsm_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return ret;
	__u16 skfam, protocol;
	struct sock *sk = lsm_scoped_sock(sock, &skfam, &protocol);
	if (!sk)
		return 0;
	return lsm_judge_connect(sk, skfam, protocol, address, addrlen);
}

/* sendto/sendmsg/sendmmsg and io_uring sends: a datagram socket's send with an address,
 * and TCP Fast Open (MSG_FASTOPEN: the send is the connect). A stream socket's address is
 * otherwise ignored by the kernel; a send without one goes where connect() (judged) went. */
SEC("lsm/socket_sendmsg")
int BPF_PROG(sg_lsm_sendmsg, struct socket *sock, struct msghdr *msg, int size, int ret)
{
	if (ret)
		return ret;
	void *name = BPF_CORE_READ(msg, msg_name);
	if (!name)
		return 0;
	__u16 skfam, protocol;
	struct sock *sk = lsm_scoped_sock(sock, &skfam, &protocol);
	if (!sk)
		return 0;
	int cls = proto_class(protocol);
	if ((cls == SG_PROTO_TCP || cls == SG_PROTO_MPTCP) && !(BPF_CORE_READ(msg, msg_flags) & MSG_FASTOPEN))
		return 0;
	return lsm_judge_connect(sk, skfam, protocol, name, BPF_CORE_READ(msg, msg_namelen));
}

/* SCTP's connectx (a setsockopt: no connect hook sees it) hands the kernel a packed list of
 * peer addresses. One address is judged like a connect(); several are refused (judging each
 * would multiply the program; the refusal is journaled as an unparsed address). An
 * implicit association by sendmsg is judged at socket_sendmsg, bindx's listen at listen(). */
#define SCTP_SOCKOPT_CONNECTX 110
SEC("lsm/sctp_bind_connect")
int BPF_PROG(sg_lsm_sctp_connectx, struct sock *sk, int optname, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return ret;
	if (optname != SCTP_SOCKOPT_CONNECTX || bpf_current_task_under_cgroup(&sg_scope, 0) != 1)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family), fam = 0;
	bpf_probe_read_kernel(&fam, sizeof(fam), &address->sa_family);
	int one = fam == AF_INET ? (int)sizeof(struct sockaddr_in) : fam == AF_INET6 ? 28 : 0;
	/* more than one address (or none we know): judged as unparseable, hence refused */
	return lsm_judge_connect(sk, family, IPPROTO_SCTP, address, addrlen == one ? addrlen : 0);
}

/* listen() itself: also a listen() on a socket that was never bound. Its port is chosen
 * after this hook, so such a call is judged with local port 0. */
SEC("lsm/socket_listen")
int BPF_PROG(sg_lsm_listen, struct socket *sock, int backlog, int ret)
{
	if (ret)
		return ret;
	__u16 skfam, protocol;
	struct sock *sk = lsm_scoped_sock(sock, &skfam, &protocol);
	if (!sk || proto_class(protocol) == SG_PROTO_UDP)
		return 0;
	struct sg_scratch *sc = scratch();
	if (!sc)
		return -EPERM;
	struct sg_site *at = new_site(sc, skfam, protocol);
	if (skfam == AF_INET6) {
		BPF_CORE_READ_INTO(&at->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	} else {
		__u32 a4 = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		v4_mapped(at->laddr, a4);
	}
	at->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	at->cookie = bpf_get_socket_cookie(sk);
	__s32 err;
	__u32 gen;
	__s32 rule;
	int verdict = judge(SG_EXIT_LISTEN, sc, true, NULL, false, at, &err, &gen, &rule);
	/* an SCTP listener's owner, for the accept decisions on its INITs (sctp_ingress): no
	 * bind or sockops hook sees SCTP, TCP's owners are recorded at listen by sockops */
	if (verdict != SG_REJECTED && protocol == IPPROTO_SCTP)
		record_owner(sc, at->cookie, 0, false);
	return lsm_verdict(verdict, err);
}

/* ---- the same decision, driven by BPF_PROG_TEST_RUN for the differential test ------- */

SEC("tc")
int sg_probe(struct __sk_buff *skb)
{
	struct sg_scratch *sc = scratch();
	if (!sc)
		return -1;
	struct sg_probe *p = &sc->probe;
	if (bpf_skb_load_bytes(skb, 0, p, sizeof(*p)))
		return -1;
	struct sg_owner *who = &sc->who;
	who->uid = p->uid;
	who->gid = p->groups[0];
	who->ngroups = p->ngroups;
	for (int i = 0; i < SG_MAX_GROUPS; i++)
		who->groups[i] = p->groups[i];
	who->dev = p->dev;
	who->ino = p->ino;
	__u32 slot;
	const struct sg_policy *pol = active_policy(&slot, NULL);
	if (!pol)
		return -1;
	struct sg_site *at = new_site(sc, 0, 0);  /* decide_at() reads the call's site from here */
	__builtin_memcpy(at->laddr, p->local_addr, 16);
	__builtin_memcpy(at->raddr, p->remote_addr, 16);
	at->lport = p->local_port;
	at->rport = p->remote_port;
	int verdict = decide_slot(sc, slot, p->exit & 0xff, p->protocol & 0xff);
	__s32 rule = sc->decided_rule;
	return (verdict << 16) | ((rule + 1) & 0xffff);
}
