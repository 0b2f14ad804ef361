/*
 * gpu_storm N: N RM_CONTROL ioctls on a simulated /dev/nvidiactl.
 * The simulator is the kernel tests' own (tests/kernel/progs/gpu_sim.c,
 * compiled in with -I): a private mount namespace with plain files at the
 * device paths, real ioctl numbers; only the storm loop is timed.
 */
#define main gpu_sim_main
#include "gpu_sim.c"
#undef main
#include "bench.h"

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 200000;
	fake_devices();
	double t0 = bench_now();
	storm(n);
	bench_report(n, t0);
	return 0;
}
