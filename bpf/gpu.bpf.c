/* SPDX-License-Identifier: Apache-2.0 */
/*
 * GPU device use by watched processes, from tracepoints only.
 *
 * Which fds are GPU devices is learnt from open paths (kept by (tgid, fd),
 * followed through dup and fork; the open probes, shared with file.bpf.c,
 * are there); what an ioctl does is decided from
 * (device class, ioctl number), never the type byte, which nvidia.ko
 * ignores (kernel-open/nvidia/nv.c nvidia_ioctl). Counters stay in a
 * per-CPU map that userland reads every second: nothing goes to userland
 * per ioctl, only a record the first time a process reaches a milestone.
 *
 * Numbers: NVIDIA open-gpu-kernel-modules (nv-ioctl-numbers.h, nv_escape.h,
 * nvos.h, class/clXXXX.h, ctrl/ctrlXXXX.h, nvidia-uvm/uvm_ioctl.h); AMD
 * include/uapi/linux/kfd_ioctl.h and drm/amdgpu_drm.h; Intel
 * drm/i915_drm.h and drm/xe_drm.h; drm/habanalabs_accel.h.
 */

/* (tgid, fd) -> AW_GPU_CLASS_* | drm minor << 8 */
BPF_HASH(aw_gpu_fds, struct aw_gpu_fd_key, u32, 65536);
/* tid -> class of dup's old fd (0: the new fd is not a GPU fd) */
BPF_HASH(aw_gpu_dup_pending, u32, u32, 4096);
/* child tgid -> parent tgid, for forks of processes holding GPU fds */
BPF_HASH(aw_gpu_parent, u32, u32, 16384);
BPF_PERCPU_HASH(aw_gpu_counts, struct aw_gpu_count_key, u64, 65536);
/* tgid -> milestone bits already reported */
BPF_HASH(aw_gpu_seen, u32, u64, 65536);
/* (tgid, fd) already handed to the userland resolver */
BPF_TABLE("lru_hash", struct aw_gpu_fd_key, u8, aw_gpu_unknown, 4096);
/* DRM minor -> AW_DRM_* driver, filled by userland from sysfs */
BPF_HASH(aw_drm_driver, u32, u32, 512);

#define AW_Q(a, b, c, d, e, f, g, h)                                                     \
	((u64)(a) | (u64)(b) << 8 | (u64)(c) << 16 | (u64)(d) << 24 | (u64)(e) << 32 |   \
	 (u64)(f) << 40 | (u64)(g) << 48 | (u64)(h) << 56)

union aw_path {
	char c[AW_GPU_PATH_LEN];
	u64 q[AW_GPU_PATH_LEN / 8];
};

static __always_inline u32 aw_digits(union aw_path *p, int at)
{
	u32 v = 0;
#pragma unroll
	for (int i = 0; i < 3; i++) {
		char ch = p->c[(at + i) & (AW_GPU_PATH_LEN - 1)];
		if (ch < '0' || ch > '9')
			break;
		v = v * 10 + (ch - '0');
	}
	return v;
}

