/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The kernel/user contract of agentwatch: every record the BPF programs put
 * on the ring buffer, its type tag and its limits. tracer/events.py mirrors
 * this file field for field; tests/unit/test_event_layout.py compiles this
 * header with the host compiler and fails when the two drift.
 *
 * Only fixed-width __u/__s types, so the same text compiles in BCC and in
 * userspace (gcc, for the layout test).
 */
#ifndef AGENTWATCH_EVENTS_H
#define AGENTWATCH_EVENTS_H

#include <linux/types.h>

#define AW_COMM_LEN 16

/* Longest path kept for the exec'd file; longer ones are cut and flagged. */
#define AW_FILENAME_LEN 256

/*
 * argv is packed NUL-separated, as the kernel lays it out, into at most
 * AW_ARGV_BYTES bytes; past the cap the event carries
 * AW_EXEC_ARGV_TRUNCATED and the last argument is cut. A successful exec
 * copies the new image's argument area whole; a failed one reads the
 * caller's argv one string at a time, at most AW_ARGV_MAX_ARGS of them.
 * The buffer holds twice the cap so that the verifier can bound a string
 * read that starts anywhere below the cap.
 */
#define AW_ARGV_BYTES 8192
#define AW_ARGV_MAX_ARGS 128
#define AW_ARGV_BUF (2 * AW_ARGV_BYTES)

/* Record type tags (aw_header.type). Also the index of the lost counters. */
#define AW_EVENT_FORK 1
#define AW_EVENT_EXEC 2
#define AW_EVENT_EXIT 3
#define AW_EVENT_CONNECT 4
#define AW_EVENT_SEND 5
#define AW_EVENT_CONN 6
#define AW_EVENT_GPU 7     /* bpf/gpu.bpf.c: milestones and fd-resolve requests */
#define AW_EVENT_TAMPER 8  /* bpf/guard.bpf.c: a watched process acts against agentwatch */
#define AW_EVENT_BLOCK 9   /* bpf/policy.bpf.c (its own object and ring buffer): egress denied */
#define AW_EVENT_CGROUP 10 /* bpf/cgroup.bpf.c (daemon only): a v2 cgroup made or removed */
#define AW_EVENT_FILE 11   /* bpf/file.bpf.c: a path that may matter written, or a kernel module loaded */
#define AW_EVENT_TYPES 12 /* one past the last tag: size of aw_lost */

/* aw_exec.flags */
#define AW_EXEC_ARGV_TRUNCATED 1u    /* more args or bytes than the caps */
#define AW_EXEC_FILENAME_TRUNCATED 2u
#define AW_EXEC_EXECVEAT 4u          /* came in through execveat(2) */
#define AW_EXEC_ARGV_FAULT 8u        /* argv memory could not be read */

/* aw_connect.flags */
#define AW_CONNECT_NO_SOCKET 1u      /* fd did not resolve to a socket */

/*
 * First bytes of a connection: at most AW_PAYLOAD_BYTES of what a send
 * asked to write, gathered from at most AW_PAYLOAD_IOVECS iovecs. The
 * buffer holds twice the cap so that the verifier can bound a copy that
 * starts anywhere below the cap.
 */
#define AW_PAYLOAD_BYTES 512
#define AW_PAYLOAD_BUF (2 * AW_PAYLOAD_BYTES)
#define AW_PAYLOAD_IOVECS 4

/* aw_send.via: the system call that sent */
#define AW_VIA_WRITE 1
#define AW_VIA_WRITEV 2
#define AW_VIA_SENDTO 3
#define AW_VIA_SENDMSG 4
#define AW_VIA_SENDMMSG 5

/* aw_send.flags */
#define AW_SEND_UNCONNECTED 1u       /* destination from sendto/sendmsg's address, not connect() */
#define AW_SEND_FAULT 2u             /* some of the user's buffer could not be read */
#define AW_SEND_MORE_IOVECS 4u       /* more iovecs than gathered: total counts only those */

/* aw_conn.state */
#define AW_CONN_ESTABLISHED 1
#define AW_CONN_CLOSED 2
#define AW_CONN_FAILED 3             /* closed without ever being established */

