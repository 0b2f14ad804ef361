/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The first bytes a watched process sends on each new connection: an SSH
 * banner, a stratum login, a TLS ClientHello, a DNS query.
 *
 * connect() arms (tgid, fd); the first write/writev/sendto/sendmsg/
 * sendmmsg on that fd copies up to AW_PAYLOAD_BYTES of the user's buffer
 * and disarms it; close() disarms it too. A send to an address on an
 * unconnected datagram socket is reported once per socket and destination.
 * Port 53 is the exception both ways: every datagram and every write is
 * reported, so that every DNS name is seen.
 *
 * The write and close tracepoints fire for every process on the host, so
 * the path of a process we do not watch is one hash lookup.
 */

/*
 * Messages of one sendmmsg() looked at: glibc sends its A and AAAA queries
 * in one call. Each costs a copy of the record code in that program.
 */
#define AW_PAYLOAD_MMSGS 2
#define AW_DNS_PORT 53
#define AW_MSG_FASTOPEN 0x20000000

struct aw_fd_key {
	u32 tgid;
	u32 fd;
};

/* A connection whose first send is still to come. */
struct aw_payload_armed {
	u64 sock;         /* struct socket * at connect(): the fd must still name it */
	u64 start_ns;     /* the process's start: a reused tgid is another process */
	u32 agent;
	u32 every;        /* report every send, not only the first (DNS) */
	struct aw_dest dest;
};
/* LRU: fds of processes that exit without closing them must not fill it. */
BPF_TABLE("lru_hash", struct aw_fd_key, struct aw_payload_armed, aw_payload_armed, 16384);

/* Destinations of unconnected sockets already reported. */
struct aw_dest_key {
	u64 sk;           /* the struct sock, not the fd: a reused fd is another socket */
	u32 tgid;
	struct aw_dest dest;  /* 20 bytes: the key has no padding to leave unset */
};
BPF_TABLE("lru_hash", struct aw_dest_key, u8, aw_payload_dests, 16384);

BPF_PERCPU_ARRAY(aw_send_scratch, struct aw_send, 1);

/* uapi layouts (ABI-stable): struct iovec, struct user_msghdr, struct mmsghdr. */
struct aw_iovec {
	const void *base;
	u64 len;
};
struct aw_msghdr {
	const void *name;
	int namelen;
	const struct aw_iovec *iov;
	u64 iovlen;
	const void *control;
	u64 controllen;
	u32 flags;
};
struct aw_mmsghdr {
	struct aw_msghdr hdr;
	u32 len;
};

/* What a call asked to send: one buffer, or an iovec array. */
struct aw_send_src {
	const void *buf;
	u64 len;
	const struct aw_iovec *iov;
	u64 vlen;
};

/* The compiler must not drop a bound that only the verifier needs. */
#define AW_OPAQUE(x) asm volatile("" : "+r"(x))

/* Copy the first bytes of src into e->data; set total, captured and fault flags. */
static __always_inline void aw_gather(struct aw_send *e, struct aw_send_src *src)
{
	/* 64-bit lengths throughout: a u32 copy would leave the verifier an unbounded register. */
	u64 total = 0, off = 0;

	if (!src->iov) {
		u64 n = src->len;
		total = n;
		AW_OPAQUE(n);
		if (n > AW_PAYLOAD_BYTES)
			n = AW_PAYLOAD_BYTES;
		if (n && aw_read_user(e->data, n, src->buf))
			e->flags |= AW_SEND_FAULT;
		else
			off = n;
	} else {
		if (src->vlen > AW_PAYLOAD_IOVECS)
			e->flags |= AW_SEND_MORE_IOVECS;
#pragma unroll
		for (int i = 0; i < AW_PAYLOAD_IOVECS; i++) {
			struct aw_iovec v = {};
			if (i >= src->vlen)
				break;
			if (aw_read_user(&v, sizeof(v), &src->iov[i])) {
				e->flags |= AW_SEND_FAULT;
				break;
			}
			total += v.len;
			if (off >= AW_PAYLOAD_BYTES || !v.len)
				continue;
			u64 n = v.len, at = off;
			if (n > AW_PAYLOAD_BYTES - off)
				n = AW_PAYLOAD_BYTES - off;
			AW_OPAQUE(n);
			AW_OPAQUE(at);
			if (n > AW_PAYLOAD_BYTES)
				n = AW_PAYLOAD_BYTES;
			/* Below the cap plus at most the cap: inside the doubled buffer. */
			if (aw_read_user(&e->data[at & (AW_PAYLOAD_BYTES - 1)], n, v.base)) {
				e->flags |= AW_SEND_FAULT;
				break;
			}
			off += n;
		}
	}
	e->total = total > 0xffffffffULL ? 0xffffffffU : (u32)total;
	e->captured = off;
}

