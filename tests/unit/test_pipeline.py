"""tracer.session.Pipeline fed by a fake probes object: no root, no BCC."""

from __future__ import annotations

import pytest

from tracer import events, session
from tracer.proctree import start_ticks_from_ns
from tracer.session import Pipeline

# Above PID_MAX_LIMIT (4194304): ProcessTable.lookup asks the real /proc
# about processes met mid-life, and must find nothing there.
P = 5_000_000
ROOT, CHILD, GRANDCHILD = P + 1, P + 2, P + 3
SEC = 10**9
ROOT_START = 100 * SEC
CHILD_START = 101 * SEC
ZERO_LOST = {name: 0 for name in events.EVENT_NAMES.values()}


class FakeProbes:
    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.lost = dict(ZERO_LOST)
        self.watched: dict[int, int] = {}
        self.polls: list[int] = []

    def poll(self, timeout_ms: int = 100) -> list[bytes]:
        self.polls.append(timeout_ms)
        return self.batches.pop(0) if self.batches else []

    def lost_counts(self) -> dict[str, int]:
        return dict(self.lost)  # a fresh dict, like Probes.lost_counts

    def members(self, agent_id: int) -> list[int]:
        return [pid for pid, a in self.watched.items() if a == agent_id]

    def watch(self, tgid: int, agent_id: int) -> None:
        self.watched[tgid] = agent_id

    def agent_of_tgid(self, tgid: int) -> int:
        return self.watched.get(tgid, 0)


class ListWriter:
    def __init__(self) -> None:
        self.records: list[dict] = []
        self.flushes = 0

    def write(self, record: dict) -> None:
        self.records.append(record)

    def flush(self) -> None:
        self.flushes += 1


@pytest.fixture
def pipe():
    probes, writer = FakeProbes(), ListWriter()
    p = Pipeline(probes, writer)
    p.agent = p.agents.new(ROOT, {"team": "blue"}, agent_id="agent-t")
    assert p.agent.kernel_id == 1
    # As run_agent does: the root is known before its first event.
    root = p.table.lookup(ROOT, start_ticks_from_ns(ROOT_START), ppid=P, comm=b"agent")
    p.table.new_image(root, b"agent", b"/usr/bin/agent", [b"agent", b"--run"], False)
    root.agent_id = 1
    probes.watch(ROOT, 1)
    return p


def root_hdr(**kw):
    return dict(pid=ROOT, ppid=P, comm=b"agent", agent_id=1, start_ns=ROOT_START) | kw


def child_hdr(**kw):
    return dict(pid=CHILD, ppid=ROOT, comm=b"agent", agent_id=1, start_ns=CHILD_START) | kw


def feed(pipe, *records: bytes) -> list[dict]:
    before = len(pipe.writer.records)
    pipe.probes.batches.append(list(records))
    assert pipe.drain(0) == len(records)
    return pipe.writer.records[before:]


def child_key() -> str:
    return f"{CHILD}:{start_ticks_from_ns(CHILD_START)}"


def test_fork_exec_connect_exit_attributed_to_the_agent(pipe, raw):
    recs = feed(
        pipe,
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, ktime_ns=10 * SEC, **root_hdr()),
        raw.exec(filename=b"/usr/bin/curl", argv=[b"curl", b"-s", b"https://example.com"], ktime_ns=11 * SEC,
               **child_hdr(comm=b"curl")),
        raw.connect(family=2, daddr=bytes([1, 2, 3, 4]), dport=443, retval=-115, ktime_ns=12 * SEC,
                  **child_hdr(comm=b"curl")),
        raw.exit(exit_code=7 << 8, ktime_ns=13 * SEC, **child_hdr(comm=b"curl")),
    )
    assert [r["type"] for r in recs] == ["fork", "exec", "connect", "exit"]
    agent = {"id": "agent-t", "root_pid": ROOT, "labels": {"team": "blue"}}
    assert all(r["kind"] == "event" and r["agent"] == agent for r in recs)

    fork, exec_, connect, exit_ = recs
    assert fork["process"]["pid"] == ROOT
    assert fork["process"]["exe"] == "/usr/bin/agent"
    assert fork["child"] == {"pid": CHILD, "key": child_key()}

    proc = exec_["process"]
    assert (proc["pid"], proc["ppid"], proc["comm"], proc["exe"]) == (CHILD, ROOT, "curl", "/usr/bin/curl")
    assert proc["argv"] == ["curl", "-s", "https://example.com"]
    assert proc["key"] == child_key()
    assert proc["ancestry"][0] == {"pid": ROOT, "comm": "agent", "exe": "/usr/bin/agent"}
    assert exec_["exec"]["result"] == "ok" and exec_["exec"]["filename"] == "/usr/bin/curl"

    assert connect["process"]["key"] == child_key()
    assert connect["process"]["exe"] == "/usr/bin/curl"
    assert connect["network"]["daddr"] == "1.2.3.4" and connect["network"]["dport"] == 443
    assert connect["network"]["result"] == "EINPROGRESS"

    assert (exit_["exit_code"], exit_["signal"]) == (7, None)
    assert exit_["process"]["key"] == child_key()
    assert [r["time"] for r in recs] == sorted(r["time"] for r in recs)

    assert pipe.table.get(CHILD) is None  # gone after its exit
    assert pipe.table.get(ROOT) is not None
    assert pipe.received == 4
    assert pipe.writer.flushes >= 1


