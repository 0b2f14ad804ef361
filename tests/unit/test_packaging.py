"""The daemon's packaging: packaging/agentwatch.service, packaging/agentwatch.yaml, scripts/install.sh.

No root and no running systemd needed: the unit is checked offline with
`systemd-analyze verify`, the config with tracer.fleetconfig (its policy path
pointed at this repo's policies/), and install.sh installs below a DESTDIR.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tracer import fleetconfig
from tracer.sandboxes import classify

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging/agentwatch.service"
CONFIG = REPO / "packaging/agentwatch.yaml"
INSTALL = REPO / "scripts/install.sh"
POLICY = REPO / "policies/rl-sandbox.yaml"
INSTALLED_POLICY = "/etc/agentwatch/policies/rl-sandbox.yaml"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or shutil.which("systemd-analyze", path="/usr/bin:/bin")

# The capabilities the daemon needs (the unit's comment says why each one).
CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYSLOG",
        "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_KILL", "CAP_CHOWN"}


def entry_point() -> str:
    """An executable to stand for @AGENTWATCH@: this checkout's agentwatch, else this interpreter."""
    candidate = Path(sys.executable).parent / "agentwatch"
    return str(candidate) if os.access(candidate, os.X_OK) else sys.executable


def substituted(text: str, exe: str) -> str:
    out = text.replace("@AGENTWATCH@", exe)
    assert "@AGENTWATCH@" not in out
    return out


def settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting of a unit file, in order; repeated keys kept."""
    out, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def values(text: str, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in settings(text) if s == section and k == key]


# ---- (a) systemd-analyze verify ----------------------------------------------------------

# What verify may print that is about the machine, not about a unit. On the development machine
# (systemd 252, systemd not PID 1) verify prints nothing at all for a good unit; these are the
# lines other machines without a running systemd were seen to add. Anything else fails the test.
ENVIRONMENT_NOISE = (
    re.compile(r"^System has not been booted with systemd as init system \(PID 1\)\. Can't operate\.$"),
    re.compile(r"^Failed to connect to bus: (No such file or directory|Host is down)$"),
)
# A line about another unit the verify loaded as a dependency (Before=docker.service, ...): that
# unit's problem, not ours, e.g. "/lib/systemd/system/docker.service:20: Unknown key ...".
_OTHER_UNIT = re.compile(r"^(?:\S*/)?(?P<unit>[\w@:.\\-]+\.(?:service|socket|target|mount|slice|scope|timer|path|"
                         r"device|swap|automount))(?::\d+)?: ")


def verify_problems(unit_path: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    """The lines of `systemd-analyze verify` about this unit (or unexplained), and the run itself."""
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit_path)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=unit_path.parent)
    problems = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if not line.strip() or any(p.match(line) for p in ENVIRONMENT_NOISE):
            continue
        m = _OTHER_UNIT.match(line)
        if m and m.group("unit") != unit_path.name:
            continue
        problems.append(line)
    return problems, proc


@pytest.fixture
def unit_file(tmp_path) -> Path:
    path = tmp_path / "agentwatch.service"  # verify wants the unit's own name
    path.write_text(substituted(UNIT.read_text(), entry_point()))
    return path


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_verify_reports_nothing_about_the_unit(unit_file):
    problems, proc = verify_problems(unit_file)
    assert problems == [], "\n".join(problems)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_the_verify_check_catches_a_broken_unit(unit_file):
    # verify exits 0 on an unknown key or a bad value ("..., ignoring"): its output is what counts
    text = unit_file.read_text()
    for good, bad in (("NoNewPrivileges=yes", "NoNewPrivilege=yes"), ("Nice=-5", "Nice=-50"),
                      ("@swap", "@swapp")):
        assert good in text
        text = text.replace(good, bad)
    unit_file.write_text(text)
    problems, _ = verify_problems(unit_file)
    joined = "\n".join(problems)
    assert "Unknown key 'NoNewPrivilege'" in joined  # (the wording of systemd 252)
    assert "Nice priority out of range" in joined
    assert "@swapp" in joined

    unit_file.write_text(UNIT.read_text())  # the placeholder itself is no command
    problems, _ = verify_problems(unit_file)
    assert any("AGENTWATCH@" in p for p in problems), problems


# ---- (b) the shipped config ----------------------------------------------------------------


def config_copy(tmp_path: Path) -> Path:
    text = CONFIG.read_text()
    assert text.count(INSTALLED_POLICY) >= 3  # install.sh puts policies/rl-sandbox.yaml there
    path = tmp_path / "agentwatch.yaml"
    path.write_text(text.replace(INSTALLED_POLICY, str(POLICY)))
    return path


def test_shipped_config_parses_with_the_repo_policy(tmp_path):
    path = config_copy(tmp_path)
    config = fleetconfig.parse(path.read_text(), str(path), tmp_path)
    patterns = [p.text for c in config.sandboxes for p in c.patterns]
    assert patterns == ["system.slice/docker-*.scope", "docker/*", "kubepods*/**/cri-containerd-*.scope",
                        "agentwatch.slice/*"]
    assert {c.on_alert for c in config.sandboxes} == {"rule"}
    assert {c.policy for c in config.sandboxes} == {str(POLICY)} and list(config.policies) == [str(POLICY)]
    assert config.policies[str(POLICY)].name == "rl-sandbox"
    assert not any(c.dry_run for c in config.sandboxes)
    # no control group: one that does not exist on the host makes the config fail
    assert config.control.group is None and config.control.socket == fleetconfig.DEFAULT_SOCKET
    assert config.output == "/var/log/agentwatch/records.jsonl"  # the unit's LogsDirectory=
    assert config.state == "/run/agentwatch/state"  # the unit's RuntimeDirectory=
    assert config.rules == ()  # agentwatch's own rules/


def test_shipped_config_documents_what_it_does_not_enable():
    text = CONFIG.read_text()
    commented = [line.strip() for line in text.splitlines() if line.lstrip().startswith("#")]
    assert "#     - system.slice/rollout@*.service" in commented
    assert "# group: agentwatch" in commented
    for word in ("rule", "report", "kill_process", "kill_agent", "freeze_agent", "min_severity", "labels",
                 "dry_run", "`**`", "runtime:", "policy:"):
        assert word in text, word


def test_shipped_patterns_classify_real_cgroup_paths(tmp_path):
    path = config_copy(tmp_path)
    classes = list(fleetconfig.parse(path.read_text(), str(path), tmp_path).sandboxes)
    cid, pod = "4f" * 32, "0d9f5a7e_3c1b_4c8e_9a55_8b1d2e3f4a5b"
    sandboxes = [
        f"/system.slice/docker-{cid}.scope",                       # Docker, systemd driver
        f"/docker/{cid}",                                          # Docker, cgroupfs driver
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/cri-containerd-{cid}.scope",
        f"/kubepods.slice/kubepods-pod{pod}.slice/cri-containerd-{cid}.scope",   # Guaranteed QoS
        "/agentwatch.slice/rollout-7",                             # made by a harness
    ]
    for p in sandboxes:
        assert classify(p, classes)[0] == "sandbox", p
    for p in ("/system.slice/ssh.service", "/user.slice/user-1000.slice", "/init.scope",
              "/system.slice/rollout@7.service",                   # only the commented example
              "/agentwatch.slice/agent-3f2a"):                     # `run --contain`'s own cgroup
        assert classify(p, classes)[0] is None, p
    assert classify("/kubepods.slice/kubepods-burstable.slice", classes)[0] == "parent"


def test_shipped_config_passes_the_daemon_check(tmp_path):
    path = config_copy(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "tracer.cli", "daemon", "--config", str(path), "--check"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ok: {path}: 3 sandbox patterns, 1 policies, ")


# ---- (c) scripts/install.sh with DESTDIR ----------------------------------------------------------


@pytest.fixture
def fake_systemctl(tmp_path) -> tuple[dict, Path]:
    """An environment whose PATH starts with a systemctl that only logs: DESTDIR must never call it."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    tool = bin_dir / "systemctl"
    tool.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}, log


def install(dest: Path, env: dict, *args: str, exe: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120,
                          env={**env, "DESTDIR": str(dest), "AGENTWATCH": exe or entry_point()})
    for line in (proc.stdout + proc.stderr).splitlines():
        assert line.startswith("install: "), line
    return proc