/* Counters in aw_stats (per CPU), besides the per-type lost counters. */
#define AW_STAT_THREADS 0            /* thread creations seen (not emitted) */
#define AW_STAT_EXEC_PENDING_FULL 1  /* an exec not followed: pending map full */
#define AW_STAT_WATCH_FULL 2         /* child not inherited: watch map full */
#define AW_STATS 3

/* Common leading header of every record. */
struct aw_header {
	__u32 type;         /* AW_EVENT_* */
	__u32 size;         /* bytes of the whole record as emitted */
	__u64 ktime_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 start_ns;     /* group leader's start_boottime: with pid, the process key */
	__u32 pid;          /* tgid */
	__u32 tid;
	__u32 ppid;         /* real_parent's tgid at the time of the event */
	__u32 uid;
	__u32 agent_id;     /* kernel membership: 0 = none (host-wide mode) */
	__u32 _pad;
	char comm[AW_COMM_LEN];
};

/* A new process (not a thread): emitted in the parent's context. */
struct aw_fork {
	struct aw_header hdr;
	__u32 child_pid;
	__u32 child_agent_id;
	__u64 child_start_ns;
};

/*
 * An exec, successful or failed. Emitted with only the used part of
 * argv: size = offsetof(struct aw_exec, argv) + argv_size.
 * argc counts the strings read one by one (failed execs only).
 */
struct aw_exec {
	struct aw_header hdr;
	__s32 retval;       /* 0, or -errno of a failed exec */
	__u32 flags;        /* AW_EXEC_* */
	__u32 argc;         /* arguments captured */
	__u32 argv_size;    /* bytes used in argv */
	char filename[AW_FILENAME_LEN]; /* kernel's bprm->filename on success */
	char argv[AW_ARGV_BUF];
};

/* The whole process is gone (last thread exited). */
struct aw_exit {
	struct aw_header hdr;
	__u32 exit_code;    /* wait(2) status: code << 8 | signal */
	__u32 _pad;
};

/* connect(2) on an AF_INET/AF_INET6 socket, with the syscall result. */
struct aw_connect {
	struct aw_header hdr;
	__s32 retval;       /* 0 or -errno (-EINPROGRESS for non-blocking) */
	__u32 fd;
	__u16 family;       /* AF_INET or AF_INET6 from the sockaddr */
	__u16 protocol;     /* sk_protocol: IPPROTO_TCP, IPPROTO_UDP, ... */
	__u16 sock_type;    /* SOCK_STREAM, SOCK_DGRAM, ... */
	__u16 flags;        /* AW_CONNECT_* */
	__u16 sport;        /* host order, 0 until bound */
	__u16 dport;        /* host order */
	__u32 repeats;      /* 0: a connect() call; N: a summary of N more identical calls since the last record */
	__u8 saddr[16];     /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u64 sock_cookie;  /* the struct sock: joins send and connection records to this connect */
};

/*
 * The first send on a connection a watched process made (or every send,
 * for DNS: destination port 53), or a send to an address on an unconnected
 * socket. Emitted with only the captured part of data:
 * size = offsetof(struct aw_send, data) + captured.
 */
struct aw_send {
	struct aw_header hdr;
	__u64 sock_cookie;  /* the struct sock, as in aw_connect */
	__u8 saddr[16];     /* the local end, IPv4 in the first 4 bytes */
	__u8 daddr[16];     /* connect()'s destination, or the call's address */
	__u32 fd;
	__u32 total;        /* bytes the call asked to send (gathered iovecs only) */
	__u32 captured;     /* bytes in data */
	__u32 flags;        /* AW_SEND_* */
	__u16 via;          /* AW_VIA_* */
	__u16 family;       /* AF_INET or AF_INET6 */
	__u16 protocol;     /* sk_protocol */
	__u16 sock_type;
	__u16 sport;        /* host order */
	__u16 dport;        /* host order */
	__u32 _pad;
	__u8 data[AW_PAYLOAD_BUF];
};

/*
 * A TCP connection of a watched process changed state (sock:
 * inet_sock_set_state). The header is the connecting process as it was at
 * SYN_SENT: later transitions run in softirq or in another task.
 */