/* Device class of a path (| minor << 8 for DRM), AW_GPU_CLASS_RECON, or 0. */
static __always_inline u32 aw_gpu_path_class(union aw_path *p)
{
	if (p->q[0] == AW_Q('/', 'd', 'e', 'v', '/', 'n', 'v', 'i')) {
		if (p->c[8] != 'd' || p->c[9] != 'i' || p->c[10] != 'a')
			return 0;
		char c = p->c[11];
		if (c == 'c' && p->c[12] == 't' && p->c[13] == 'l' && p->c[14] == 0)
			return AW_GPU_CLASS_NV_CTL;
		if (c >= '0' && c <= '9')
			return AW_GPU_CLASS_NV_GPU;
		if (c != '-')
			return 0;
		if (p->c[12] == 'u' && p->c[13] == 'v' && p->c[14] == 'm')
			return p->c[15] == '-' ? AW_GPU_CLASS_NV_UVM_TOOLS : AW_GPU_CLASS_NV_UVM;
		if (p->c[12] == 'm')
			return AW_GPU_CLASS_NV_MODESET;
		if (p->c[12] == 'c')
			return AW_GPU_CLASS_NV_CAPS;
		return 0;
	}
	if (p->q[0] == AW_Q('/', 'd', 'e', 'v', '/', 'k', 'f', 'd') && p->c[8] == 0)
		return AW_GPU_CLASS_KFD;
	if (p->q[0] == AW_Q('/', 'd', 'e', 'v', '/', 'd', 'r', 'i')) {
		if (p->q[1] == AW_Q('/', 'r', 'e', 'n', 'd', 'e', 'r', 'D'))
			return AW_GPU_CLASS_DRM_RENDER | aw_digits(p, 16) << 8;
		if (p->c[8] == '/' && p->c[9] == 'c' && p->c[10] == 'a' && p->c[11] == 'r' && p->c[12] == 'd')
			return AW_GPU_CLASS_DRM_CARD | aw_digits(p, 13) << 8;
		return 0;
	}
	if (p->q[0] == AW_Q('/', 'd', 'e', 'v', '/', 'a', 'c', 'c'))
		return AW_GPU_CLASS_ACCEL;
	/* /dev/char/195:N, the links CUDA creates: 255 is the control node. */
	if (p->q[0] == AW_Q('/', 'd', 'e', 'v', '/', 'c', 'h', 'a') && p->c[8] == 'r' &&
	    p->c[9] == '/' && p->c[10] == '1' && p->c[11] == '9' && p->c[12] == '5' && p->c[13] == ':') {
		u32 minor = aw_digits(p, 14);
		if (minor == 255)
			return AW_GPU_CLASS_NV_CTL;
		return minor == 254 ? AW_GPU_CLASS_NV_MODESET : AW_GPU_CLASS_NV_GPU;
	}
	if (p->q[0] == AW_Q('/', 'p', 'r', 'o', 'c', '/', 'd', 'r') &&
	    p->q[1] == AW_Q('i', 'v', 'e', 'r', '/', 'n', 'v', 'i'))
		return AW_GPU_CLASS_RECON;
	return 0;
}

static __always_inline void aw_gpu_emit(u32 kind, u32 agent, u32 fd, u32 devclass, u32 op, u32 detail,
					u32 milestone, u64 value)
{
	struct aw_gpu *e = aw_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		aw_lost.increment(AW_EVENT_GPU);
		return;
	}
	aw_fill_header(&e->hdr, AW_EVENT_GPU, agent);
	e->hdr.size = sizeof(*e);
	e->kind = kind;
	e->fd = fd;
	e->devclass = devclass;
	e->op = op;
	e->detail = detail;
	e->milestone = milestone;
	e->value = value;
	aw_events.ringbuf_submit(e, AW_RB_FLAGS);
}

/* Report a milestone the first time this process reaches it. */
static __always_inline void aw_gpu_milestone(u32 tgid, u32 agent, u32 bit, u32 fd, u32 devclass, u32 op,
					     u32 detail, u64 value)
{
	u64 zero = 0;
	u64 *seen = aw_gpu_seen.lookup_or_try_init(&tgid, &zero);
	if (!seen || (*seen & bit))
		return;
	/* 64-bit: the only atomic OR the BPF backend of BCC's LLVM offers. */
	__sync_fetch_and_or(seen, (u64)bit);
	aw_gpu_emit(AW_GPU_KIND_MILESTONE, agent, fd, devclass, op, detail, bit, value);
}

static __always_inline void aw_gpu_count(u32 tgid, u32 devclass, u32 op, u32 detail, u64 n)
{
	struct aw_gpu_count_key k = {.tgid = tgid, .devclass = devclass, .op = op, .detail = detail};
	u64 zero = 0;
	/* Not .increment(): on a per-CPU hash with a struct key BCC 0.26's increment never counts. */
	u64 *v = aw_gpu_counts.lookup_or_try_init(&k, &zero);
	if (v)
		*v += n;
}

