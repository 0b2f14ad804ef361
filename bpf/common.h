/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Maps and helpers shared by every agentwatch program.
 *
 * Kernel struct fields are never read through header offsets (the headers
 * BCC compiles against may belong to another kernel and then give silently
 * wrong values). Each OFF_<STRUCT>_<MEMBER> below is a byte offset that
 * tracer/probes.py reads from the running kernel's BTF and passes with -D.
 */
#ifndef AGENTWATCH_COMMON_H
#define AGENTWATCH_COMMON_H

#include "events.h"

#ifndef AW_RINGBUF_PAGES
#define AW_RINGBUF_PAGES 1024 /* 4 MiB: absorbs a stall of the reader */
#endif
#ifndef AW_HOST_WIDE
#define AW_HOST_WIDE 0        /* 1: keep events of processes in no agent */
#endif
#ifndef AW_SELF_TGID
#define AW_SELF_TGID 0        /* agentwatch itself: never reported */
#endif
#ifndef AW_WATCH_MAX
#define AW_WATCH_MAX 65536
#endif

BPF_RINGBUF_OUTPUT(aw_events, AW_RINGBUF_PAGES);

/* Failed ring buffer writes per record type; userland turns them into "lost" events. */
BPF_PERCPU_ARRAY(aw_lost, u64, AW_EVENT_TYPES);
BPF_PERCPU_ARRAY(aw_stats, u64, AW_STATS);

/*
 * Agent membership: tgid -> agent id. Userland seeds the roots; a fork
 * copies the parent's entry in the kernel, so a child is attributed from
 * its first instruction whatever it does with its parentage (setsid,
 * double fork, reparenting).
 */
BPF_HASH(aw_watched, u32, u32, AW_WATCH_MAX);

static __always_inline int aw_agent_of(u32 tgid, u32 *agent)
{
	*agent = 0;
	if (tgid == AW_SELF_TGID)
		return 0;
	u32 *found = aw_watched.lookup(&tgid);
	if (found) {
		*agent = *found;
		return 1;
	}
	return AW_HOST_WIDE;
}

static __always_inline void *aw_read_ptr(void *base, u64 offset)
{
	void *ptr = NULL;
	bpf_probe_read_kernel(&ptr, sizeof(ptr), (char *)base + offset);
	return ptr;
}

static __always_inline void aw_fill_header(struct aw_header *h, u32 type, u32 agent)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	void *task = (void *)bpf_get_current_task();
	void *leader = aw_read_ptr(task, OFF_TASK_STRUCT_GROUP_LEADER);
	void *parent = aw_read_ptr(task, OFF_TASK_STRUCT_REAL_PARENT);

	h->type = type;
	h->ktime_ns = bpf_ktime_get_ns();
	h->pid = pid_tgid >> 32;
	h->tid = (u32)pid_tgid;
	h->uid = (u32)bpf_get_current_uid_gid();
	h->agent_id = agent;
	h->_pad = 0;
	h->start_ns = 0;
	h->ppid = 0;
	bpf_probe_read_kernel(&h->start_ns, sizeof(h->start_ns),
			      (char *)leader + OFF_TASK_STRUCT_START_BOOTTIME);
	bpf_probe_read_kernel(&h->ppid, sizeof(h->ppid), (char *)parent + OFF_TASK_STRUCT_TGID);
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

#endif /* AGENTWATCH_COMMON_H */
