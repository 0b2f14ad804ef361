/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The common record header, filled from helpers and BTF offsets: shared by
 * the main compile unit (through common.h) and the containment object
 * (policy.bpf.c), which has none of the main unit's maps.
 *
 * Kernel struct fields are read only through OFF_<STRUCT>_<MEMBER>, byte
 * offsets that tracer/probes.py takes from the running kernel's BTF.
 */
#ifndef AGENTWATCH_HEADER_H
#define AGENTWATCH_HEADER_H

#include "events.h"

/*
 * Every read of user memory goes through these two. For each call of
 * bpf_probe_read_user* it meets in the source, BCC 0.26 loads all of
 * /proc/kallsyms again (to check that the kernel has the helper): about
 * 0.15 s per call site, which was half of agentwatch's start-up. One call
 * site each; inlining gives every caller its own constant size.
 */
static __always_inline long aw_read_user(void *dst, u32 size, const void *src)
{
	return bpf_probe_read_user(dst, size, src);
}

static __always_inline long aw_read_user_str(void *dst, u32 size, const void *src)
{
	return bpf_probe_read_user_str(dst, size, src);
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

#endif /* AGENTWATCH_HEADER_H */