/*
 * The GPU's part of an open (the open probes are in file.bpf.c): the class
 * of the path, kept with the open until it returns, or AW_GPU_OPEN_SKIP.
 * "Not a GPU path" (0) is kept too: the exit then forgets a stale entry for
 * the new fd.
 */
#define AW_GPU_OPEN_SKIP 0xffffffffu

static __always_inline u32 aw_gpu_open_class(u32 tgid, u32 agent, const char *filename)
{
	union aw_path p = {};
	if (aw_read_user_str(p.c, sizeof(p.c), filename) <= 0)
		return AW_GPU_OPEN_SKIP;
	u32 cls = aw_gpu_path_class(&p);
	if (cls == AW_GPU_CLASS_RECON) {
		aw_gpu_milestone(tgid, agent, AW_GPU_MS_RECON, 0, 0, AW_GPU_OP_RECON, 0, 0);
		return AW_GPU_OPEN_SKIP;
	}
	return cls;
}

static __always_inline void aw_gpu_open_returned(u32 tgid, u32 cls, long ret)
{
	u32 agent;

	if (cls == AW_GPU_OPEN_SKIP || ret < 0)
		return;
	struct aw_gpu_fd_key k = {.tgid = tgid, .fd = (u32)ret};
	if (!cls) {
		if (aw_gpu_fds.lookup(&k)) /* a lookup takes no lock; the fd is almost never a GPU's */
			aw_gpu_fds.delete(&k);
		return;
	}
	aw_gpu_fds.update(&k, &cls);
	aw_agent_of(k.tgid, &agent);
	aw_gpu_count(k.tgid, cls & 0xff, AW_GPU_OP_OPEN, 0, 1);
	aw_gpu_milestone(k.tgid, agent, AW_GPU_MS_OPEN, k.fd, cls & 0xff, AW_GPU_OP_OPEN, cls >> 8, 0);
}

/*
 * An open returned fd ret with nothing pending (no GPU's path, not for
 * writing): the fd is no GPU's, whatever it was before. A GPU fd can go
 * without a close(2) the probes see (O_CLOEXEC at exec, close_range) and
 * its number come back; every process's opens pass here, and only the
 * agents' GPU fds are in the map: one lookup.
 */
static __always_inline void aw_gpu_fd_reused(u32 tgid, long ret)
{
	if (ret < 0)
		return;
	struct aw_gpu_fd_key k = {.tgid = tgid, .fd = (u32)ret};
	if (aw_gpu_fds.lookup(&k))
		aw_gpu_fds.delete(&k);
}

/* Called from the one close(2) probe (payload.bpf.c). */
static __always_inline void aw_gpu_on_close(u32 tgid, u32 fd)
{
	struct aw_gpu_fd_key k = {.tgid = tgid, .fd = fd};
	/* A lookup takes no lock and almost no fd is a GPU's: delete only what is there. */
	if (aw_gpu_fds.lookup(&k))
		aw_gpu_fds.delete(&k);
}

/* dup family: the new fd takes the old one's class, or loses a stale one. */
static __always_inline int aw_gpu_dup_enter(u32 oldfd)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid, agent, none = 0;

	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	struct aw_gpu_fd_key k = {.tgid = pid_tgid >> 32, .fd = oldfd};
	u32 *cls = aw_gpu_fds.lookup(&k);
	aw_gpu_dup_pending.update(&tid, cls ? cls : &none);
	return 0;
}

static __always_inline int aw_gpu_dup_exit(long ret)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;

	u32 *cls = aw_gpu_dup_pending.lookup(&tid);
	if (!cls)
		return 0;
	u32 value = *cls;
	aw_gpu_dup_pending.delete(&tid);
	if (ret < 0)
		return 0;
	struct aw_gpu_fd_key k = {.tgid = pid_tgid >> 32, .fd = (u32)ret};
	if (value)
		aw_gpu_fds.update(&k, &value);
	else
		aw_gpu_fds.delete(&k);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_dup) { return aw_gpu_dup_enter(args->fildes); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup) { return aw_gpu_dup_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_dup2) { return aw_gpu_dup_enter(args->oldfd); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup2) { return aw_gpu_dup_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_dup3) { return aw_gpu_dup_enter(args->oldfd); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup3) { return aw_gpu_dup_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_fcntl)
{
	/* F_DUPFD 0 and F_DUPFD_CLOEXEC 1030 (uapi asm-generic/fcntl.h, linux/fcntl.h) */
	if (args->cmd != 0 && args->cmd != 1030)
		return 0;
	return aw_gpu_dup_enter(args->fd);
}

