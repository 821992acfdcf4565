// SPDX-License-Identifier: GPL-2.0
// Smoke test for the BPF LSM path (tests/vm/smoke.sh): connect() to port 9 and
// listen() on port 19 fail with EPERM; everything else is left alone.
// Built on the host with a vmlinux.h from the host's BTF (CO-RE relocates the
// field accesses against the guest kernel's BTF at load time).
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define EPERM 1
#define AF_INET 2
#define AF_INET6 10
#define DENY_CONNECT_PORT 9
#define DENY_LISTEN_PORT 19

// counters[0]: connects seen, [1]: connects denied, [2]: listens seen, [3]: listens denied
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("lsm/socket_connect")
int BPF_PROG(smoke_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	__u16 port = 0;

	if (ret)
		return ret;
	if (address->sa_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)address;
		port = bpf_ntohs(sin->sin_port);
	} else if (address->sa_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)address;
		port = bpf_ntohs(sin6->sin6_port);
	} else {
		return 0;
	}
	count(0);
	if (port == DENY_CONNECT_PORT) {
		count(1);
		return -EPERM;
	}
	return 0;
}

SEC("lsm/socket_listen")
int BPF_PROG(smoke_listen, struct socket *sock, int backlog, int ret)
{
	__u16 port;

	if (ret)
		return ret;
	port = BPF_CORE_READ(sock, sk, __sk_common.skc_num);
	count(2);
	if (port == DENY_LISTEN_PORT) {
		count(3);
		return -EPERM;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
