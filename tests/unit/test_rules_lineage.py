"""Thresholds by agent and by lineage: records of many processes in one window, one culprit.

A fan-out scan (xargs -P, a subshell per port) makes one connect per process. The trees here
are written as the kernel records them: `ancestry` parent first, the agent's root (pid 1)
last. The clock is the records' `time`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tracer.rules import Engine, engine as engine_mod, load_text
from tracer.rules.loader import example_record

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "event.schema.json").read_text())
ROOT = 1
AGENT = {"id": "agent-1", "root_pid": ROOT, "labels": {}}


def threshold(by: str, count: int = 10, within: float = 10, processes: int = 1, distinct: str = "net.daddr, net.dport",
              action: str = "none") -> Engine:
    dist = f", distinct: [{distinct}]" if distinct else ""
    return Engine(load_text(f"""
- rule: spread
  severity: high
  tags: [discovery, T1046]
  events: [connect]
  condition: net.internal
  threshold: {{by: {by}, within: {within}, count: {count}, processes: {processes}{dist}}}
  output: "%proc.name (pid %proc.pid): %net.daddr:%net.dport"
  action: {action}
""", "t.yaml").rules)


def brief(pid: int, comm: str) -> dict:
    return {"pid": pid, "comm": comm, "exe": f"/usr/bin/{comm}"}


def proc(pid: int, comm: str, *above: tuple[int, str], argv: list[str] | None = None) -> dict:
    """A process whose ancestry is `above` (parent first)."""
    return {"pid": pid, "ppid": above[0][0] if above else 0, "uid": 1000, "comm": comm, "exe": f"/usr/bin/{comm}",
            "argv": argv or [comm], "argv_truncated": False, "key": f"{pid}:77",
            "ancestry": [brief(p, c) for p, c in above]}


def record(t: float, process: dict, type: str = "connect", **extra) -> dict:
    rec = example_record({"type": type, "time": t, "agent": AGENT, "process": {}, **extra}, type, 0)
    rec["process"] = process
    return rec


def connect(t: float, process: dict, dport: int = 80, daddr: str = "10.0.0.1", scope: str = "private") -> dict:
    return record(t, process, network={"daddr": daddr, "dport": dport, "scope": scope})


def exec_(t: float, process: dict) -> dict:
    return record(t, process, type="exec")


# The agent's tree for a fan-out: root (sh, pid 1) -> bash (10) -> xargs (50) -> nc (1000 + i).
BASH = proc(10, "bash", (ROOT, "sh"), argv=["bash", "-c", "seq 1 120 | xargs -P 8 -I{} sh -c 'nc -z 10.0.0.1 {}'"])
XARGS = proc(50, "xargs", (10, "bash"), (ROOT, "sh"), argv=["xargs", "-P", "8", "-I{}", "sh", "-c", "nc -z 10.0.0.1 {}"])
ROOT_PROC = proc(ROOT, "sh", argv=["sh", "-c", "agent"])


def probe(i: int) -> dict:
    """The i-th probe of the fan-out: `sh -c 'nc ...'` execs nc, so one process per probe."""
    return proc(1000 + i, "nc", (50, "xargs"), (10, "bash"), (ROOT, "sh"))


def feed(eng: Engine, records) -> list[dict]:
    return [a for r in records for a in eng.evaluate(r)]


def fanout(n: int, t0: float = 0.0, step: float = 0.01) -> list[dict]:
    return [connect(t0 + i * step, probe(i), dport=1 + i) for i in range(n)]


# --------------------------------------------------------------------------
# What a per-process threshold misses.


def test_a_fan_out_scan_stays_under_a_per_process_threshold():
    assert feed(threshold("process", count=10), fanout(120)) == []


@pytest.mark.parametrize("by", ["agent", "lineage"])
def test_a_fan_out_scan_fires_once_and_names_the_common_ancestor(by):
    eng = threshold(by, count=100)
    alerts = feed(eng, [exec_(0, ROOT_PROC), exec_(0, BASH), exec_(0, XARGS)] + fanout(120, t0=0.1))
    (alert,) = alerts  # the rest of the scan is in the quiet window
    assert alert["count"] == 100
    assert alert["process"] == XARGS  # whole, as its exec record gave it: argv, key
    assert alert["message"] == "xargs (pid 50): 10.0.0.1:100"
    assert alert["network"]["dport"] == 100 and alert["evidence"][-1]["process"]["pid"] == 1099
    inv = alert["involved"]
    assert inv["by"] == by and inv["ancestor"] == brief(50, "xargs")
    assert inv["count"] == 100 and inv["more"] == 100 - engine_mod.INVOLVED_MAX
    assert [p["pid"] for p in inv["processes"]] == list(range(1100 - engine_mod.INVOLVED_MAX, 1100))
    assert inv["processes"][-1] == {"pid": 1099, "comm": "nc", "key": "1099:77", "records": 1}
    assert len(alert["evidence"]) == engine_mod.EVIDENCE_MAX
    jsonschema.validate(alert, SCHEMA)


def test_engine_reads_execs_for_agent_and_lineage_thresholds():
    assert threshold("process").types == {"connect"}
    assert threshold("agent").types == {"connect", "exec"}
    assert threshold("lineage").types == {"connect", "exec"}


def test_without_the_ancestors_record_the_alert_still_says_who_it_is():
    """No exec record of xargs (it started before the watch): its ancestry entry, the last record's process."""
    (alert,) = feed(threshold("agent", count=20), fanout(20))
    assert alert["involved"]["ancestor"] == brief(50, "xargs")
    assert alert["process"]["pid"] == 1019
    jsonschema.validate(alert, SCHEMA)


