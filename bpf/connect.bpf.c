/* SPDX-License-Identifier: Apache-2.0 */
/* connect(2) on inet sockets: destination from the syscall, result from its exit. */

#define AW_AF_INET 2
#define AW_AF_INET6 10

/* What sys_enter_connect saw, kept by pid_tgid until the syscall returns. */
struct aw_connect_pending {
	u32 fd;
	u16 family;
	u16 dport;        /* host order */
	u8 daddr[16];
};
BPF_HASH(aw_connect_stash, u64, struct aw_connect_pending, 16384);

/* uapi layouts (ABI-stable): struct sockaddr_in / sockaddr_in6. */
struct aw_sockaddr_in {
	u16 family;
	u16 port;         /* network order */
	u8 addr[4];
};
struct aw_sockaddr_in6 {
	u16 family;
	u16 port;
	u32 flowinfo;
	u8 addr[16];
};

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 agent;
	u16 family = 0;

	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	if (bpf_probe_read_user(&family, sizeof(family), args->uservaddr))
		return 0;
	/* AF_UNIX and everything else that is not IP is out of scope. */
	if (family != AW_AF_INET && family != AW_AF_INET6)
		return 0;

	struct aw_connect_pending p = {};
	p.fd = args->fd;
	p.family = family;
	if (family == AW_AF_INET) {
		struct aw_sockaddr_in sin = {};
		bpf_probe_read_user(&sin, sizeof(sin), args->uservaddr);
		p.dport = __builtin_bswap16(sin.port);
		__builtin_memcpy(p.daddr, sin.addr, 4);
	} else {
		struct aw_sockaddr_in6 sin6 = {};
		bpf_probe_read_user(&sin6, sizeof(sin6), args->uservaddr);
		p.dport = __builtin_bswap16(sin6.port);
		__builtin_memcpy(p.daddr, sin6.addr, 16);
	}
	aw_connect_stash.update(&pid_tgid, &p);
	return 0;
}

/*
 * fd -> struct socket, through task->files->fdt->fd[fd]->private_data.
 * The socket's back pointer to its file proves the file is a socket.
 */
static __always_inline void *aw_socket_of_fd(u32 fd)
{
	void *task = (void *)bpf_get_current_task();
	void *files = aw_read_ptr(task, OFF_TASK_STRUCT_FILES);
	void *fdt = aw_read_ptr(files, OFF_FILES_STRUCT_FDT);
	u32 max_fds = 0;

	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (char *)fdt + OFF_FDTABLE_MAX_FDS);
	if (fd >= max_fds)
		return NULL;
	void **fd_array = aw_read_ptr(fdt, OFF_FDTABLE_FD);
	void *file = aw_read_ptr(fd_array, (u64)fd * sizeof(void *));
	if (!file)
		return NULL;
	void *sock = aw_read_ptr(file, OFF_FILE_PRIVATE_DATA);
	if (!sock || aw_read_ptr(sock, OFF_SOCKET_FILE) != file)
		return NULL;
	return sock;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 agent;

	struct aw_connect_pending *p = aw_connect_stash.lookup(&pid_tgid);
	if (!p)
		return 0;
	aw_agent_of(pid_tgid >> 32, &agent);

	struct aw_connect *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_CONNECT);
		aw_connect_stash.delete(&pid_tgid);
		return 0;
	}
	aw_fill_header(&e->hdr, AW_EVENT_CONNECT, agent);
	e->hdr.size = sizeof(*e);
	e->retval = args->ret;
	e->fd = p->fd;
	e->family = p->family;
	e->dport = p->dport;
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->protocol = 0;
	e->sock_type = 0;
	e->flags = 0;
	e->sport = 0;
	e->_pad = 0;
	__builtin_memset(e->saddr, 0, 16);

	void *sock = aw_socket_of_fd(p->fd);
	if (sock) {
		void *sk = aw_read_ptr(sock, OFF_SOCKET_SK);
		bpf_probe_read_kernel(&e->sock_type, sizeof(e->sock_type), (char *)sock + OFF_SOCKET_TYPE);
		if (sk) {
			char *common = (char *)sk + OFF_SOCK___SK_COMMON;
			bpf_probe_read_kernel(&e->protocol, sizeof(e->protocol),
					      (char *)sk + OFF_SOCK_SK_PROTOCOL);
			/* The local end is bound once connect() has run, even when it failed late. */
			bpf_probe_read_kernel(&e->sport, sizeof(e->sport),
					      common + OFF_SOCK_COMMON_SKC_NUM);
			if (p->family == AW_AF_INET)
				bpf_probe_read_kernel(e->saddr, 4, common + OFF_SOCK_COMMON_SKC_RCV_SADDR);
			else
				bpf_probe_read_kernel(e->saddr, 16, common + OFF_SOCK_COMMON_SKC_V6_RCV_SADDR);
		}
	} else {
		e->flags |= AW_CONNECT_NO_SOCKET;
	}
	aw_events.ringbuf_submit(e, 0);
	aw_connect_stash.delete(&pid_tgid);
	return 0;
}
