/* exec_storm N: fork + execve("/bin/true") N times, one after the other. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "bench.h"

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 2000;
	char *const args[] = {"/bin/true", NULL};
	char *const env[] = {NULL};
	double t0 = bench_now();
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			execve(args[0], args, env);
			_exit(127);
		}
		int status;
		if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
			return 1;
	}
	bench_report(n, t0);
	return 0;
}