/*
 * Fill and emit a send record in the per-CPU scratch (too big for the
 * stack). Returns 0 without emitting when the call asked to send nothing.
 */
static __always_inline int aw_send_emit(struct aw_send *e, u32 fd, u16 via, void *sock,
					struct aw_dest *dest, struct aw_send_src *src)
{
	struct aw_sock_info info;

	aw_gather(e, src);
	if (!e->total && !(e->flags & AW_SEND_FAULT))
		return 0;
	e->sock_cookie = (u64)aw_sock_local(sock, dest->family, &info);
	__builtin_memcpy(e->saddr, info.saddr, 16);
	__builtin_memcpy(e->daddr, dest->daddr, 16);
	e->fd = fd;
	e->via = via;
	e->family = dest->family;
	e->protocol = info.protocol;
	e->sock_type = info.sock_type;
	e->sport = info.sport;
	e->dport = dest->dport;
	e->_pad = 0;
	u32 size = offsetof(struct aw_send, data) + (e->captured & (AW_PAYLOAD_BUF - 1));
	e->hdr.size = size;
	if (aw_events.ringbuf_output(e, size, AW_RB_FLAGS))
		aw_lost.increment(AW_EVENT_SEND);
	return 1;
}

/* Where a send goes, and whether it spends the armed entry. */
struct aw_send_plan {
	void *sock;
	u64 start_ns;     /* armed: the process that connected; 0 otherwise */
	u32 agent;
	u32 flags;        /* AW_SEND_UNCONNECTED, or 0 */
	u32 disarm;       /* the first bytes are all we want from this fd */
	struct aw_dest dest;
};

/* A send on an armed fd: the connection's first bytes (or DNS). */
static __always_inline int aw_plan_armed(struct aw_fd_key *key, struct aw_payload_armed *armed,
					 struct aw_send_plan *plan)
{
	void *sock = aw_socket_of_fd(key->fd);
	if (!sock || (u64)sock != armed->sock) {
		/* Closed by other means (dup2, exit, close_range) and the fd reused. */
		aw_payload_armed.delete(key);
		return 0;
	}
	plan->sock = sock;
	plan->start_ns = armed->start_ns;
	plan->agent = armed->agent;
	plan->flags = 0;
	plan->disarm = !armed->every;
	plan->dest = armed->dest;
	return 1;
}

/* A send to an address on a socket that did not connect(): new destinations only, but all DNS. */
static __always_inline int aw_plan_unconnected(u32 agent, u32 fd, const void *uaddr, u32 msg_flags,
					       struct aw_send_plan *plan)
{
	struct aw_dest_key key = {};
	u16 type = 0;

	if (!aw_read_dest(uaddr, &key.dest))
		return 0;
	void *sock = aw_socket_of_fd(fd);
	if (!sock)
		return 0;
	bpf_probe_read_kernel(&type, sizeof(type), (char *)sock + OFF_SOCKET_TYPE);
	/* Datagrams; or a TCP Fast Open, which connects and sends in one call. */
	if (type != AW_SOCK_DGRAM && !(type == AW_SOCK_STREAM && (msg_flags & AW_MSG_FASTOPEN)))
		return 0;
	if (key.dest.dport != AW_DNS_PORT) {
		u8 one = 1;
		key.sk = (u64)aw_read_ptr(sock, OFF_SOCKET_SK);
		key.tgid = bpf_get_current_pid_tgid() >> 32;
		if (aw_payload_dests.lookup(&key))
			return 0;
		aw_payload_dests.update(&key, &one);
	}
	plan->sock = sock;
	plan->start_ns = 0;
	plan->agent = agent;
	plan->flags = AW_SEND_UNCONNECTED;
	plan->disarm = 0;
	plan->dest = key.dest;
	return 1;
}

/* Report a planned send, once per call site: the record code is the bulk of each program. */
static __always_inline int aw_send(struct aw_fd_key *key, u16 via, struct aw_send_plan *plan,
				   struct aw_send_src *src)
{
	u32 zero = 0;
	struct aw_send *e = aw_send_scratch.lookup(&zero);
	if (!e)
		return 0;
	aw_fill_header(&e->hdr, AW_EVENT_SEND, plan->agent);
	if (plan->start_ns && e->hdr.start_ns != plan->start_ns) {
		/* Armed by a process that is gone; its tgid and fd were reused. */
		aw_payload_armed.delete(key);
		return 0;
	}
	e->flags = plan->flags;
	if (aw_send_emit(e, key->fd, via, plan->sock, &plan->dest, src) && plan->disarm)
		aw_payload_armed.delete(key);
	return 0;
}