def test_a_reused_pid_is_not_taken_for_the_ancestor():
    other = proc(50, "python3", (ROOT, "sh"))
    (alert,) = feed(threshold("agent", count=20), [exec_(0, XARGS), exec_(0.05, other)] + fanout(20, t0=0.1))
    assert alert["involved"]["ancestor"] == brief(50, "xargs")
    assert alert["process"]["pid"] == 1019  # not the python3 that has pid 50 now


def test_the_agent_root_can_be_the_culprit():
    """A loop in the root itself: some probes by the root, some by its subshells."""
    sub = [proc(200 + i, "sh", (ROOT, "sh")) for i in range(5)]
    recs = [exec_(0, ROOT_PROC)] + [connect(0.1 + i / 100, ROOT_PROC, dport=i + 1) for i in range(5)]
    recs += [connect(0.2 + i / 100, sub[i], dport=100 + i) for i in range(5)]
    (alert,) = feed(threshold("agent", count=10), recs)
    assert alert["process"] == ROOT_PROC and alert["involved"]["ancestor"] == brief(ROOT, "sh")
    assert alert["involved"]["count"] == 6
    # by lineage the root's own records are only its own: the whole agent is by agent
    assert feed(threshold("lineage", count=10), recs) == []


def test_no_common_ancestor_names_the_last_records_process():
    """Two trees that meet nowhere inside the agent (a sandbox with two process trees, no root)."""
    agent = dict(AGENT, root_pid=None)
    a = [proc(100 + i, "nc", (90, "sh")) for i in range(5)]
    b = [proc(200 + i, "nc", (91, "sh")) for i in range(5)]
    recs = [connect(i / 100, p, dport=i + 1) for i, p in enumerate(a + b)]
    for r in recs:
        r["agent"] = agent
    (alert,) = feed(threshold("agent", count=10), recs)
    assert alert["involved"]["ancestor"] is None and alert["process"]["pid"] == 204
    jsonschema.validate(alert, SCHEMA)


def test_ancestors_outside_the_agent_are_not_culprits():
    """A sandbox with no root in the ancestry: the lineage stops at the last ancestor seen in the agent.

    containerd-shim (pid 5) and systemd (pid 2) are in every ancestry, but no record of the agent
    is theirs; the container's init (pid 20) forked the workers."""
    agent = dict(AGENT, root_pid=None)
    init = proc(20, "tini", (5, "containerd-shim"), (2, "systemd"))
    workers = [proc(100 + i, "sh", (20, "tini"), (5, "containerd-shim"), (2, "systemd")) for i in range(3)]
    recs = [exec_(0, init)] + [connect(0.1 + i / 100, workers[i % 3], dport=i + 1) for i in range(9)]
    for r in recs:
        r["agent"] = agent
    (alert,) = feed(threshold("agent", count=9), recs)
    assert alert["process"] == init and alert["involved"]["ancestor"] == brief(20, "tini")
    (alert,) = feed(threshold("lineage", count=9), recs)
    assert alert["process"] == init