TRACEPOINT_PROBE(syscalls, sys_exit_fcntl) { return aw_gpu_dup_exit(args->ret); }

/* Called from the fork probe: a child of a GPU-holding process inherits its fds. */
static __always_inline void aw_gpu_on_fork(u32 parent_tgid, u32 child_tgid)
{
	if (aw_gpu_seen.lookup(&parent_tgid))
		aw_gpu_parent.update(&child_tgid, &parent_tgid);
}

/* A new image: O_CLOEXEC fds are gone and milestones start over. */
static __always_inline void aw_gpu_on_exec(u32 tgid)
{
	aw_gpu_seen.delete(&tgid);
	aw_gpu_parent.delete(&tgid);
}

static __always_inline void aw_gpu_on_exit(u32 tgid)
{
	aw_gpu_seen.delete(&tgid);
	aw_gpu_parent.delete(&tgid);
}

/* The class of (tgid, fd), looking through a fork to the parent's table. */
static __always_inline u32 aw_gpu_fd_class(u32 tgid, u32 fd)
{
	struct aw_gpu_fd_key key = {.tgid = tgid, .fd = fd};
	u32 *cls = aw_gpu_fds.lookup(&key);
	if (cls)
		return *cls;
	u32 *parent = aw_gpu_parent.lookup(&tgid);
	if (!parent)
		return 0;
	struct aw_gpu_fd_key inherited = {.tgid = *parent, .fd = fd};
	cls = aw_gpu_fds.lookup(&inherited);
	if (!cls)
		return 0;
	u32 value = *cls, agent;
	aw_gpu_fds.update(&key, &value);
	/* Its first GPU fd came by inheritance: that is this process's "open". */
	aw_agent_of(tgid, &agent);
	aw_gpu_milestone(tgid, agent, AW_GPU_MS_OPEN, fd, value & 0xff, AW_GPU_OP_OPEN, 1, 0);
	return value;
}

/* An ioctl number some GPU driver uses: worth asking userland about an unknown fd. */
static __always_inline int aw_gpu_looks_like_gpu(u32 cmd)
{
	u32 type = (cmd >> 8) & 0xff;
	return type == 0x46 || type == 0x64 || type == 0x4B || cmd == 0x30000001 || cmd == 0x30000002 ||
	       cmd < 0x100;
}

struct aw_gpu_op {
	u32 op;
	u32 detail;
	u32 milestone;
	u64 bytes;
};

