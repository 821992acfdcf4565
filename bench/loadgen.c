/* loadgen: loopback connect+accept rate, for bench/enforce.py.
 *
 * One process, one thread: a nonblocking listener on ADDR:PORT, then in a loop
 *   socket(); connect() (blocking; on loopback the handshake completes inside the call);
 *   accept4() on the listener (poll() if the connection is not queued yet);
 *   close the client with SO_LINGER 0 (an RST, so no TIME_WAIT eats the ephemeral ports);
 *   close the accepted socket.
 * Stops after N connects or T seconds, whichever comes first, after W untimed warm-up
 * connects. Prints one JSON line:
 *   {"conns": N, "seconds": S, "conn_per_s": R, "cpu_s": user+sys, "errors": E, "errno": X, "warm": W}
 *
 * With -u, UDP instead: one unconnected socket sendto()s 64-byte datagrams to a receiver
 * bound at ADDR:PORT in the same process (drained every 32 sends); "conns" counts datagrams
 * sent, so conn_per_s is datagrams per second (the receiver's path is in it too).
 *
 *   loadgen [-u] [-a 127.0.0.1] [-p 7777] [-n 200000] [-t 5] [-w 1000]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int udp_mode, udp_client;
static long udp_sent;

/* One unconnected sendto of 64 bytes (UDP mode); the receiver is drained now and then. */
static int one_datagram(int rfd, const struct sockaddr_in *sa)
{
	static char buf[64];
	if (sendto(udp_client, buf, sizeof(buf), 0, (const struct sockaddr *)sa, sizeof(*sa)) < 0)
		return errno;
	if ((++udp_sent & 31) == 0)
		while (recv(rfd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
			;
	return 0;
}

/* One connect+accept+close. Returns 0, or the errno of the step that failed. */
static int one(int lfd, const struct sockaddr_in *sa)
{
	if (udp_mode)
		return one_datagram(lfd, sa);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0)
		return errno;
	if (connect(c, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
		int e = errno;
		close(c);
		return e;
	}
	int s;
	for (;;) {
		s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (s >= 0)
			break;
		if (errno != EAGAIN && errno != EINTR) {
			int e = errno;
			close(c);
			return e;
		}
		struct pollfd p = { .fd = lfd, .events = POLLIN };
		if (poll(&p, 1, 1000) == 0) {
			close(c);
			return ETIMEDOUT;
		}
	}
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(c);
	close(s);
	return 0;
}

int main(int argc, char **argv)
{
	const char *addr = "127.0.0.1";
	int port = 7777, opt;
	long n = 200000, warm = 1000;
	double secs = 5.0;
	while ((opt = getopt(argc, argv, "ua:p:n:t:w:")) != -1) {
		switch (opt) {
		case 'u': udp_mode = 1; break;
		case 'a': addr = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'n': n = atol(optarg); break;
		case 't': secs = atof(optarg); break;
		case 'w': warm = atol(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-u] [-a addr] [-p port] [-n connects] [-t seconds] [-w warmup]\n", argv[0]);
			return 2;
		}
	}
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", addr);
		return 2;
	}
	int lfd = socket(AF_INET, (udp_mode ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one_ = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one_, sizeof(one_));
	if (udp_mode)
		udp_client = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || (!udp_mode && listen(lfd, 4096) < 0)) {
		fprintf(stderr, "listen on %s:%d: %s\n", addr, port, strerror(errno));
		return 1;
	}
	for (long i = 0; i < warm; i++) {
		int e = one(lfd, &sa);
		if (e) {
			printf("{\"conns\": 0, \"seconds\": 0, \"conn_per_s\": 0, \"cpu_s\": 0, \"errors\": 1, "
			       "\"errno\": %d, \"error\": \"%s\"}\n", e, strerror(e));
			return 1;
		}
	}
	long done = 0, errors = 0;
	int last_errno = 0;
	double c0 = cpu(), t0 = now(), deadline = t0 + secs, t1 = t0;
	while (done < n) {
		int e = one(lfd, &sa);
		if (e) {
			errors++;
			last_errno = e;
			if (errors > 100)
				break;
		} else {
			done++;
		}
		if ((done & 255) == 0 && (t1 = now()) >= deadline)
			break;
	}
	t1 = now();
	double used = cpu() - c0, el = t1 - t0;
	printf("{\"conns\": %ld, \"seconds\": %.6f, \"conn_per_s\": %.1f, \"cpu_s\": %.6f, \"errors\": %ld, "
	       "\"errno\": %d, \"warm\": %ld}\n", done, el, el > 0 ? done / el : 0.0, used, errors, last_errno, warm);
	return errors ? 1 : 0;
}
