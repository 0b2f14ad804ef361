/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Paths a watched process writes that may weaken oversight or persist it
 * (shell startup files, cron, systemd units, authorized_keys,
 * ld.so.preload, audit and agentwatch configuration), and kernel module
 * loads: from syscall tracepoints only, reported as aw_file records.
 *
 *  - open, openat, openat2, creat for writing (the open probes are shared
 *    with gpu.bpf.c: one program per tracepoint);
 *  - rename*, link*, symlink* (the destination; a symlink also by what it
 *    points to), truncate, unlink*;
 *  - init_module and finit_module, when the kernel has them (probes.py
 *    attaches aw_module_* only then: a kernel built without modules has no
 *    such tracepoints, and nothing to load).
 *
 * Volume: a path is kept only when one of its names is marked (userland
 * fills aw_file_names with the FNV-1a hashes of "etc", ".ssh", ".bashrc",
 * ...: tracer/watched_files.py), and then once per process, path, call and
 * outcome (aw_file_seen). A relative path is resolved here, by walking the
 * directory it is relative to (the cwd, or the dirfd's file) up to the root
 * through dentries and mounts, at their BTF offsets: the process may be gone
 * before userland reads the record. The walk, a few hundred instructions,
 * runs once per process and distinct relative path written.
 *
 * The heavy part (aw_file_finish) is one program that every exit probe
 * tail-calls, so the verifier sees it once, not once per system call.
 */

#ifndef AW_MODULE_LOAD_TP
#define AW_MODULE_LOAD_TP 0  /* 1: the kernel has module:module_load (probes.py passes its name's place) */
#endif
#define AW_AT_FDCWD -100
/* uapi asm-generic/fcntl.h (octal there): O_WRONLY 01, O_RDWR 02, O_CREAT 0100, O_TRUNC 01000, O_APPEND 02000 */
#define AW_O_WRONLY 0x1
#define AW_O_RDWR 0x2
#define AW_O_CREAT 0x40
#define AW_O_TRUNC 0x200
#define AW_O_APPEND 0x400
#define AW_O_WRITING (AW_O_WRONLY | AW_O_RDWR | AW_O_CREAT | AW_O_TRUNC | AW_O_APPEND)

/* FNV-1a, 64 bits: tracer/watched_files.py hashes the marked names the same way. */
#define AW_FNV_OFFSET 0xcbf29ce484222325ULL
#define AW_FNV_PRIME 0x100000001b3ULL

/* A call in flight, by tid, until it returns. */
struct aw_file_pending {
	const char *path;   /* user memory */
	const char *other;
	s32 dirfd;
	u32 open_flags;
	u32 op;             /* AW_FILE_*; 0: an open that is not for writing (only the GPU's) */
	u32 gpu_class;      /* gpu.bpf.c's class of an open's path, or AW_GPU_OPEN_SKIP */
};
BPF_HASH(aw_file_pending, u32, struct aw_file_pending, 8192);

/* What an exit probe hands to aw_file_finish (same CPU, same context: the tail call follows at once). */
struct aw_file_work {
	struct aw_file_pending call;
	s64 ret;
	/*
	 * A marked name was seen. Kept in map memory, which the verifier does
	 * not follow, rather than in a register or on the stack: there each
	 * loop iteration would split into a marked and an unmarked state.
	 */
	u32 marked;
};
BPF_PERCPU_ARRAY(aw_file_work, struct aw_file_work, 1);
BPF_PERCPU_ARRAY(aw_file_scratch, struct aw_file, 1);
/* The walk writes names leaf first; twice the record's room, so that a read anywhere below it is bounded. */
struct aw_file_walkbuf {
	char c[2 * AW_FILE_PATH_LEN];
};
BPF_PERCPU_ARRAY(aw_file_walkbuf, struct aw_file_walkbuf, 1);

/* FNV-1a of a marked name -> 1 (userland fills it at start). */
BPF_HASH(aw_file_names, u64, u8, 256);

struct aw_file_seen_key {
	u32 tgid;
	u32 op;             /* AW_FILE_* | 0x100 when the call failed */
	u64 hash;           /* the path, its directory and the process's start time */
};
#define AW_SEEN_EMITTED 1
#define AW_SEEN_UNMARKED 2  /* a relative path walked and found unmarked: not walked again */
BPF_TABLE("lru_hash", struct aw_file_seen_key, u8, aw_file_seen, 16384);

/* aw_file_finish, the one entry: probes.py loads it and puts it at index 0. */
BPF_PROG_ARRAY(aw_file_tail, 1);

#if AW_MODULE_LOAD_TP
/* tid -> the name module:module_load gave while its init_module/finit_module ran. */
struct aw_module_name {
	char c[64];         /* MODULE_NAME_LEN is 56 on 64-bit kernels */
};
BPF_HASH(aw_module_names, u32, struct aw_module_name, 256);
#endif

static __always_inline u64 aw_fnv_mix(u64 h, u64 v)
{
	return (h ^ v) * AW_FNV_PRIME;
}

/*
 * The hash of a whole string into *hash; *marked when one of its names is
 * marked. No name length is kept: a length the verifier tracks exactly
 * would give it a state per length and iteration (too many); a name too
 * long to be marked simply hashes to something unmarked.
 */
static __always_inline void aw_file_scan(const char *s, u64 *hash, u32 *marked)
{
	u64 h = *hash, name = AW_FNV_OFFSET;

	for (int i = 0; i < AW_FILE_PATH_LEN; i++) {
		char c = s[i];
		if (c == 0 || c == '/') {
			if (name != AW_FNV_OFFSET && aw_file_names.lookup(&name))
				*marked = 1;
			name = AW_FNV_OFFSET;
			if (c == 0)
				break;
		} else {
			name = aw_fnv_mix(name, (u8)c);
		}
		h = aw_fnv_mix(h, (u8)c);
	}
	*hash = h;
}

/*
 * (mnt, dentry) up to the root of the process's mount namespace, names
 * leaf first into e->dir: what d_path does, through struct dentry
 * (d_parent, d_name.name), struct vfsmount (mnt_root) and struct mount
 * (mnt, mnt_parent, mnt_mountpoint), at their BTF offsets.
 */
static __always_inline void aw_file_walk(struct aw_file *e, void *mnt, void *dentry, u32 *marked)
{
	u32 zero = 0, pos = 0;
	struct aw_file_walkbuf *b = aw_file_walkbuf.lookup(&zero);
	if (!b || !mnt || !dentry)
		return;
	e->flags |= AW_FILE_DIR_WALKED;
	for (int i = 0; i < AW_FILE_DEPTH; i++) {
		/*
		 * At a mount's root, on to where it is mounted, in the same
		 * iteration: both ways then meet again, and the verifier has one
		 * state per level, not two.
		 */
		if (dentry == aw_read_ptr(mnt, OFF_VFSMOUNT_MNT_ROOT)) {
			void *m = (char *)mnt - OFF_MOUNT_MNT;
			void *up = aw_read_ptr(m, OFF_MOUNT_MNT_PARENT);
			if (!up || up == m)
				goto done; /* the root of the namespace */
			dentry = aw_read_ptr(m, OFF_MOUNT_MNT_MOUNTPOINT);
			mnt = (char *)up + OFF_MOUNT_MNT;
		}
		void *parent = aw_read_ptr(dentry, OFF_DENTRY_D_PARENT);
		if (!parent || parent == dentry)
			goto done; /* a filesystem's root mounted nowhere (a detached mount) */
		if (pos >= AW_FILE_PATH_LEN)
			break;
		const char *name = aw_read_ptr(dentry, OFF_DENTRY_D_NAME + OFF_QSTR_NAME);
		long n = bpf_probe_read_kernel_str(&b->c[pos & (AW_FILE_PATH_LEN - 1)], AW_FILE_PATH_LEN, name);
		if (n <= 1)
			break;
		/*
		 * The name's hash, up to its NUL and at most AW_FILE_NAME_HASHED
		 * bytes, without a branch: a branch on the length gives the
		 * verifier a state per length and byte. alive is 1 until the NUL
		 * ((c + 255) >> 8 is 1 for any byte but 0); the barrier keeps clang
		 * from turning that back into a branch. A longer name hashes its
		 * first bytes only, and no marked name is so long.
		 */
		u64 h = AW_FNV_OFFSET, alive = 1;
		for (int j = 0; j < AW_FILE_NAME_HASHED; j++) {
			u64 c = (u8)b->c[(pos + j) & (2 * AW_FILE_PATH_LEN - 1)];
			alive &= (c + 255) >> 8;
			asm volatile("" : "+r"(alive));
			u64 mixed = aw_fnv_mix(h, c);
			h ^= (h ^ mixed) & (0 - alive);
		}
		if (aw_file_names.lookup(&h))
			*marked = 1;
		pos += n;
		dentry = parent;
	}
	e->flags |= AW_FILE_DIR_TRUNCATED; /* deeper than AW_FILE_DEPTH, or longer than dir holds */
done:
	if (pos > AW_FILE_PATH_LEN) {
		pos = AW_FILE_PATH_LEN;
		e->flags |= AW_FILE_DIR_TRUNCATED;
	}
	__builtin_memcpy(e->dir, b->c, AW_FILE_PATH_LEN);
	e->dir_len = pos;
}

/* The (mnt, dentry) of a struct path at `at`. */
static __always_inline void aw_path_of(void *at, void **mnt, void **dentry)
{
	*mnt = aw_read_ptr(at, OFF_PATH_MNT);
	*dentry = aw_read_ptr(at, OFF_PATH_DENTRY);
}

/* The directory a relative path names from: the cwd (AT_FDCWD) or the dirfd's file. */
static __always_inline void aw_file_base(s32 dirfd, void **mnt, void **dentry)
{
	*mnt = NULL;
	*dentry = NULL;
	if (dirfd == AW_AT_FDCWD) {
		void *fs = aw_read_ptr((void *)bpf_get_current_task(), OFF_TASK_STRUCT_FS);
		if (fs)
			aw_path_of((char *)fs + OFF_FS_STRUCT_PWD, mnt, dentry);
		return;
	}
	if (dirfd < 0)
		return;
	void *file = aw_file_of_fd(dirfd);
	if (file)
		aw_path_of((char *)file + OFF_FILE_F_PATH, mnt, dentry);
}

/* The one copy of the decision: keep or drop, then the record. Tail-called by every exit probe. */
int aw_file_finish(void *ctx)
{
	u32 zero = 0, agent;
	struct aw_file_work *w = aw_file_work.lookup(&zero);
	struct aw_file *e = aw_file_scratch.lookup(&zero);
	if (!w || !e)
		return 0;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32, op = w->call.op;
	long ret = w->ret;
	if (!aw_agent_of(tgid, &agent))
		return 0;

	e->op = op;
	e->result = ret;
	e->dirfd = w->call.dirfd;
	e->open_flags = w->call.open_flags;
	e->flags = 0;
	e->_pad = 0;
	e->_pad2 = 0;
	e->path_len = 0;
	e->dir_len = 0;
	e->other_len = 0;
	e->path[0] = 0;
	e->dir[0] = 0;
	e->other[0] = 0;

	w->marked = 0;
	u64 start = 0, h = AW_FNV_OFFSET;
	void *task = (void *)bpf_get_current_task();
	void *leader = aw_read_ptr(task, OFF_TASK_STRUCT_GROUP_LEADER);
	bpf_probe_read_kernel(&start, sizeof(start), (char *)leader + OFF_TASK_STRUCT_START_BOOTTIME);
	struct aw_file_seen_key key = {.tgid = tgid, .op = op | (ret < 0 ? 0x100 : 0)};
	void *mnt = NULL, *dentry = NULL;

	if (op == AW_FILE_INIT_MODULE || op == AW_FILE_FINIT_MODULE) {
		/* Always kept: a module load is news whatever its name. */
		w->marked = 1;
		if (op == AW_FILE_FINIT_MODULE && w->call.dirfd >= 0) {
			void *file = aw_file_of_fd(w->call.dirfd);
			if (file)
				aw_path_of((char *)file + OFF_FILE_F_PATH, &mnt, &dentry);
		}
		h = aw_fnv_mix(h, (u64)dentry);
#if AW_MODULE_LOAD_TP
		u32 tid = (u32)pid_tgid;
		struct aw_module_name *named = aw_module_names.lookup(&tid);
		if (named) {
			long n = bpf_probe_read_kernel_str(e->path, sizeof(named->c), named->c);
			e->path_len = n > 0 ? n - 1 : 0;
			e->flags |= AW_FILE_MODULE_NAMED;
			aw_module_names.delete(&tid);
		}
#endif
	} else {
		long n = aw_read_user_str(e->path, AW_FILE_PATH_LEN, w->call.path);
		if (n <= 0)
			return 0; /* nothing to judge */
		e->path_len = n - 1;
		if (n >= AW_FILE_PATH_LEN)
			e->flags |= AW_FILE_PATH_TRUNCATED;
		aw_file_scan(e->path, &h, &w->marked);
		if (op == AW_FILE_SYMLINK || op == AW_FILE_RENAME || op == AW_FILE_LINK) {
			n = aw_read_user_str(e->other, AW_FILE_PATH_LEN, w->call.other);
			e->other_len = n > 0 ? n - 1 : 0;
			if (n >= AW_FILE_PATH_LEN)
				e->flags |= AW_FILE_PATH_TRUNCATED;
			if (op == AW_FILE_SYMLINK) {
				/* A link to a marked place is a way into it: judged by its target too. */
				u64 ignored = 0;
				aw_file_scan(e->other, &ignored, &w->marked);
			}
		}
		if (e->path[0] != '/') {
			aw_file_base(w->call.dirfd, &mnt, &dentry);
			h = aw_fnv_mix(aw_fnv_mix(h, (u64)dentry), (u64)mnt);
		} else if (!w->marked) {
			return 0; /* the common case: an absolute path with no marked name */
		}
	}
	key.hash = aw_fnv_mix(h, start);
	u8 *seen = aw_file_seen.lookup(&key);
	if (seen)
		return 0; /* reported already, or walked and found unmarked */
	if (dentry)
		aw_file_walk(e, mnt, dentry, &w->marked);
	u8 verdict = w->marked ? AW_SEEN_EMITTED : AW_SEEN_UNMARKED;
	aw_file_seen.update(&key, &verdict);
	if (!w->marked)
		return 0;
	aw_fill_header(&e->hdr, AW_EVENT_FILE, agent);
	e->hdr.size = sizeof(*e);
	if (aw_events.ringbuf_output(e, sizeof(*e), AW_RB_FLAGS))
		aw_lost.increment(AW_EVENT_FILE);
	return 0;
}

static __always_inline int aw_file_enter(u32 op, s32 dirfd, const char *path, const char *other, u32 flags)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid, agent;

	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	struct aw_file_pending p = {.path = path, .other = other, .dirfd = dirfd, .open_flags = flags, .op = op,
				    .gpu_class = AW_GPU_OPEN_SKIP};
	aw_file_pending.update(&tid, &p);
	return 0;
}