# --------------------------------------------------------------------------
# Lineages.


def test_lineage_names_the_deepest_process_whose_subtree_reached_the_count():
    """Two commands of the agent, one fan-out each: one alert per command, each naming its xargs."""
    xa = proc(50, "xargs", (10, "bash"), (ROOT, "sh"))
    xb = proc(60, "xargs", (11, "bash"), (ROOT, "sh"))
    recs = [exec_(0, xa), exec_(0, xb)]
    for i in range(30):  # interleaved
        recs.append(connect(0.1 + i / 100, proc(1000 + i, "nc", (50, "xargs"), (10, "bash"), (ROOT, "sh")), dport=i + 1))
        recs.append(connect(0.1 + i / 100, proc(2000 + i, "nc", (60, "xargs"), (11, "bash"), (ROOT, "sh")), dport=i + 101))
    got = feed(threshold("lineage", count=30), recs)
    assert [a["process"]["pid"] for a in got] == [50, 60]
    assert [a["involved"]["count"] for a in got] == [30, 30]
    # by agent the two together are one scan, and their common ancestor is the root
    root_recs = [exec_(0, ROOT_PROC)] + recs
    (alert,) = feed(threshold("agent", count=60), root_recs)
    assert alert["process"] == ROOT_PROC


def test_lineage_counts_a_subtree_spread_over_siblings_at_their_parent():
    """bash runs two xargs, 20 probes each: neither reaches 30, the bash that ran both does."""
    recs = [exec_(0, BASH)]
    for i in range(20):
        recs.append(connect(0.1 + i / 100, proc(1000 + i, "nc", (50, "xargs"), (10, "bash"), (ROOT, "sh")), dport=i + 1))
        recs.append(connect(0.1 + i / 100, proc(2000 + i, "nc", (51, "xargs"), (10, "bash"), (ROOT, "sh")), dport=i + 101))
    (alert,) = feed(threshold("lineage", count=30), recs)
    assert alert["process"] == BASH and alert["involved"]["ancestor"] == brief(10, "bash")


def test_lineage_after_an_alert_a_second_scan_below_the_same_command_fires_again():
    """The alert consumes the windows of xargs and above; a later fan-out under another child still counts."""
    first = fanout(30)
    second = [connect(1 + i / 100, proc(3000 + i, "nc", (70, "xargs"), (10, "bash"), (ROOT, "sh")), dport=500 + i)
              for i in range(30)]
    got = feed(threshold("lineage", count=30), first + second)
    assert [a["involved"]["ancestor"]["pid"] for a in got] == [50, 70]


def test_processes_keeps_a_single_process_scan_to_the_per_process_rules():
    single = proc(60, "python3", (10, "bash"), (ROOT, "sh"))
    recs = [connect(i / 100, single, dport=i + 1) for i in range(30)]
    assert len(feed(threshold("lineage", count=30), recs)) == 1  # at python3 itself: a per-process scan
    assert feed(threshold("lineage", count=30, processes=2), recs) == []
    (alert,) = feed(threshold("lineage", count=30, processes=2), fanout(30))
    assert alert["involved"]["count"] == 30


def test_lineage_needs_a_process():
    status = {"kind": "status", "status": "root_exited", "time": "2026-01-01T00:00:01.000000000Z", "agent": AGENT}
    eng = Engine(load_text("""
- rule: s
  severity: low
  events: [status]
  condition: status.name = root_exited
  threshold: {by: lineage, within: 10, count: 1}
""", "s.yaml").rules)
    assert eng.evaluate(status) == []


# --------------------------------------------------------------------------
# The window: sliding, distinct values, who made them.