struct aw_conn {
	struct aw_header hdr;
	__u64 sock_cookie;  /* the struct sock, as in aw_connect */
	__u64 duration_ns;  /* AW_CONN_CLOSED: time since established; else 0 */
	__u8 saddr[16];     /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 state;        /* AW_CONN_* */
	__u16 family;
	__u16 protocol;
	__u16 sport;        /* host order */
	__u16 dport;        /* host order */
	__u16 oldstate;     /* the TCP state it left (TCP_SYN_SENT for a failed connection) */
	__u32 _pad;
};

/* ---- GPU (bpf/gpu.bpf.c) ---- */

/* Bytes of an open path compared against GPU device paths. */
#define AW_GPU_PATH_LEN 32

/* Device classes of GPU fds. */
#define AW_GPU_CLASS_NV_CTL 1        /* /dev/nvidiactl */
#define AW_GPU_CLASS_NV_GPU 2        /* /dev/nvidiaN, /dev/char/195:N */
#define AW_GPU_CLASS_NV_UVM 3        /* /dev/nvidia-uvm */
#define AW_GPU_CLASS_NV_UVM_TOOLS 4  /* /dev/nvidia-uvm-tools */
#define AW_GPU_CLASS_NV_MODESET 5    /* /dev/nvidia-modeset */
#define AW_GPU_CLASS_NV_CAPS 6       /* /dev/nvidia-caps/... */
#define AW_GPU_CLASS_KFD 7           /* /dev/kfd (AMD ROCm) */
#define AW_GPU_CLASS_DRM_RENDER 8    /* /dev/dri/renderDN */
#define AW_GPU_CLASS_DRM_CARD 9      /* /dev/dri/cardN */
#define AW_GPU_CLASS_ACCEL 10        /* /dev/accel/accelN */
#define AW_GPU_CLASS_RECON 255       /* /proc/driver/nvidia/...: not an fd class */

/* DRM drivers, per minor (userland fills aw_drm_driver from sysfs). */
#define AW_DRM_AMDGPU 1
#define AW_DRM_I915 2
#define AW_DRM_XE 3

/* What an ioctl (or open) did: the op of a counter. */
#define AW_GPU_OP_OPEN 1
#define AW_GPU_OP_CLIENT 2
#define AW_GPU_OP_DEVICE 3
#define AW_GPU_OP_VASPACE 4
#define AW_GPU_OP_CHANNEL 5
#define AW_GPU_OP_TSG 6
#define AW_GPU_OP_COMPUTE 7
#define AW_GPU_OP_GFX3D 8
#define AW_GPU_OP_COPY 9
#define AW_GPU_OP_VIDEO 10
#define AW_GPU_OP_USERMODE 11
#define AW_GPU_OP_MEM 12
#define AW_GPU_OP_MEM_BYTES 13       /* a sum of bytes, not a count */
#define AW_GPU_OP_DEBUG 14
#define AW_GPU_OP_CONTROL 15
#define AW_GPU_OP_SCHEDULE 16
#define AW_GPU_OP_SUBMIT 17
#define AW_GPU_OP_PIDQUERY 18
#define AW_GPU_OP_GPUMAP 19
#define AW_GPU_OP_CPUMAP 20
#define AW_GPU_OP_FREE 21
#define AW_GPU_OP_ATTACH 22
#define AW_GPU_OP_UVM_INIT 23
#define AW_GPU_OP_UVM_GPU 24
#define AW_GPU_OP_MIGRATE 25
#define AW_GPU_OP_TOOLS 26
#define AW_GPU_OP_WAIT 27
#define AW_GPU_OP_MISC 28
#define AW_GPU_OP_RECON 29
#define AW_GPU_OP_OTHER 30

/* Milestones: bits of aw_gpu_seen, each reported once per process image. */
#define AW_GPU_MS_OPEN 1u            /* first GPU device opened */
#define AW_GPU_MS_COMPUTE 2u         /* compute object, KFD queue, DRM context or exec queue */
#define AW_GPU_MS_CHANNEL 4u         /* GPFIFO channel, channel group, UVM channel */
#define AW_GPU_MS_SUBMIT 8u          /* work scheduled or submitted */
#define AW_GPU_MS_DEBUG 16u          /* debugger, profiler or UVM tools */
#define AW_GPU_MS_MEMORY 32u         /* device memory allocated */
#define AW_GPU_MS_RECON 64u          /* read /proc/driver/nvidia */