/* NVIDIA RM_ALLOC: what the object's class says (class/cl*.h; low byte is the engine for >= 0x9000). */
static __always_inline void aw_nv_alloc(struct aw_gpu_op *o, u32 hclass, u64 params)
{
	u32 low = hclass & 0xff;
	o->detail = hclass;
	if (hclass == 0x0000 || hclass == 0x0001 || hclass == 0x0041)
		o->op = AW_GPU_OP_CLIENT;
	else if (hclass == 0x0080 || hclass == 0x2080)
		o->op = AW_GPU_OP_DEVICE;
	else if (hclass == 0x90F1 || hclass == 0x0070 || hclass == 0x50A0)
		o->op = AW_GPU_OP_VASPACE;
	else if (hclass == 0xA06C || hclass == 0x9067) {
		o->op = AW_GPU_OP_TSG;
		o->milestone = AW_GPU_MS_CHANNEL;
	} else if (hclass == 0xB0CC || hclass == 0xB1CC || hclass == 0xB2CC || hclass == 0x90CC ||
		   hclass == 0x00DB) {
		/*
		 * Profiler classes. Not GT200_DEBUGGER (0x83DE): CUDA allocates one
		 * with every context (seen on an H200, driver 580), so it means nothing.
		 */
		o->op = AW_GPU_OP_DEBUG;
		o->milestone = AW_GPU_MS_DEBUG;
	} else if (hclass >= 0x9000 && low == 0x6F) {
		o->op = AW_GPU_OP_CHANNEL;
		o->milestone = AW_GPU_MS_CHANNEL;
	} else if (hclass >= 0x9000 && low == 0xC0) {
		o->op = AW_GPU_OP_COMPUTE;
		o->milestone = AW_GPU_MS_COMPUTE;
	} else if (hclass >= 0x9000 && low == 0x97)
		o->op = AW_GPU_OP_GFX3D;
	else if (hclass >= 0x9000 && low == 0xB5)
		o->op = AW_GPU_OP_COPY;
	else if (hclass >= 0x9000 && (low == 0xB0 || low == 0xB7 || low == 0xD1 || low == 0xFA))
		o->op = AW_GPU_OP_VIDEO;
	else if (hclass >= 0xC361 && hclass <= 0xC761 && low == 0x61)
		o->op = AW_GPU_OP_USERMODE;
	else if (hclass == 0x3E || hclass == 0x3F || hclass == 0x40 || hclass == 0x71 || hclass == 0xC2 ||
		 hclass == 0xF8 || hclass == 0xF9 || hclass == 0xFD) {
		o->op = AW_GPU_OP_MEM;
		o->milestone = AW_GPU_MS_MEMORY;
		/* NV_MEMORY_ALLOCATION_PARAMS.size at +64 of pAllocParms (nvos.h) */
		void *alloc = NULL;
		if (!aw_read_user(&alloc, sizeof(alloc), (void *)(params + 16)) && alloc)
			aw_read_user(&o->bytes, sizeof(o->bytes), (char *)alloc + 64);
	} else
		o->op = AW_GPU_OP_OTHER;
}

static __always_inline void aw_nv_ioctl(struct aw_gpu_op *o, u32 cmd, u64 arg)
{
	u32 nr = cmd & 0xff;
	if (nr == 0xD3) {
		/* NV_ESC_IOCTL_XFER_CMD wraps any escape: {u32 cmd; u32 size; u64 ptr} (nv-ioctl.h) */
		u32 inner = 0;
		u64 ptr = 0;
		aw_read_user(&inner, sizeof(inner), (void *)arg);
		aw_read_user(&ptr, sizeof(ptr), (void *)(arg + 8));
		nr = inner & 0xff;
		arg = ptr;
	}
	o->detail = nr;
	if (nr == 0x2B) {
		u32 hclass = 0; /* hClass at +12 in NVOS21 and NVOS64 alike */
		aw_read_user(&hclass, sizeof(hclass), (void *)(arg + 12));
		aw_nv_alloc(o, hclass, arg);
	} else if (nr == 0x2A) {
		u32 ctrl = 0; /* NVOS54.cmd at +8: class << 16 | category << 8 | index */
		aw_read_user(&ctrl, sizeof(ctrl), (void *)(arg + 8));
		o->detail = ctrl >> 16;
		if (ctrl == 0xA06C0101 || ctrl == 0xA06F0103) {
			o->op = AW_GPU_OP_SCHEDULE;
			o->milestone = AW_GPU_MS_SUBMIT;
		} else if ((ctrl & 0xFFFF) == 0x0108 && ((ctrl >> 16) & 0xFF) == 0x6F) {
			/* GET_WORK_SUBMIT_TOKEN on a GPFIFO channel: doorbell submission follows */
			o->op = AW_GPU_OP_SUBMIT;
			o->milestone = AW_GPU_MS_SUBMIT;
		} else if (ctrl == 0x2080018D || ctrl == 0x2080018E)
			o->op = AW_GPU_OP_PIDQUERY;
		else
			o->op = AW_GPU_OP_CONTROL;
	} else if (nr == 0x27 || nr == 0x4A) {
		o->op = AW_GPU_OP_MEM;
		o->milestone = AW_GPU_MS_MEMORY;
	} else if (nr == 0x57)
		o->op = AW_GPU_OP_GPUMAP;
	else if (nr == 0x4E)
		o->op = AW_GPU_OP_CPUMAP;
	else if (nr == 0x29)
		o->op = AW_GPU_OP_FREE;
	else if (nr == 0xC9 || nr == 0xD4)
		o->op = AW_GPU_OP_ATTACH;
	else
		o->op = AW_GPU_OP_MISC;
}

