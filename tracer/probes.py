"""BCC, and only here: compile the BPF program once, attach, drain, detach.

Everything after this module works on plain bytes and Python objects, so it
can be tested without root and fed from recordings.
"""

from __future__ import annotations

import ctypes as ct
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import bpfobject, detach, events, watched_files
from .btf import BtfError, load_btf

MAIN_SOURCE = events.BPF_DIR / "agentwatch.bpf.c"
POLICY_SOURCE = events.BPF_DIR / "policy.bpf.c"
BTF_PATH = "/sys/kernel/btf/vmlinux"

# Kernel struct members the programs read; macro OFF_<STRUCT>_<MEMBER>.
KERNEL_FIELDS = [
    ("task_struct", "pid"),
    ("task_struct", "tgid"),
    ("task_struct", "real_parent"),
    ("task_struct", "group_leader"),
    ("task_struct", "start_boottime"),
    ("task_struct", "exit_code"),
    ("task_struct", "files"),
    ("task_struct", "mm"),
    ("mm_struct", "arg_start"),
    ("mm_struct", "arg_end"),
    ("files_struct", "fdt"),
    ("fdtable", "fd"),
    ("fdtable", "max_fds"),
    ("file", "private_data"),
    ("socket", "type"),
    ("socket", "sk"),
    ("socket", "file"),
    ("sock", "__sk_common"),
    ("sock", "sk_protocol"),
    ("sock_common", "skc_num"),
    ("sock_common", "skc_rcv_saddr"),
    ("sock_common", "skc_v6_rcv_saddr"),
    ("task_struct", "fs"),  # paths written (bpf/file.bpf.c): the cwd, and dentries up to the root
    ("fs_struct", "pwd"),
    ("file", "f_path"),
    ("path", "mnt"),
    ("path", "dentry"),
    ("dentry", "d_parent"),
    ("dentry", "d_name"),
    ("qstr", "name"),
    ("vfsmount", "mnt_root"),
    ("mount", "mnt"),
    ("mount", "mnt_parent"),
    ("mount", "mnt_mountpoint"),
]

# Read only by the daemon's cgroup programs (bpf/cgroup.bpf.c, AW_FLEET).
FLEET_FIELDS = [
    ("cgroup", "kn"),
    ("cgroup", "self"),
    ("cgroup", "level"),
    ("cgroup", "root"),
    ("cgroup_root", "hierarchy_id"),
    ("cgroup_subsys_state", "parent"),
    ("cgroup_subsys_state", "cgroup"),
    ("kernfs_node", "id"),
]

