/*
 * Shared by the workload programs: each times itself and prints one line
 *   BENCH ops=N elapsed_s=S cpu_s=C
 * where elapsed is CLOCK_MONOTONIC around the work only (not program start)
 * and cpu is this process plus its reaped children (user + system).
 */
#ifndef BENCH_H
#define BENCH_H
#include <stdio.h>
#include <sys/resource.h>
#include <time.h>

static inline double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline double bench_cpu(void)
{
	struct rusage self, kids;
	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &kids);
	return self.ru_utime.tv_sec + self.ru_utime.tv_usec / 1e6 + self.ru_stime.tv_sec +
	       self.ru_stime.tv_usec / 1e6 + kids.ru_utime.tv_sec + kids.ru_utime.tv_usec / 1e6 +
	       kids.ru_stime.tv_sec + kids.ru_stime.tv_usec / 1e6;
}

static inline void bench_report(long ops, double started)
{
	printf("BENCH ops=%ld elapsed_s=%.6f cpu_s=%.6f\n", ops, bench_now() - started, bench_cpu());
	fflush(stdout);
}
#endif
