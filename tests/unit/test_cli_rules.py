"""`agentwatch rules validate|list|test|fields` and `agentwatch replay`, through click's test runner."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from tracer.cli import main
from tracer.rules import fields
from tracer.rules.loader import example_record

FIXTURE = Path(__file__).parent / "fixtures" / "rules" / "tiny.yaml"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def cli(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


BAD = """
- rule: good
  severity: low
  events: [exec]
  condition: proc.name = x

- rule: bad
  severity: low
  events: [exec]
  condition: proc.name = x and (proc.nmae = y
"""


@pytest.fixture
def bad_rules(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def test_validate_ok():
    result = cli("rules", "validate", "--rules", FIXTURE)
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: 5 rules (5 enabled), 1 macros, 1 lists from 1 files\n"


def test_validate_bad_file_is_one_line_and_exit_2(bad_rules):
    result = cli("rules", "validate", "--rules", bad_rules)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (f"{bad_rules}:10: rule bad: condition: unknown field 'proc.nmae' "
                             "(did you mean 'proc.name'?) at column 20\n")
    assert "Traceback" not in result.output


def test_validate_reports_a_failing_example(tmp_path):
    path = tmp_path / "ex.yaml"
    path.write_text(FIXTURE.read_text().replace("argv: [chisel, client", "argv: [chisell, client"))
    result = cli("rules", "validate", "--rules", path)
    assert result.exit_code == 2
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: rule tunnel-tool: examples.match\[0\]: does not match\n",
                        result.stderr)


def test_rules_option_is_repeatable_and_later_files_override(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("- rule: tunnel-tool\n  enabled: false\n- list: tunnel_tools\n  items: [bore]\n")
    result = cli("rules", "list", "--rules", FIXTURE, "--rules", site)
    assert result.exit_code == 0, result.output
    assert "Tunnel tool started (disabled)" in result.stdout


def test_list():
    result = cli("rules", "list", "--rules", FIXTURE)
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert rows[0].split() == ["RULE", "SEVERITY", "KIND", "EVENTS", "MITRE", "INDEX", "TITLE"]
    assert rows[1].split()[:6] == ["ssh-remote-forward", "high", "event", "exec", "T1572", "proc.name|proc.exe~"]
    assert rows[2].split()[:6] == ["tunnel-tool", "medium", "event", "exec", "T1572", "proc.name"]
    assert rows[3].split()[:6] == ["tunnel-then-local", "critical", "sequence", "connect", "T1572",
                                   "net.scope;net.scope"]
    assert rows[4].split()[:6] == ["port-scan", "high", "threshold", "connect", "T1046", "net.internal"]
    assert rows[5].split()[:6] == ["descendant-survives", "medium", "event", "status", "-", "status.name"]


def test_test_passes_and_fails_with_file_and_line(tmp_path):
    ok = cli("rules", "test", "--rules", FIXTURE)
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == "10/10 examples hold, 5 rules\n"
    path = tmp_path / "ex.yaml"
    text = FIXTURE.read_text().replace("{type: exec, process: {comm: ssh, argv: [ssh, host", "{type: exec, process: {comm: ssh, argv: [ssh, -R, host")
    path.write_text(text)
    line = text.splitlines().index(next(l for l in text.splitlines() if "[ssh, -R, host" in l)) + 1
    failed = cli("rules", "test", "--rules", path)
    assert failed.exit_code == 1
    assert failed.stdout.splitlines() == [
        f"{path}:{line}: rule ssh-remote-forward: examples.no_match[0]: matches, but should not",
        "9/10 examples hold, 5 rules",
    ]


def test_test_of_a_broken_file_is_exit_2(bad_rules):
    result = cli("rules", "test", "--rules", bad_rules)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_rules_test_runs_on_whatever_is_in_the_default_directory():
    """The default rules have their own tests; here: `rules test` ends cleanly on them, never a traceback."""
    result = cli("rules", "test")
    assert isinstance(result.exception, SystemExit) or result.exception is None, result.output
    assert result.exit_code in (0, 1, 2)
    assert "Traceback" not in result.output


def test_fields_lists_the_table():
    result = cli("rules", "fields")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == list(fields.FIELDS)


def test_docs_carry_the_fields_table():
    result = cli("rules", "fields", "--markdown")
    assert result.stdout == fields.markdown_table()
    assert fields.markdown_table() in DOCS.read_text(), "docs/rules.md: paste `agentwatch rules fields --markdown`"


def test_run_and_watch_refuse_bad_rules_before_loading_anything(bad_rules):
    for args in (["run", "--rules", bad_rules, "--", "true"], ["watch", "--rules", bad_rules, "--all"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"{bad_rules}:10: rule bad: ")


# --------------------------------------------------------------------------
# replay


def recording(tmp_path) -> Path:
    recs = [
        example_record({"time": 1, "process": {"argv": ["ngrok", "tcp", "22"]}}, "exec", 0),
        example_record({"time": 2, "process": {"argv": ["ls"]}}, "exec", 0),
        example_record({"time": 3, "process": {"argv": ["ssh", "-R", "80:localhost:8080", "u@h"]}}, "exec", 0),
    ]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in recs))
    return path


def test_replay_file_and_stdin_give_the_same_bytes(tmp_path):
    path = recording(tmp_path)
    from_file = cli("replay", path, "--rules", FIXTURE)
    assert from_file.exit_code == 0, from_file.output
    alerts = [orjson.loads(line) for line in from_file.stdout.splitlines()]
    assert [a["rule"] for a in alerts] == ["tunnel-tool", "ssh-remote-forward"]
    assert cli("replay", path, "--rules", FIXTURE).stdout_bytes == from_file.stdout_bytes
    from_stdin = cli("replay", "-", "--rules", FIXTURE, input=path.read_bytes())
    assert from_stdin.stdout_bytes == from_file.stdout_bytes


def test_replay_with_events(tmp_path):
    path = recording(tmp_path)
    result = cli("replay", path, "--rules", FIXTURE, "--events")
    kinds = [orjson.loads(line)["kind"] for line in result.stdout.splitlines()]
    assert kinds == ["event", "alert", "event", "event", "alert"]


def test_replay_table_shows_alerts_readably(tmp_path):
    result = cli("replay", recording(tmp_path), "--rules", FIXTURE, "--format", "table")
    assert result.exit_code == 0, result.output
    header, first, second = result.stdout.splitlines()
    assert header.split()[:7] == ["TIME", "AGENT", "PID", "PPID", "COMM", "TYPE", "DETAIL"]
    assert first.split()[:6] == ["00:00:01.000", "agent-example", "4242", "1", "ngrok", "ALERT"]
    assert first.endswith("MEDIUM tunnel-tool [T1572]: Tunnel tool started")
    assert second.endswith("HIGH ssh-remote-forward [T1572]: ssh (pid 4242) opens a reverse tunnel: "
                           "ssh -R 80:localhost:8080 u@h")


def test_replay_errors_are_one_line(tmp_path, bad_rules):
    path = tmp_path / "rec.jsonl"
    path.write_text('{"kind":"event","type":"exec"}\nnot json\n')
    result = cli("replay", path, "--rules", FIXTURE)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"agentwatch: {path}:2: not a JSON record")
    assert result.stderr.count("\n") == 1
    missing = cli("replay", tmp_path / "nope.jsonl", "--rules", FIXTURE)
    assert missing.exit_code == 2 and "nope.jsonl" in missing.stderr
    bad = cli("replay", path, "--rules", bad_rules)
    assert bad.exit_code == 2 and bad.stderr.startswith(f"{bad_rules}:10:")


def test_replay_output_file(tmp_path):
    out = tmp_path / "alerts.jsonl"
    result = cli("replay", recording(tmp_path), "--rules", FIXTURE, "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert len(out.read_bytes().splitlines()) == 2


SIGMA = Path(__file__).parent / "fixtures" / "sigma"


def split_runner() -> CliRunner:
    """stderr apart from stdout: click 8.2+ always keeps them apart, older ones need mix_stderr=False."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def test_import_sigma_writes_a_rules_file_that_loads(tmp_path):
    out = tmp_path / "sigma-rules.yaml"
    res = split_runner().invoke(main, ["rules", "import-sigma", str(SIGMA), "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    refused = [line for line in res.stderr.splitlines() if line.startswith("refused: ")]
    imported, n_refused = map(int, re.search(r"imported (\d+) rules, refused (\d+)", res.stderr).groups())
    assert imported > 0 and n_refused == len(refused) > 0
    assert any("'TargetFilename'" in line for line in refused)  # the reason is named
    text = out.read_text()
    assert text.startswith("# Imported from Sigma by agentwatch") and text.count("\n- rule: ") == imported
    res = cli("rules", "validate", "--rules", "rules", "--rules", out)
    assert res.exit_code == 0, res.output


def test_import_sigma_of_a_missing_path_is_one_line(tmp_path):
    res = split_runner().invoke(main, ["rules", "import-sigma", str(tmp_path / "none")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_sigma_files_given_to_rules_warn_for_refusals_and_load_the_rest():
    res = split_runner().invoke(main, ["rules", "validate", "--rules", "rules", "--rules", str(SIGMA)])
    assert res.exit_code == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings and all(": sigma rule '" in w for w in warnings)
