"""replay --jobs N: records split by agent over worker processes give the alerts of --jobs 1, in its order."""

from __future__ import annotations

import io
import random
import time

import orjson
import pytest
from click.testing import CliRunner

from tracer.cli import main
from tracer.output import JsonLinesWriter
from tracer.replay import ReplayError, _Router, replay
from tracer.rules import Engine, load
from tracer.rules.loader import example_records

RULES = load(check_examples=False).rules
AGENTS = 4


def _stamp(t: float) -> str:
    s = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{round((t - s) * 1e9):09d}Z"


def _shift(p, off: int):
    """A process object moved into an agent's own pid range (no process is in two agents)."""
    if not isinstance(p, dict):
        return p
    p = dict(p)
    for k in ("pid", "ppid", "root_pid"):
        if isinstance(p.get(k), int) and p[k] > 1:
            p[k] += off
    if isinstance(p.get("key"), str) and ":" in p["key"]:
        pid, _, ticks = p["key"].partition(":")
        p["key"] = f"{int(pid) + off}:{ticks}"
    if isinstance(p.get("ancestry"), list):
        p["ancestry"] = [_shift(a, off) for a in p["ancestry"]]
    return p


def multi_agent_file(seed: int = 5) -> bytes:
    """Every example of every default rule, each in one of AGENTS agents, a few examples interleaved at a time."""
    rnd = random.Random(seed)
    streams = []
    for rule in RULES:
        for ex in rule.examples:
            a = rnd.randrange(AGENTS)
            recs = []
            for r in example_records(rule, ex):
                r = {k: (_shift(v, 100_000 * a) if k in ("process", "agent", "child") else v) for k, v in r.items()}
                r["agent"] = {**r["agent"], "id": f"agent-{a:012x}"}
                if isinstance(r.get("survivors"), list):
                    r["survivors"] = [_shift(x, 100_000 * a) for x in r["survivors"]]
                recs.append(r)
            streams.append(recs)
    rnd.shuffle(streams)
    out, t = [], 1_790_000_000.0
    while streams:
        k = rnd.randint(1, 4)
        group, streams = streams[:k], streams[k:]
        while any(group):
            g = rnd.choice([g for g in group if g])
            r = g.pop(0)
            t += 0.0007
            out.append(orjson.dumps({**r, "time": _stamp(t)}))
    out.append(b'{"kind":"event","type":"lost","time":"' + _stamp(t).encode() + b'","agent":null,"process":null,'
               b'"lost":{"exec":1},"lost_total":{"exec":1}}')
    return b"\n".join(out) + b"\n"


DATA = multi_agent_file()


def run(data: bytes, jobs: int, tmp_path=None, show_events: bool = False) -> bytes:
    """Replay from a regular file (tmp_path given: each worker reads it) or from a stream (the parent routes)."""
    out = io.BytesIO()
    eng = Engine(RULES)
    if tmp_path is None:
        replay(io.BytesIO(data), "rec.jsonl", eng, JsonLinesWriter(out), show_events, jobs)
    else:
        path = tmp_path / "rec.jsonl"
        path.write_bytes(data)
        with path.open("rb") as f:
            replay(f, "rec.jsonl", eng, JsonLinesWriter(out), show_events, jobs)
    return out.getvalue()


def test_the_file_spreads_over_the_workers_and_fires_many_rules():
    owners = _Router(2).owners(DATA.splitlines())
    assert set(owners) == {0, 1}
    one = [orjson.loads(x) for x in run(DATA, 1).splitlines()]
    alerts = [a for a in one if a["kind"] == "alert"]
    assert len({a["rule"] for a in alerts}) > 60
    assert len({a["agent"]["id"] for a in alerts}) == AGENTS


@pytest.mark.parametrize("from_file", [True, False])
def test_jobs_count_every_record_once(from_file, tmp_path):
    """Records skipped unparsed are counted by one worker only; the others by their agent's."""
    # Forks (no rule reads them) and closed connections (no rule reads those) are skipped.
    skipped = [orjson.dumps({"kind": "event", "type": t, "time": _stamp(1_790_000_000.0 + i),
                             "agent": {"id": f"agent-{i % AGENTS:012x}"}, "process": {"pid": 100 + i},
                             "connection": {"state": "closed"}})
               for i, t in enumerate(["fork", "connection"] * 20)]
    data = DATA + b"\n".join(skipped) + b"\n"

    def count(jobs: int) -> int:
        path = tmp_path / "count.jsonl"
        path.write_bytes(data)
        with path.open("rb") as f:
            src = f if from_file else io.BytesIO(data)
            return replay(src, "rec.jsonl", Engine(RULES), JsonLinesWriter(io.BytesIO()), False, jobs)

    assert count(1) == count(2) == count(3) == len(DATA.splitlines()) + len(skipped)