def test_child_runs_its_parents_image_until_it_execs(pipe, raw):
    fork, connect = feed(
        pipe,
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, **root_hdr()),
        raw.connect(family=10, daddr=bytes(10) + b"\xff\xff" + bytes([9, 9, 9, 9]), dport=80, **child_hdr()),
    )
    assert connect["process"]["exe"] == "/usr/bin/agent"
    assert connect["process"]["argv"] == ["agent", "--run"]
    assert connect["network"]["v4_mapped"] and connect["network"]["daddr"] == "9.9.9.9"
    assert pipe.table.get(CHILD).agent_id == 1


def test_exit_by_signal(pipe, raw):
    (rec,) = feed(pipe, raw.exit(exit_code=9, **root_hdr()))
    assert (rec["exit_code"], rec["signal"]) == (0, 9)
    assert pipe.table.get(ROOT) is None


def test_failed_exec_leaves_the_process_as_it_was(pipe, raw):
    (rec,) = feed(pipe, raw.exec(filename=b"/nope", argv=[b"/nope", b"x"], retval=-2, **root_hdr()))
    assert rec["exec"]["result"] == "ENOENT"
    assert rec["exec"]["argv"] == ["/nope", "x"]
    assert rec["process"]["exe"] == "/usr/bin/agent"
    assert rec["process"]["argv"] == ["agent", "--run"]


def test_exec_updates_the_image_of_later_records(pipe, raw):
    exec_, exit_ = feed(
        pipe,
        raw.exec(filename=b"/usr/bin/python3", argv=[b"python3", b"-V"], flags=events.EXEC_EXECVEAT,
               **root_hdr(comm=b"python3")),
        raw.exit(**root_hdr(comm=b"python3")),
    )
    assert exec_["exec"]["execveat"] is True
    for rec in (exec_, exit_):
        assert (rec["process"]["comm"], rec["process"]["exe"]) == ("python3", "/usr/bin/python3")
        assert rec["process"]["argv"] == ["python3", "-V"]


def test_comm_changed_by_prctl_shows_in_later_records(pipe, raw):
    first, second = feed(
        pipe,
        raw.connect(family=2, daddr=bytes([1, 1, 1, 1]), dport=53, **root_hdr(comm=b"worker-1")),
        raw.exit(**root_hdr(comm=b"renamed\x1b")),
    )
    assert first["process"]["comm"] == "worker-1"
    assert second["process"]["comm"] == "renamed\\x1b"
    assert second["process"]["exe"] == "/usr/bin/agent"  # a rename is not an exec


def test_agent_is_null_outside_any_agent(pipe, raw):
    recs = feed(
        pipe,
        raw.exit(**child_hdr(pid=GRANDCHILD, agent_id=0, comm=b"cron")),
        raw.exit(**child_hdr(pid=GRANDCHILD + 1, agent_id=9, comm=b"ghost")),  # no such agent
    )
    assert [r["agent"] for r in recs] == [None, None]
    assert recs[0]["process"]["pid"] == GRANDCHILD


