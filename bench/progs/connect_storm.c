/*
 * connect_storm RATE SECONDS: UDP connect(2)s to 127.0.0.1:9 at RATE per
 * second (paced every millisecond) for SECONDS. Prints how many it made.
 * RATE 0 means as fast as possible.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double rate = atof(argv[1]), seconds = atof(argv[2]);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(9)};
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	long done = 0;
	double start = now(), t;
	while ((t = now() - start) < seconds) {
		long due = rate > 0 ? (long)(t * rate) + 1 : done + 1000;
		while (done < due) {
			connect(fd, (struct sockaddr *)&sin, sizeof(sin));
			done++;
		}
		if (rate > 0) {
			struct timespec pause = {0, 200000};
			nanosleep(&pause, NULL);
		}
	}
	printf("%ld %.3f\n", done, now() - start);
	return 0;
}