/* An open: the GPU's class of its path, and whether it writes. */
static __always_inline int aw_open_enter(s32 dirfd, const char *path, u32 flags)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid, agent;

	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	struct aw_file_pending p = {.path = path, .dirfd = dirfd, .open_flags = flags,
				    .op = (flags & AW_O_WRITING) ? AW_FILE_OPEN : 0};
	p.gpu_class = aw_gpu_open_class(pid_tgid >> 32, agent, path);
	/*
	 * An open of no GPU and not for writing (nearly every open: the loader's
	 * libraries at each exec) leaves nothing pending: its exit only has to
	 * clear a stale GPU class of the fd it returns (aw_open_exit), and can do
	 * that without knowing the call (~250 ns a call saved: an update here,
	 * a lookup and a delete there).
	 */
	if (!p.op && (p.gpu_class == AW_GPU_OPEN_SKIP || !p.gpu_class))
		return 0;
	aw_file_pending.update(&tid, &p);
	return 0;
}

static __always_inline int aw_file_exit_of(void *ctx, long ret, int is_open)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid, zero = 0;

	struct aw_file_pending *p = aw_file_pending.lookup(&tid);
	if (!p) {
		if (is_open)
			aw_gpu_fd_reused(pid_tgid >> 32, ret);
		return 0;
	}
	struct aw_file_work *w = aw_file_work.lookup(&zero);
	if (!w) {
		aw_file_pending.delete(&tid);
		return 0;
	}
	w->call = *p;
	w->ret = ret;
	aw_file_pending.delete(&tid);
	if (w->call.op == AW_FILE_OPEN || !w->call.op)
		aw_gpu_open_returned(pid_tgid >> 32, w->call.gpu_class, ret);
	if (w->call.op)
		aw_file_tail.call(ctx, 0);
	return 0;
}

