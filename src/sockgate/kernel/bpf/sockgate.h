/* sockgate.h - the single truth for everything the kernel programs and user space share:
 * limits, map keys and values, the event record. kernel/layout.py mirrors it with ctypes,
 * and tests/kernel/test_layout.py checks the mirror against this object's BTF. */
#ifndef SOCKGATE_H
#define SOCKGATE_H

#define SG_MAX_RULES      16384                 /* rules per policy */
#define SG_WORDS          (SG_MAX_RULES / 64)   /* u64 words in a rule bitmap */
#define SG_SUMMARY_WORDS  (SG_WORDS / 64)       /* one summary bit per non-empty word */
#define SG_MAX_GROUPS     32                    /* supplementary groups looked at per caller */
#define SG_SLOTS          3                     /* policy tables: active, next, shadow (any order) */
#define SG_MAX_BITMAPS    65536                 /* distinct bitmaps per slot */
#define SG_HIT_SLOTS      (SG_MAX_RULES + 3)    /* per-rule hit counters + one default per exit */
#define SG_PORT_SIDES     2
#define SG_PROTOS         4                     /* protocol classes (enum sg_proto) */
#define SG_RINGBUF_BYTES  (4 << 20)
#define SG_OWNERS_MAX     262144                /* sockets in scope with a recorded owner */
#define SG_LISTENERS_MAX  65536
#define SG_FLOWS_MAX      262144                /* UDP (socket, peer, direction) flows */
#define SG_SHADOW_MAX     16384                 /* (rule, shadow rule) pairs that decided apart */
#define SG_RATES_MAX      65536                 /* users with a recent rejection (fold rate state) */
#define SG_FOLDED_MAX     16384                 /* (user, exit, rule) with folded rejections */
#define SG_FOLD_WINDOW_NS 1000000000ULL         /* sg_policy.fold_rate counts per this window */
#define SG_UID_UNKNOWN    0xfffffffeU           /* accept: listener bound before sockgate started, not found */
#define SG_RULE_LISTEN_REFUSED (-2)             /* accept: the listener's own listen() was refused */
#define SG_RULE_UNPARSED  (-3)                  /* a call in scope whose address could not be read */

enum sg_exit { SG_EXIT_CONNECT = 0, SG_EXIT_LISTEN = 1, SG_EXIT_ACCEPT = 2, SG_EXITS = 3 };
enum sg_verdict { SG_ALLOWED = 0, SG_REJECTED = 1, SG_AUDIT_REJECTED = 2 };
enum sg_side { SG_LOCAL = 0, SG_REMOTE = 1 };
/* Protocol classes: a socket's IP protocol mapped to what a rule's `protocol` can name.
 * UDP-Lite is UDP; MPTCP is its own class (a `tcp` rule names both, see policy/model.py). */
enum sg_proto { SG_PROTO_TCP = 0, SG_PROTO_UDP = 1, SG_PROTO_MPTCP = 2, SG_PROTO_SCTP = 3 };
enum sg_stat { SG_STAT_DECISIONS = 0, SG_STAT_SELECTED = 1, SG_STAT_DROPPED = 2,
	       SG_STAT_UDP_DROPPED = 3,   /* inbound datagrams refused */
	       SG_STAT_FLOWS_FULL = 4,    /* UDP decisions made without a flow slot (table full) */
	       SG_STAT_SHADOW_UNKEYED = 5, /* shadow differences counted only here (sg_shadow full) */
	       SG_STAT_FOLDED_UNKEYED = 6, /* folded rejections counted only here (sg_folded full) */
	       SG_STATS = 8 };

/* struct sg_event.flags */
#define SG_EV_FLOW        1   /* the first decision of a UDP (socket, peer) flow; later
                                 datagrams are counted in sg_flows, not sent one by one */
#define SG_EV_UNPARSED    2   /* the address could not be read: refused */
#define SG_EV_RELEASED    4   /* not a decision: socket `cookie`, which had UDP flows, is gone */
#define SG_EV_SHADOW      8   /* not a decision: the first call of a struct sg_shadow_key (a pair of
                                 active and shadow rules that decided apart); later ones are counted */

/* struct sg_config.flags */
#define SG_CFG_LISTEN_AT_BIND 1  /* cgroup backend: TCP listen rules judged at bind(), and at
                                    listen() for sockets that were never bound */
#define SG_CFG_SHADOW        2  /* the tables of shadow_slot are decided beside the active ones */

/* policy header flags */
#define SG_EMIT_ALLOWED   1   /* *NETSCK: journal allowed decisions */
#define SG_EMIT_REJECTED  2   /* *NETFAIL: journal rejections and audit-rejections */
#define SG_EMIT_UDP       4   /* *NETUDP: journal allowed UDP flows (first datagram + counts) */

/* what a policy's decisions need to know about the caller (sg_policy.needs); an event
 * always gets the full identity */
