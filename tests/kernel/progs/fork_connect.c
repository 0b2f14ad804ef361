/*
 * The child connects in its first microseconds, before any exec, then
 * execs /bin/true: both must be attributed to the agent.
 * usage: fork_connect PORT
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		connect(fd, (struct sockaddr *)&sin, sizeof(sin));
		execl("/bin/true", "true", "after-connect", (char *)NULL);
		_exit(127);
	}
	int status;
	waitpid(pid, &status, 0);
	return 0;
}
