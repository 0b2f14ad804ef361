/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Egress policy of a contained agent: cgroup connect4/connect6 and
 * sendmsg4/sendmsg6 programs, attached to the agent's cgroup, that allow or
 * deny a destination before any packet leaves. A denied connect() or
 * sendto() fails with EPERM, and each denial is counted per rule and put on
 * this object's ring buffer for userland to turn into a "blocked" alert.
 *
 * Why a second BPF object and not more programs in agentwatch.bpf.c: the
 * main unit is compiled at every start of every run and watch (about 5 s
 * with the GPU programs), and most runs contain nothing. Kept apart, these
 * programs and their maps cost nothing unless --contain (or watch --cgroup
 * ... --policy) asks for them; then this small file compiles on its own
 * (about 0.6 s, after the main unit: BCC 0.26 crashes when two modules
 * compile at once in one process). It shares only events.h and header.h
 * with the main unit: no map is shared, its denials come on its own ring
 * buffer (read without waiting after each poll of the main one), and it
 * needs no membership map, because the cgroup it is attached to is the
 * membership.
 *
 * The programs read only the uapi context struct bpf_sock_addr (user_ip4,
 * user_ip6, user_port, family, type, protocol), whose accesses the verifier
 * rewrites for the running kernel; the record header takes task fields from
 * BTF offsets like the main unit.
 *
 * Decision: the first matching rule in policy order decides, else the
 * default. An address is looked up once in an LPM trie whose value is the
 * mask of rules whose `to` covers it (userland folds the masks of covering
 * prefixes into each entry, tracer/policy.py KernelTables); the port once
 * in a hash of single ports and in a short list of ranges; the protocol in
 * conf. The lowest bit left is the first matching rule. An IPv6 socket connecting to ::ffff:a.b.c.d is judged
 * by the IPv4 rules: the kernel then connects over IPv4 without running the
 * connect4 hook.
 */
#include "header.h"

#ifndef AW_POL_CIDRS
#define AW_POL_CIDRS 16384
#endif
#define AW_POL_RULES 64
#define AW_POL_PORTS 4096
#define AW_POL_RANGES 16
#define AW_IPPROTO_TCP 6
#define AW_IPPROTO_UDP 17
#define AW_AF_INET 2
#define AW_AF_INET6 10

struct aw_pol_range {
	u16 lo;
	u16 hi;
	u32 _pad;
	u64 rules;         /* rules that list this range */
};

/*
 * Every rule is one bit (rule i: 1 << i) and every table below is a mask
 * of rules, so the decision is a few ANDs and no walk over the rules: the
 * verifier then has almost nothing to explore (a walk over 64 rules and
 * their ports took it ~0.5 s per program).
 */
struct aw_pol_conf {
	u64 active;        /* every rule of the policy; 0 until userland has filled the maps */
	u64 deny;          /* rules whose action is deny */
	u64 any_addr;      /* rules without `to` */
	u64 any_port;      /* rules without `ports` */
	u64 proto[4];      /* rules that take TCP, UDP, anything else; [3] unused */
	u32 default_deny;
	u32 agent_id;      /* the agent's id in the main unit, for the records */
	u32 nranges;
	u32 audit;         /* 1 (--dry-run): report what would be denied, deny nothing */
	struct aw_pol_range ranges[AW_POL_RANGES]; /* port ranges (lo < hi); single ports are in aw_pol_ports */
};

struct aw_lpm4 {
	u32 prefixlen;
	u8 addr[4];
};

struct aw_lpm6 {
	u32 prefixlen;
	u8 addr[16];
};

BPF_RINGBUF_OUTPUT(aw_blocks, 16); /* 64 KiB: denials are rare, and counted when lost */
BPF_ARRAY(aw_pol_conf, struct aw_pol_conf, 1);
BPF_HASH(aw_pol_ports, u16, u64, AW_POL_PORTS);
BPF_LPM_TRIE(aw_pol_v4, struct aw_lpm4, u64, AW_POL_CIDRS);
BPF_LPM_TRIE(aw_pol_v6, struct aw_lpm6, u64, AW_POL_CIDRS);
/* Denials per rule; index AW_POL_RULES counts the default. Then records lost. */
BPF_PERCPU_ARRAY(aw_pol_denied, u64, AW_POL_RULES + 2);

static __always_inline u32 aw_pol_lowest_bit(u64 x)
{
	u32 n = 0;
	if (!(x & 0xFFFFFFFFULL)) {
		n += 32;
		x >>= 32;
	}
	if (!(x & 0xFFFF)) {
		n += 16;
		x >>= 16;
	}
	if (!(x & 0xFF)) {
		n += 8;
		x >>= 8;
	}
	if (!(x & 0xF)) {
		n += 4;
		x >>= 4;
	}
	if (!(x & 0x3)) {
		n += 2;
		x >>= 2;
	}
	if (!(x & 0x1))
		n += 1;
	return n;
}