#define SG_NEED_GROUPS    1   /* some rule tests groups */
#define SG_NEED_PROGRAM   2   /* some rule tests the executable */
#define SG_NEED_OWNER     4   /* some accept rule tests the listener's owner */
#define SG_NEED_ALL       7

/* A rule bitmap: bit r set = rule r is still a candidate. summary bit w set = words[w] != 0. */
struct sg_bitmap {
	__u64 summary[SG_SUMMARY_WORDS];
	__u64 words[SG_WORDS];
};

struct sg_bitmap_key {
	__u32 slot;
	__u32 index;
};

/* Per-slot header: how to read this slot's tables. Dimension results are always
 *   wildcard | (membership ^ negated)
 * precomputed per key; the *_miss bitmaps are that expression for a key not in the map.
 * The exit point is folded into the user dimension (its bitmaps are per exit), so a
 * connect or listen decision ANDs 5 dimensions and an accept 7. */
struct sg_policy {
	__u32 nsummary;              /* summary words in use (ceil(rules / 4096)) */
	__u32 flags;                 /* SG_EMIT_* */
	__s32 reject_errno;          /* errno for rejected connect/listen */
	__u32 generation;            /* increments on every load */
	__u32 needs;                 /* SG_NEED_* */
	__u32 user_miss[SG_EXITS];   /* user dimension for a uid no rule names, per exit */
	__u32 program_miss;
	__u32 group_miss;            /* no caller group is named by any rule */
	__u32 group_wild;            /* rules without a group field */
	__u32 group_neg;             /* rules with a negated group field */
	__u32 fold_rate;             /* rejections journaled one by one per user and window; the rest
	                                are counted in sg_folded (0: never fold) */
	__u8  default_verdict[SG_EXITS];
	__u8  zero;                  /* always 0; see OPAQUE in sockgate.bpf.c */
};

/* What one rule decides once it matches (action and mode folded together). */
struct sg_rule {
	__u8 verdict;                /* enum sg_verdict */
	__u8 pad[3];
};

struct sg_id_key {                /* groups */
	__u32 slot;
	__u32 id;
};

struct sg_user_key {              /* users: per exit, see sg_policy */
	__u16 slot;
	__u16 exit;
	__u32 uid;
};

struct sg_group_val {
	__u32 alone;                 /* result bitmap when this is the only named group of the caller */
	__u32 membership;            /* rules naming this group (for callers in several named groups) */
};

struct sg_program_key {
	__u32 slot;
	__u32 dev;                   /* kernel dev_t of the executable's superblock (MAJOR<<20|MINOR) */
	__u64 ino;
};

/* Addresses: one trie; IPv4 is stored v4-mapped, so ::ffff:a.b.c.d hits IPv4 rules.
 * prefixlen counts slot+side (16 bits) + address bits. */
struct sg_addr_key {
	__u32 prefixlen;
	__u8  slot;
	__u8  side;                  /* enum sg_side */
	__u8  addr[16];
};

/* Ports: array indexed by ((slot * 2 + side) * 4 + protocol class) * 65536 + port -> bitmap
 * index. The protocol dimension rides along with the ports: every decision reads one. */
#define SG_PORT_INDEX(slot, side, proto, port) \
	((((((slot) * SG_PORT_SIDES) + (side)) * SG_PROTOS) + (proto)) * 65536 + (port))

struct sg_config {
	__u32 active_slot;
	__u32 ringbuf_wakeup_bytes;  /* wake the reader early once this much is pending */
	__u32 flags;                 /* SG_CFG_* */
	__u32 netns_ino;             /* the network namespace sk_lookup is attached to */
	__u32 shadow_slot;           /* with SG_CFG_SHADOW: a candidate policy that decides every
	                                call too, never enforced; where it differs is counted */
};

/* Shadow differences: calls where the active and the shadow policy gave different verdicts,
 * counted per pair of deciding rules (and the two generations, so a reload starts anew). */
struct sg_shadow_key {
	__u32 generation;            /* of the active policy */
	__u32 shadow_generation;
	__s32 rule;                  /* active rule, -1 = the exit's default */
	__s32 shadow_rule;
	__u8  exit;
	__u8  verdict;               /* enum sg_verdict: active */
	__u8  shadow_verdict;
	__u8  pad;
};

/* Rejection folding: a user's rejections in the current window (struct sg_rate, by uid);
 * past sg_policy.fold_rate they are counted per sg_fold_key instead of sent one by one, so
 * no user can fill the journal with them, and every one is still counted. */
struct sg_rate {
	__u64 window_ns;             /* boot time the window started */
	__u64 events;                /* rejections in it */
};

struct sg_fold_key {
	__u32 generation;
	__u32 uid;                   /* effective: the caller, or for accept the listener's owner */
	__s32 rule;
	__u8  exit;
	__u8  verdict;
	__u8  udp;                   /* a UDP flow's first datagram (O/I entries) */
	__u8  pad;
};