/* nvidia-uvm: raw command numbers (uvm_ioctl.h, uvm_linux_ioctl.h). */
static __always_inline void aw_uvm_ioctl(struct aw_gpu_op *o, u32 cmd)
{
	o->detail = cmd & 0xffff;
	if (cmd == 0x30000001 || cmd == 0x4B)
		o->op = AW_GPU_OP_UVM_INIT;
	else if (cmd == 0x25 || cmd == 0x19)
		o->op = AW_GPU_OP_UVM_GPU;
	else if (cmd == 0x1B) {
		o->op = AW_GPU_OP_CHANNEL;
		o->milestone = AW_GPU_MS_CHANNEL;
	} else if (cmd == 0x21 || cmd == 0x49 || cmd == 0x4A)
		o->op = AW_GPU_OP_GPUMAP;
	else if (cmd == 0x33)
		o->op = AW_GPU_OP_MIGRATE;
	else if (cmd == 0x3E || cmd == 0x3F) {
		o->op = AW_GPU_OP_TOOLS;
		o->milestone = AW_GPU_MS_DEBUG;
	} else
		o->op = AW_GPU_OP_OTHER;
}

static __always_inline void aw_kfd_ioctl(struct aw_gpu_op *o, u32 nr, u64 arg)
{
	if (nr == 0x02) {
		o->op = AW_GPU_OP_COMPUTE;
		o->milestone = AW_GPU_MS_COMPUTE;
		u32 qtype = 0; /* kfd_ioctl_create_queue_args.queue_type at +40 */
		aw_read_user(&qtype, sizeof(qtype), (void *)(arg + 40));
		o->detail = qtype;
	} else if (nr == 0x16) {
		o->op = AW_GPU_OP_MEM;
		o->milestone = AW_GPU_MS_MEMORY;
		aw_read_user(&o->bytes, sizeof(o->bytes), (void *)(arg + 8));
	} else if (nr == 0x18)
		o->op = AW_GPU_OP_GPUMAP;
	else if (nr == 0x0C)
		o->op = AW_GPU_OP_WAIT;
	else if (nr == 0x26 || (nr >= 0x0D && nr <= 0x10)) {
		o->op = AW_GPU_OP_DEBUG;
		o->milestone = AW_GPU_MS_DEBUG;
	} else
		o->op = AW_GPU_OP_OTHER;
}

