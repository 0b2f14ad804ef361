"""`agentwatch doctor`: check this machine for what agentwatch needs.

Each check is a small function of a `Host` (the paths and commands it looks
at; the defaults are the real machine, tests point them at a temp dir) that
returns one `Check` row. `run_checks` prints the rows as a table and, below
it, one "fix:" line per warn/FAIL row, in table order.

A check never raises: an unexpected exception becomes a FAIL row with its
message, so the report stays readable on a machine where half of it fails.
BCC is not imported here; the load check goes through `tracer.probes.Probes`,
which loads and attaches the real agentwatch programs.

The `daemon ...` rows are the prerequisites of `agentwatch daemon`. A host
without a daemon config (no `make install`) may not need them: there a
problem that would stop the daemon is a warn; where the daemon is installed
it is a FAIL. Docker's API and SDK only ever warn (without them sandboxes are
named from their cgroup paths).
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, TextIO

from tabulate import tabulate

from . import fleetconfig, probes

OK, WARN, FAIL = "ok", "warn", "FAIL"

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
RINGBUF_MIN_KERNEL = (5, 8)
# The daemon's raw tracepoints (bpf/cgroup.bpf.c): a record for every v2 cgroup made or removed.
DAEMON_TRACEPOINTS = [("cgroup", "cgroup_mkdir"), ("cgroup", "cgroup_rmdir")]
CGROUP_KILL_KERNEL, CGROUP_FREEZE_KERNEL = (5, 14), (5, 2)
LOCKDOWN_LEVELS = ("none", "integrity", "confidentiality")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


def _load_probes() -> float:
    """Load and attach the real programs with a small ring buffer; seconds taken."""
    config = probes.ProbeConfig(ringbuf_pages=8, self_tgid=os.getpid())
    with probes.Probes(config) as loaded:
        return loaded.armed_seconds


@dataclass(frozen=True)
class Host:
    """Everything the checks read or run. None means "ask the running system"."""

    release: str | None = None  # uname -r
    euid: int | None = None
    environ: Mapping[str, str] | None = None
    os_release: str = "/etc/os-release"
    proc_status: str = "/proc/self/status"
    proc_mounts: str = "/proc/mounts"
    proc_cmdline: str = "/proc/cmdline"
    proc_config: str = "/proc/config.gz"
    boot_dir: str = "/boot"
    modules_dir: str = "/lib/modules"
    security_dir: str = "/sys/kernel/security"
    btf_path: str = probes.BTF_PATH
    python: str = sys.executable  # the interpreter whose `import bcc` is checked
    bpftool: str = "bpftool"
    dpkg_query: str = "dpkg-query"
    tracefs: Callable[[], str | None] = probes.tracefs
    tracepoint_fields: Callable[[str, str], set[str] | None] = probes.tracepoint_fields
    load_probes: Callable[[], float] = _load_probes
    daemon_config: str = fleetconfig.DEFAULT_PATH
    run_dir: str = "/run/agentwatch"  # the daemon's control socket and state file
    docker_socket: str = "/var/run/docker.sock"

    def uname_r(self) -> str:
        return self.release if self.release is not None else os.uname().release

    def uid(self) -> int:
        return self.euid if self.euid is not None else os.geteuid()

    def env(self) -> Mapping[str, str]:
        return self.environ if self.environ is not None else os.environ


CHECKS: list[Callable[[Host], Check]] = []


def check(name: str):
    """Register a check. The function returns (status, detail, fix); the
    registered callable returns a Check and turns any exception into FAIL."""

    def register(fn):
        @functools.wraps(fn)
        def wrapper(host: Host = Host()) -> Check:
            try:
                status, detail, fix = fn(host)
            except Exception as exc:  # noqa: BLE001  (a doctor must not crash)
                return Check(
                    name, FAIL, f"check crashed: {type(exc).__name__}: {exc}",
                    "this is a bug in `agentwatch doctor`; the other rows are still valid",
                )
            return Check(name, status, detail, fix)

        CHECKS.append(wrapper)
        return wrapper

    return register


# ---- helpers -----------------------------------------------------------------


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _version(release: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def kernel_config(host: Host) -> tuple[dict[str, str] | None, str]:
    """The running kernel's config as {CONFIG_X: value} ("n" for "is not set"), and where from."""
    release = host.uname_r()
    candidates = [(Path(host.boot_dir, f"config-{release}"), False), (Path(host.proc_config), True)]
    for path, gzipped in candidates:
        try:
            raw = path.read_bytes()
            text = (gzip.decompress(raw) if gzipped else raw).decode(errors="replace")
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        config = {}
        for line in text.splitlines():
            if m := re.match(r"(CONFIG_\w+)=(.*)", line):
                config[m.group(1)] = m.group(2).strip('"')
            elif m := re.match(r"# (CONFIG_\w+) is not set", line):
                config[m.group(1)] = "n"
        return config, str(path)
    return None, ""