def test_pid_reuse_gets_a_new_key(pipe, raw):
    second_start = 200 * SEC
    recs = feed(
        pipe,
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, **root_hdr()),
        raw.exit(**child_hdr()),
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=second_start, **root_hdr()),
        raw.exit(**child_hdr(start_ns=second_start)),
    )
    keys = [recs[0]["child"]["key"], recs[1]["process"]["key"], recs[2]["child"]["key"], recs[3]["process"]["key"]]
    new_key = f"{CHILD}:{start_ticks_from_ns(second_start)}"
    assert keys == [child_key(), child_key(), new_key, new_key]
    assert new_key != child_key()


def test_ancestry_survives_reparenting_and_parent_exit(pipe, raw):
    daemon_start = 102 * SEC
    feed(
        pipe,
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, **root_hdr()),
        raw.exec(filename=b"/bin/sh", argv=[b"sh"], **child_hdr(comm=b"sh")),
        raw.fork(child_pid=GRANDCHILD, child_agent_id=1, child_start_ns=daemon_start, **child_hdr(comm=b"sh")),
        raw.exit(**child_hdr(comm=b"sh")),
        raw.exit(**root_hdr()),
    )
    # The daemon now belongs to init: its events say ppid 1.
    (rec,) = feed(
        pipe,
        raw.connect(family=2, daddr=bytes([5, 6, 7, 8]), dport=22,
                  **child_hdr(pid=GRANDCHILD, ppid=1, start_ns=daemon_start, comm=b"sh")),
    )
    assert [a["pid"] for a in rec["process"]["ancestry"]] == [CHILD, ROOT]
    assert rec["process"]["ancestry"][1]["exe"] == "/usr/bin/agent"
    assert rec["agent"]["id"] == "agent-t"


def test_ppid_is_the_parent_at_the_time_of_the_event(pipe, raw):
    feed(pipe, raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, **root_hdr()))
    feed(pipe, raw.exit(**root_hdr()))
    (rec,) = feed(pipe, raw.exit(**child_hdr(ppid=1)))
    assert rec["process"]["ancestry"][0]["pid"] == ROOT
    assert rec["process"]["ppid"] == 1


def test_siblings_agree_on_their_parent_after_it_execs(pipe, raw):
    sibling, sibling_start = CHILD + 100, 103 * SEC
    feed(
        pipe,
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, **root_hdr()),
        raw.fork(child_pid=sibling, child_agent_id=1, child_start_ns=sibling_start, **root_hdr()),
        raw.connect(family=2, daddr=bytes([1, 1, 1, 1]), dport=53, **child_hdr()),  # first record of CHILD
        raw.exec(filename=b"/usr/bin/python3", argv=[b"python3"], **root_hdr(comm=b"python3")),
        raw.connect(family=2, daddr=bytes([1, 1, 1, 1]), dport=53,  # first record of the sibling
                  **child_hdr(pid=sibling, start_ns=sibling_start)),
    )
    a, b = feed(
        pipe,
        raw.exit(**child_hdr()),
        raw.exit(**child_hdr(pid=sibling, start_ns=sibling_start)),
    )
    assert a["process"]["ancestry"] == b["process"]["ancestry"]


# --------------------------------------------------------------------------
# Lost events.


def lost_records(pipe) -> list[dict]:
    return [r for r in pipe.writer.records if r.get("type") == "lost"]


def test_lost_record_only_when_the_counters_grow(pipe, monkeypatch, raw):
    monkeypatch.setattr(session, "LOST_CHECK_SECONDS", 0.0)  # check at every drain
    probes = pipe.probes

    pipe.drain(0)
    assert lost_records(pipe) == []

    probes.lost["exec"] = 3
    pipe.drain(0)
    (rec,) = lost_records(pipe)
    assert rec["kind"] == "event" and rec["agent"] is None and rec["process"] is None
    assert rec["lost"] == ZERO_LOST | {"exec": 3}
    assert rec["lost_total"] == ZERO_LOST | {"exec": 3}

    pipe.drain(0)
    pipe.drain(0)
    assert len(lost_records(pipe)) == 1  # unchanged counters: nothing new

    probes.lost["exec"] = 5
    probes.lost["connect"] = 2
    probes.batches.append([raw.exit(**child_hdr())])
    pipe.drain(0)
    rec = lost_records(pipe)[-1]
    assert len(lost_records(pipe)) == 2
    assert rec["lost"] == ZERO_LOST | {"exec": 2, "connect": 2}
    assert rec["lost_total"] == ZERO_LOST | {"exec": 5, "connect": 2}


