/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Maps and helpers shared by every agentwatch program.
 *
 * Kernel struct fields are never read through header offsets (the headers
 * BCC compiles against may belong to another kernel and then give silently
 * wrong values). Each OFF_<STRUCT>_<MEMBER> is a byte offset that
 * tracer/probes.py reads from the running kernel's BTF and passes with -D.
 * The record header (aw_fill_header) is in header.h, which the containment
 * object shares.
 */
#ifndef AGENTWATCH_COMMON_H
#define AGENTWATCH_COMMON_H

#include "header.h"

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

/*
 * Records are written without waking the reader (BPF_RB_NO_WAKEUP, uapi
 * linux/bpf.h): a wake-up costs the traced process 13-19 us per record
 * here (make bench), more than the probe itself. The reader consumes on a
 * 10 ms tick instead (tracer/probes.py Probes.poll), so latency stays
 * within that tick.
 */
#define AW_RB_FLAGS 1

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

/*
 * Membership by cgroup (run --contain, watch --cgroup): cgroup v2 id ->
 * agent id. A process the tgid map does not know is looked up by its
 * cgroup and by its cgroup's ancestors (a sub-cgroup the agent made is
 * still the agent's), and on a hit joins the tgid map, so it pays this
 * once. Compiled in only with AW_CGROUP_MEMBERSHIP=1: otherwise a process
 * in no agent costs nothing more than the tgid lookup.
 */
#ifndef AW_CGROUP_MEMBERSHIP
#define AW_CGROUP_MEMBERSHIP 0
#endif
#ifndef AW_CGROUPS_MAX
#define AW_CGROUPS_MAX 64     /* the daemon passes more: one per sandbox */
#endif
#define AW_CGROUP_DEPTH 8
BPF_HASH(aw_cgroups, u64, u32, AW_CGROUPS_MAX);

#if AW_CGROUP_MEMBERSHIP
/*
 * Cgroups found in no agent: cgroup id -> the membership generation then.
 * Without it every probe a process outside the fleet hits walks its
 * cgroup's ancestors (a helper call and a lookup per level: ~0.3 us at
 * depth 3), and a daemon's host runs mostly such processes. Keyed by
 * cgroup, not process: a new process in a known cgroup (every exec storm)
 * costs one lookup, no insert. The answer holds until a cgroup joins
 * aw_cgroups: whatever adds to it bumps aw_membership_gen (userland's
 * watch_cgroup, the mkdir probe in cgroup.bpf.c). A process that moves has
 * another cgroup id, and ids are never reused. LRU: an evicted entry only
 * costs a walk.
 */
#ifndef AW_OUTSIDE_MAX
#define AW_OUTSIDE_MAX 4096
#endif
BPF_TABLE("lru_hash", u64, u64, aw_outside, AW_OUTSIDE_MAX);
BPF_ARRAY(aw_membership_gen, u64, 1);

static __always_inline u64 aw_membership_generation(void)
{
	int zero = 0;
	u64 *gen = aw_membership_gen.lookup(&zero);
	return gen ? *gen : 0;
}

/* A cgroup joined aw_cgroups: every cached "outside" answer is to be asked again. */
static __always_inline void aw_membership_changed(void)
{
	int zero = 0;
	u64 *gen = aw_membership_gen.lookup(&zero);
	if (gen)
		__sync_fetch_and_add(gen, 1);
}
#endif

static __always_inline int aw_agent_of_cgroup(u32 tgid, u32 *agent)
{
#if AW_CGROUP_MEMBERSHIP
	u64 id = bpf_get_current_cgroup_id();
	u64 gen = aw_membership_generation();
	u64 *known = aw_outside.lookup(&id);
	if (known && *known == gen)
		return 0;
	u32 *found = aw_cgroups.lookup(&id);
	for (int level = 1; level <= AW_CGROUP_DEPTH && !found; level++) {
		u64 up = bpf_get_current_ancestor_cgroup_id(level);
		if (!up || up == id)
			break;
		found = aw_cgroups.lookup(&up);
	}
	if (!found) {
		aw_outside.update(&id, &gen);
		return 0;
	}
	*agent = *found;
	if (aw_watched.update(&tgid, agent))
		aw_stats.increment(AW_STAT_WATCH_FULL);
	return 1;
#else
	return 0;
#endif
}

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
	if (aw_agent_of_cgroup(tgid, agent))
		return 1;
	return AW_HOST_WIDE;
}

/* fd -> struct file of the current process, through task_struct.files, files_struct.fdt and fdtable.fd[fd]. */
static __always_inline void *aw_file_of_fd(u32 fd)
{
	void *task = (void *)bpf_get_current_task();
	void *files = aw_read_ptr(task, OFF_TASK_STRUCT_FILES);
	void *fdt = aw_read_ptr(files, OFF_FILES_STRUCT_FDT);
	u32 max_fds = 0;
	void **fd_array = NULL;

	/*
	 * Each read costs about 30 ns and connect() comes in storms: where the
	 * running kernel lays max_fds and fd out as {u32, pad, pointer} (every
	 * kernel so far), both come in one read. The offsets are -D constants,
	 * so the choice is the preprocessor's.
	 */
#if OFF_FDTABLE_FD == OFF_FDTABLE_MAX_FDS + 8
	struct {
		u32 max_fds;
		u32 _pad;
		void **fd;
	} head = {};
	bpf_probe_read_kernel(&head, sizeof(head), (char *)fdt + OFF_FDTABLE_MAX_FDS);
	max_fds = head.max_fds;
	fd_array = head.fd;
#else
	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (char *)fdt + OFF_FDTABLE_MAX_FDS);
	fd_array = aw_read_ptr(fdt, OFF_FDTABLE_FD);
#endif
	if (fd >= max_fds)
		return NULL;
	return aw_read_ptr(fd_array, (u64)fd * sizeof(void *));
}

#endif /* AGENTWATCH_COMMON_H */
