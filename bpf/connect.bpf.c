/* SPDX-License-Identifier: Apache-2.0 */
/* connect(2) on inet sockets: destination from the syscall, result from its exit. */

/* What sys_enter_connect saw, kept by pid_tgid until the syscall returns. */
struct aw_connect_pending {
	u64 sk;           /* the socket's struct sock, 0 if the fd is not a socket */
	u32 fd;
	struct aw_dest dest;
};
BPF_HASH(aw_connect_stash, u64, struct aw_connect_pending, 16384);

/* Defined in sockstate.bpf.c and payload.bpf.c, which follow this file. */
static __always_inline void aw_conn_connect_returned(u64 sk);
static __always_inline void aw_payload_arm(u32 fd, void *sock, struct aw_connect *e);

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 agent;

	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	struct aw_connect_pending p = {};
	/* AF_UNIX and everything else that is not IP is out of scope. */
	if (!aw_read_dest(args->uservaddr, &p.dest))
		return 0;
	p.fd = args->fd;
	/*
	 * The struct sock lets sockstate.bpf.c tell that a state change it sees
	 * belongs to the connect() this thread is in.
	 */
	void *sock = aw_socket_of_fd(p.fd);
	if (sock)
		p.sk = (u64)aw_read_ptr(sock, OFF_SOCKET_SK);
	aw_connect_stash.update(&pid_tgid, &p);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 agent;

	struct aw_connect_pending *p = aw_connect_stash.lookup(&pid_tgid);
	if (!p)
		return 0;
	aw_agent_of(pid_tgid >> 32, &agent);
	u64 stashed_sk = p->sk;

	struct aw_connect *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_CONNECT);
		aw_connect_stash.delete(&pid_tgid);
		aw_conn_connect_returned(stashed_sk);
		return 0;
	}
	aw_fill_header(&e->hdr, AW_EVENT_CONNECT, agent);
	e->hdr.size = sizeof(*e);
	e->retval = args->ret;
	e->fd = p->fd;
	e->family = p->dest.family;
	e->dport = p->dest.dport;
	__builtin_memcpy(e->daddr, p->dest.daddr, 16);
	e->flags = 0;
	e->_pad = 0;
	e->sock_cookie = 0;

	struct aw_sock_info info;
	void *sock = aw_socket_of_fd(p->fd);
	if (sock) {
		/* The local end is bound once connect() has run, even when it failed late. */
		e->sock_cookie = (u64)aw_sock_local(sock, p->dest.family, &info);
	} else {
		__builtin_memset(&info, 0, sizeof(info));
		e->flags |= AW_CONNECT_NO_SOCKET;
	}
	e->sock_type = info.sock_type;
	e->protocol = info.protocol;
	e->sport = info.sport;
	__builtin_memcpy(e->saddr, info.saddr, 16);
	if (sock && e->sock_cookie && (e->retval == 0 || e->retval == -AW_EINPROGRESS))
		aw_payload_arm(e->fd, sock, e);
	aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	aw_connect_stash.delete(&pid_tgid);
	/* After the connect record: a handshake decided inside connect() is reported now. */
	aw_conn_connect_returned(stashed_sk);
	return 0;
}