/* 1 to deny; *rule is the deciding rule's index, or AW_POL_DEFAULT. */
static __always_inline int aw_pol_decide(struct aw_pol_conf *conf, u64 addr_rules, u16 port, u32 protocol,
					 u32 *rule)
{
	u32 pi = protocol == AW_IPPROTO_TCP ? 0 : protocol == AW_IPPROTO_UDP ? 1 : 2;
	u64 m = (addr_rules | conf->any_addr) & conf->proto[pi & 3] & conf->active;
	if (m) {
		u64 ports = conf->any_port;
		u64 *exact = aw_pol_ports.lookup(&port);
		if (exact)
			ports |= *exact;
		u32 n = conf->nranges;
		/* Unrolled: 16 straight compares, and no loop bound for the verifier to lose. */
#pragma clang loop unroll(full)
		for (u32 i = 0; i < AW_POL_RANGES; i++) {
			if (i < n && port >= conf->ranges[i].lo && port <= conf->ranges[i].hi)
				ports |= conf->ranges[i].rules;
		}
		m &= ports;
	}
	if (!m) {
		*rule = AW_POL_DEFAULT;
		return conf->active && conf->default_deny ? 1 : 0;
	}
	u64 first = m & (~m + 1); /* the first matching rule in policy order */
	*rule = aw_pol_lowest_bit(first);
	return (first & conf->deny) ? 1 : 0;
}

static __always_inline void aw_pol_report(struct bpf_sock_addr *ctx, struct aw_pol_conf *conf, u32 rule,
					  u16 hook, u16 family, u16 port, const u8 *daddr)
{
	u32 idx = rule < AW_POL_RULES ? rule : AW_POL_RULES;
	aw_pol_denied.increment(idx);
	struct aw_block *e = aw_blocks.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_pol_denied.increment(AW_POL_RULES + 1);
		return;
	}
	aw_fill_header(&e->hdr, AW_EVENT_BLOCK, conf->agent_id);
	e->hdr.size = sizeof(*e);
	e->cgroup_id = bpf_get_current_cgroup_id();
	__builtin_memcpy(e->daddr, daddr, 16);
	e->family = family;
	e->sock_family = ctx->family;
	e->protocol = ctx->protocol;
	e->sock_type = ctx->type;
	e->dport = port;
	e->hook = hook;
	e->rule = rule;
	e->_pad = 0;
	aw_blocks.ringbuf_submit(e, 0);
}

static __always_inline int aw_pol_v4_check(struct bpf_sock_addr *ctx, u16 hook)
{
	u32 zero = 0;
	struct aw_pol_conf *conf = aw_pol_conf.lookup(&zero);
	if (!conf)
		return 1;
	u32 ip4 = ctx->user_ip4; /* network order, as the bytes lie */
	u16 port = __builtin_bswap16((u16)ctx->user_port);
	struct aw_lpm4 key = {.prefixlen = 32};
	__builtin_memcpy(key.addr, &ip4, 4);
	u64 *found = aw_pol_v4.lookup(&key);
	u32 rule = AW_POL_DEFAULT;
	if (!aw_pol_decide(conf, found ? *found : 0, port, ctx->protocol, &rule))
		return 1;
	u8 daddr[16] = {};
	__builtin_memcpy(daddr, &ip4, 4);
	/* An IPv6 UDP socket sending to ::ffff:a.b.c.d comes here, through udp_sendmsg. */
	aw_pol_report(ctx, conf, rule, hook, AW_AF_INET, port, daddr);
	return conf->audit ? 1 : 0;
}

static __always_inline int aw_pol_v6_check(struct bpf_sock_addr *ctx, u16 hook)
{
	u32 zero = 0;
	struct aw_pol_conf *conf = aw_pol_conf.lookup(&zero);
	if (!conf)
		return 1;
	u32 ip6[4];
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	u16 port = __builtin_bswap16((u16)ctx->user_port);
	u64 *found;
	u16 family = AW_AF_INET6;
	/* ::ffff:a.b.c.d (bytes 0..9 zero, then ff ff): judged as a.b.c.d. */
	if (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == __builtin_bswap32(0x0000ffff)) {
		family = AW_AF_INET;
		struct aw_lpm4 k4 = {.prefixlen = 32};
		__builtin_memcpy(k4.addr, &ip6[3], 4);
		found = aw_pol_v4.lookup(&k4);
	} else {
		struct aw_lpm6 k6 = {.prefixlen = 128};
		__builtin_memcpy(k6.addr, ip6, 16);
		found = aw_pol_v6.lookup(&k6);
	}
	u32 rule = AW_POL_DEFAULT;
	if (!aw_pol_decide(conf, found ? *found : 0, port, ctx->protocol, &rule))
		return 1;
	u8 daddr[16] = {};
	if (family == AW_AF_INET)
		__builtin_memcpy(daddr, &ip6[3], 4);
	else
		__builtin_memcpy(daddr, ip6, 16);
	aw_pol_report(ctx, conf, rule, hook, family, port, daddr);
	return conf->audit ? 1 : 0;
}

int aw_policy_connect4(struct bpf_sock_addr *ctx)
{
	return aw_pol_v4_check(ctx, AW_BLOCK_CONNECT);
}

int aw_policy_connect6(struct bpf_sock_addr *ctx)
{
	return aw_pol_v6_check(ctx, AW_BLOCK_CONNECT);
}

int aw_policy_sendmsg4(struct bpf_sock_addr *ctx)
{
	return aw_pol_v4_check(ctx, AW_BLOCK_SENDMSG);
}

int aw_policy_sendmsg6(struct bpf_sock_addr *ctx)
{
	return aw_pol_v6_check(ctx, AW_BLOCK_SENDMSG);
}
