/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Self-protection: a process of an agent acting against agentwatch or
 * against its own containment (in host-wide mode, processes in no agent
 * are not suspects). Reported as tamper records; the rules in
 * rules/tamper.yaml turn them into alerts.
 *
 *  - a signal sent (kill, tgkill, sigqueue) to agentwatch or its parent
 *    (signal:signal_generate, in the sender's context). Signals the kernel
 *    raises itself (SIGCHLD when the agent root exits, SIGPIPE, tty
 *    hangups) carry another si_code and are not reported;
 *  - PTRACE_ATTACH or PTRACE_SEIZE of any process, flagged when the target
 *    is agentwatch or its parent (syscalls:sys_enter_ptrace);
 *  - a move of a watched process to another cgroup, by itself or by any
 *    process but agentwatch (cgroup:cgroup_attach_task; userland tells a
 *    move out of the agent's cgroup from one into a sub-cgroup of it);
 *  - bpf(2), once per process and command (syscalls:sys_enter_bpf).
 *
 * With AW_GUARD_KILL=1 (run --contain, not --dry-run) a watched process
 * that sends SIGKILL or SIGSTOP to agentwatch is killed here, in the
 * kernel, before the signal lands: agentwatch cannot outlive a SIGKILL,
 * but the agent does not outlive it either, and its cgroup's egress policy
 * stays attached (legacy cgroup attachments do not end with their loader).
 */

#ifndef AW_GUARD_KILL
#define AW_GUARD_KILL 0
#endif
#define AW_SIGKILL 9
#define AW_SIGCHLD 17
#define AW_SIGSTOP 19
#define AW_SI_USER 0
#define AW_SI_QUEUE -1
#define AW_SI_TKILL -6
#define AW_PTRACE_ATTACH 16
#define AW_PTRACE_SEIZE 0x4206

/* agentwatch's threads and its parent: pid -> AW_PROTECT_*; filled by userland at start. */
BPF_HASH(aw_protected, u32, u32, 1024);
/* (tgid << 32 | bpf command) already reported. */
BPF_TABLE("lru_hash", u64, u8, aw_bpf_seen, 4096);

static __always_inline struct aw_tamper *aw_tamper_start(u32 agent, u32 kind, u32 target, s32 arg)
{
	struct aw_tamper *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_TAMPER);
		return NULL;
	}
	aw_fill_header(&e->hdr, AW_EVENT_TAMPER, agent);
	e->hdr.size = sizeof(*e);
	e->cgroup_id = 0;
	e->kind = kind;
	e->target_pid = target;
	e->arg = arg;
	e->result = 0;
	e->protected = 0;
	e->path_len = 0;
	e->path[0] = 0;
	return e;
}

TRACEPOINT_PROBE(signal, signal_generate)
{
	int code = args->code;
	if (args->sig == AW_SIGCHLD || (code != AW_SI_USER && code != AW_SI_QUEUE && code != AW_SI_TKILL))
		return 0;
	u32 target = args->pid;
	u32 *prot = aw_protected.lookup(&target);
	if (!prot)
		return 0;
	u32 protect = *prot, agent;
	if (!aw_agent_of(bpf_get_current_pid_tgid() >> 32, &agent) || !agent)
		return 0; /* only agents' processes: in host-wide mode an operator's kill is no tampering */
	struct aw_tamper *e = aw_tamper_start(agent, AW_TAMPER_SIGNAL, target, args->sig);
	if (e) {
		e->result = args->result;
		e->protected = protect;
		aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	}
#if AW_GUARD_KILL
	if (protect == AW_PROTECT_SELF && (args->sig == AW_SIGKILL || args->sig == AW_SIGSTOP))
		bpf_send_signal(AW_SIGKILL);
#endif
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_ptrace)
{
	long request = args->request;
	if (request != AW_PTRACE_ATTACH && request != AW_PTRACE_SEIZE)
		return 0;
	u32 agent;
	if (!aw_agent_of(bpf_get_current_pid_tgid() >> 32, &agent) || !agent)
		return 0;
	u32 target = args->pid;
	u32 *prot = aw_protected.lookup(&target);
	struct aw_tamper *e = aw_tamper_start(agent, AW_TAMPER_PTRACE, target, request);
	if (e) {
		e->protected = prot ? *prot : 0;
		aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	}
	return 0;
}

TRACEPOINT_PROBE(cgroup, cgroup_attach_task)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32, agent = 0;
	if (tgid == AW_SELF_TGID)
		return 0; /* agentwatch placing the agent root */
	u32 target = args->pid;
	u32 *moved = aw_watched.lookup(&target);
	if (moved)
		agent = *moved;
	else if (!aw_agent_of(tgid, &agent) || !agent)
		return 0; /* neither the mover nor the moved is an agent's */
	struct aw_tamper *e = aw_tamper_start(agent, AW_TAMPER_CGROUP, target, args->dst_level);
	if (!e)
		return 0;
	e->cgroup_id = args->dst_id;
	e->result = args->dst_root;
	unsigned short loc = args->data_loc_dst_path & 0xFFFF;
	long n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), (char *)args + loc);
	e->path_len = n > 0 ? n - 1 : 0;
	aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_bpf)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32, agent;
	if (!aw_agent_of(tgid, &agent) || !agent)
		return 0;
	u32 cmd = args->cmd;
	u64 key = ((u64)tgid << 32) | cmd;
	u8 one = 1;
	if (aw_bpf_seen.lookup(&key))
		return 0;
	aw_bpf_seen.update(&key, &one);
	struct aw_tamper *e = aw_tamper_start(agent, AW_TAMPER_BPF, 0, cmd);
	if (e)
		aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	return 0;
}
