/* SPDX-License-Identifier: Apache-2.0 */
/* Process lifecycle: fork (processes only), exec (with argv), exit. */

/*
 * An exec in flight, by tid: what sys_enter_execve* was asked, kept until
 * the exec is decided. A success is reported from sched_process_exec with
 * argv read from the new image (mm->arg_start..arg_end, which the kernel
 * has just written, so it is resident); a failure from sys_exit_execve*,
 * reading the caller's argv pointers, which are still there.
 */
struct aw_exec_pending {
	const char *filename;
	const char *const *argv;
	u32 flags;
};
BPF_HASH(aw_exec_pending, u32, struct aw_exec_pending, 16384);
BPF_PERCPU_ARRAY(aw_exec_scratch, struct aw_exec, 1);

/* Defined in connect.bpf.c, which follows this file. */
static __always_inline void aw_connect_thread_exit(u64 pid_tgid, u32 agent);

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	/* TP_PROTO(struct task_struct *parent, struct task_struct *child); current is the parent. */
	void *child = (void *)ctx->args[1];
	u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;
	u32 agent, child_tgid = 0;

	if (!aw_agent_of(parent_tgid, &agent))
		return 0;
	bpf_probe_read_kernel(&child_tgid, sizeof(child_tgid), (char *)child + OFF_TASK_STRUCT_TGID);
	if (child_tgid == parent_tgid) {
		/* A new thread: same process, same membership, no event. */
		aw_stats.increment(AW_STAT_THREADS);
		return 0;
	}
	if (agent && aw_watched.update(&child_tgid, &agent))
		aw_stats.increment(AW_STAT_WATCH_FULL);
	aw_gpu_on_fork(parent_tgid, child_tgid);

	struct aw_fork *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_FORK);
		return 0;
	}
	aw_fill_header(&e->hdr, AW_EVENT_FORK, agent);
	e->hdr.size = sizeof(*e);
	e->child_pid = child_tgid;
	e->child_agent_id = agent;
	e->child_start_ns = 0;
	bpf_probe_read_kernel(&e->child_start_ns, sizeof(e->child_start_ns),
			      (char *)child + OFF_TASK_STRUCT_START_BOOTTIME);
	aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	return 0;
}

static __always_inline int aw_exec_enter(const char *filename, const char *const *argv, u32 flags)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid, agent;

	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	struct aw_exec_pending p = {.filename = filename, .argv = argv, .flags = flags};
	if (aw_exec_pending.update(&tid, &p))
		aw_stats.increment(AW_STAT_EXEC_PENDING_FULL);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
	return aw_exec_enter(args->filename, args->argv, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
	return aw_exec_enter(args->filename, args->argv, AW_EXEC_EXECVEAT);
}

static __always_inline struct aw_exec *aw_exec_start(u32 flags)
{
	u32 zero = 0;
	struct aw_exec *e = aw_exec_scratch.lookup(&zero);
	if (!e)
		return NULL;
	e->retval = 0;
	e->flags = flags;
	e->argc = 0;
	e->argv_size = 0;
	e->filename[0] = 0;
	return e;
}

static __always_inline void aw_exec_emit(struct aw_exec *e, u32 agent)
{
	aw_fill_header(&e->hdr, AW_EVENT_EXEC, agent);
	/* Only the used part of argv; the mask lets the verifier bound the length. */
	u32 size = offsetof(struct aw_exec, argv) + (e->argv_size & (AW_ARGV_BUF - 1));
	e->hdr.size = size;
	if (aw_events.ringbuf_output(e, size, AW_RB_FLAGS))
		aw_lost.increment(AW_EVENT_EXEC);
}

