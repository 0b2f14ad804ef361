/*
 * sleepers N HOLD_S: fork N children that sleep, print "ready", hold them
 * for HOLD_S seconds (or until stdin reaches EOF when HOLD_S is 0), then
 * kill and reap them all. It gives a tracer N live processes to track.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "bench.h"

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 10000;
	double hold = argc > 2 ? atof(argv[2]) : 3;
	pid_t *kids = calloc(n, sizeof(*kids));
	double t0 = bench_now();
	long made = 0;
	for (; made < n; made++) {
		pid_t pid = fork();
		if (pid < 0)
			break;
		if (pid == 0) {
			for (;;)
				pause();
		}
		kids[made] = pid;
	}
	printf("ready %ld %.3f\n", made, bench_now() - t0);
	fflush(stdout);
	if (hold > 0) {
		struct timespec ts = {(time_t)hold, (long)((hold - (time_t)hold) * 1e9)};
		nanosleep(&ts, NULL);
	} else {
		char buf[64];
		while (read(0, buf, sizeof(buf)) > 0)
			;
	}
	for (long i = 0; i < made; i++)
		kill(kids[i], SIGKILL);
	for (long i = 0; i < made; i++)
		waitpid(kids[i], NULL, 0);
	bench_report(made, t0);
	return made == n ? 0 : 1;
}