@pytest.mark.parametrize("jobs", [2, 3])
@pytest.mark.parametrize("from_file", [True, False])
def test_jobs_give_the_bytes_of_one_job(jobs, from_file, tmp_path):
    one = run(DATA, 1)
    assert b'"type":"lost"' in one  # written in its place among the alerts
    assert run(DATA, jobs, tmp_path if from_file else None) == one


@pytest.mark.parametrize("from_file", [True, False])
def test_a_last_line_without_newline_is_read_and_a_broken_one_fails_alike(from_file, tmp_path):
    data = DATA.rstrip(b"\n")
    assert run(data, 2, tmp_path if from_file else None) == run(data, 1)
    broken = DATA + b'{"kind":"event","type":"exec","time":"2026-'
    messages = []
    for jobs in (1, 2):
        with pytest.raises(ReplayError) as info:
            run(broken, jobs, tmp_path if from_file else None)
        messages.append(str(info.value))
    last = DATA.count(b"\n") + 1
    assert messages[0].startswith(f"rec.jsonl:{last}: not a JSON record")
    assert messages[1] == messages[0]


def test_jobs_with_events_write_every_record_in_file_order(tmp_path):
    one = run(DATA, 1, show_events=True)
    assert one.count(b"\n") > DATA.count(b"\n")
    assert run(DATA, 2, tmp_path, show_events=True) == one


def test_router_keeps_an_agent_on_one_worker_and_agentless_records_on_the_first():
    lines = [
        b'{"kind":"event","type":"exec","time":"t","agent":{"id":"agent-a","root_pid":1},"process":{}}',
        b'{"kind":"event","type":"exec","time":"t","agent":{"id":"agent-b","root_pid":1},"process":{}}',
        b'{"kind":"event","type":"lost","time":"t","agent":null,"process":null}',
        b'{"kind":"event","type":"exec","time":"t","process":{}}',
        b'{"kind":"event","type":"exec","agent":{"root_pid":1,"id":"agent-b"}}',  # keys in another order: parsed
        b'{"kind":"event","type":"exec","time":"t","agent":{"id":"agent-c","root_pid":1},"process":{}}',
        b'{"kind":"event","type":"exec","time":"t","agent":{"id":"agent-a","root_pid":1},"process":{}}',
        b"not json but an \"agent\"",
    ]
    assert _Router(2).owners(lines) == [0, 1, 0, 0, 1, 0, 0, 0]
    assert _Router(3).owners(lines) == [0, 1, 0, 0, 1, 2, 0, 0]


@pytest.mark.parametrize("from_file", [True, False])
def test_a_bad_line_fails_as_with_one_job_after_the_same_output(from_file, tmp_path):
    lines = DATA.splitlines(keepends=True)
    bad = len(lines) // 2
    data = b"".join(lines[:bad]) + b'{"kind":"event","type":"exec","broken\n' + b"".join(lines[bad:])
    outs, errors = [], []
    for jobs in (1, 2):
        out = io.BytesIO()
        src = io.BytesIO(data)
        if from_file:
            path = tmp_path / "bad.jsonl"
            path.write_bytes(data)
            src = path.open("rb")
        with pytest.raises(ReplayError) as info:
            replay(src, "bad.jsonl", Engine(RULES), JsonLinesWriter(out), False, jobs)
        outs.append(out.getvalue())
        errors.append(str(info.value))
    assert errors[0].startswith(f"bad.jsonl:{bad + 1}: not a JSON record")
    assert errors[1] == errors[0]
    assert outs[1] == outs[0] and outs[0].count(b"\n") > 10


def test_cli_jobs_option(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(DATA)
    runner = CliRunner()
    one = runner.invoke(main, ["replay", str(path)])
    assert one.exit_code == 0, one.output
    for jobs in ("2", "0"):
        many = runner.invoke(main, ["replay", str(path), "--jobs", jobs])
        assert many.exit_code == 0, many.output
        assert many.output == one.output
    assert runner.invoke(main, ["replay", str(path), "--jobs", "-1"]).exit_code != 0