# (category, event) of every tracepoint the programs attach to.
TRACEPOINTS = [
    ("syscalls", "sys_enter_execve"),
    ("syscalls", "sys_enter_execveat"),
    ("syscalls", "sys_exit_execve"),
    ("syscalls", "sys_exit_execveat"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
    ("sched", "sched_process_fork"),  # attached raw: its args name the child task
    ("syscalls", "sys_enter_connect"),
    ("syscalls", "sys_exit_connect"),
    ("sock", "inet_sock_set_state"),
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_enter_writev"),
    ("syscalls", "sys_enter_sendto"),
    ("syscalls", "sys_enter_sendmsg"),
    ("syscalls", "sys_enter_sendmmsg"),
    ("syscalls", "sys_enter_close"),
    ("syscalls", "sys_enter_openat"),  # opens: GPU device fds and paths written (bpf/file.bpf.c)
    ("syscalls", "sys_exit_openat"),
    ("syscalls", "sys_enter_openat2"),
    ("syscalls", "sys_exit_openat2"),
    ("syscalls", "sys_enter_open"),
    ("syscalls", "sys_exit_open"),
    ("syscalls", "sys_enter_creat"),
    ("syscalls", "sys_exit_creat"),
    ("syscalls", "sys_enter_rename"),  # paths written (bpf/file.bpf.c)
    ("syscalls", "sys_exit_rename"),
    ("syscalls", "sys_enter_renameat"),
    ("syscalls", "sys_exit_renameat"),
    ("syscalls", "sys_enter_renameat2"),
    ("syscalls", "sys_exit_renameat2"),
    ("syscalls", "sys_enter_link"),
    ("syscalls", "sys_exit_link"),
    ("syscalls", "sys_enter_linkat"),
    ("syscalls", "sys_exit_linkat"),
    ("syscalls", "sys_enter_symlink"),
    ("syscalls", "sys_exit_symlink"),
    ("syscalls", "sys_enter_symlinkat"),
    ("syscalls", "sys_exit_symlinkat"),
    ("syscalls", "sys_enter_truncate"),
    ("syscalls", "sys_exit_truncate"),
    ("syscalls", "sys_enter_unlink"),
    ("syscalls", "sys_exit_unlink"),
    ("syscalls", "sys_enter_unlinkat"),
    ("syscalls", "sys_exit_unlinkat"),
    ("syscalls", "sys_enter_dup"),  # GPU device fds (bpf/gpu.bpf.c) from here on
    ("syscalls", "sys_exit_dup"),
    ("syscalls", "sys_enter_dup2"),
    ("syscalls", "sys_exit_dup2"),
    ("syscalls", "sys_enter_dup3"),
    ("syscalls", "sys_exit_dup3"),
    ("syscalls", "sys_enter_fcntl"),
    ("syscalls", "sys_exit_fcntl"),
    ("syscalls", "sys_enter_ioctl"),
    ("signal", "signal_generate"),  # self-protection (bpf/guard.bpf.c) from here on
    ("syscalls", "sys_enter_ptrace"),
    ("cgroup", "cgroup_attach_task"),
    ("syscalls", "sys_enter_bpf"),
]

# Kernel module loads (bpf/file.bpf.c aw_module_*): attached where the kernel has them. A kernel
# built without CONFIG_MODULES has none of these (and nothing to load); module_load also names
# the module. (tracepoint, program)
MODULE_TRACEPOINTS = [
    ("syscalls", "sys_enter_init_module", "aw_module_init_enter"),
    ("syscalls", "sys_exit_init_module", "aw_module_exit"),
    ("syscalls", "sys_enter_finit_module", "aw_module_finit_enter"),
    ("syscalls", "sys_exit_finit_module", "aw_module_exit"),
]
MODULE_LOAD_TRACEPOINT = ("module", "module_load", "aw_module_load")

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


# The reader's tick: records are consumed at least this often (ms).
POLL_MS = 10


class ProbeError(RuntimeError):
    """The kernel side cannot be set up; the message says why and what to do."""


def tracefs() -> str | None:
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def _tracepoint_format(category: str, event: str) -> str | None:
    """The running kernel's tracefs format file of a tracepoint, or None."""
    root = tracefs()
    if root is None:
        return None
    try:
        return Path(root, "events", category, event, "format").read_text()
    except OSError:
        return None


def tracepoint_fields(category: str, event: str) -> set[str] | None:
    """Field names from the running kernel's tracefs format file."""
    text = _tracepoint_format(category, event)
    if text is None:
        return None
    return set(re.findall(r"field:[^;]*?(\w+)(?:\[\d*\])?;", text))


def tracepoint_field_offset(category: str, event: str, name: str) -> int | None:
    """Where a field of a tracepoint's record starts (tracefs format file), or None."""
    text = _tracepoint_format(category, event)
    if text is None:
        return None
    match = re.search(rf"field:[^;]*\b{re.escape(name)}(?:\[\d*\])?;\s*offset:(\d+);", text)
    return int(match.group(1)) if match else None


def module_tracepoints() -> list[tuple[str, str, str]]:
    """The module-load tracepoints this kernel has (none without CONFIG_MODULES)."""
    root = tracefs()
    if root is None:
        return []
    return [t for t in MODULE_TRACEPOINTS if Path(root, "events", t[0], t[1], "format").is_file()]


def expand_includes(path: Path) -> str:
    """Inline local `#include "..."` lines into one text.

    BCC generates tracepoint argument structs only for probes it sees in the
    main text, so the per-concern files are pasted in rather than included.
    """
    lines = []
    for line in path.read_text().splitlines():
        match = re.match(r'\s*#include\s+"([^"]+)"', line)
        if match:
            lines.append(f"/* ---- {match.group(1)} ---- */")
            lines.append(expand_includes(path.parent / match.group(1)))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def kernel_offsets(btf_path: str = BTF_PATH, fields=KERNEL_FIELDS) -> dict[str, int]:
    try:
        btf = load_btf(btf_path)
        return {
            f"OFF_{s.upper()}_{m.upper()}": btf.member_offset(s, m) for s, m in fields
        }
    except (OSError, BtfError) as exc:
        raise ProbeError(
            f"cannot read kernel struct offsets from {btf_path}: {exc} "
            "(agentwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
        ) from None


@dataclass(frozen=True)
class ProbeConfig:
    host_wide: bool = False
    ringbuf_pages: int = 1024  # power of two; 4 MiB
    self_tgid: int = 0
    cgroups: bool = False      # membership also by cgroup id (run --contain, watch --cgroup)
    guard_kill: bool = False   # kill, in the kernel, a watched process that SIGKILLs/SIGSTOPs agentwatch
    fleet: bool = False        # the daemon: cgroup mkdir/rmdir records, sandboxes attributed at birth
    cgroups_max: int = 64      # entries of the cgroup membership map (the daemon: one per sandbox)
    # close() hands the kernel's slow unregistering (~2 s) to a process of its own (tracer/detach.py):
    # for commands about to exit, not for a process that needs the programs gone when close() returns.
    detach_in_background: bool = False


def build_cflags(config: ProbeConfig, offsets: dict[str, int], exit_fields: set[str] | None,
                 module_name_at: int | None = None) -> list[str]:
    """module_name_at: where module:module_load's name (__data_loc) is, when the kernel has it."""
    if config.ringbuf_pages <= 0 or config.ringbuf_pages & (config.ringbuf_pages - 1):
        raise ProbeError(f"ring buffer pages must be a power of two, not {config.ringbuf_pages}")
    flags = [f"-I{events.BPF_DIR}"] + [f"-D{k}={v}" for k, v in sorted(offsets.items())]
    # What changes from run to run is not compiled in, so that one compiled object serves
    # every run of a mode (tracer/bpfobject.py): agentwatch's tgid is a placeholder written
    # over at load, and the two map sizes are given when the maps are made (map_sizes()).
    flags += [
        f"-DAW_RINGBUF_PAGES={ProbeConfig.ringbuf_pages}",
        f"-DAW_HOST_WIDE={1 if config.host_wide else 0}",
        f"-DAW_SELF_TGID={bpfobject.SELF_TGID_PLACEHOLDER}",
        f"-DAW_CGROUP_MEMBERSHIP={1 if config.cgroups else 0}",
        f"-DAW_GUARD_KILL={1 if config.guard_kill else 0}",
        f"-DAW_FLEET={1 if config.fleet else 0}",
        f"-DAW_CGROUPS_MAX={ProbeConfig.cgroups_max}",
    ]
    if exit_fields and "group_dead" in exit_fields:
        flags.append("-DAW_EXIT_HAS_GROUP_DEAD=1")
    if module_name_at is not None:
        flags += ["-DAW_MODULE_LOAD_TP=1", f"-DAW_MODULE_LOAD_NAME_AT={module_name_at}"]
    return flags


def program_text() -> str:
    return expand_includes(MAIN_SOURCE)


def map_sizes(config: ProbeConfig) -> dict[str, int]:
    """The per-run map sizes build_cflags leaves out of the compile: map name -> max_entries."""
    return {"aw_events": config.ringbuf_pages * os.sysconf("SC_PAGE_SIZE"), "aw_cgroups": config.cgroups_max}


def _detach_tracepoints(bpf) -> None:
    """Detach every tracepoint at once, not one after the other.

    Each detach waits for the kernel to unregister the probe (about 70 ms
    here): BCC's cleanup, one by one, took 2.4 s to stop. Threads let the
    waits overlap (ctypes drops the GIL); whatever fails is left to cleanup.
    """
    names = list(bpf.tracepoint_fds)
    if not names:
        return

    def detach(name: bytes) -> None:
        try:
            bpf.detach_tracepoint(name)
        except Exception:  # noqa: BLE001  (BCC raises bare Exception; cleanup retries it)
            pass

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        list(pool.map(detach, names))


class Probes:
    """The loaded programs and their maps. Use as a context manager."""

    def __init__(self, config: ProbeConfig):
        if os.geteuid() != 0:
            raise ProbeError("agentwatch needs root (CAP_BPF and CAP_PERFMON) to load its probes")
        if tracefs() is None:
            raise ProbeError(
                "tracefs is not mounted: run `mount -t tracefs tracefs /sys/kernel/tracing`"
            )
        try:
            import bcc  # noqa: F401, PLC0415  (compiles, and its libbcc loads: tracer/bpfobject.py)
        except ImportError:
            raise ProbeError(
                "the bcc Python module is missing: run `make setup` "
                "(apt-get install python3-bpfcc, venv with --system-site-packages)"
            ) from None
        self.config = config
        offsets = kernel_offsets(fields=KERNEL_FIELDS + (FLEET_FIELDS if config.fleet else []))
        name_at = tracepoint_field_offset(*MODULE_LOAD_TRACEPOINT[:2], "name")
        self.cflags = build_cflags(config, offsets, tracepoint_fields("sched", "sched_process_exit"), name_at)
        started = time.monotonic()
        try:
            obj, self.from_cache = bpfobject.compiled(program_text(), self.cflags)
        except Exception as exc:  # BCC raises bare Exception for compile errors
            raise ProbeError(f"cannot compile the BPF programs: {exc}") from None
        self.compile_seconds = 0.0 if self.from_cache else time.monotonic() - started
        try:
            self._bpf = bpfobject.LoadedObject(
                obj, constants={bpfobject.SELF_TGID_PLACEHOLDER: config.self_tgid}, max_entries=map_sizes(config))
            self._bpf.autoload()
        except (bpfobject.ObjectError, OSError) as exc:
            bpf = getattr(self, "_bpf", None)
            if bpf is not None:
                bpf.cleanup()
            raise ProbeError(f"cannot load the BPF programs: {exc}") from None
        try:
            self._arm_files(name_at is not None)
        except Exception as exc:  # BCC raises bare Exception for load and attach errors
            self._bpf.cleanup()
            raise ProbeError(f"cannot load the file-write programs: {exc}") from None
        self.armed_seconds = time.monotonic() - started
        self._batch: list[bytes] = []
        self._watched = self._bpf[b"aw_watched"]
        self._lost = self._bpf[b"aw_lost"]
        self._stats = self._bpf[b"aw_stats"]
        batch = self._batch

        def on_record(_ctx, data, size):
            # Copy and return 0 at once: data is only valid during the call,
            # and BCC 0.26 takes a slow path when the callback returns None.
            batch.append(ct.string_at(data, size))
            return 0

        self._on_record = on_record  # keep a reference: BCC holds only a C pointer
        self._bpf[b"aw_events"].open_ring_buffer(on_record)

    def _arm_files(self, module_load: bool) -> None:
        """bpf/file.bpf.c: the marked names, the one program every exit probe tail-calls, module loads."""
        names = self._bpf[b"aw_file_names"]
        for h in watched_files.marked_hashes():
            names[ct.c_uint64(h)] = ct.c_uint8(1)
        finish = self._bpf.load_func(b"aw_file_finish", bpfobject.PROG_TRACEPOINT)
        self._bpf[b"aw_file_tail"][ct.c_int(0)] = ct.c_int(finish.fd)
        self.module_tracepoints = [f"{c}:{e}" for c, e, _fn in module_tracepoints()]
        for category, event, fn in module_tracepoints():
            self._bpf.attach_tracepoint(tp=f"{category}:{event}".encode(), fn_name=fn.encode())
        if module_load:
            c, e, fn = MODULE_LOAD_TRACEPOINT
            self._bpf.attach_tracepoint(tp=f"{c}:{e}".encode(), fn_name=fn.encode())
            self.module_tracepoints.append(f"{c}:{e}")

    def poll(self, timeout_ms: int = POLL_MS) -> list[bytes]:
        """Records that arrived; if none, wait timeout_ms and look again.

        The programs write without waking us (AW_RB_FLAGS in bpf/common.h),
        so this consumes on a tick rather than blocking in epoll.
        """
        self._bpf.ring_buffer_consume()
        if not self._batch and timeout_ms > 0:
            time.sleep(timeout_ms / 1000)
            self._bpf.ring_buffer_consume()
        out = self._batch[:]
        self._batch.clear()
        return out

    def watch(self, tgid: int, agent_id: int) -> None:
        self._watched[ct.c_uint32(tgid)] = ct.c_uint32(agent_id)

    def unwatch(self, tgid: int) -> None:
        try:
            del self._watched[ct.c_uint32(tgid)]
        except KeyError:
            pass

    def watch_cgroup(self, cgroup_id: int, agent_id: int) -> None:
        """Processes in this cgroup (or below it) belong to the agent (needs ProbeConfig.cgroups)."""
        self._bpf[b"aw_cgroups"][ct.c_uint64(cgroup_id)] = ct.c_uint32(agent_id)
        self._membership_changed()

    def _membership_changed(self) -> None:
        """After a cgroup joins: the kernel's "outside every agent" answers (bpf/common.h
        aw_outside) are asked again, so processes already in that cgroup join at their next
        probe. The kernel's own bumps (cgroup.bpf.c) add 1 to the low half while this reads
        and writes, so this moves the high half on: a value never used before either way."""
        gen = self._bpf[b"aw_membership_gen"]
        old = gen[ct.c_int(0)].value
        gen[ct.c_int(0)] = ct.c_uint64((((old >> 32) + 1) << 32) & 0xFFFFFFFFFFFFFFFF)

    def unwatch_cgroup(self, cgroup_id: int) -> None:
        try:
            del self._bpf[b"aw_cgroups"][ct.c_uint64(cgroup_id)]
        except KeyError:
            pass

    def watch_cgroup_children(self, cgroup_id: int) -> None:
        """New cgroups made directly below this one are attributed at birth (bpf/cgroup.bpf.c)."""
        self._bpf[b"aw_cgroup_parents"][ct.c_uint64(cgroup_id)] = ct.c_uint32(1)

    def unwatch_cgroup_children(self, cgroup_id: int) -> None:
        try:
            del self._bpf[b"aw_cgroup_parents"][ct.c_uint64(cgroup_id)]
        except KeyError:
            pass

    def protect(self, pids: dict[int, int]) -> None:
        """pid -> events.PROTECT_*: signals and ptraces aimed at these are tamper records."""
        table = self._bpf[b"aw_protected"]
        for pid, kind in pids.items():
            table[ct.c_uint32(pid)] = ct.c_uint32(kind)

    def agent_of_tgid(self, tgid: int) -> int:
        """The agent the kernel holds this process in, 0 if none."""
        try:
            return self._watched[ct.c_uint32(tgid)].value
        except KeyError:
            return 0

    def members(self, agent_id: int) -> list[int]:
        """The tgids the kernel holds in an agent right now."""
        return [k.value for k, v in self._watched.items() if v.value == agent_id]

    def lost_counts(self) -> dict[str, int]:
        """Failed ring buffer writes since load, per event type."""
        out = {}
        for kind, name in events.EVENT_NAMES.items():
            out[name] = sum(self._lost[ct.c_int(kind)])
        return out

    def stats(self) -> dict[str, int]:
        return {name: sum(self._stats[ct.c_int(i)]) for i, name in events.STAT_NAMES.items()}

    # GPU maps (bpf/gpu.bpf.c); tracer/gpu.py gives the numbers their meaning.

    def gpu_counts(self) -> dict[tuple[int, int, int, int], int]:
        """(tgid, devclass, op, detail) -> cumulative count (bytes for MEM_BYTES), summed over CPUs."""
        out = {}
        for k, v in self._bpf[b"aw_gpu_counts"].items():
            out[(k.tgid, k.devclass, k.op, k.detail)] = sum(v)
        return out

    def gpu_forget(self, tgid: int, count_keys: list[tuple[int, int, int, int]]) -> None:
        """Drop a gone process's counters and fd classes (BPF cannot delete by prefix)."""
        counts, fds = self._bpf[b"aw_gpu_counts"], self._bpf[b"aw_gpu_fds"]
        for tg, devclass, op, detail in count_keys:
            key = counts.Key(tgid=tg, devclass=devclass, op=op, detail=detail)
            try:
                del counts[key]
            except KeyError:
                pass
        for k in [k for k in fds.keys() if k.tgid == tgid]:
            try:
                del fds[k]
            except KeyError:
                pass

    def gpu_set_fd(self, tgid: int, fd: int, devclass: int) -> None:
        """What the userland resolver found an fd to be."""
        fds = self._bpf[b"aw_gpu_fds"]
        fds[fds.Key(tgid=tgid, fd=fd)] = ct.c_uint32(devclass)

    def gpu_fds(self, tgid: int) -> dict[int, int]:
        return {k.fd: v.value for k, v in self._bpf[b"aw_gpu_fds"].items() if k.tgid == tgid}

    def gpu_drop_fd(self, tgid: int, fd: int) -> None:
        fds = self._bpf[b"aw_gpu_fds"]
        try:
            del fds[fds.Key(tgid=tgid, fd=fd)]
        except KeyError:
            pass

    def gpu_set_drm_driver(self, minor: int, driver: int) -> None:
        self._bpf[b"aw_drm_driver"][ct.c_uint32(minor)] = ct.c_uint32(driver)

    def close(self) -> None:
        bpf, self._bpf = getattr(self, "_bpf", None), None
        if bpf is not None:
            handoff = detach.hand_off(bpf.perf_fds()) if self.config.detach_in_background else None
            self.detacher_pid = handoff.pid if handoff else None
            if handoff is None:
                _detach_tracepoints(bpf)
            bpf.cleanup()
            if handoff is not None:
                handoff.release()  # ours are closed: its copies are the last, and its exit the wait

    def __enter__(self) -> "Probes":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------
# Containment: the egress policy programs, a second small BPF object.

# (program in policy.bpf.c, BPFAttachType member)
POLICY_HOOKS = (
    ("aw_policy_connect4", "CGROUP_INET4_CONNECT"),
    ("aw_policy_connect6", "CGROUP_INET6_CONNECT"),
    ("aw_policy_sendmsg4", "CGROUP_UDP4_SENDMSG"),
    ("aw_policy_sendmsg6", "CGROUP_UDP6_SENDMSG"),
)
# enum bpf_attach_type (linux/bpf.h)
ATTACH_TYPES = {"CGROUP_INET4_CONNECT": 10, "CGROUP_INET6_CONNECT": 11,
                "CGROUP_UDP4_SENDMSG": 14, "CGROUP_UDP6_SENDMSG": 15}
POLICY_RULES = 64  # AW_POL_RULES
BPF_F_ALLOW_MULTI = 2


def _require_policy_capabilities() -> None:
    if os.geteuid() != 0:
        raise ProbeError("containment needs root (CAP_BPF, CAP_NET_ADMIN, write access to cgroupfs)")
    try:
        import bcc  # noqa: F401, PLC0415
    except ImportError:
        raise ProbeError("the bcc Python module is missing: run `make setup`") from None


def _policy_program() -> tuple[str, list[str]]:
    """bpf/policy.bpf.c's text and flags: what its compile (and its cache key) depends on."""
    cflags = [f"-I{events.BPF_DIR}"] + [f"-D{k}={v}" for k, v in sorted(kernel_offsets().items())]
    return expand_includes(POLICY_SOURCE), cflags


class PolicyProbes:
    """bpf/policy.bpf.c: compiled and loaded, then filled from a policy, then attached to one cgroup.

    A separate object so that runs without --contain never compile it (see
    the comment at the top of policy.bpf.c). Its maps are filled completely
    before anything is attached, and when one of the four programs fails to
    attach the ones already attached are detached again: a policy is
    enforced whole or not at all.
    """

    @staticmethod
    def compile_ahead() -> "bpfobject.Ahead | None":
        """Start compiling the policy programs in a child process (None: cached already).

        For a run that needs both objects: the main program compiles here
        meanwhile (on a cold cache that halves --contain's start-up on two
        CPUs). Call before any thread starts; hand the result to PolicyProbes.
        """
        _require_policy_capabilities()
        return bpfobject.compile_ahead(*_policy_program())

    def __init__(self, ahead: "bpfobject.Ahead | None" = None) -> None:
        """ahead: PolicyProbes.compile_ahead()'s, started before the main program's compile."""
        _require_policy_capabilities()
        text, cflags = _policy_program()
        started = time.monotonic()
        try:
            obj, self.from_cache = bpfobject.compiled(text, cflags, ahead=ahead)
        except Exception as exc:  # BCC raises bare Exception for compile errors
            raise ProbeError(f"cannot compile the egress policy programs: {exc}") from None
        try:
            self._bpf = bpfobject.LoadedObject(obj)
            self._fns = [
                (self._bpf.load_func(name, bpfobject.PROG_CGROUP_SOCK_ADDR, attach_type=ATTACH_TYPES[kind]),
                 ATTACH_TYPES[kind])
                for name, kind in POLICY_HOOKS
            ]
        except (bpfobject.ObjectError, OSError) as exc:
            bpf = getattr(self, "_bpf", None)
            if bpf is not None:
                bpf.cleanup()
            raise ProbeError(f"cannot load the egress policy programs: {exc}") from None
        self.armed_seconds = time.monotonic() - started
        self._attached: list = []
        self._cgroup_fd: int | None = None
        self._more: dict[str, int] = {}  # the daemon's sandboxes: cgroup path -> fd (attach_more)
        self.filled = False
        self._batch: list[bytes] = []
        batch = self._batch

        def on_record(_ctx, data, size):
            batch.append(ct.string_at(data, size))
            return 0

        self._on_record = on_record
        self._bpf[b"aw_blocks"].open_ring_buffer(on_record)

    def fill(self, tables, agent_id: int, audit: bool = False) -> None:
        """The policy's tables (tracer.policy.KernelTables) into the maps; `conf` last, which arms them.

        audit: report what the policy would deny and deny nothing (--dry-run).
        """
        b = self._bpf
        for name, entries in ((b"aw_pol_v4", tables.v4), (b"aw_pol_v6", tables.v6)):
            trie = b[name]
            for (plen, addr), mask in entries.items():
                k = trie.Key()
                k.prefixlen = plen
                for i, byte in enumerate(addr):
                    k.addr[i] = byte
                trie[k] = ct.c_uint64(mask)
        ports = b[b"aw_pol_ports"]
        for port, mask in tables.ports.items():
            ports[ct.c_uint16(port)] = ct.c_uint64(mask)
        conf = b[b"aw_pol_conf"]
        c = conf.Leaf()
        c.active, c.deny, c.any_addr, c.any_port = tables.active, tables.deny, tables.any_addr, tables.any_port
        for i, mask in enumerate(tables.proto):
            c.proto[i] = mask
        c.default_deny, c.agent_id, c.nranges = int(tables.default_deny), agent_id, len(tables.ranges)
        c.audit = int(audit)
        for i, (lo, hi, mask) in enumerate(tables.ranges):
            c.ranges[i].lo, c.ranges[i].hi, c.ranges[i].rules = lo, hi, mask
        conf[ct.c_int(0)] = c  # until now `active` was 0: every lookup allowed
        self.filled = True

    def attach(self, cgroup_path, multi: bool = False) -> None:
        """Enforce on the cgroup and below. multi: beside programs others attached there (systemd's).

        Without multi, nothing below the cgroup may attach programs of these
        types: an agent that makes a sub-cgroup cannot override the policy.
        """
        if not self.filled:
            raise ProbeError("the egress policy is not filled in: refusing to attach an empty one")
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        self._cgroup_fd = fd
        try:
            for fn, kind in self._fns:
                self._bpf.attach_func(fn, fd, kind, BPF_F_ALLOW_MULTI if multi else 0)
                self._attached.append((fn, kind))
        except Exception as exc:
            self.detach()
            raise ProbeError(f"cannot attach the egress policy to {cgroup_path}: {exc}") from None

    def attach_more(self, cgroup_path) -> None:
        """The daemon: the same policy on one more cgroup (a sandbox), beside programs others attached."""
        if not self.filled:
            raise ProbeError("the egress policy is not filled in: refusing to attach an empty one")
        key = str(cgroup_path)
        if key in self._more:
            return
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        done = []
        try:
            for fn, kind in self._fns:
                self._bpf.attach_func(fn, fd, kind, BPF_F_ALLOW_MULTI)
                done.append((fn, kind))
        except Exception as exc:
            for fn, kind in done:
                try:
                    self._bpf.detach_func(fn, fd, kind)
                except Exception:  # noqa: BLE001
                    pass
            os.close(fd)
            raise ProbeError(f"cannot attach the egress policy to {cgroup_path}: {exc}") from None
        self._more[key] = fd

    def detach_from(self, cgroup_path) -> None:
        """Undo attach_more; for a removed cgroup, only its fd is left to close."""
        fd = self._more.pop(str(cgroup_path), None)
        if fd is None:
            return
        for fn, kind in self._fns:
            try:
                self._bpf.detach_func(fn, fd, kind)
            except Exception:  # noqa: BLE001  (the cgroup is gone, and its attachments with it)
                pass
        os.close(fd)

    @property
    def attached_cgroups(self) -> list[str]:
        return sorted(self._more)

    def detach(self) -> None:
        for path in list(getattr(self, "_more", {})):
            self.detach_from(path)
        fd, self._cgroup_fd = self._cgroup_fd, None
        attached, self._attached = self._attached, []
        for fn, kind in attached:
            try:
                self._bpf.detach_func(fn, fd, kind)
            except Exception:  # the cgroup is gone, and its attachments with it
                pass
        if fd is not None:
            os.close(fd)

    def leave_attached(self) -> None:
        """Keep enforcing after agentwatch exits (the cgroup still holds processes)."""
        fd, self._cgroup_fd = self._cgroup_fd, None
        self._attached = []
        if fd is not None:
            os.close(fd)

    @property
    def attached(self) -> bool:
        return bool(self._attached)

    def poll(self, timeout_ms: int = 0) -> list[bytes]:
        self._bpf.ring_buffer_poll(timeout_ms)
        out = self._batch[:]
        self._batch.clear()
        return out

    def denied(self) -> tuple[list[int], int, int]:
        """Denials per rule index, by the default, and denial records lost (ring buffer full)."""
        t = self._bpf[b"aw_pol_denied"]
        per = [sum(t[ct.c_int(i)]) for i in range(POLICY_RULES + 2)]
        return per[:POLICY_RULES], per[POLICY_RULES], per[POLICY_RULES + 1]

    def close(self) -> None:
        self.detach()
        bpf, self._bpf = getattr(self, "_bpf", None), None
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> "PolicyProbes":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
