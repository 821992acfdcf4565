/* sockgate.h - the single truth for everything the kernel programs and user space share:
 * limits, map keys and values, the event record. kernel/layout.py mirrors it with ctypes,
 * and tests/kernel/test_layout.py checks the mirror against this object's BTF. */
#ifndef SOCKGATE_H
#define SOCKGATE_H

#define SG_MAX_RULES      16384                 /* rules per policy */
#define SG_WORDS          (SG_MAX_RULES / 64)   /* u64 words in a rule bitmap */
#define SG_SUMMARY_WORDS  (SG_WORDS / 64)       /* one summary bit per non-empty word */
#define SG_MAX_GROUPS     32                    /* supplementary groups looked at per caller */
#define SG_SLOTS          2                     /* double-buffered policy tables */
#define SG_MAX_BITMAPS    65536                 /* distinct bitmaps per slot */
#define SG_HIT_SLOTS      (SG_MAX_RULES + 3)    /* per-rule hit counters + one default per exit */
#define SG_PORT_SIDES     2
#define SG_RINGBUF_BYTES  (4 << 20)
#define SG_OWNERS_MAX     65536
#define SG_UID_UNKNOWN    0xfffffffeU           /* accept: listener bound before sockgate started, not found */

enum sg_exit { SG_EXIT_CONNECT = 0, SG_EXIT_LISTEN = 1, SG_EXIT_ACCEPT = 2, SG_EXITS = 3 };
enum sg_verdict { SG_ALLOWED = 0, SG_REJECTED = 1, SG_AUDIT_REJECTED = 2 };
enum sg_side { SG_LOCAL = 0, SG_REMOTE = 1 };
enum sg_stat { SG_STAT_DECISIONS = 0, SG_STAT_SELECTED = 1, SG_STAT_DROPPED = 2, SG_STATS = 4 };

/* policy header flags */
#define SG_EMIT_ALLOWED   1   /* *NETSCK: journal allowed decisions */
#define SG_EMIT_REJECTED  2   /* *NETFAIL: journal rejections and audit-rejections */

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

/* Ports: array indexed by (slot * 2 + side) * 65536 + port -> bitmap index. */
#define SG_PORT_INDEX(slot, side, port) ((((slot) * SG_PORT_SIDES) + (side)) * 65536 + (port))

struct sg_config {
	__u32 active_slot;
	__u32 ringbuf_wakeup_bytes;  /* wake the reader early once this much is pending */
};

/* Who owns a bound TCP socket (recorded at bind, used by accept decisions). */
struct sg_owner_key {
	__u8  addr[16];              /* v4-mapped for IPv4; all zero = any */
	__u16 port;                  /* host order */
	__u16 pad;
};

struct sg_owner {
	__u32 tgid;
	__u32 uid;                   /* effective */
	__u32 gid;                   /* effective */
	__u32 ngroups;
	__u32 groups[SG_MAX_GROUPS];
	__u32 dev;
	__u32 pad;
	__u64 ino;
	char  comm[16];
	char  exe_name[32];          /* executable's file name (the path is resolved in user space) */
};

/* One ring-buffer record per decision selected for auditing. */
struct sg_event {
	__u64 boot_ns;               /* bpf_ktime_get_boot_ns(); user space adds the realtime offset */
	__u64 ino;                   /* executable inode */
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
	__u8  protocol;
	__u16 local_port;            /* host order */
	__u16 remote_port;
	__u8  local_addr[16];        /* v4-mapped for IPv4 */
	__u8  remote_addr[16];
	char  comm[16];
	char  exe_name[32];          /* file name of the executable: short-lived callers are gone
	                                before user space could read /proc/PID/exe */
};

/* Input of the differential-test program (BPF_PROG_TEST_RUN ctx): one decision. */
struct sg_probe {
	__u32 exit;
	__u32 uid;
	__u32 ngroups;               /* groups[0] is the primary gid */
	__u32 groups[SG_MAX_GROUPS];
	__u32 dev;
	__u32 pad;
	__u64 ino;
	__u8  local_addr[16];
	__u8  remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__s32 rule;                  /* out */
	__u32 verdict;               /* out */
};

#endif
