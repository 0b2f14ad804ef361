/*
 * agent_mix DIR SCRIPT: what a coding agent does, timed as a whole. In DIR,
 * runs each line of SCRIPT as one command (words separated by single
 * spaces, no quoting), one after the other, and fails on the first
 * non-zero exit. A line starting with "@netns NAME " runs the rest inside
 * the named network namespace (/run/netns/NAME, made by `ip netns add`).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "bench.h"

#define MAX_WORDS 64

static int run_line(char *line)
{
	char *words[MAX_WORDS + 1];
	int n = 0;
	const char *netns = NULL;
	for (char *w = strtok(line, " \n"); w && n < MAX_WORDS; w = strtok(NULL, " \n"))
		words[n++] = w;
	words[n] = NULL;
	if (n >= 2 && !strcmp(words[0], "@netns")) {
		netns = words[1];
		memmove(words, words + 2, (n - 1) * sizeof(*words));
		n -= 2;
	}
	if (n == 0)
		return 0;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (netns) {
			char path[256];
			snprintf(path, sizeof(path), "/run/netns/%s", netns);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0 || setns(fd, CLONE_NEWNET)) {
				perror(path);
				_exit(126);
			}
		}
		execvp(words[0], words);
		perror(words[0]);
		_exit(127);
	}
	int status;
	if (waitpid(pid, &status, 0) < 0)
		return -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "agent_mix: %s failed (status %d)\n", words[0], status);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3 || chdir(argv[1]))
		return 2;
	FILE *f = fopen(argv[2], "r");
	if (!f)
		return 2;
	char line[4096];
	long ops = 0;
	double t0 = bench_now();
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (run_line(line))
			return 1;
		ops++;
	}
	bench_report(ops, t0);
	return 0;
}