/* A successful exec: current is the new image; old_pid is the tid that called execve. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 agent, old_tid = args->old_pid;

	if (!aw_agent_of(bpf_get_current_pid_tgid() >> 32, &agent))
		return 0;
	aw_gpu_on_exec(bpf_get_current_pid_tgid() >> 32);
	/*
	 * A new image: its first connect() is news even if it repeats the old
	 * image's last one (a socket the exec closed can come back at the same
	 * address). The old repeats are reported first, before the exec record.
	 */
	aw_connect_thread_exit(bpf_get_current_pid_tgid(), agent);
	struct aw_exec_pending *p = aw_exec_pending.lookup(&old_tid);
	struct aw_exec *e = aw_exec_start(p ? p->flags : 0);
	if (p)
		aw_exec_pending.delete(&old_tid);
	if (!e)
		return 0;

	/* The kernel's path (bprm->filename), which may differ from the one asked for. */
	unsigned short loc = args->data_loc_filename & 0xFFFF;
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (char *)args + loc) ==
	    sizeof(e->filename))
		e->flags |= AW_EXEC_FILENAME_TRUNCATED;

	void *mm = aw_read_ptr((void *)bpf_get_current_task(), OFF_TASK_STRUCT_MM);
	u64 start = 0, end = 0;
	bpf_probe_read_kernel(&start, sizeof(start), (char *)mm + OFF_MM_STRUCT_ARG_START);
	bpf_probe_read_kernel(&end, sizeof(end), (char *)mm + OFF_MM_STRUCT_ARG_END);
	u64 len = end > start ? end - start : 0;
	if (len > AW_ARGV_BYTES) {
		len = AW_ARGV_BYTES;
		e->flags |= AW_EXEC_ARGV_TRUNCATED;
	}
	len &= AW_ARGV_BUF - 1;
	if (len && aw_read_user(e->argv, len, (void *)start) == 0)
		e->argv_size = len;
	else if (len)
		e->flags |= AW_EXEC_ARGV_FAULT;
	aw_exec_emit(e, agent);
	return 0;
}

/* Reached with a pending entry only when the exec failed (success consumed it). */
static __always_inline int aw_exec_failed(long ret)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid, agent;

	struct aw_exec_pending *p = aw_exec_pending.lookup(&tid);
	if (!p)
		return 0;
	const char *filename = p->filename;
	const char *const *argv = p->argv;
	struct aw_exec *e = aw_exec_start(p->flags);
	aw_exec_pending.delete(&tid);
	if (!e)
		return 0;
	aw_agent_of(pid_tgid >> 32, &agent);
	e->retval = ret;
	int n = aw_read_user_str(e->filename, sizeof(e->filename), filename);
	if (n == sizeof(e->filename))
		e->flags |= AW_EXEC_FILENAME_TRUNCATED;

	/* The caller's argv, one string at a time; pages never touched read as faults. */
	u32 off = 0;
	int i;
	for (i = 0; i < AW_ARGV_MAX_ARGS; i++) {
		const char *arg = NULL;
		if (aw_read_user(&arg, sizeof(arg), &argv[i])) {
			e->flags |= AW_EXEC_ARGV_FAULT;
			goto emit;
		}
		if (!arg)
			goto emit;
		if (off >= AW_ARGV_BYTES) {
			e->flags |= AW_EXEC_ARGV_TRUNCATED;
			goto emit;
		}
		/*
		 * A constant size the verifier can bound: the read may run past
		 * the cap into the second half of the buffer, and is then cut.
		 */
		int len = aw_read_user_str(&e->argv[off & (AW_ARGV_BYTES - 1)],
						  AW_ARGV_BYTES, arg);
		if (len <= 0) {
			e->flags |= AW_EXEC_ARGV_FAULT;
			goto emit;
		}
		e->argc++;
		if (off + len > AW_ARGV_BYTES) {
			off = AW_ARGV_BYTES;
			e->flags |= AW_EXEC_ARGV_TRUNCATED;
			goto emit;
		}
		off += len;
	}
	{
		const char *more = NULL;
		aw_read_user(&more, sizeof(more), &argv[AW_ARGV_MAX_ARGS]);
		if (more)
			e->flags |= AW_EXEC_ARGV_TRUNCATED;
	}
emit:
	e->argv_size = off;
	aw_exec_emit(e, agent);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
	return aw_exec_failed(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
	return aw_exec_failed(args->ret);
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32, agent;

	if (!aw_agent_of(tgid, &agent))
		return 0;
	/* Every thread: the connect() repeats it folded are reported before it is gone. */
	aw_connect_thread_exit(pid_tgid, agent);
#ifdef AW_EXIT_HAS_GROUP_DEAD
	if (!args->group_dead)
		return 0;
#else
	/* Older kernels: approximate "process gone" by its leader's exit. */
	if (tgid != (u32)pid_tgid)
		return 0;
#endif
	aw_watched.delete(&tgid);
	aw_gpu_on_exit(tgid);

	struct aw_exit *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_EXIT);
		return 0;
	}
	aw_fill_header(&e->hdr, AW_EVENT_EXIT, agent);
	e->hdr.size = sizeof(*e);
	e->exit_code = 0;
	e->_pad = 0;
	bpf_probe_read_kernel(&e->exit_code, sizeof(e->exit_code),
			      (char *)bpf_get_current_task() + OFF_TASK_STRUCT_EXIT_CODE);
	aw_events.ringbuf_submit(e, AW_RB_FLAGS);
	return 0;
}