static __always_inline int aw_file_exit(void *ctx, long ret)
{
	return aw_file_exit_of(ctx, ret, 0);
}

/* The exit of an open: ret is an fd. */
static __always_inline int aw_open_exit(void *ctx, long ret)
{
	return aw_file_exit_of(ctx, ret, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat) { return aw_open_enter(args->dfd, args->filename, args->flags); }
TRACEPOINT_PROBE(syscalls, sys_exit_openat) { return aw_open_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_open) { return aw_open_enter(AW_AT_FDCWD, args->filename, args->flags); }
TRACEPOINT_PROBE(syscalls, sys_exit_open) { return aw_open_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
	u64 flags = 0; /* struct open_how starts with its u64 flags (uapi linux/openat2.h) */
	aw_read_user(&flags, sizeof(flags), args->how);
	return aw_open_enter(args->dfd, args->filename, (u32)flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat2) { return aw_open_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_creat)
{
	return aw_open_enter(AW_AT_FDCWD, args->pathname, AW_O_CREAT | AW_O_WRONLY | AW_O_TRUNC);
}
TRACEPOINT_PROBE(syscalls, sys_exit_creat) { return aw_open_exit(args, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_rename)
{
	return aw_file_enter(AW_FILE_RENAME, AW_AT_FDCWD, args->newname, args->oldname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat)
{
	return aw_file_enter(AW_FILE_RENAME, args->newdfd, args->newname, args->oldname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_renameat2)
{
	return aw_file_enter(AW_FILE_RENAME, args->newdfd, args->newname, args->oldname, args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_link)
{
	return aw_file_enter(AW_FILE_LINK, AW_AT_FDCWD, args->newname, args->oldname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_link) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_linkat)
{
	return aw_file_enter(AW_FILE_LINK, args->newdfd, args->newname, args->oldname, args->flags);
}
TRACEPOINT_PROBE(syscalls, sys_exit_linkat) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_symlink)
{
	return aw_file_enter(AW_FILE_SYMLINK, AW_AT_FDCWD, args->newname, args->oldname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlink) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_symlinkat)
{
	return aw_file_enter(AW_FILE_SYMLINK, args->newdfd, args->newname, args->oldname, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlinkat) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_truncate)
{
	return aw_file_enter(AW_FILE_TRUNCATE, AW_AT_FDCWD, args->path, NULL, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_truncate) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_unlink)
{
	return aw_file_enter(AW_FILE_UNLINK, AW_AT_FDCWD, args->pathname, NULL, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlink) { return aw_file_exit(args, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
	return aw_file_enter(AW_FILE_UNLINK, args->dfd, args->pathname, NULL, args->flag);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlinkat) { return aw_file_exit(args, args->ret); }

/*
 * Kernel modules. Not TRACEPOINT_PROBEs: BCC would need their tracepoints
 * to exist to compile at all, and a kernel without CONFIG_MODULES has none.
 * probes.py attaches these only where they exist. The context is the
 * syscall tracepoint's record (kernel/trace/trace_syscalls.c struct
 * syscall_trace_enter / syscall_trace_exit: 8 bytes of common fields, the
 * syscall number, then the arguments, each 8 bytes, from offset 16).
 */
struct aw_sys_enter_args {
	u64 common;
	s64 nr;
	u64 args[6];
};
struct aw_sys_exit_args {
	u64 common;
	s64 nr;
	s64 ret;
};

int aw_module_init_enter(struct aw_sys_enter_args *ctx)
{
	/* init_module(void __user *umod, unsigned long len, const char __user *uargs) */
	return aw_file_enter(AW_FILE_INIT_MODULE, -1, NULL, NULL, 0);
}

int aw_module_finit_enter(struct aw_sys_enter_args *ctx)
{
	/* finit_module(int fd, const char __user *uargs, int flags) */
	return aw_file_enter(AW_FILE_FINIT_MODULE, (s32)ctx->args[0], NULL, NULL, (u32)ctx->args[2]);
}

int aw_module_exit(struct aw_sys_exit_args *ctx)
{
	return aw_file_exit(ctx, ctx->ret);
}

#if AW_MODULE_LOAD_TP
/* module:module_load (include/trace/events/module.h): runs in the loader's context, before its syscall returns. */
int aw_module_load(void *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct aw_file_pending *p = aw_file_pending.lookup(&tid);
	if (!p || (p->op != AW_FILE_INIT_MODULE && p->op != AW_FILE_FINIT_MODULE))
		return 0;
	u32 loc = 0; /* __data_loc char[] name: offset in the low 16 bits; its place from the format file */
	bpf_probe_read_kernel(&loc, sizeof(loc), (char *)ctx + AW_MODULE_LOAD_NAME_AT);
	struct aw_module_name name = {};
	bpf_probe_read_kernel_str(name.c, sizeof(name.c), (char *)ctx + (loc & 0xFFFF));
	aw_module_names.update(&tid, &name);
	return 0;
}
#endif
