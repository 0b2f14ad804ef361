/*
 * What a reverse tunnel's client does, over and over, for detection latency:
 *   tunnel connect PORT COUNT INTERVAL_MS
 *       a TCP connect to 127.0.0.1:PORT (nothing listens: refused at once);
 *   tunnel exec COUNT INTERVAL_MS PATH ARGV0 ARG...
 *       fork + execv(PATH, ARGV0 ARG...), e.g. a stand-in named ssh with -R;
 * every INTERVAL_MS, COUNT times. Before each connect or fork it prints
 * "T <CLOCK_REALTIME ns>" so a reader can cross-check the kernel's clock.
 * Everything goes to stderr: stdout may carry a tracer's records.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "bench.h"

static void mark(void)
{
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	printf("T %lld\n", (long long)rt.tv_sec * 1000000000LL + rt.tv_nsec);
	fflush(stdout);
}

static void pause_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	dup2(2, 1);
	if (argc >= 5 && !strcmp(argv[1], "connect")) {
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
		long count = atol(argv[3]), interval = atol(argv[4]);
		inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
		double t0 = bench_now();
		for (long i = 0; i < count; i++) {
			int fd = socket(AF_INET, SOCK_STREAM, 0);
			mark();
			connect(fd, (struct sockaddr *)&sin, sizeof(sin));
			close(fd);
			pause_ms(interval);
		}
		bench_report(count, t0);
		return 0;
	}
	if (argc >= 6 && !strcmp(argv[1], "exec")) {
		long count = atol(argv[2]), interval = atol(argv[3]);
		double t0 = bench_now();
		for (long i = 0; i < count; i++) {
			mark();
			pid_t pid = fork();
			if (pid == 0) {
				execv(argv[4], argv + 5);
				_exit(127);
			}
			waitpid(pid, NULL, 0);
			pause_ms(interval);
		}
		bench_report(count, t0);
		return 0;
	}
	fprintf(stderr, "usage: tunnel connect PORT COUNT INTERVAL_MS | exec COUNT INTERVAL_MS PATH ARGV0 ARG...\n");
	return 2;
}