/* A listening socket, by where it listens (used by accept decisions to find it). The
 * network namespace is part of the key, and IPv4's wildcard (::ffff:0.0.0.0, family
 * AF_INET) is not IPv6's (::, AF_INET6). */
struct sg_owner_key {
	__u32 netns;                 /* network namespace inode */
	__u16 family;                /* of the socket */
	__u16 port;                  /* host order */
	__u8  addr[16];              /* v4-mapped for IPv4 */
};

/* struct sg_owner.flags */
#define SG_OWNER_BIND_JUDGED 1   /* listen rules were applied at bind() */
#define SG_OWNER_REFUSED     2   /* its listen was refused after the fact: every connection to it is */
#define SG_OWNER_FLOWS       4   /* it has UDP flows: its release is reported (final counts) */
#define SG_OWNER_INDEXED     8   /* a listener in sg_listener_cookies (the sockhash refused it) */

/* Who owns a socket in scope (recorded at bind/listen/first send, by socket cookie, removed
 * when the socket is released), used by accept decisions. */
struct sg_owner {
	__u32 tgid;
	__u32 uid;                   /* effective */
	__u32 gid;                   /* effective */
	__u32 ngroups;
	__u32 groups[SG_MAX_GROUPS];
	__u32 dev;
	__u32 flags;                 /* SG_OWNER_* */
	__u64 ino;
	char  comm[16];
	char  exe_name[32];          /* executable's file name (the path is resolved in user space) */
};

/* A UDP flow: one socket and one peer, per direction. The first datagram is decided and
 * journaled; later ones reuse the verdict while the policy generation and the sender's
 * identity are the same, and are counted here (summaries read the counts). */
struct sg_flow_key {
	__u64 cookie;                /* socket cookie */
	__u8  peer[16];              /* v4-mapped for IPv4 */
	__u16 peer_port;
	__u8  exit;                  /* SG_EXIT_CONNECT (outbound) or SG_EXIT_ACCEPT (inbound) */
	__u8  pad;
	__u32 generation;            /* a new policy starts new flows: old ones keep final counts */
	__u32 uid;                   /* outbound: the sender's effective uid (a socket passed to
	                                another user starts a new flow) */
	__u32 pad2;
};

struct sg_flow {
	__u64 packets;               /* datagrams after the first, counted here instead of journaled */
	__u64 ino;                   /* outbound: the sender's executable, */
	__u64 groups;                /* its group_info (immutable: setgroups makes a new one) */
	__u32 dev;
	__u32 gid;                   /* and effective gid: another identity decides anew */
	__s32 rule;
	__u8  verdict;
	__u8  pad[3];
};

/* One ring-buffer record per decision selected for auditing. */
struct sg_event {
	__u64 boot_ns;               /* bpf_ktime_get_boot_ns(); user space adds the realtime offset */
	__u64 ino;                   /* executable inode */
	__u64 cookie;                /* socket cookie (0 where the hook has none) */
	__u32 dev;                   /* executable device */
	__u32 pid;                   /* thread-group id (accept: the listener's) */
	__u32 tid;
	__u32 uid;                   /* real */
	__u32 euid;
	__u32 gid;                   /* real */
	__u32 egid;
	__s32 rule;                  /* rule index, -1 = the exit's default */
	__u32 generation;            /* policy generation that decided */
	__u8  exit;                  /* enum sg_exit */
	__u8  verdict;               /* enum sg_verdict */
	__u8  family;                /* AF_INET / AF_INET6 (of the socket) */
	__u8  flags;                 /* SG_EV_* */
	__u16 protocol;              /* IPPROTO_* of the socket (MPTCP is 262) */
	__u16 local_port;            /* host order */
	__u16 remote_port;
	__u16 pad;
	__u8  local_addr[16];        /* v4-mapped for IPv4 */
	__u8  remote_addr[16];
	char  comm[16];
	char  exe_name[32];          /* file name of the executable: short-lived callers are gone
	                                before user space could read /proc/PID/exe */
	__u32 ngroups;               /* groups the decision saw: effective gid first, then up to */
	__u32 groups[SG_MAX_GROUPS]; /* 31 supplementary (what a group rule tested; replay needs it) */
	__s32 shadow_rule;           /* SG_EV_SHADOW: what the shadow policy decided */
	__u32 shadow_generation;
	__u8  shadow_verdict;
	__u8  pad2[7];
};

/* Input of the differential-test program (BPF_PROG_TEST_RUN ctx): one decision. */
struct sg_probe {
	__u32 exit;
	__u32 uid;
	__u32 ngroups;               /* groups[0] is the primary gid */
	__u32 groups[SG_MAX_GROUPS];
	__u32 dev;
	__u32 protocol;              /* enum sg_proto */
	__u64 ino;
	__u8  local_addr[16];
	__u8  remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__s32 rule;                  /* out */
	__u32 verdict;               /* out */
};

#endif
