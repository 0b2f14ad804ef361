/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TCP connection lifetime from sock:inet_sock_set_state, tcplife's pattern:
 * CLOSE->SYN_SENT runs in the connecting task, so that is where the
 * process is taken; ESTABLISHED and CLOSE come later from softirq or from
 * whichever task handled the packet, and are attributed from the cache.
 */

#define AW_TCP_ESTABLISHED 1
#define AW_TCP_SYN_SENT 2
#define AW_TCP_CLOSE 7

/*
 * A connection of a watched process, by struct sock. A transition decided
 * inside the connect() call that started it (loopback, a refused port) is
 * held in `pending` and reported when connect() returns, so that the
 * connect record comes first.
 */
struct aw_conn_owner {
	struct aw_header hdr;   /* the connecting task at SYN_SENT */
	u64 established_ns;     /* 0 until established */
	u64 pending_ns;         /* when the held transition happened */
	u16 pending;            /* AW_CONN_* held for connect()'s return, or 0 */
	u16 pending_old;        /* the TCP state it left */
	u16 family;             /* the held transition's addresses */
	u16 sport;
	u16 dport;
	u16 _pad[3];
	u8 saddr[16];
	u8 daddr[16];
};
/* LRU: a socket that never reaches CLOSE in our sight must not pin a slot. */
BPF_TABLE("lru_hash", u64, struct aw_conn_owner, aw_conn_owners, 16384);

static __always_inline void aw_conn_emit(u64 sk, struct aw_conn_owner *o, u16 state, u64 ktime,
					 u16 family, u16 sport, u16 dport, const u8 *saddr, const u8 *daddr,
					 u16 oldstate)
{
	struct aw_conn *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_CONN);
		return;
	}
	__builtin_memcpy(&e->hdr, &o->hdr, sizeof(e->hdr));
	e->hdr.type = AW_EVENT_CONN;
	e->hdr.size = sizeof(*e);
	e->hdr.ktime_ns = ktime;
	e->sock_cookie = sk;
	e->duration_ns = state == AW_CONN_CLOSED && o->established_ns ? ktime - o->established_ns : 0;
	__builtin_memcpy(e->saddr, saddr, 16);
	__builtin_memcpy(e->daddr, daddr, 16);
	e->state = state;
	e->family = family;
	e->protocol = AW_IPPROTO_TCP;
	e->sport = sport;
	e->dport = dport;
	e->oldstate = oldstate;
	e->_pad = 0;
	aw_events.ringbuf_submit(e, AW_RB_FLAGS);
}

/*
 * Is the thread that connected still inside the connect() of this very
 * socket? Asked of that thread, not of current: a blocking connect() sleeps
 * while the handshake finishes in softirq on any CPU.
 */
static __always_inline int aw_conn_in_connect(u64 sk, struct aw_conn_owner *o)
{
	u64 owner = (u64)o->hdr.pid << 32 | o->hdr.tid;
	struct aw_connect_thread *c = aw_connect_threads.lookup(&owner);
	return c && c->in_flight && c->sk == sk;
}

/* Report a held transition now (its connect() has returned, or another transition follows). */
static __always_inline void aw_conn_flush(u64 sk, struct aw_conn_owner *o)
{
	if (!o->pending)
		return;
	aw_conn_emit(sk, o, o->pending, o->pending_ns, o->family, o->sport, o->dport, o->saddr, o->daddr,
		     o->pending_old);
	o->pending = 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	u64 sk = (u64)args->skaddr;
	int oldstate = args->oldstate, newstate = args->newstate;
	u32 agent;

	if (args->protocol != AW_IPPROTO_TCP)
		return 0;
	if (oldstate == AW_TCP_CLOSE && newstate == AW_TCP_SYN_SENT) {
		/* The connecting task: the one lookup an unwatched one costs. */
		if (!aw_agent_of(bpf_get_current_pid_tgid() >> 32, &agent))
			return 0;
		struct aw_conn_owner o = {};
		aw_fill_header(&o.hdr, AW_EVENT_CONN, agent);
		aw_conn_owners.update(&sk, &o);
		/* A new connection: the connect() making it is never folded as a repeat (connect.bpf.c). */
		u64 tid = bpf_get_current_pid_tgid();
		struct aw_connect_thread *t = aw_connect_threads.lookup(&tid);
		if (t && t->in_flight)
			t->fresh = 1;
		return 0;
	}
	if (newstate != AW_TCP_ESTABLISHED && newstate != AW_TCP_CLOSE)
		return 0;
	struct aw_conn_owner *o = aw_conn_owners.lookup(&sk);
	if (!o)
		return 0;

	u64 now = bpf_ktime_get_ns();
	u16 family = args->family;
	u8 saddr[16] = {}, daddr[16] = {};
	if (family == AW_AF_INET) {
		__builtin_memcpy(saddr, args->saddr, 4);
		__builtin_memcpy(daddr, args->daddr, 4);
	} else {
		__builtin_memcpy(saddr, args->saddr_v6, 16);
		__builtin_memcpy(daddr, args->daddr_v6, 16);
	}
	u16 state;
	if (newstate == AW_TCP_ESTABLISHED) {
		if (o->established_ns)
			return 0;
		o->established_ns = now;
		state = AW_CONN_ESTABLISHED;
	} else {
		state = o->established_ns ? AW_CONN_CLOSED : AW_CONN_FAILED;
	}
	/*
	 * One held already goes first: established, now closed inside the same
	 * connect(); or held by a connect() that returned while it was being held.
	 */
	aw_conn_flush(sk, o);
	if (aw_conn_in_connect(sk, o)) {
		o->pending = state;
		o->pending_old = oldstate;
		o->pending_ns = now;
		o->family = family;
		o->sport = args->sport;
		o->dport = args->dport;
		__builtin_memcpy(o->saddr, saddr, 16);
		__builtin_memcpy(o->daddr, daddr, 16);
		return 0;
	}
	aw_conn_emit(sk, o, state, now, family, args->sport, args->dport, saddr, daddr, oldstate);
	if (newstate == AW_TCP_CLOSE)
		aw_conn_owners.delete(&sk);
	return 0;
}

/* connect() returned: report what its handshake decided meanwhile. */
static __always_inline void aw_conn_connect_returned(u64 sk)
{
	if (!sk)
		return;
	struct aw_conn_owner *o = aw_conn_owners.lookup(&sk);
	if (!o || !o->pending)
		return;
	u16 state = o->pending;
	aw_conn_flush(sk, o);
	if (state != AW_CONN_ESTABLISHED)
		aw_conn_owners.delete(&sk);
}
