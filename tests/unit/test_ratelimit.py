"""Alert storms: per (rule, agent) limits on delivery, counted and summarised."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.output import MemoryWriter
from tracer.ratelimit import AlertRateLimit, RateError, parse_rate
from tracer.rules import loader


def alert(rule: str, agent: str, second: int, nanos: int = 0) -> dict:
    return {"kind": "alert", "rule": rule, "severity": "medium",
            "time": f"2026-12-03T08:00:{second:02d}.{nanos:09d}Z",
            "agent": {"id": agent, "root_pid": 1, "labels": {}}}


def test_past_the_limit_alerts_are_counted_and_summarised_when_the_window_ends():
    out = MemoryWriter()
    lim = AlertRateLimit(out, (3, 10.0))
    for i in range(8):
        lim.write(alert("scan", "a1", 1, i))
    lim.write(alert("scan", "a2", 1))  # another agent: its own window
    lim.write({"kind": "event", "type": "exec"})  # events pass
    assert [r.get("agent", {}).get("id") for r in out.records if r["kind"] == "alert"] == ["a1"] * 3 + ["a2"]
    lim.write(alert("scan", "a1", 12))  # a new window: the old one's summary first, then this alert
    summary = [r for r in out.records if r.get("status") == "alerts_suppressed"]
    assert len(summary) == 1 and summary[0]["suppressed"] == 5 and summary[0]["delivered"] == 3
    assert summary[0]["agent"]["id"] == "a1" and summary[0]["rule"] == "scan"
    assert summary[0]["first_suppressed"].endswith("01.000000003Z") and summary[0]["last_suppressed"].endswith("01.000000007Z")
    assert out.records[-1]["time"].startswith("2026-12-03T08:00:12")
    assert lim.suppressed_total == 5


def test_rules_can_set_their_own_limit_or_none_and_expire_flushes_summaries():
    out = MemoryWriter()
    lim = AlertRateLimit(out, (1, 60.0), {"egress-policy": False, "noisy": (2, 5.0)})
    for i in range(4):
        lim.write(alert("egress-policy", "a", 1, i))
        lim.write(alert("noisy", "a", 1, i))
        lim.write(alert("other", "a", 1, i))
    kinds = [r["rule"] for r in out.records if r["kind"] == "alert"]
    assert kinds.count("egress-policy") == 4 and kinds.count("noisy") == 2 and kinds.count("other") == 1
    lim.expire(None)
    assert sorted((r["rule"], r["suppressed"]) for r in out.records if r.get("status") == "alerts_suppressed") == [
        ("noisy", 2), ("other", 3)]


def test_off_means_every_alert_is_delivered():
    out = MemoryWriter()
    lim = AlertRateLimit(out, None)
    for i in range(50):
        lim.write(alert("r", "a", 1, i))
    assert len(out.records) == 50


@pytest.mark.parametrize("text, want", [("20/60", (20, 60.0)), ("1/0.5", (1, 0.5)), ("off", None)])
def test_parse_rate(text, want):
    assert parse_rate(text) == want


@pytest.mark.parametrize("bad", ["20", "x/60", "0/60", "5/0", "5/-1"])
def test_bad_rates(bad):
    with pytest.raises(RateError):
        parse_rate(bad)


def test_rules_files_carry_rate_limits(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(
        "- rule: a\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n  rate_limit: off\n"
        "- rule: b\n  severity: low\n  events: [exec]\n  condition: proc.name = y\n  rate_limit: {count: 5, per: 30}\n"
        "- rule: c\n  severity: low\n  events: [exec]\n  condition: proc.name = z\n")
    rules = {r.id: r for r in loader.load([str(f)], check_examples=False).rules}
    assert (rules["a"].rate_limit, rules["b"].rate_limit, rules["c"].rate_limit) == (False, (5, 30.0), None)
    lim = AlertRateLimit.for_rules(MemoryWriter(), rules.values())
    assert lim.per_rule == {"a": False, "b": (5, 30.0)}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: a\n  severity: low\n  events: [exec]\n  condition: proc.name = x\n  rate_limit: {count: 0, per: 1}\n")
    with pytest.raises(loader.RulesError, match=r"bad.yaml:5: rule a: rate_limit:"):
        loader.load([str(bad)], check_examples=False)


def test_replay_with_an_alert_rate_delivers_the_first_and_counts_the_rest(tmp_path):
    import orjson
    from click.testing import CliRunner

    from tracer.cli import main
    from tracer.rules.loader import example_record

    fixture = Path(__file__).parent / "fixtures" / "rules" / "tiny.yaml"
    lines = []
    for i in range(5):
        r = example_record({"time": 1 + i / 10, "process": {"pid": 100 + i, "argv": ["chisel", "client", "x:1"]}},
                           "exec", 0)
        lines.append(orjson.dumps(r))
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(main, ["replay", str(path), "--rules", str(fixture), "--alert-rate", "2/60"])
    assert result.exit_code == 0, result.output
    out = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert [r.get("status") or r["rule"] for r in out] == ["tunnel-tool", "tunnel-tool", "alerts_suppressed"]
    assert out[-1]["suppressed"] == 3 and out[-1]["rule"] == "tunnel-tool"
    again = CliRunner().invoke(main, ["replay", str(path), "--rules", str(fixture), "--alert-rate", "2/60"])
    assert again.stdout_bytes == result.stdout_bytes  # record time, not the wall clock
    bad = CliRunner().invoke(main, ["replay", str(path), "--alert-rate", "fast"])
    assert bad.exit_code == 2 and bad.output.strip() == "agentwatch: --alert-rate 'fast' is not N/SECONDS (e.g. 20/60) or off"