/* write, writev and sendto without an address: armed fds only. */
static __always_inline int aw_send_on_armed(u32 fd, u16 via, struct aw_send_src *src)
{
	struct aw_fd_key key = {.tgid = bpf_get_current_pid_tgid() >> 32, .fd = fd};
	struct aw_send_plan plan;

	/* Every write on the host comes here: one lookup for a process we do not watch. */
	struct aw_payload_armed *armed = aw_payload_armed.lookup(&key);
	if (!armed || !aw_plan_armed(&key, armed, &plan))
		return 0;
	return aw_send(&key, via, &plan, src);
}

/* sendto with an address, sendmsg and each message of sendmmsg, for a watched process. */
static __always_inline int aw_send_to(u32 agent, u32 fd, u16 via, const void *uaddr, u32 msg_flags,
				      struct aw_send_src *src)
{
	struct aw_fd_key key = {.tgid = bpf_get_current_pid_tgid() >> 32, .fd = fd};
	struct aw_send_plan plan;

	struct aw_payload_armed *armed = aw_payload_armed.lookup(&key);
	if (armed) {
		if (!aw_plan_armed(&key, armed, &plan))
			return 0;
	} else if (!uaddr || !aw_plan_unconnected(agent, fd, uaddr, msg_flags, &plan)) {
		return 0;
	}
	return aw_send(&key, via, &plan, src);
}

/* Armed by sys_exit_connect for a connect() that succeeded or is in progress. */
static __always_inline void aw_payload_arm(u32 fd, void *sock, struct aw_connect *e)
{
	if (e->sock_type != AW_SOCK_STREAM && e->sock_type != AW_SOCK_DGRAM)
		return;
	struct aw_fd_key key = {.tgid = e->hdr.pid, .fd = fd};
	struct aw_payload_armed a = {};
	a.sock = (u64)sock;
	a.start_ns = e->hdr.start_ns;
	a.agent = e->hdr.agent_id;
	a.every = e->dport == AW_DNS_PORT;
	a.dest.family = e->family;
	a.dest.dport = e->dport;
	__builtin_memcpy(a.dest.daddr, e->daddr, 16);
	aw_payload_armed.update(&key, &a);
}

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
	struct aw_send_src src = {.buf = args->buf, .len = args->count};
	return aw_send_on_armed(args->fd, AW_VIA_WRITE, &src);
}

TRACEPOINT_PROBE(syscalls, sys_enter_writev)
{
	struct aw_send_src src = {.iov = (const struct aw_iovec *)args->vec, .vlen = args->vlen};
	return aw_send_on_armed(args->fd, AW_VIA_WRITEV, &src);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
	struct aw_send_src src = {.buf = args->buff, .len = args->len};
	u32 agent;

	if (!args->addr)
		return aw_send_on_armed(args->fd, AW_VIA_SENDTO, &src);
	/* Membership first: an unwatched process stops at one lookup here too. */
	if (!aw_agent_of(bpf_get_current_pid_tgid() >> 32, &agent))
		return 0;
	return aw_send_to(agent, args->fd, AW_VIA_SENDTO, args->addr, args->flags, &src);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
	struct aw_msghdr m = {};
	u32 agent;

	/* The destination is in user memory: ask membership before reading it. */
	if (!aw_agent_of(bpf_get_current_pid_tgid() >> 32, &agent))
		return 0;
	if (aw_read_user(&m, sizeof(m), args->msg))
		return 0;
	struct aw_send_src src = {.iov = m.iov, .vlen = m.iovlen};
	return aw_send_to(agent, args->fd, AW_VIA_SENDMSG, m.name, args->flags, &src);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
	const struct aw_mmsghdr *vec = (const struct aw_mmsghdr *)args->mmsg;
	u32 agent;

	if (!aw_agent_of(bpf_get_current_pid_tgid() >> 32, &agent))
		return 0;
#pragma unroll
	for (int i = 0; i < AW_PAYLOAD_MMSGS; i++) {
		struct aw_msghdr m = {};
		if (i >= args->vlen)
			break;
		if (aw_read_user(&m, sizeof(m), &vec[i].hdr))
			break;
		struct aw_send_src src = {.iov = m.iov, .vlen = m.iovlen};
		aw_send_to(agent, args->fd, AW_VIA_SENDMMSG, m.name, args->flags, &src);
	}
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 agent;
	/* Every process closes fds all the time: one lookup for those in no agent (their fds are in no map). */
	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	struct aw_fd_key key = {.tgid = pid_tgid >> 32, .fd = args->fd};
	aw_payload_armed.delete(&key);
	aw_gpu_on_close(key.tgid, key.fd);
	aw_connect_on_close(pid_tgid, key.fd);
	return 0;
}
