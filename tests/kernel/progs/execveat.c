/*
 * execveat(2) twice: by path relative to a directory fd, then by an fd
 * with AT_EMPTY_PATH (what fexecve does).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void run(int dirfd, const char *path, int flags, char *tag)
{
	char *argv[] = {"true", tag, NULL};
	char *envp[] = {NULL};
	pid_t pid = fork();
	if (pid == 0) {
		syscall(SYS_execveat, dirfd, path, argv, envp, flags);
		_exit(127);
	}
	waitpid(pid, NULL, 0);
}

int main(void)
{
	int dir = open("/bin", O_RDONLY | O_DIRECTORY);
	run(dir, "true", 0, "by-dirfd");
	int file = open("/bin/true", O_RDONLY);
	run(file, "", AT_EMPTY_PATH, "by-fd");
	return 0;
}
