/*
 * net_storm tcp|udp N: N connect(2)s on loopback inside a private network
 * namespace (unshared here, lo brought up; nothing in the root namespace).
 *   tcp: a fresh socket per connect to a listener in this process; the
 *        connection is accepted and reset (SO_LINGER 0), so no TIME_WAIT
 *        piles up;
 *   udp: one socket, connect()ed N times to 127.0.0.1:9 (no packet is sent);
 *   udpnew: a fresh UDP socket per connect (socket, connect, close), so no
 *        two calls are repeats of each other: the per-socket cost.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "bench.h"

static void private_loopback(void)
{
	if (unshare(CLONE_NEWNET)) {
		perror("unshare(CLONE_NEWNET)");
		exit(2);
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) || (ifr.ifr_flags |= IFF_UP, ioctl(fd, SIOCSIFFLAGS, &ifr))) {
		perror("lo up");
		exit(2);
	}
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	long n = atol(argv[2]);
	int tcp = !strcmp(argv[1], "tcp");
	int udpnew = !strcmp(argv[1], "udpnew");
	private_loopback();
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(9)};
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	double t0;
	if (tcp) {
		int lst = socket(AF_INET, SOCK_STREAM, 0);
		socklen_t len = sizeof(sin);
		sin.sin_port = 0;
		if (bind(lst, (struct sockaddr *)&sin, sizeof(sin)) || listen(lst, 128) ||
		    getsockname(lst, (struct sockaddr *)&sin, &len)) {
			perror("listener");
			return 2;
		}
		struct linger lg = {1, 0};
		t0 = bench_now();
		for (long i = 0; i < n; i++) {
			int fd = socket(AF_INET, SOCK_STREAM, 0);
			setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			if (connect(fd, (struct sockaddr *)&sin, sizeof(sin))) {
				perror("connect");
				return 1;
			}
			int c = accept(lst, NULL, NULL);
			close(fd);
			close(c);
		}
	} else if (udpnew) {
		t0 = bench_now();
		for (long i = 0; i < n; i++) {
			int fd = socket(AF_INET, SOCK_DGRAM, 0);
			if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof(sin))) {
				perror("connect");
				return 1;
			}
			close(fd);
		}
	} else {
		int fd = socket(AF_INET, SOCK_DGRAM, 0);
		t0 = bench_now();
		for (long i = 0; i < n; i++)
			if (connect(fd, (struct sockaddr *)&sin, sizeof(sin))) {
				perror("connect");
				return 1;
			}
	}
	bench_report(n, t0);
	return 0;
}
