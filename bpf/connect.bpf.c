/* SPDX-License-Identifier: Apache-2.0 */
/* connect(2) on inet sockets: destination from the syscall, result from its exit. */

/*
 * Identical repeats are folded. A thread that calls connect() again on the
 * same socket, to the same destination, with the same result (a UDP client
 * re-connecting per datagram, a non-blocking TCP connect polled with
 * connect() until EISCONN) gets its first call reported as usual and the
 * rest counted: a summary record (same fields, repeats = N) follows when
 * the thread connects elsewhere, closes that fd, exits, or at most once a
 * second while the repeats go on. Nothing a rule reads is lost (the
 * destinations and results are all in the first record) and a storm of
 * them costs a map lookup each instead of a record each. "Same socket" is
 * the same struct sock address; a closed socket's memory can come back as a
 * new socket, so whatever ends the old one ends the folding: close(2) of
 * that fd by this thread, an exec, and for TCP the start of a handshake.
 */
#define AW_REPEAT_FLUSH_NS 1000000000ULL

struct aw_connect_thread {
	/* the connect() in flight: sys_enter_connect to sys_exit_connect */
	u64 sk;             /* the socket's struct sock, 0 if the fd is not a socket */
	u64 sock;           /* its struct socket: the exit probe does not walk the fd table again */
	u32 fd;
	u32 in_flight;
	u32 fresh;          /* a TCP handshake started in this call (sockstate.bpf.c): never a repeat */
	struct aw_dest dest;
	/* the last connect() reported for this thread */
	u32 repeats;        /* identical calls since that record */
	u32 has_last;
	u64 last_emit_ns;
	struct aw_connect last; /* the record as emitted (header refilled on a summary) */
};
/* tid -> state; deleted when the thread exits (process.bpf.c). Full: no folding, every call reported. */
BPF_HASH(aw_connect_threads, u64, struct aw_connect_thread, 16384);
BPF_PERCPU_ARRAY(aw_connect_scratch, struct aw_connect_thread, 1);

/* Defined in sockstate.bpf.c and payload.bpf.c, which follow this file. */
static __always_inline void aw_conn_connect_returned(u64 sk);
static __always_inline void aw_payload_arm(u32 fd, void *sock, struct aw_connect *e);

/* The summary of the folded repeats, if any: the last record again, with repeats. */
static __always_inline void aw_connect_flush(struct aw_connect_thread *t, u32 agent)
{
	if (!t->has_last || !t->repeats)
		return;
	struct aw_connect *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_CONNECT);
		return; /* counted as lost; the repeats are kept for the next try */
	}
	__builtin_memcpy(e, &t->last, sizeof(*e));
	aw_fill_header(&e->hdr, AW_EVENT_CONNECT, agent);
	e->hdr.size = sizeof(*e);
	e->repeats = t->repeats;
	t->last_emit_ns = e->hdr.ktime_ns;
	aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	t->repeats = 0;
}

/* Called from the exit probe for every exiting thread of a watched process. */
static __always_inline void aw_connect_thread_exit(u64 pid_tgid, u32 agent)
{
	struct aw_connect_thread *t = aw_connect_threads.lookup(&pid_tgid);
	if (!t)
		return;
	aw_connect_flush(t, agent);
	aw_connect_threads.delete(&pid_tgid);
}

