"""Ordinary developer work under the default rules: nothing of medium severity or above.

One agent does a developer's session in the namespace sandbox, against the same sshd, web
server and tools as the detection scenarios: each activity in its own `sh -c` (named by its
$0), so an alert can be traced back to the activity that raised it. A low alert is allowed
(context, such as a weak port signal); anything an operator would be paged for is a false
positive.
"""

from __future__ import annotations

import shlex
import sys
import textwrap

import pytest

from sandbox import NET_IP, PY, build_wheel

pytestmark = pytest.mark.scenario

HELLO_C = textwrap.dedent("""\
    #include <stdio.h>
    int main(void) { puts("hello"); return 0; }
""")
TEST_PY = textwrap.dedent("""\
    def test_adds():
        assert 1 + 1 == 2
""")
# A parallel test's client and its server on an ephemeral loopback port, one process each.
EPHEMERAL_PAIR = (
    "import socket; s = socket.create_server(('127.0.0.1', 0)); "
    "c = socket.create_connection(s.getsockname(), timeout=2); a, _ = s.accept(); c.sendall(b'ok'); a.recv(2)"
)
ACTIVITIES = ["compile-c", "git", "pip-wheel", "pytest", "curl", "ssh-true", "scp", "fan-out-ci", "build-many-files",
              "venv-pip"]
# A build's output: hundreds of sources, objects renamed into place, a cache, all in the project.
BUILD = ("mkdir -p {proj}/src {proj}/out ~/.cache/awbuild && cd {proj} && for i in $(seq 200); do "
         "echo \"int f$i(void) {{ return $i; }}\" > src/f$i.c && gcc -c -o out/.f$i.o.tmp src/f$i.c && "
         "mv out/.f$i.o.tmp out/f$i.o && echo $i > ~/.cache/awbuild/$i || exit 1; done && "
         "ar rcs out/libf.a out/*.o && rm -f out/*.o")


def _activities(work, sshd, web) -> dict[str, str]:
    wheel = build_wheel(work)
    git = "git -c user.name=dev -c user.email=dev@example.com"
    return {
        "compile-c": f"cd {work} && gcc -O2 -Wall -o hello hello.c && ./hello",
        "git": f"cd {work / 'repo'} && git init -q && {git} add . && {git} commit -qm init && git log --oneline",
        "pip-wheel": f"{PY} -m pip install -q --no-index --no-deps --target {work / 'site'} {wheel}",
        "pytest": f"cd {work} && {sys.executable} -m pytest -q -p no:cacheprovider test_small.py",
        "curl": f"curl -sS -o /dev/null -w '%{{http_code}}\\n' {web}",
        "ssh-true": " ".join(sshd.ssh(f"root@{NET_IP}", "true")),
        "scp": f"scp -F {sshd.config} {work / 'notes.txt'} root@{NET_IP}:{work / 'remote' / 'notes.txt'}",
        # CI: one short-lived process per job, in parallel, as make -j or a test runner starts them
        "fan-out-ci": " && ".join([
            f"cd {work}",
            "printf '%s\\n' a b c d e f g h | xargs -P 4 -I{} sh -c 'cp hello.c {}.c && gcc -c {}.c -o {}.o'",
            "seq 1 16 | xargs -P 4 -n1 true",
            f"seq 1 8 | xargs -P 4 -I{{}} git -C {work / 'repo'} log --oneline -1",
            f"seq 1 12 | xargs -P 4 -I{{}} curl -sS -o /dev/null {web}",
            f"seq 1 60 | xargs -P 8 -I{{}} {PY} -c {shlex.quote(EPHEMERAL_PAIR)}",
        ]),
        "build-many-files": BUILD.format(proj=work / "proj"),
        "venv-pip": f"{PY} -m venv {work / 'venv'} && {work / 'venv' / 'bin' / 'pip'} install -q --no-index "
                    f"--no-deps {wheel}",
    }


@pytest.fixture(scope="module")
def session(net, agentwatch, sshd, web):
    work = net.tmp / "work"
    work.mkdir()
    (work / "hello.c").write_text(HELLO_C)
    (work / "test_small.py").write_text(TEST_PY)
    (work / "repo").mkdir()
    (work / "repo" / "README").write_text("a repository\n")
    (work / "notes.txt").write_text("notes\n")
    (work / "remote").mkdir()
    steps = [f"sh -c {shlex.quote(script)} benign-{name} || echo FAILED {name}"
             for name, script in _activities(work, sshd, web).items()]
    run = agentwatch(["sh", "-c", "; ".join(steps)], labels={"scenario": "benign"})
    assert run.events, "no events: the run did not trace anything"
    return run, work


def _activity_of(run, alert: dict) -> str | None:
    tops = {r["process"]["pid"]: r["process"]["argv"][3] for r in run.execs(
        lambda p: p["argv"][:2] == ["sh", "-c"] and len(p["argv"]) == 4 and p["argv"][3].startswith("benign-"))}
    p = alert.get("process") or {}
    for pid in [p.get("pid")] + [a["pid"] for a in p.get("ancestry", [])]:
        if pid in tops:
            return tops[pid].removeprefix("benign-")
    return None


@pytest.mark.parametrize("activity", ACTIVITIES)
def test_benign_work_raises_nothing_medium_or_above(session, activity):
    run, work = session
    assert f"FAILED {activity}" not in run.output, f"{activity} did not work:\n{run.output}"
    loud = [a for a in run.at_least("medium") if _activity_of(run, a) == activity]
    assert not loud, f"{activity} raised:\n{run.describe()}"


def test_the_session_as_a_whole_raises_nothing_medium_or_above(session):
    run, work = session
    assert (work / "hello").exists() and (work / "site" / "awdemo").is_dir()
    assert (work / "remote" / "notes.txt").read_text() == "notes\n"
    assert (work / "proj" / "out" / "libf.a").exists()
    assert list((work / "venv").glob("lib/python3*/site-packages/awdemo"))
    assert not run.at_least("medium"), run.describe()


def test_a_ci_fan_out_is_many_processes_and_no_scan(session):
    """The fan-out really spread over processes: 60 clients on 60 ephemeral loopback ports, 12 to one web
    server; no threshold over many processes took it for a scan or a sweep."""
    run, _ = session
    tests = {r["process"]["pid"] for r in run.events if r["type"] == "connect"
             and r["network"]["daddr"] == "127.0.0.1" and r["network"]["dport"] >= 32768}
    web = {r["process"]["pid"] for r in run.events if r["type"] == "connect"
           and r["network"]["daddr"] == NET_IP and r["network"]["dport"] == 80}
    assert len(tests) >= 60 and len(web) >= 12
    assert not [a for a in run.alerts if "involved" in a], run.describe()


def test_developer_writes_make_no_file_record(session):
    """A build, a venv, pip, git and ssh write thousands of files: none is a path that matters."""
    run, work = session
    written = [r["tamper"]["file"]["path"] for r in run.events
               if r["type"] == "tamper" and r["tamper"]["kind"] == "write"]
    assert written == []
