/* Compiled by the agent-like mix: what an agent's "write and build a tool" step does. */
#include <stdio.h>
#include <string.h>

static unsigned long fnv1a(const char *s)
{
	unsigned long h = 1469598103934665603ul;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ul;
	return h;
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		printf("%s %016lx %zu\n", argv[i], fnv1a(argv[i]), strlen(argv[i]));
	return 0;
}
