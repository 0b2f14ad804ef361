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
#define AW_EVENT_TYPES 5 /* one past the last tag: size of aw_lost */

/* aw_exec.flags */
#define AW_EXEC_ARGV_TRUNCATED 1u    /* more args or bytes than the caps */
#define AW_EXEC_FILENAME_TRUNCATED 2u
#define AW_EXEC_EXECVEAT 4u          /* came in through execveat(2) */
#define AW_EXEC_ARGV_FAULT 8u        /* argv memory could not be read */

/* aw_connect.flags */
#define AW_CONNECT_NO_SOCKET 1u      /* fd did not resolve to a socket */

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
	__u32 _pad;
	__u8 saddr[16];     /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
};

#endif /* AGENTWATCH_EVENTS_H */
