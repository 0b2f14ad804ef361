/*
 * connect_storm RATE SECONDS: UDP connect(2)s to 127.0.0.1:9 and :10 in
 * turn at RATE per second (paced every 0.2 ms) for SECONDS, one socket.
 * Alternating, no call repeats the one before it, so agentwatch reports
 * each one (identical repeats would be folded into counts): this measures
 * how many records it drains. RATE 0 means as fast as possible. Prints the
 * BENCH line (ops = connects made).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include "bench.h"

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	double rate = atof(argv[1]), seconds = atof(argv[2]);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(9)};
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	long done = 0;
	double start = bench_now(), t;
	while ((t = bench_now() - start) < seconds) {
		long due = rate > 0 ? (long)(t * rate) + 1 : done + 1000;
		while (done < due) {
			sin.sin_port = htons(9 + (done & 1));
			connect(fd, (struct sockaddr *)&sin, sizeof(sin));
			done++;
		}
		if (rate > 0) {
			struct timespec pause = {0, 200000};
			nanosleep(&pause, NULL);
		}
	}
	bench_report(done, start);
	return 0;
}