def test_install_into_destdir(tmp_path, fake_systemctl):
    env, log = fake_systemctl
    dest = tmp_path / "root"
    exe = entry_point()
    proc = install(dest, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    config = dest / "etc/agentwatch/agentwatch.yaml"
    assert config.read_text() == CONFIG.read_text()
    assert (dest / INSTALLED_POLICY.lstrip("/")).read_text() == POLICY.read_text()
    unit = dest / "etc/systemd/system/agentwatch.service"
    text = unit.read_text()
    assert text == substituted(UNIT.read_text(), exe)
    assert values(text, "ExecStart") == [f"{exe} daemon --config /etc/agentwatch/agentwatch.yaml"]
    assert values(text, "ExecStartPre") == [f"{exe} daemon --config /etc/agentwatch/agentwatch.yaml --check"]
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    logs = dest / "var/log/agentwatch"
    assert logs.is_dir() and stat.S_IMODE(logs.stat().st_mode) == 0o750
    assert not log.exists(), log.read_text()  # no systemctl with DESTDIR
    assert f"install: config: installed {config}" in proc.stdout.splitlines()
    assert "systemctl not run" in proc.stdout


def test_a_second_install_keeps_the_users_config(tmp_path, fake_systemctl):
    env, log = fake_systemctl
    dest = tmp_path / "root"
    assert install(dest, env).returncode == 0
    config = dest / "etc/agentwatch/agentwatch.yaml"
    policy = dest / INSTALLED_POLICY.lstrip("/")
    unit = dest / "etc/systemd/system/agentwatch.service"
    mine = config.read_text().replace("on_alert: rule", "on_alert: report") + "# my site\n"
    config.write_text(mine)
    policy.write_text(policy.read_text() + "# my allowlist\n")
    unit.write_text("stale\n")

    proc = install(dest, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert config.read_text() == mine  # never overwritten
    assert policy.read_text().endswith("# my allowlist\n")
    assert f"install: config: kept your {config} (an existing file is never overwritten; the shipped one is " \
           f"{CONFIG})" in proc.stdout.splitlines()
    assert "install: policy: kept your" in proc.stdout
    assert unit.read_text() == substituted(UNIT.read_text(), entry_point())  # the unit is agentwatch's own
    assert not log.exists()

    proc = install(dest, env)
    assert "is up to date" in proc.stdout and "installed" not in proc.stdout


def test_uninstall_from_destdir_keeps_config_and_records(tmp_path, fake_systemctl):
    env, log = fake_systemctl
    dest = tmp_path / "root"
    assert install(dest, env).returncode == 0
    proc = install(dest, env, "--uninstall")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (dest / "etc/systemd/system/agentwatch.service").exists()
    assert (dest / "etc/agentwatch/agentwatch.yaml").is_file() and (dest / "var/log/agentwatch").is_dir()
    assert "install: kept " in proc.stdout
    assert not log.exists()


def test_install_refuses_a_path_systemd_would_misread(tmp_path, fake_systemctl):
    env, _ = fake_systemctl
    odd = tmp_path / "my checkout" / "agentwatch"
    odd.parent.mkdir()
    odd.write_text("#!/bin/sh\n")
    odd.chmod(0o755)
    proc = install(tmp_path / "root", env, exe=str(odd))
    assert proc.returncode == 1 and "install: ERROR: the unit cannot run" in proc.stderr
    assert not (tmp_path / "root/etc/systemd/system/agentwatch.service").exists()

    proc = install(tmp_path / "root", env, exe=str(tmp_path / "missing"))
    assert proc.returncode == 1 and "run `make setup` first" in proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_targets_call_the_script():
    for target, args in (("install", ""), ("uninstall", " --uninstall")):
        proc = subprocess.run(["make", "-n", target, "DESTDIR=/x"], capture_output=True, text=True, cwd=REPO,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f'DESTDIR="/x" bash scripts/install.sh{args}' in proc.stdout.splitlines()
    assert "bash scripts/setup.sh" in subprocess.run(["make", "-n", "install"], capture_output=True, text=True,
                                                     cwd=REPO, timeout=60).stdout  # setup first


# ---- (d) the unit's hardening --------------------------------------------------------------------


def test_unit_hardening_is_in_place():
    text = UNIT.read_text()
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "PrivateMounts": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX AF_NETLINK",
        "IPAddressDeny": "any",
        "RuntimeDirectory": "agentwatch",
        "RuntimeDirectoryMode": "0755",
        "RuntimeDirectoryPreserve": "yes",
        "LogsDirectory": "agentwatch",
        "UMask": "0077",
        "SystemCallErrorNumber": "EPERM",
    }
    for key, value in expected.items():
        assert values(text, key) == [value], key
    caps = values(text, "CapabilityBoundingSet")
    assert len(caps) == 1 and set(caps[0].split()) == CAPS, caps
    assert set(values(text, "ReadWritePaths")[0].split()) >= {"/sys/fs/cgroup", "/var/log/agentwatch"}
    denied = set(values(text, "SystemCallFilter")[0].removeprefix("~").split())
    assert values(text, "SystemCallFilter")[0].startswith("~") and {"@mount", "@module", "@clock"} <= denied
    assert not denied & {"@debug", "@privileged"}  # perf_event_open, bpf


@pytest.mark.parametrize("key, why", [
    ("MemoryDenyWriteExecute", "BCC's LLVM and libffi closures may need W+X memory"),
    ("ProtectKernelTunables", "hides /proc/kallsyms: BCC then emits bpf_probe_read, policies fail to load"),
    ("ProtectKernelLogs", "drops CAP_SYSLOG: kallsyms addresses read 0, the same failure"),
    ("ProtectKernelModules", "hides /usr/lib/modules: no kernel headers for BCC"),
    ("ProtectControlGroups", "makes cgroup.kill, cgroup.freeze and cgroup.procs read-only"),
    ("ProtectClock", "its implied DeviceAllow= closes /dev/nvidia* on older systemd"),
    ("PrivateDevices", "hides /dev/nvidia* from NVML"),
    ("PrivateNetwork", "hides this host's addresses (the host scope)"),
    ("ProtectProc", "the daemon reads /proc of every process"),
    ("ProcSubset", "the daemon reads /proc/sys/kernel/random/boot_id"),
    ("PrivateUsers", "capabilities in a user namespace load no BPF"),
    ("User", "the daemon runs as root"),
])
def test_unit_leaves_off_what_breaks_the_daemon(key, why):
    text = UNIT.read_text()
    assert values(text, key) == [], f"{key}= breaks the daemon: {why}"
    assert re.search(rf"^#\s.*\b{key}=", text, re.M), f"the unit's comment should say why {key}= is off"


def test_unit_service_lifecycle():
    text = UNIT.read_text()
    exec_lines = values(text, "ExecStart") + values(text, "ExecStartPre") + values(text, "ExecReload")
    assert values(text, "ExecStart") == ["@AGENTWATCH@ daemon --config /etc/agentwatch/agentwatch.yaml"]
    assert values(text, "ExecStartPre") == ["@AGENTWATCH@ daemon --config /etc/agentwatch/agentwatch.yaml --check"]
    assert values(text, "ExecReload") == ["@AGENTWATCH@ daemon --config /etc/agentwatch/agentwatch.yaml --check",
                                          "/bin/kill -HUP $MAINPID"]
    assert all(line.startswith(("@AGENTWATCH@ ", "/bin/kill ")) for line in exec_lines)
    for key, value in (("Type", "notify"), ("NotifyAccess", "main"), ("Restart", "on-failure"), ("KillSignal", "SIGTERM"),
                       ("OOMScoreAdjust", "-900"), ("RestartPreventExitStatus", "2"),
                       ("LimitMEMLOCK", "infinity")):
        assert values(text, key) == [value], key
    assert values(text, "RestartSec") and values(text, "TimeoutStopSec")
    assert values(text, "WantedBy", "Install") == ["multi-user.target"]
    # the control socket and state file live in the RuntimeDirectory, the records in the LogsDirectory
    assert fleetconfig.DEFAULT_SOCKET.startswith("/run/agentwatch/")
    assert fleetconfig.DEFAULT_STATE.startswith("/run/agentwatch/")
