"""The agentwatch command as users run it: real CLI process, real kernel, JSON lines on stdout."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

AGENTWATCH = str(Path(sys.executable).parent / "agentwatch")


def _lines(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_done_when_command_of_the_walking_skeleton():
    cmd = (
        'python3 -c "import socket; socket.socket().connect_ex((\\"127.0.0.1\\", 9))"; '
        "/bin/true a b c"
    )
    proc = subprocess.run([AGENTWATCH, "run", "--format", "json", "--events", "--", "sh", "-c", cmd],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    records = _lines(proc.stdout)
    events = [r for r in records if r["kind"] == "event"]
    execs = [r for r in events if r["type"] == "exec" and r["exec"]["result"] == "ok"]
    argvs = [r["process"]["argv"] for r in execs]
    assert ["sh", "-c", cmd] in argvs
    assert ["/bin/true", "a", "b", "c"] in argvs
    py = [r for r in execs if r["process"]["comm"].startswith("python3")]
    assert py and py[-1]["process"]["argv"][1:] == ["-c", 'import socket; socket.socket().connect_ex(("127.0.0.1", 9))']
    [conn] = [r for r in events if r["type"] == "connect"]
    assert conn["network"]["daddr"] == "127.0.0.1" and conn["network"]["dport"] == 9
    assert conn["network"]["result"] == "ECONNREFUSED"
    assert conn["process"]["pid"] == py[-1]["process"]["pid"]
    # One agent, and nothing from any other process.
    assert {r["agent"]["id"] for r in records if r["agent"]} == {records[0]["agent"]["id"]}
    assert all(r["agent"] is not None for r in events)


def _read_until(proc: subprocess.Popen, predicate, timeout: float) -> list[dict]:
    seen, buf, deadline = [], b"", time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            seen.append(json.loads(line))
            if predicate(seen[-1]):
                return seen
    raise AssertionError(f"not seen within {timeout}s; got {seen[-5:]}")


def _wait_or_kill(proc: subprocess.Popen, timeout: float, group: bool = False) -> None:
    """Wait for proc; if it does not end in time, kill it (and its group) and fail."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)
        raise AssertionError(f"{proc.args[:3]} did not end within {timeout}s of being told to") from None


def test_watch_pid_adopts_an_existing_process_and_its_descendants(tmp_path):
    go = tmp_path / "go"
    target = subprocess.Popen(
        ["sh", "-c", f"sh -c 'while [ ! -e {go} ]; do sleep 0.02; done; /bin/true watched-marker' & wait"],
        start_new_session=True,  # its own process group: the finally below can end the whole loop
    )
    watcher = subprocess.Popen(
        [AGENTWATCH, "watch", "--pid", str(target.pid), "--duration", "20", "--label", "k=v", "--format", "json",
         "--events"],
        stdout=subprocess.PIPE,
    )
    try:
        started = _read_until(watcher, lambda r: r.get("status") == "watching", 30)[-1]
        assert target.pid in started["pids"] and len(started["pids"]) >= 2  # the sh, its child (and maybe a sleep)
        go.touch()
        seen = _read_until(watcher, lambda r: "watched-marker" in r.get("process", {}).get("argv", []), 20)
        marker = seen[-1]
        assert marker["agent"]["root_pid"] == target.pid and marker["agent"]["labels"] == {"k": "v"}
        assert target.pid in [a["pid"] for a in marker["process"]["ancestry"]]
    finally:
        go.touch()  # also when the test failed early: the target's loop ends instead of spinning on
        watcher.send_signal(signal.SIGINT)
        _wait_or_kill(watcher, 30)
        _wait_or_kill(target, 10, group=True)
    assert watcher.returncode == 0


def test_watch_all_sees_processes_outside_any_agent():
    watcher = subprocess.Popen(
        [AGENTWATCH, "watch", "--all", "--duration", "20", "--format", "json", "--events"], stdout=subprocess.PIPE
    )
    try:
        _read_until(watcher, lambda r: r.get("status") == "watching", 30)
        subprocess.run(["/bin/true", "host-wide-marker"], check=True)
        seen = _read_until(watcher, lambda r: "host-wide-marker" in (r.get("process") or {}).get("argv", []), 20)
        assert seen[-1]["agent"] is None
        assert all(r["process"]["pid"] != watcher.pid for r in seen if r.get("process"))
    finally:
        watcher.send_signal(signal.SIGTERM)
        _wait_or_kill(watcher, 30)
    assert watcher.returncode == 0


def test_sigterm_stops_run_with_a_stopped_record():
    proc = subprocess.Popen(
        [AGENTWATCH, "run", "--format", "json", "--events", "--", "sh", "-c", "exec >/dev/null; sleep 30; true"],
        stdout=subprocess.PIPE,
        start_new_session=True,  # the agent does not get our signal: agentwatch alone is stopped
    )
    _read_until(proc, lambda r: r.get("type") == "exec" and r["process"]["comm"] == "sleep", 30)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait(10)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM
    last = _lines(rest)[-1]
    assert last["status"] == "stopped" and last["signal"] == signal.SIGTERM
    assert {s["comm"] for s in last["survivors"]} >= {"sh", "sleep"}


def test_table_output_is_one_clean_line_per_record():
    proc = subprocess.run(
        [AGENTWATCH, "run", "--format", "table", "--events", "--", "/bin/true", "two\nlines", "\x1b[2Jclear"],
        capture_output=True, timeout=60,
    )
    assert proc.returncode == 0
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split() == ["TIME", "AGENT", "PID", "PPID", "COMM", "TYPE", "DETAIL"]
    [exec_line] = [line for line in lines if " exec " in line]
    assert "two\\x0alines" in exec_line and "\\x1b[2Jclear" in exec_line
    assert not any(ord(c) < 0x20 for c in proc.stdout.decode().replace("\n", ""))


def test_doctor_explains_this_machine():
    proc = subprocess.run([AGENTWATCH, "doctor"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    for check in ("BTF", "tracefs", "tracepoints", "kprobes", "kernel headers", "cgroup v2", "programs"):
        assert check in proc.stdout
    assert "FAIL" not in proc.stdout


def test_alerts_live_and_replayed_are_the_same(tmp_path):
    """A default rule fires on a real exec; replaying the recording gives the same alerts, and only alerts."""
    recording = tmp_path / "run.jsonl"
    proc = subprocess.run(
        [AGENTWATCH, "run", "--format", "json", "--events", "--output", str(recording), "--label", "task=7",
         "--", "/bin/true", "--donate-level", "1"],
        capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    records = _lines(recording.read_bytes())
    [alert] = [r for r in records if r["kind"] == "alert"]
    [exec_] = [r for r in records if r.get("type") == "exec" and r["process"]["comm"] == "true"]
    assert alert["rule"] == "miner-flags" and alert["mitre"] == ["T1496"]
    assert alert["process"]["pid"] == exec_["process"]["pid"]
    assert alert["agent"]["labels"] == {"task": "7"}
    replayed = subprocess.run([AGENTWATCH, "replay", "--format", "json", str(recording)], capture_output=True,
                              timeout=60)
    assert replayed.returncode == 0, replayed.stderr.decode()
    assert _lines(replayed.stdout) == [alert]
