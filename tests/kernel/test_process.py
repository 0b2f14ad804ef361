"""Process events through the real kernel: exec argv, execveat, failures, fork, exit, membership."""

from __future__ import annotations

import subprocess
import sys

from tracer import events


def _argv_of(trace, filename: str) -> list[list[str]]:
    return [r["process"]["argv"] for r in trace.execs() if r["exec"]["filename"] == filename]


def test_exec_with_one_argument(trace):
    t = trace(["/bin/true"])
    assert t.exit_code == 0
    [root] = t.execs()
    assert root["process"]["argv"] == ["/bin/true"]
    assert root["process"]["argv_truncated"] is False
    assert root["process"]["comm"] == "true"
    assert root["agent"]["id"] == t.agent_id


def test_exec_with_64_arguments_is_complete(trace):
    args = [f"arg{i:02d}-" + "x" * i for i in range(63)]
    t = trace(["/bin/true", *args])
    [argv] = _argv_of(t, "/bin/true")
    assert argv == ["/bin/true", *args]
    assert len(argv) == 64
    assert t.execs()[0]["process"]["argv_truncated"] is False


def test_exec_past_the_cap_is_truncated_and_flagged(trace):
    args = [f"{i:04d}" for i in range(3000)]  # 15 kB of arguments, past the 8 KiB cap
    t = trace(["/bin/true", *args])
    [argv] = _argv_of(t, "/bin/true")
    kept = ["/bin/true", *args][: len(argv)]
    assert argv[:-1] == kept[:-1]
    assert kept[-1].startswith(argv[-1])  # the last one may be cut mid-way
    assert sum(len(a) + 1 for a in argv) in (events.ARGV_BYTES, events.ARGV_BYTES + 1)
    assert t.execs()[0]["process"]["argv_truncated"] is True


def test_exec_past_the_byte_cap_is_cut_and_flagged(trace):
    big = "y" * (events.ARGV_BYTES + 100)
    t = trace(["/bin/true", "first", big])
    [argv] = _argv_of(t, "/bin/true")
    assert argv[:2] == ["/bin/true", "first"]
    # The last argument is kept up to the cap.
    assert argv[2] == big[: events.ARGV_BYTES - len("/bin/true\0first\0")]
    assert t.execs()[0]["process"]["argv_truncated"] is True


def test_failed_exec_past_the_argument_cap_is_truncated_and_flagged(trace):
    args = [str(i) for i in range(events.ARGV_MAX_ARGS + 40)]
    t = trace(["sh", "-c", 'exec /nonexistent/prog "$@"', "sh", *args])
    [failed] = [r for r in t.of_type("exec") if r["exec"]["filename"] == "/nonexistent/prog"]
    assert failed["exec"]["argv"] == ["/nonexistent/prog", *args][: events.ARGV_MAX_ARGS]
    assert failed["exec"]["argv_truncated"] is True


def test_non_utf8_and_control_bytes_in_argv_are_escaped(trace):
    hostile = [b"\xff\xfe", b"line1\nline2", b"\x1b[2J", "é漢".encode()]
    t = trace([b"/bin/true", *hostile])
    [argv] = _argv_of(t, "/bin/true")
    assert argv == ["/bin/true", "\\xff\\xfe", "line1\\x0aline2", "\\x1b[2J", "é漢"]


def test_execveat_by_dirfd_and_by_empty_path(trace, progs):
    t = trace([progs["execveat"]])
    ats = [r for r in t.execs() if r["exec"]["execveat"]]
    assert [r["process"]["argv"] for r in ats] == [["true", "by-dirfd"], ["true", "by-fd"]]
    # By fd the kernel names the file /dev/fd/N; the comm is the binary's name.
    assert all(r["process"]["comm"] == "true" for r in ats)
    assert ats[1]["exec"]["filename"].startswith("/dev/fd/")