/* Called from the close probe: closing the fd of the last connect ends its repeats. */
static __always_inline void aw_connect_on_close(u64 pid_tgid, u32 fd)
{
	struct aw_connect_thread *t = aw_connect_threads.lookup(&pid_tgid);
	if (!t || !t->has_last || t->last.fd != fd)
		return;
	aw_connect_flush(t, t->last.hdr.agent_id);
	t->has_last = 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 agent;

	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	struct aw_dest dest = {};
	/* AF_UNIX and everything else that is not IP is out of scope. */
	if (!aw_read_dest(args->uservaddr, &dest))
		return 0;
	struct aw_connect_thread *t = aw_connect_threads.lookup(&pid_tgid);
	if (!t) {
		int zero = 0;
		struct aw_connect_thread *blank = aw_connect_scratch.lookup(&zero);
		if (!blank)
			return 0;
		__builtin_memset(blank, 0, sizeof(*blank));
		aw_connect_threads.update(&pid_tgid, blank);
		t = aw_connect_threads.lookup(&pid_tgid);
		if (!t) {
			aw_lost.increment(AW_EVENT_CONNECT); /* map full: this call goes unreported, counted */
			return 0;
		}
	}
	t->dest = dest;
	t->fd = args->fd;
	/*
	 * The struct sock lets sockstate.bpf.c tell that a state change it sees
	 * belongs to the connect() this thread is in, and tells repeats apart.
	 */
	void *sk;
	t->sock = (u64)aw_socket_of_fd_sk(t->fd, &sk);
	t->sk = (u64)sk;
	t->fresh = 0;
	t->in_flight = 1;
	return 0;
}

static __always_inline int aw_same_dest(struct aw_dest *a, u16 family, u16 dport, u8 *daddr)
{
	if (a->family != family || a->dport != dport)
		return 0;
	u64 x0, x1, y0, y1;
	__builtin_memcpy(&x0, a->daddr, 8);
	__builtin_memcpy(&x1, a->daddr + 8, 8);
	__builtin_memcpy(&y0, daddr, 8);
	__builtin_memcpy(&y1, daddr + 8, 8);
	return x0 == y0 && x1 == y1;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 agent;

	struct aw_connect_thread *t = aw_connect_threads.lookup(&pid_tgid);
	if (!t || !t->in_flight)
		return 0;
	t->in_flight = 0;
	u64 sk = t->sk;
	/*
	 * The socket enter found, not the fd table again (7 reads, ~200 ns): the
	 * call holds its file until it returns, so the socket is alive and is the
	 * one this connect() ran on, even if another thread closed or dup2()ed
	 * over the fd meanwhile.
	 */
	void *sock = (void *)t->sock;
	s32 ret = args->ret;

	if (sk && !t->fresh && t->has_last && t->last.sock_cookie == sk && t->last.retval == ret &&
	    aw_same_dest(&t->dest, t->last.family, t->last.dport, t->last.daddr)) {
		t->repeats++;
		if (bpf_ktime_get_ns() - t->last_emit_ns >= AW_REPEAT_FLUSH_NS)
			aw_connect_flush(t, t->last.hdr.agent_id);
		/* A datagram socket has no handshake to report (the socket is the last record's). */
		if (t->last.protocol != AW_IPPROTO_UDP)
			aw_conn_connect_returned(sk);
		return 0;
	}
	aw_agent_of(pid_tgid >> 32, &agent);
	aw_connect_flush(t, agent); /* the repeats of the previous destination first */

	struct aw_connect *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_CONNECT);
		t->has_last = 0;
		aw_conn_connect_returned(sk);
		return 0;
	}
	aw_fill_header(&e->hdr, AW_EVENT_CONNECT, agent);
	e->hdr.size = sizeof(*e);
	e->retval = ret;
	e->fd = t->fd;
	e->family = t->dest.family;
	e->dport = t->dest.dport;
	__builtin_memcpy(e->daddr, t->dest.daddr, 16);
	e->flags = 0;
	e->repeats = 0;
	e->sock_cookie = 0;

	struct aw_sock_info info;
	if (sock && sk) {
		/* The local end is bound once connect() has run, even when it failed late. */
		aw_sock_info_of(sock, (void *)sk, e->family, &info);
		e->sock_cookie = sk;
	} else if (sock) {
		e->sock_cookie = (u64)aw_sock_local(sock, e->family, &info);
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
	/* Kept for folding only when the call had a struct sock to tell repeats by. */
	t->has_last = sk && e->sock_cookie == sk;
	if (t->has_last) {
		__builtin_memcpy(&t->last, e, sizeof(*e));
		t->last_emit_ns = e->hdr.ktime_ns;
	}
	u16 protocol = e->protocol;
	aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	/* After the connect record: a handshake decided inside connect() is reported now (TCP has one). */
	if (protocol != AW_IPPROTO_UDP)
		aw_conn_connect_returned(sk);
	return 0;
}