def _cmdline(host: Host) -> dict[str, str]:
    out = {}
    for word in (_read(host.proc_cmdline) or "").split():
        if word == "--":
            break
        key, _, value = word.partition("=")
        out[key] = value
    return out


def _mount_table(host: Host) -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, options) of every line of /proc/mounts."""
    out = []
    for line in (_read(host.proc_mounts) or "").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            # /proc/mounts escapes blanks in paths as octal (\040)
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
            out.append((point, parts[2], set(parts[3].split(",")) if len(parts) >= 4 else set()))
    return out


def _mounts(host: Host) -> list[tuple[str, str]]:
    """(mount point, fstype) of every line of /proc/mounts."""
    return [(point, fstype) for point, fstype, _ in _mount_table(host)]


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None


# ---- the checks, in report order ---------------------------------------------


@check("kernel")
def check_kernel(host: Host):
    return OK, f"{host.uname_r()} ({os.uname().machine})", ""


@check("distro")
def check_distro(host: Host):
    text = _read(host.os_release)
    if text is None:
        return OK, f"unknown ({host.os_release} not readable)", ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            value = shlex.split(line.partition("=")[2]) or [""]
            return OK, value[0] or "unknown (empty PRETTY_NAME)", ""
    return OK, f"unknown (no PRETTY_NAME in {host.os_release})", ""


@check("privileges")
def check_privileges(host: Host):
    euid = host.uid()
    caps = None
    for line in (_read(host.proc_status) or "").splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
    if caps is None:
        cap_text, usable = "capabilities unknown", True
    else:
        names = [n for bit, n in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"),
                                  (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")) if caps >> bit & 1]
        usable = "CAP_SYS_ADMIN" in names or {"CAP_BPF", "CAP_PERFMON"} <= set(names)
        cap_text = "effective: " + (", ".join(names) if names else "none of CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN")
    if euid != 0:
        return FAIL, f"euid {euid}, not root; {cap_text}", "run as root: sudo agentwatch doctor"
    if not usable:
        return (
            FAIL,
            f"euid 0 but {cap_text} (a container that drops capabilities?)",
            "give the process CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), "
            "e.g. docker run --cap-add BPF --cap-add PERFMON",
        )
    return OK, f"euid 0; {cap_text}", ""


@check("BTF")
def check_btf(host: Host):
    fix = "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    if not os.path.exists(host.btf_path):
        return FAIL, f"{host.btf_path} does not exist", fix
    if not os.access(host.btf_path, os.R_OK):
        return FAIL, f"{host.btf_path} is not readable", fix
    try:
        offsets = probes.kernel_offsets(host.btf_path)
    except probes.ProbeError as exc:
        return FAIL, str(exc), fix
    return OK, f"{host.btf_path}: all {len(offsets)} struct fields agentwatch reads resolve", ""


def _tracefs(host: Host) -> tuple[str | None, str, str]:
    """(usable tracefs root or None, why not, fix)."""
    root = host.tracefs()
    if root is not None:
        return root, "", ""
    mounted = [point for point, fstype in _mounts(host) if fstype == "tracefs"]
    if mounted:
        return (None, f"mounted at {', '.join(mounted)} but not readable as euid {host.uid()}",
                "run as root: sudo agentwatch doctor")
    return None, "not mounted", "mount -t tracefs tracefs /sys/kernel/tracing"


@check("tracefs")
def check_tracefs(host: Host):
    root, why, fix = _tracefs(host)
    return (OK, root, "") if root is not None else (FAIL, why, fix)


@check("tracepoints")
def check_tracepoints(host: Host):
    root, why, fix = _tracefs(host)
    if root is None:
        return FAIL, "cannot check without tracefs (see the tracefs row)", fix
    missing = [
        f"{cat}/{event}" for cat, event in probes.TRACEPOINTS
        if not Path(root, "events", cat, event, "format").is_file()
    ]
    if missing:
        fix = "boot a kernel with CONFIG_TRACEPOINTS=y"
        if any(m.startswith("syscalls/") for m in missing):
            fix += " and CONFIG_FTRACE_SYSCALLS=y (for syscalls/*)"
        return FAIL, f"missing in {root}/events: " + ", ".join(missing), fix
    return OK, f"all {len(probes.TRACEPOINTS)} present", ""


@check("exit group_dead")
def check_group_dead(host: Host):
    fields = host.tracepoint_fields("sched", "sched_process_exit")
    if fields is None:
        return WARN, "cannot read sched/sched_process_exit/format", "see the tracefs and tracepoints rows"
    if "group_dead" in fields:
        return OK, "sched_process_exit has group_dead", ""
    return (
        WARN,
        "sched_process_exit has no group_dead: the exit of a multi-threaded\n"
        "process is approximated by the exit of its leader thread",
        "none needed; a newer kernel whose sched_process_exit has group_dead makes it exact",
    )


@check("module loads")
def check_module_loads(host: Host):
    """init_module/finit_module are watched where their tracepoints exist (bpf/file.bpf.c)."""
    root, why, fix = _tracefs(host)
    if root is None:
        return WARN, "cannot check without tracefs (see the tracefs row)", fix
    have = [f"{c}/{e}" for c, e, _fn in probes.MODULE_TRACEPOINTS if Path(root, "events", c, e, "format").is_file()]
    if len(have) == len(probes.MODULE_TRACEPOINTS):
        named = Path(root, "events", *probes.MODULE_LOAD_TRACEPOINT[:2], "format").is_file()
        return OK, "init_module and finit_module watched" + (", named by module/module_load" if named else ""), ""
    if not have:
        return OK, "kernel built without modules (no init_module/finit_module tracepoints): nothing to load", ""
    return WARN, "only " + ", ".join(have) + " exist: module loads are watched in part", "a kernel with CONFIG_MODULES=y"


@check("kprobes")
def check_kprobes(host: Host):
    config, source = kernel_config(host)
    if config is not None and "CONFIG_KPROBES" in config:
        available = config["CONFIG_KPROBES"] == "y"
        how = f"CONFIG_KPROBES={config['CONFIG_KPROBES']}" if available else "CONFIG_KPROBES is not set"
        how += f" in {source}"
    else:
        root = host.tracefs()
        available = root is not None and os.path.exists(os.path.join(root, "kprobe_events"))
        how = f"kprobe_events {'present' if available else 'absent'} in tracefs (no kernel config found)"
    state = "available" if available else "not available"
    return OK, f"not needed by agentwatch; {state}\n({how})", ""


@check("fentry/LSM")
def check_lsm(host: Host):
    config, _ = kernel_config(host)
    lsm = _read(Path(host.security_dir, "lsm"))
    if lsm is not None:
        listed = "bpf" in lsm.strip().split(",")
        where = f"{host.security_dir}/lsm: {lsm.strip()}"
    else:
        # securityfs not mounted: what the kernel was told to enable
        order = _cmdline(host).get("lsm") or (config or {}).get("CONFIG_LSM")
        built = (config or {}).get("CONFIG_BPF_LSM") == "y"
        if order is None:
            return OK, f"not used by agentwatch; LSM list unknown ({host.security_dir}/lsm not readable)", ""
        listed = built and "bpf" in order.split(",")
        key = "lsm= on the cmdline" if "lsm" in _cmdline(host) else "CONFIG_LSM"
        where = (f"from the kernel config, securityfs not mounted: CONFIG_BPF_LSM={'y' if built else 'n'}, "
                 f"bpf {'in' if 'bpf' in order.split(',') else 'not in'} {key}")
    state = "listed" if listed else "not listed"
    return OK, f"not used by agentwatch; bpf LSM {state}\n({where})", ""


@check("lockdown")
def check_lockdown(host: Host):
    text = _read(Path(host.security_dir, "lockdown"))
    if text is not None:
        match = re.search(r"\[(\w+)\]", text)
        mode, where = (match.group(1) if match else text.strip()), f"{host.security_dir}/lockdown"
    else:
        config, _ = kernel_config(host)
        forced = [lvl for lvl in LOCKDOWN_LEVELS[1:]
                  if (config or {}).get(f"CONFIG_LOCK_DOWN_KERNEL_FORCE_{lvl.upper()}") == "y"]
        wanted = _cmdline(host).get("lockdown", "")
        levels = [LOCKDOWN_LEVELS.index(x) for x in forced + [wanted] if x in LOCKDOWN_LEVELS]
        if config is None and not wanted:
            return OK, f"unknown ({host.security_dir}/lockdown not readable, no kernel config)", ""
        mode = LOCKDOWN_LEVELS[max(levels, default=0)]
        where = "from the kernel config and cmdline, securityfs not mounted"
    if mode == "confidentiality":
        return (
            WARN,
            f"confidentiality ({where}): blocks bpf_probe_read_kernel and tracefs,\n"
            "which agentwatch needs",
            "boot with lockdown=integrity or without lockdown (see man kernel_lockdown.7)",
        )
    note = {"integrity": "; allows what agentwatch uses"}.get(mode, "")
    return OK, f"{mode}{note}\n({where})", ""


def _uts_release(tree: Path) -> str | None:
    text = _read(tree / "include" / "generated" / "utsrelease.h")
    match = re.search(r'UTS_RELEASE\s+"([^"]+)"', text or "")
    return match.group(1) if match else None


def _named_release(tree: Path) -> str | None:
    """The release in a linux-headers-<release> directory name (Debian's -common tree excluded)."""
    match = re.match(r"linux-headers-(.+)", tree.resolve().name)
    return match.group(1) if match and not match.group(1).endswith("-common") else None


@check("kernel headers")
def check_headers(host: Host):
    release = host.uname_r()
    mod = Path(host.modules_dir, release)
    override = host.env().get("BCC_KERNEL_SOURCE")
    trees = [Path(override)] if override else [mod / "build", mod / "source"]
    lines = []
    for tree in trees:
        label = "BCC_KERNEL_SOURCE" if override else tree.name
        if tree.is_symlink():
            lines.append(f"{label} -> {os.readlink(tree)}" + ("" if tree.exists() else " (dangling)"))
        elif tree.is_dir():
            lines.append(f"{label}: {tree}")
        else:
            lines.append(f"{label}: missing")
    present = [t for t in trees if t.is_dir()]
    if not any((t / "include" / "linux" / "kconfig.h").is_file() for t in present):
        where = override or f"{mod}/build or {mod}/source"
        return FAIL, "\n".join(lines + [f"no kernel headers (include/linux/kconfig.h) in {where}"]), "make setup"
    # UTS_RELEASE (in the arch tree) is exact; the directory name is the fallback
    found = {v for t in present if (v := _uts_release(t))} or {v for t in present if (v := _named_release(t))}
    if not found:
        return (
            WARN, "\n".join(lines + [f"cannot tell which kernel these headers are for (running {release})"]),
            f"none needed if the programs row is ok; otherwise inspect `ls -l {mod}/`",
        )
    if release in found:
        return OK, "\n".join(lines + [f"headers match the running kernel {release}"]), ""
    headers = ", ".join(sorted(found))
    return (
        WARN,
        "\n".join(lines + [
            f"BCC compiles against {headers} headers; agentwatch reads struct",
            "fields only through BTF offsets, so this is safe",
        ]),
        f"none needed (to silence this, install headers for {release} if your distro has them)",
    )


_BCC_PROBE = """\
import bcc
try:
    import importlib.metadata as m
    print(m.version("bcc"))
except Exception:
    print("")
print(bcc.__file__)
"""


@check("bcc")
def check_bcc(host: Host):
    fix = ("apt-get install python3-bpfcc, and create the venv with --system-site-packages "
           "(`make setup` does both)")
    result = _run([host.python, "-c", _BCC_PROBE], timeout=60)
    if result is None:
        return FAIL, f"cannot run {host.python}", fix
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return FAIL, f"`import bcc` fails in {host.python}: {lines[-1]}", fix
    out = result.stdout.splitlines() + ["", ""]
    version, where = out[0].strip(), out[1].strip()
    if not version:
        dpkg = _run([host.dpkg_query, "-W", "-f=${Version}", "python3-bpfcc"])
        version = dpkg.stdout.strip() if dpkg is not None and dpkg.returncode == 0 else "version unknown"
    return OK, f"{version} ({os.path.dirname(where) or where})", ""


@check("cgroup v2")
def check_cgroup2(host: Host):
    points = [point for point, fstype in _mounts(host) if fstype == "cgroup2"]
    if not points:
        return (
            WARN, f"no cgroup2 mount in {host.proc_mounts}",
            "mount -t cgroup2 cgroup2 /sys/fs/cgroup "
            "(or at /sys/fs/cgroup/unified where cgroup v1 is mounted under /sys/fs/cgroup)",
        )
    return OK, ", ".join(points), ""


@check("GPU")
def check_gpu(host: Host):
    # Devices are found from /proc/devices; NVML gives per-process utilisation (optional).
    from . import gpu  # noqa: PLC0415

    majors = gpu.device_majors()
    found = [name for name in ("nvidia", "nvidia-uvm", "kfd", "drm") if name in majors]
    if not found and not gpu.nvidia_present():
        return OK, "no GPU driver loaded; GPU tracking idles (device opens and ioctls are still watched)", ""
    sampler = gpu.NvmlSampler()
    if sampler.available:
        return OK, f"drivers: {', '.join(found) or 'nvidia'}; NVML per-process utilisation available", ""
    return (
        WARN, f"drivers: {', '.join(found) or 'nvidia'}; no per-process utilisation: {sampler.reason}",
        "pip install 'agentwatch[nvml]' (nvidia-ml-py) in agentwatch's environment",
    )


@check("ring buffer")
def check_ringbuf(host: Host):
    release = host.uname_r()
    version = _version(release)
    need = ".".join(map(str, RINGBUF_MIN_KERNEL))
    if version is None:
        return WARN, f"cannot parse kernel version {release!r}; BPF ring buffers need >= {need}", \
            "see the programs row: it loads a ring buffer"
    if version < RINGBUF_MIN_KERNEL:
        return FAIL, f"kernel {version[0]}.{version[1]} < {need}: no BPF ring buffer", \
            f"boot a kernel >= {need}"
    return OK, f"kernel {version[0]}.{version[1]} >= {need}", ""


@check("programs")
def check_programs(host: Host):
    if host.uid() != 0:
        return WARN, "not tried: loading needs root", "run as root: sudo agentwatch doctor"
    try:
        seconds = host.load_probes()
    except probes.ProbeError as exc:
        return FAIL, str(exc), "fix the FAIL rows above, then run `agentwatch doctor` again"
    except Exception as exc:  # noqa: BLE001  (BCC raises bare Exception past ProbeError too)
        return FAIL, f"{type(exc).__name__}: {exc}", "fix the FAIL rows above, then run `agentwatch doctor` again"
    return OK, f"compiled, loaded and attached (with ring buffer) in {seconds:.2f} s", ""


@check("bpftool")
def check_bpftool(host: Host):
    path = host.env().get("PATH", os.defpath) + ":/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(host.bpftool, path=path)
    fix = "apt-get install bpftool (debugging aid only; agentwatch does not use it)"
    if found is None:
        return WARN, "not found (only used for debugging)", fix
    result = _run([found, "version"], timeout=10)
    if result is None or result.returncode != 0:
        return WARN, f"{found} does not run (`{found} version` failed)", fix
    first = (result.stdout.strip().splitlines() or [f"{found} (version unknown)"])[0]
    return OK, first, ""


# ---- the daemon's prerequisites ----------------------------------------------------


def _daemon_level(host: Host) -> str:
    """FAIL where the daemon is installed (its config exists), else WARN: the host may not need it."""
    return FAIL if os.path.exists(host.daemon_config) else WARN


def _cgroup2_options(host: Host, point: str) -> set[str]:
    """The options of the cgroup2 mount at point (the last such line: the one in force)."""
    found: set[str] = set()
    for p, fstype, options in _mount_table(host):
        if fstype == "cgroup2" and p == point:
            found = options
    return found


def _interface_file(mount: Path, name: str) -> bool | None:
    """Whether the kernel gives cgroups this file (cgroup.kill, cgroup.freeze); None: no cgroup to tell by.

    Neither file exists in the root cgroup, so a child of the root is asked.
    """
    try:
        with os.scandir(mount) as it:
            children = sorted(e.path for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return None
    if not children:
        return None
    return os.path.exists(os.path.join(children[0], name))


@check("daemon cgroups")
def check_daemon_cgroups(host: Host):
    from .cgroups import find_mount  # noqa: PLC0415

    mount = find_mount(host.proc_mounts)
    if mount is None:
        return (_daemon_level(host), f"no cgroup v2 hierarchy in {host.proc_mounts}: the daemon cannot run",
                "boot with systemd.unified_cgroup_hierarchy=1, or mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified")
    ro_fix = f"mount -o remount,rw {mount} (in a container: give it the host's cgroup tree read-write)"
    if "ro" in _cgroup2_options(host, str(mount)):
        return _daemon_level(host), f"{mount} is mounted read-only: no kill_agent, freeze_agent or moves", ro_fix
    if not os.access(mount, os.W_OK):
        if host.uid() != 0:
            return WARN, f"{mount}: not writable as euid {host.uid()} (the daemon runs as root)", \
                "run as root: sudo agentwatch doctor"
        return _daemon_level(host), f"{mount}: not writable: no kill_agent, freeze_agent or moves", ro_fix
    version = _version(host.uname_r())
    missing, lines = [], [f"{mount} writable"]
    for name, kernel, action, fallback in (
        ("cgroup.kill", CGROUP_KILL_KERNEL, "kill_agent",
         "kill_agent signals pid by pid (a fork can race it)"),
        ("cgroup.freeze", CGROUP_FREEZE_KERNEL, "freeze_agent", "freeze_agent fails (action_result failed)"),
    ):
        present = _interface_file(mount, name)
        need = ".".join(map(str, kernel))
        if present is None:  # a bare hierarchy: the kernel version tells
            present = version is not None and version >= kernel
            how = f"kernel {host.uname_r()} {'>=' if present else '<'} {need}"
        else:
            how = f"{'present' if present else 'absent'} in the cgroups"
        if present:
            lines.append(f"{name} ({action}): {how}")
        else:
            missing.append(kernel)
            lines.append(f"{name} ({action}): {how}: {fallback}")
    if missing:
        need = ".".join(map(str, max(missing)))
        return WARN, "\n".join(lines), f"boot a kernel >= {need} (cgroup.kill 5.14, cgroup.freeze 5.2)"
    return OK, "\n".join(lines), ""


@check("daemon tracepoints")
def check_daemon_tracepoints(host: Host):
    root, why, fix = _tracefs(host)
    if root is None:
        return _daemon_level(host), "cannot check without tracefs (see the tracefs row)", fix
    names = [f"{cat}/{event}" for cat, event in DAEMON_TRACEPOINTS]
    missing = [n for n in names if not Path(root, "events", n, "format").is_file()]
    if missing:
        return (_daemon_level(host), f"missing in {root}/events: {', '.join(missing)}: the daemon sees no new "
                "sandbox", "boot a kernel with CONFIG_TRACEPOINTS=y and CONFIG_CGROUPS=y")
    return OK, ", ".join(names), ""


@check("daemon run dir")
def check_daemon_run_dir(host: Host):
    path = Path(host.run_dir)
    if path.is_dir():
        if os.access(path, os.W_OK | os.X_OK):
            return OK, f"{path} writable (control socket, state file)", ""
        return _daemon_level(host) if host.uid() == 0 else WARN, \
            f"{path} is not writable as euid {host.uid()}", \
            "run as root (the daemon does)" if host.uid() != 0 else f"chmod 0755 {path} (systemd's RuntimeDirectory=)"
    if path.exists() or path.is_symlink():
        return _daemon_level(host), f"{path} exists and is not a directory", f"remove {path}; the daemon makes it"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return OK, f"{path} absent; {parent} is writable, so the daemon (or systemd) makes it", ""
    return WARN if host.uid() != 0 else _daemon_level(host), \
        f"{path} absent, and {parent} is not writable as euid {host.uid()}", \
        "run as root (the daemon does)" if host.uid() != 0 else f"make {parent} writable for root"


@check("daemon Docker API")
def check_docker_socket(host: Host):
    path = host.docker_socket
    fix = "none needed where no sandbox is a Docker container; otherwise start dockerd"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return WARN, f"no {path}: Docker sandboxes are named from their cgroup path only", fix
    if not stat.S_ISSOCK(mode):
        return WARN, f"{path} is not a socket: Docker sandboxes are named from their cgroup path only", fix
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(path)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return WARN, f"{path}: {why} (is dockerd running?): sandboxes named from their cgroup path only", \
            fix if host.uid() == 0 else "run as root: sudo agentwatch doctor"
    finally:
        sock.close()
    return OK, f"{path}: labels, names and images from Docker", ""


_DOCKER_PROBE = """\
import docker
print(getattr(docker, "__version__", ""))
print(docker.__file__)
"""


@check("daemon docker SDK")
def check_docker_sdk(host: Host):
    fix = "make setup (installs the docker package into agentwatch's venv)"
    result = _run([host.python, "-c", _DOCKER_PROBE], timeout=60)
    if result is None:
        return WARN, f"cannot run {host.python}", fix
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return WARN, f"`import docker` fails in {host.python}: {lines[-1]}\n" \
            "(the daemon then names Docker sandboxes from their cgroup path only)", fix
    out = result.stdout.splitlines() + ["", ""]
    version, where = out[0].strip() or "version unknown", out[1].strip()
    return OK, f"{version} ({os.path.dirname(where) or where})", ""


@check("daemon config")
def check_daemon_config(host: Host):
    path = host.daemon_config
    if not os.path.exists(path):
        return WARN, f"no {path}: the daemon is not installed (not needed for run and watch)", "make install"
    from .rules.loader import load as load_rules  # noqa: PLC0415
    from .rules.parser import RulesError  # noqa: PLC0415

    fix = f"fix it (agentwatch daemon --config {path} --check), then systemctl reload agentwatch"
    try:
        config = fleetconfig.load(path)
        rules = load_rules(list(config.rules) or None)
    except fleetconfig.ConfigError as exc:
        return FAIL, str(exc), fix
    except RulesError as exc:
        return FAIL, f"a rules file it names: {exc}", fix
    n = len(config.sandboxes)
    return OK, (f"{path}: {n} sandbox {'entry' if n == 1 else 'entries'}, {len(config.policies)} "
                f"{'policy' if len(config.policies) == 1 else 'policies'}, {len(rules.rules)} rules\n"
                f"control {config.control.socket}, output {config.output}"), ""


# ---- report ---------------------------------------------------------------------


def collect(host: Host | None = None) -> list[Check]:
    host = host if host is not None else Host()
    return [run(host) for run in CHECKS]


def render(rows: list[Check]) -> str:
    table = tabulate(
        [(r.name, r.status, r.detail) for r in rows],
        headers=["CHECK", "STATUS", "DETAIL"],
        tablefmt="simple",
        disable_numparse=True,
    )
    fixes: list[str] = []  # one line per warn/FAIL row; rows sharing a fix share the line
    for row in rows:
        line = f"fix: {row.fix or 'see the ' + row.name + ' row'}"
        if row.status != OK and line not in fixes:
            fixes.append(line)
    return table + "\n" + ("\n" + "\n".join(fixes) + "\n" if fixes else "")


def run_checks(stream: TextIO, host: Host | None = None) -> int:
    """Print the report on stream; 0 when no check FAILs, else 1."""
    rows = collect(host)
    stream.write(render(rows))
    stream.flush()
    return 1 if any(r.status == FAIL for r in rows) else 0