def test_failed_exec_is_reported_with_its_error(trace, tmp_path):
    not_exec = tmp_path / "data.txt"
    not_exec.write_text("not a program\n")
    t = trace(["sh", "-c", f"/nonexistent/prog one two; {not_exec} three; exit 3"])
    assert t.exit_code == 3
    failed = [r for r in t.of_type("exec") if r["exec"]["result"] != "ok"]
    by_file = {r["exec"]["filename"]: r for r in failed}
    assert by_file["/nonexistent/prog"]["exec"]["result"] == "ENOENT"
    assert by_file["/nonexistent/prog"]["exec"]["argv"] == ["/nonexistent/prog", "one", "two"]
    assert by_file[str(not_exec)]["exec"]["result"] == "EACCES"
    # A failed exec leaves the process what it was: still sh.
    assert by_file[str(not_exec)]["process"]["comm"] == "sh"


def test_fork_exit_codes_and_ancestry(trace):
    t = trace(["sh", "-c", "/bin/sh -c 'exit 5'; /bin/true done"])
    forks = t.of_type("fork")
    assert len(forks) == 2
    exits = {r["process"]["argv"][-1]: r["exit_code"] for r in t.of_type("exit")}
    assert exits["exit 5"] == 5
    [true_exec] = [r for r in t.execs() if r["exec"]["filename"] == "/bin/true"]
    root_pid = t.execs()[0]["process"]["pid"]
    assert true_exec["process"]["ppid"] == root_pid
    assert true_exec["process"]["ancestry"][0]["pid"] == root_pid
    assert true_exec["process"]["ancestry"][0]["comm"] == "sh"
    child_keys = {f["child"]["key"] for f in forks}
    assert true_exec["process"]["key"] in child_keys


def test_killed_process_reports_its_signal(trace):
    t = trace(["sh", "-c", "kill -9 $$"])
    assert t.exit_code == 128 + 9
    [ex] = t.of_type("exit")
    assert ex["signal"] == 9


def test_threads_are_not_processes(trace, progs, probes):
    before = probes.stats()["threads_created"]
    t = trace([progs["thread_exec"]])
    assert t.exit_code == 7
    assert t.of_type("fork") == []
    exits = t.of_type("exit")
    assert len(exits) == 1 and exits[0]["exit_code"] == 7
    assert probes.stats()["threads_created"] >= before + 1


def test_fork_exec_connect_within_microseconds_is_attributed(trace, progs):
    t = trace([progs["fork_connect"], "9"])
    [fork] = t.of_type("fork")
    child = fork["child"]["pid"]
    [conn] = t.of_type("connect")
    assert conn["process"]["pid"] == child
    assert conn["agent"]["id"] == t.agent_id
    assert conn["network"]["result"] == "ECONNREFUSED"
    [after] = [r for r in t.execs() if r["process"]["argv"] == ["true", "after-connect"]]
    assert after["process"]["pid"] == child


def test_double_fork_and_setsid_stays_in_the_agent(trace):
    script = "(setsid sh -c 'sleep 0.3; exec /bin/true detached-marker' &) ; exit 0"
    t = trace(["sh", "-c", script], linger=5)
    assert t.exit_code == 0
    [detached] = [r for r in t.execs() if r["process"]["argv"] == ["/bin/true", "detached-marker"]]
    assert detached["agent"]["id"] == t.agent_id
    # Reparented away from the agent, yet its recorded ancestry still leads to the root.
    root_pid = t.execs()[0]["process"]["pid"]
    assert root_pid in [a["pid"] for a in detached["process"]["ancestry"]]
    statuses = [r["status"] for r in t.records if r["kind"] == "status"]
    assert "root_exited" in statuses  # the survivor was reported
    assert statuses[-1] == "agent_finished"


def test_unrelated_processes_never_appear(trace):
    noise = subprocess.Popen(
        ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true unrelated-marker; sleep 0.02; done"]
    )
    try:
        t = trace(["sh", "-c", "for i in 1 2 3 4 5; do /bin/true agent-marker; sleep 0.03; done"])
    finally:
        noise.wait()
    assert len([r for r in t.execs() if "agent-marker" in r["process"]["argv"]]) == 5
    assert all(r["agent"] and r["agent"]["id"] == t.agent_id for r in t.events)
    assert not any("unrelated-marker" in str(r) for r in t.records)


def test_exit_code_of_the_command_is_returned(trace):
    t = trace([sys.executable, "-c", "raise SystemExit(42)"])
    assert t.exit_code == 42