def test_records_leave_the_window_and_their_processes_with_them():
    eng = threshold("agent", count=10, within=5)
    early = [connect(i * 0.1, probe(i), dport=i + 1) for i in range(5)]  # t 0 .. 0.4
    late = [connect(6 + i * 0.1, probe(100 + i), dport=200 + i) for i in range(9)]  # t 6 ..: the early ones are gone
    assert feed(eng, early + late) == []
    (alert,) = feed(eng, [connect(7, probe(300), dport=999)])
    assert alert["count"] == 10 and alert["involved"]["count"] == 10
    assert {p["pid"] for p in alert["involved"]["processes"]} <= {1100 + i for i in range(9)} | {1300}


def test_a_value_seen_again_belongs_to_the_process_that_saw_it_last():
    eng = threshold("agent", count=3, distinct="net.dport")
    a, b = probe(1), probe(2)
    got = feed(eng, [connect(0, a, dport=80), connect(0.1, a, dport=81), connect(0.2, b, dport=80),
                     connect(0.3, b, dport=82)])
    (alert,) = got
    rows = {p["pid"]: p["records"] for p in alert["involved"]["processes"]}
    assert rows == {1001: 1, 1002: 2}


def test_counting_records_without_distinct_values():
    eng = threshold("agent", count=5, distinct="")
    (alert,) = feed(eng, [connect(i / 10, probe(i % 2)) for i in range(5)])
    assert alert["count"] == 5
    assert {p["pid"]: p["records"] for p in alert["involved"]["processes"]} == {1000: 3, 1001: 2}


def test_one_alert_per_window_then_afresh():
    eng = threshold("agent", count=10, within=5)
    assert len(feed(eng, fanout(30, step=0.1))) == 1  # 0 .. 2.9: all quiet after the first
    assert len(feed(eng, fanout(10, t0=6, step=0.01))) == 1


def test_kill_process_names_the_ancestor():
    from tracer.actions import select

    (alert,) = feed(threshold("agent", count=10, action="kill_process"), [exec_(0, XARGS)] + fanout(10, t0=0.1))
    assert select(alert) == ("kill_process", [50])


# --------------------------------------------------------------------------
# Bounds.


def test_lineage_state_is_bounded_and_expires(monkeypatch):
    monkeypatch.setattr(engine_mod, "MAX_KEYS", 50)
    eng = threshold("lineage", count=10_000, within=10)
    feed(eng, [r for i, c in enumerate(fanout(200)) for r in (exec_(c["time"], probe(i)), c)])
    assert eng.state_size() == 50  # most of them the probes' own one-record windows
    assert len(eng._lineages.seen) == 50
    feed(eng, [connect(100, probe(999), dport=7)])
    assert eng.state_size() == 3  # the new probe, xargs and bash: the rest expired


def test_the_alert_lists_a_bounded_number_of_processes():
    (alert,) = feed(threshold("agent", count=1000, within=100), fanout(1000, step=0.001))
    inv = alert["involved"]
    assert len(inv["processes"]) == engine_mod.INVOLVED_MAX and inv["count"] == 1000
    assert inv["more"] == 1000 - engine_mod.INVOLVED_MAX
    assert len(alert["evidence"]) == engine_mod.EVIDENCE_MAX


def test_with_processes_a_window_opens_with_the_first_descendant():
    """processes: 2 keeps no window for a probe that never forks; a shell that probes itself and then
    through subshells is still named: its own early probes count in the window above it."""
    eng = threshold("lineage", count=20, processes=2)
    feed(eng, fanout(10))
    assert set(eng._machines[0].state) == {(AGENT["id"], 50), (AGENT["id"], 10)}  # no window per probe
    eng = threshold("lineage", count=20, processes=2)
    loop = proc(60, "bash", (10, "bash"), (ROOT, "sh"))
    recs = [connect(1 + i / 100, loop, dport=200 + i) for i in range(10)]  # before it has children
    recs += [connect(2 + i / 100, proc(3000 + i, "bash", (60, "bash"), (10, "bash"), (ROOT, "sh")), dport=300 + i)
             for i in range(10)]
    (alert,) = feed(eng, recs)  # at bash 10's window, whose processes all descend from the loop
    assert alert["process"] == loop and alert["involved"]["count"] == 11