/* aw_gpu.kind */
#define AW_GPU_KIND_MILESTONE 1
#define AW_GPU_KIND_RESOLVE 2        /* an ioctl on an fd the kernel did not see opened */

struct aw_gpu_fd_key {
	__u32 tgid;
	__u32 fd;
};

struct aw_gpu_count_key {
	__u32 tgid;
	__u16 devclass;
	__u16 op;
	__u32 detail;       /* RM class, control class, or ioctl nr */
};

struct aw_gpu {
	struct aw_header hdr;
	__u32 kind;         /* AW_GPU_KIND_* */
	__u32 fd;
	__u32 devclass;
	__u32 op;           /* AW_GPU_OP_*; for RESOLVE: the ioctl cmd */
	__u32 detail;
	__u32 milestone;    /* AW_GPU_MS_* bit, for a milestone */
	__u64 value;        /* bytes allocated, when known */
};

/* ---- containment (bpf/policy.bpf.c) and self-protection (bpf/guard.bpf.c) ---- */

/* aw_block.hook: where the policy denied */
#define AW_BLOCK_CONNECT 1           /* connect(): TCP, or UDP/ICMP connect */
#define AW_BLOCK_SENDMSG 2           /* sendto()/sendmsg() with an address on a UDP socket */
#define AW_POL_DEFAULT 65535         /* aw_block.rule: no rule matched, the default denied */

/* A connect or send the egress policy denied (EPERM) in the agent's cgroup. */
struct aw_block {
	struct aw_header hdr;
	__u64 cgroup_id;    /* the cgroup of the process that tried */
	__u8 daddr[16];     /* IPv4 in the first 4 bytes */
	__u16 family;       /* of daddr as judged: AF_INET for an IPv4 or v4-mapped destination */
	__u16 protocol;     /* IPPROTO_TCP, IPPROTO_UDP, ... */
	__u16 sock_type;
	__u16 dport;        /* host order */
	__u16 hook;         /* AW_BLOCK_* */
	__u16 rule;         /* index of the deciding rule in the policy, or AW_POL_DEFAULT */
	__u16 sock_family;  /* the socket's: AF_INET6 with family AF_INET is a v4-mapped destination */
	__u16 _pad;
};

/* aw_tamper.kind */
#define AW_TAMPER_SIGNAL 1           /* a signal to agentwatch or its parent */
#define AW_TAMPER_PTRACE 2           /* PTRACE_ATTACH or PTRACE_SEIZE of any process */
#define AW_TAMPER_CGROUP 3           /* a watched process moved to another cgroup (v2 or v1) */
#define AW_TAMPER_BPF 4              /* bpf(2): once per process and command */

/* aw_tamper.protected: who the target is */
#define AW_PROTECT_SELF 1            /* agentwatch itself (any of its threads) */
#define AW_PROTECT_PARENT 2          /* agentwatch's parent */

#define AW_TAMPER_PATH_LEN 128

/* A watched process acting against agentwatch or its containment. */
struct aw_tamper {
	struct aw_header hdr;
	__u64 cgroup_id;    /* AW_TAMPER_CGROUP: the destination cgroup */
	__u32 kind;         /* AW_TAMPER_* */
	__u32 target_pid;   /* the process signalled, traced or moved; 0 for bpf */
	__s32 arg;          /* the signal, the ptrace request, the bpf command, the destination's level */
	__s32 result;       /* signal: the tracepoint's result; cgroup: the hierarchy id (0: v2) */
	__u32 protected;    /* AW_PROTECT_* of the target, 0 when it is neither */
	__u32 path_len;     /* bytes in path, without the NUL */
	char path[AW_TAMPER_PATH_LEN]; /* AW_TAMPER_CGROUP: the destination, relative to its hierarchy */
};

/* ---- oversight: paths that may matter written, kernel modules loaded (bpf/file.bpf.c) ---- */

