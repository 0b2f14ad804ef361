/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sandboxes appearing and going (agentwatch daemon only, AW_FLEET=1): every
 * mkdir and rmdir of a cgroup in the v2 hierarchy becomes a record, so the
 * daemon learns of a new container or pod without polling cgroupfs.
 *
 * A sandbox's first process can exec within a millisecond of its cgroup's
 * mkdir (runc makes the cgroup, moves init in, execs the entrypoint), well
 * before userland has read the mkdir record. So a cgroup made directly
 * under a parent the daemon watches (aw_cgroup_parents: system.slice,
 * docker, a pod's slice...) is attributed here at once, with the low 32
 * bits of its id as its agent id; userland, reading the record, keeps it
 * when its path matches a sandbox pattern and drops it (and whatever was
 * recorded for it) otherwise.
 *
 * The raw tracepoint gives the struct cgroup (TP_PROTO(struct cgroup *cgrp,
 * const char *path), include/trace/events/cgroup.h); its fields are read
 * through BTF offsets (OFF_*), never through header layouts.
 */
#if AW_FLEET

#ifndef AW_CGROUP_PARENTS_MAX
#define AW_CGROUP_PARENTS_MAX 4096
#endif
/* cgroup id -> 1: a cgroup whose new children are attributed at once. */
BPF_HASH(aw_cgroup_parents, u64, u32, AW_CGROUP_PARENTS_MAX);
BPF_PERCPU_ARRAY(aw_cgroup_scratch, struct aw_cgroup, 1);

static __always_inline u64 aw_cgroup_id_of(void *cgrp)
{
	void *kn = aw_read_ptr(cgrp, OFF_CGROUP_KN);
	u64 id = 0;
	bpf_probe_read_kernel(&id, sizeof(id), (char *)kn + OFF_KERNFS_NODE_ID);
	return id;
}

static __always_inline int aw_cgroup_record(struct bpf_raw_tracepoint_args *ctx, u32 op)
{
	void *cgrp = (void *)ctx->args[0];
	const char *path = (const char *)ctx->args[1];
	void *root = aw_read_ptr(cgrp, OFF_CGROUP_ROOT);
	int hierarchy = -1;

	bpf_probe_read_kernel(&hierarchy, sizeof(hierarchy), (char *)root + OFF_CGROUP_ROOT_HIERARCHY_ID);
	if (hierarchy != 0)
		return 0; /* a v1 hierarchy: its ids are another numbering */
	u32 zero = 0;
	struct aw_cgroup *e = aw_cgroup_scratch.lookup(&zero);
	if (!e)
		return 0;
	void *parent_css = aw_read_ptr(cgrp, OFF_CGROUP_SELF + OFF_CGROUP_SUBSYS_STATE_PARENT);
	void *parent = parent_css ? aw_read_ptr(parent_css, OFF_CGROUP_SUBSYS_STATE_CGROUP) : NULL;
	e->cgroup_id = aw_cgroup_id_of(cgrp);
	e->parent_id = parent ? aw_cgroup_id_of(parent) : 0;
	e->op = op;
	e->level = 0;
	e->flags = 0;
	bpf_probe_read_kernel(&e->level, sizeof(e->level), (char *)cgrp + OFF_CGROUP_LEVEL);
	int n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
	e->path_len = n > 0 ? n - 1 : 0;
	if (n == sizeof(e->path))
		e->flags |= AW_CGROUP_PATH_TRUNCATED;

	u64 id = e->cgroup_id;
	if (op == AW_CGROUP_MKDIR && aw_cgroup_parents.lookup(&e->parent_id)) {
		u32 agent = (u32)id;
		if (agent && aw_cgroups.update(&id, &agent) == 0) {
			e->flags |= AW_CGROUP_ATTRIBUTED;
#if AW_CGROUP_MEMBERSHIP
			aw_membership_changed(); /* a new cgroup is empty, but what is cached must not outlive a join */
#endif
		}
	} else if (op == AW_CGROUP_RMDIR) {
		aw_cgroups.delete(&id);
		aw_cgroup_parents.delete(&id);
	}
	aw_fill_header(&e->hdr, AW_EVENT_CGROUP, 0);
	e->hdr.size = sizeof(*e);
	if (aw_events.ringbuf_output(e, sizeof(*e), AW_RB_FLAGS))
		aw_lost.increment(AW_EVENT_CGROUP);
	return 0;
}

RAW_TRACEPOINT_PROBE(cgroup_mkdir)
{
	return aw_cgroup_record(ctx, AW_CGROUP_MKDIR);
}

RAW_TRACEPOINT_PROBE(cgroup_rmdir)
{
	return aw_cgroup_record(ctx, AW_CGROUP_RMDIR);
}

#endif /* AW_FLEET */