def test_lost_check_is_rate_limited_but_finish_always_reports(pipe, raw):
    probes = pipe.probes
    assert session.LOST_CHECK_SECONDS >= 1.0
    pipe.drain(0)  # first drain: checks (nothing lost)
    probes.lost["fork"] = 4
    pipe.drain(0)  # within the interval: no check yet
    assert lost_records(pipe) == []

    probes.batches += [[raw.exit(**child_hdr())], [raw.exit(**root_hdr())]]
    pipe.finish()
    assert probes.batches == []  # finish drained everything left
    assert [r["type"] for r in pipe.writer.records] == ["exit", "exit", "lost"]
    assert lost_records(pipe)[0]["lost"] == ZERO_LOST | {"fork": 4}
    pipe.finish()
    assert len(lost_records(pipe)) == 1


def test_drain_flushes_only_when_something_arrived(pipe, monkeypatch, raw):
    monkeypatch.setattr(session, "LOST_CHECK_SECONDS", float("inf"))  # no lost check here
    assert pipe.drain(5) == 0
    assert pipe.probes.polls == [5]
    assert pipe.writer.flushes == 0
    feed(pipe, raw.exit(**child_hdr()))
    assert pipe.writer.flushes == 1


class FakeContainment:
    """Denials on their own ring buffer, as Containment.poll gives them."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def dry_run_for(self, ev) -> bool:
        return False

    def poll(self) -> list[bytes]:
        return self.batches.pop(0) if self.batches else []

    def name_rule(self, record: dict, ev) -> None:
        record["policy"] = {"rule": "test"}


def test_a_denial_is_handled_between_the_records_around_it(pipe, raw):
    # The denial buffer is read after the main one: by then the denied
    # process may have exited. Handled in kernel-time order, the denial still
    # names its process with its ancestry (a CI failure when it came last).
    import time

    pipe.containment = FakeContainment()
    metadata = bytes([169, 254, 169, 254])
    late = time.monotonic_ns() + 3600 * SEC  # not due until every record before it can have been read
    pipe.containment.batches.append([
        raw.block(daddr=metadata, dport=80, ktime_ns=11 * SEC, **child_hdr()),
        raw.block(daddr=metadata, dport=81, ktime_ns=late, **child_hdr()),
    ])
    pipe.probes.batches.append([
        raw.fork(child_pid=CHILD, child_agent_id=1, child_start_ns=CHILD_START, ktime_ns=10 * SEC, **root_hdr()),
        raw.exit(ktime_ns=12 * SEC, **child_hdr()),
    ])
    assert pipe.drain(0) == 3
    recs = [r for r in pipe.writer.records if r["kind"] == "event"]
    assert [r["type"] for r in recs] == ["fork", "blocked", "exit"]
    blocked = recs[1]
    assert blocked["network"]["dport"] == 80 and blocked["process"]["key"] == child_key()
    assert [a["pid"] for a in blocked["process"]["ancestry"]][:1] == [ROOT]
    # The later denial was read but is not due: it comes out at the finish.
    assert not [r for r in pipe.writer.records if r.get("network", {}).get("dport") == 81]
    # Newer than the drain's cut but older than a record of the batch: placed
    # now, not held (a record after it is in this batch and must follow it).
    soon = time.monotonic_ns() + 60 * SEC
    pipe.containment.batches.append([raw.block(daddr=metadata, dport=82, ktime_ns=soon, **root_hdr())])
    pipe.probes.batches.append([raw.exit(ktime_ns=soon + 1, **root_hdr())])
    assert pipe.drain(0) == 2
    assert [r["type"] for r in pipe.writer.records if r["kind"] == "event"][-2:] == ["blocked", "exit"]
    pipe.finish(budget_s=0.1)
    assert [r["network"]["dport"] for r in pipe.writer.records if r.get("type") == "blocked"] == [80, 82, 81]


def test_merge_by_ktime_keeps_ring_buffer_order(raw):
    main = [raw.exit(ktime_ns=t, pid=P + i) for i, t in enumerate([5, 3, 9])]  # not sorted: kept as read
    due = [raw.exit(ktime_ns=t, pid=P + 10 + i) for i, t in enumerate([1, 4, 9, 20])]
    order = [events.decode(r).pid - P for r in session._merge_by_ktime(main, due)]
    assert order == [10, 11, 0, 1, 12, 2, 13]