/* aw_file.op: the system call family */
#define AW_FILE_OPEN 1               /* open, openat, openat2, creat: for writing (O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND) */
#define AW_FILE_RENAME 2             /* rename, renameat, renameat2: path is the destination, other the source */
#define AW_FILE_LINK 3               /* link, linkat: path is the new name, other the existing one */
#define AW_FILE_SYMLINK 4            /* symlink, symlinkat: path is the link, other what it points to */
#define AW_FILE_TRUNCATE 5           /* truncate(2) */
#define AW_FILE_UNLINK 6             /* unlink, unlinkat */
#define AW_FILE_INIT_MODULE 7        /* init_module(2): path is the module's name once loaded */
#define AW_FILE_FINIT_MODULE 8       /* finit_module(2): dir is the module file, path its name once loaded */

/* aw_file.flags */
#define AW_FILE_PATH_TRUNCATED 1u    /* path or other longer than AW_FILE_PATH_LEN - 1 */
#define AW_FILE_DIR_WALKED 2u        /* dir holds the walk (empty: the root) */
#define AW_FILE_DIR_TRUNCATED 4u     /* the walk stopped before the root: deeper or longer than dir holds */
#define AW_FILE_PATH_FAULT 8u        /* the user's path could not be read */
#define AW_FILE_MODULE_NAMED 16u     /* module:module_load named the module (path) */

#define AW_FILE_PATH_LEN 256
#define AW_FILE_DEPTH 24             /* directory levels (and mount crossings) walked */
#define AW_FILE_NAME_HASHED 32       /* longer names are never marked (userland marks none so long) */

/*
 * A watched process wrote, or tried to write, a path that may matter, or
 * loaded a kernel module. The kernel keeps only paths with a marked name
 * in them (a component userland put in aw_file_names: "etc", ".ssh",
 * ".bashrc", ...), once per process, path, call and outcome; userland
 * decides which of those matter (tracer/watched_files.py). A relative path
 * comes with the directory it is relative to, walked in the kernel (the
 * process may be gone by the time userland reads the record).
 */
struct aw_file {
	struct aw_header hdr;
	__u32 op;           /* AW_FILE_* */
	__s32 result;       /* the call's return: an fd or 0, or -errno */
	__s32 dirfd;        /* a relative path is relative to: AT_FDCWD (-100), the cwd, or this fd; finit_module: its fd */
	__u32 open_flags;   /* open: O_* flags; renameat2, linkat, unlinkat, finit_module: the call's flags */
	__u32 flags;        /* AW_FILE_* flags */
	__u32 _pad;
	__u16 path_len;     /* bytes in path, without the NUL */
	__u16 dir_len;      /* bytes used in dir */
	__u16 other_len;    /* bytes in other, without the NUL */
	__u16 _pad2;
	char path[AW_FILE_PATH_LEN];  /* as the process gave it */
	char dir[AW_FILE_PATH_LEN];   /* the directory, leaf first and NUL-separated: "cron.d\0etc\0" is /etc/cron.d */
	char other[AW_FILE_PATH_LEN]; /* rename, link: the source; symlink: the target */
};

/* ---- fleet: sandboxes appearing and going (bpf/cgroup.bpf.c, agentwatch daemon) ---- */

/* aw_cgroup.op */
#define AW_CGROUP_MKDIR 1
#define AW_CGROUP_RMDIR 2

/* aw_cgroup.flags */
#define AW_CGROUP_ATTRIBUTED 1u      /* its parent is watched: the kernel attributed it at once (agent = low 32 bits of its id) */
#define AW_CGROUP_PATH_TRUNCATED 2u

#define AW_CGROUP_PATH_LEN 256

/*
 * A cgroup of the v2 hierarchy was made or removed, by anyone (runc,
 * systemd, kubelet). The header is the process that did it, agent 0.
 */
struct aw_cgroup {
	struct aw_header hdr;
	__u64 cgroup_id;    /* kernfs id: what bpf_get_current_cgroup_id() returns for its processes */
	__u64 parent_id;
	__u32 op;           /* AW_CGROUP_* */
	__s32 level;        /* depth below the root (the root is 0) */
	__u32 flags;        /* AW_CGROUP_* flags */
	__u32 path_len;     /* bytes in path, without the NUL */
	char path[AW_CGROUP_PATH_LEN]; /* relative to the hierarchy's root, with a leading "/" */
};

#endif /* AGENTWATCH_EVENTS_H */