static __always_inline void aw_drm_ioctl(struct aw_gpu_op *o, u32 minor, u32 nr, u64 arg)
{
	u32 *drv = aw_drm_driver.lookup(&minor);
	u32 driver = drv ? *drv : 0;
	o->op = AW_GPU_OP_OTHER;
	if (nr < 0x40)
		return; /* core DRM: version, GEM close, prime, syncobj */
	if (driver == AW_DRM_AMDGPU) {
		if (nr == 0x42) {
			u32 op = 0; /* drm_amdgpu_ctx_in.op at +0: 1 = ALLOC_CTX */
			aw_read_user(&op, sizeof(op), (void *)arg);
			if (op == 1) {
				o->op = AW_GPU_OP_COMPUTE;
				o->milestone = AW_GPU_MS_COMPUTE;
			}
		} else if (nr == 0x44 || nr == 0x57) {
			o->op = AW_GPU_OP_SUBMIT;
			o->milestone = AW_GPU_MS_SUBMIT;
		} else if (nr == 0x56) {
			o->op = AW_GPU_OP_COMPUTE;
			o->milestone = AW_GPU_MS_COMPUTE;
		} else if (nr == 0x40) {
			o->op = AW_GPU_OP_MEM;
			o->milestone = AW_GPU_MS_MEMORY;
			aw_read_user(&o->bytes, sizeof(o->bytes), (void *)arg);
		}
	} else if (driver == AW_DRM_I915) {
		if (nr == 0x69) {
			o->op = AW_GPU_OP_SUBMIT;
			o->milestone = AW_GPU_MS_SUBMIT;
		} else if (nr == 0x6D) {
			o->op = AW_GPU_OP_COMPUTE;
			o->milestone = AW_GPU_MS_COMPUTE;
		} else if (nr == 0x5B || nr == 0x7C) {
			o->op = AW_GPU_OP_MEM;
			o->milestone = AW_GPU_MS_MEMORY;
			aw_read_user(&o->bytes, sizeof(o->bytes), (void *)arg);
		}
	} else if (driver == AW_DRM_XE) {
		if (nr == 0x46) {
			o->op = AW_GPU_OP_COMPUTE;
			o->milestone = AW_GPU_MS_COMPUTE;
		} else if (nr == 0x49) {
			o->op = AW_GPU_OP_SUBMIT;
			o->milestone = AW_GPU_MS_SUBMIT;
		} else if (nr == 0x41) {
			o->op = AW_GPU_OP_MEM;
			o->milestone = AW_GPU_MS_MEMORY;
		}
	}
}

TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 agent;

	if (!aw_agent_of(pid_tgid >> 32, &agent))
		return 0;
	struct aw_gpu_fd_key k = {.tgid = pid_tgid >> 32, .fd = args->fd};
	u32 cmd = args->cmd;
	u64 arg = args->arg;
	u32 value = aw_gpu_fd_class(k.tgid, k.fd);
	if (!value) {
		u8 one = 1;
		if (aw_gpu_looks_like_gpu(cmd) && aw_gpu_unknown.lookup(&k) == NULL) {
			aw_gpu_unknown.update(&k, &one);
			aw_gpu_emit(AW_GPU_KIND_RESOLVE, agent, k.fd, 0, cmd, 0, 0, 0);
		}
		return 0;
	}
	u32 cls = value & 0xff;
	struct aw_gpu_op o = {};
	if (cls == AW_GPU_CLASS_NV_CTL || cls == AW_GPU_CLASS_NV_GPU)
		aw_nv_ioctl(&o, cmd, arg);
	else if (cls == AW_GPU_CLASS_NV_UVM)
		aw_uvm_ioctl(&o, cmd);
	else if (cls == AW_GPU_CLASS_NV_UVM_TOOLS) {
		o.op = AW_GPU_OP_TOOLS;
		o.milestone = AW_GPU_MS_DEBUG;
		o.detail = cmd & 0xffff;
	} else if (cls == AW_GPU_CLASS_KFD)
		aw_kfd_ioctl(&o, cmd & 0xff, arg);
	else if (cls == AW_GPU_CLASS_DRM_RENDER || cls == AW_GPU_CLASS_DRM_CARD)
		aw_drm_ioctl(&o, value >> 8, cmd & 0xff, arg);
	else if (cls == AW_GPU_CLASS_ACCEL) {
		u32 nr = cmd & 0xff; /* habanalabs: HL_CS 0x42, HL_MEMORY 0x44 */
		o.op = nr == 0x42 ? AW_GPU_OP_SUBMIT : nr == 0x44 ? AW_GPU_OP_MEM : AW_GPU_OP_OTHER;
		o.milestone = nr == 0x42 ? AW_GPU_MS_SUBMIT : 0;
	} else
		o.op = AW_GPU_OP_OTHER;

	aw_gpu_count(k.tgid, cls, o.op, o.detail & 0xffff, 1);
	if (o.bytes)
		aw_gpu_count(k.tgid, cls, AW_GPU_OP_MEM_BYTES, 0, o.bytes);
	if (o.milestone)
		aw_gpu_milestone(k.tgid, agent, o.milestone, k.fd, cls, o.op, o.detail, o.bytes);
	return 0;
}
