"""Ordinary developer work under the default rules: nothing of medium severity or above.

Each activity runs as its own agent in the namespace sandbox, against the same sshd,
web server and tools as the detection scenarios. A low alert is allowed (context, such
as a weak port signal); anything an operator would be paged for is a false positive.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def work(net):
    """A working directory with a C file, a test file, a tiny wheel and a file to copy."""
    d = net.tmp / "work"
    d.mkdir()
    (d / "hello.c").write_text(HELLO_C)
    (d / "test_small.py").write_text(TEST_PY)
    (d / "repo").mkdir()
    (d / "repo" / "README").write_text("a repository\n")
    (d / "notes.txt").write_text("notes\n")
    (d / "remote").mkdir()
    return d


def _activities(work, sshd, web):
    ssh = " ".join(sshd.ssh(f"root@{NET_IP}", "true"))
    scp = f"scp -F {sshd.config} {work / 'notes.txt'} root@{NET_IP}:{work / 'remote' / 'notes.txt'}"
    wheel = build_wheel(work)
    git = "git -c user.name=dev -c user.email=dev@example.com"
    return {
        "compile-c": f"cd {work} && gcc -O2 -Wall -o hello hello.c && ./hello",
        "git": f"cd {work / 'repo'} && git init -q && {git} add . && {git} commit -qm init && git log --oneline",
        "pip-wheel": f"{PY} -m pip install -q --no-index --no-deps --target {work / 'site'} {wheel}",
        "pytest": f"cd {work} && {sys.executable} -m pytest -q -p no:cacheprovider test_small.py",
        "curl": f"curl -sS -o /dev/null -w '%{{http_code}}\\n' {web}",
        "ssh-true": ssh,
        "scp": scp,
    }


ACTIVITIES = ["compile-c", "git", "pip-wheel", "pytest", "curl", "ssh-true", "scp"]


@pytest.mark.parametrize("activity", ACTIVITIES)
def test_benign_work_raises_nothing_medium_or_above(agentwatch, work, sshd, web, activity):
    script = _activities(work, sshd, web)[activity]
    run = agentwatch(["sh", "-c", script], labels={"scenario": f"benign-{activity}"})
    assert run.returncode == 0, f"{activity} failed ({run.returncode}):\n{run.output}\n{run.stderr}"
    assert run.events, "no events: the run did not trace anything"
    loud = run.at_least("medium")
    assert not loud, f"{activity} raised:\n{run.describe()}"
