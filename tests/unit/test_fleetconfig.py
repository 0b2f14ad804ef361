"""The daemon's config: what it accepts, and one line naming file, line and field for what it does not."""

from __future__ import annotations

import textwrap

import pytest

from tracer import fleetconfig
from tracer.fleetconfig import ConfigError, parse

REPO_POLICY = str(fleetconfig.Path(__file__).resolve().parents[2] / "policies" / "rl-sandbox.yaml")


def cfg(text: str):
    return parse(textwrap.dedent(text), "fleet.yaml")


def test_a_full_config():
    c = cfg(f"""\
        control: {{socket: /run/aw/c.sock, mode: "0600"}}
        output: /var/log/aw.jsonl
        events: true
        state: /run/aw/state.json
        internal_cidrs: [10.0.0.0/8]
        allow_dests: 198.51.100.7/32
        sandboxes:
          - match: [system.slice/docker-*.scope, docker/*]
            runtime: docker
            policy: {REPO_POLICY}
            on_alert: freeze_agent
            min_severity: critical
            labels: {{pool: rollout, gen: 3}}
          - match: agentwatch.slice/*
        """)
    assert c.control.socket == "/run/aw/c.sock" and c.control.mode == 0o600 and c.control.gid is None
    assert c.events and c.output == "/var/log/aw.jsonl" and c.allow_dests == ("198.51.100.7/32",)
    docker, plain = c.sandboxes
    assert [p.text for p in docker.patterns] == ["system.slice/docker-*.scope", "docker/*"]
    assert (docker.runtime, docker.on_alert, docker.min_severity) == ("docker", "freeze_agent", "critical")
    assert docker.labels == {"pool": "rollout", "gen": "3"} and docker.line == 8
    assert c.policies[REPO_POLICY].name == "rl-sandbox"
    assert (plain.on_alert, plain.min_severity, plain.policy) == ("rule", "high", None)


@pytest.mark.parametrize("text, message", [
    ("", "fleet.yaml:1: config: the file is empty"),
    ("sandboxes: [\n", "fleet.yaml:2: YAML:"),
    ("- a\n", "fleet.yaml:1: config: the config is a mapping"),
    ("sandboxes:\n  - match: a/*\nbogus: 1\n", "fleet.yaml:3: bogus: unknown key"),
    ("sandboxes: []\n", "fleet.yaml:1: sandboxes: needs a list of at least one entry"),
    ("output: x\n", "fleet.yaml:1: sandboxes: needs a list"),
    ("sandboxes:\n  - runtime: docker\n", "fleet.yaml:2: sandboxes[0].match: needs at least one"),
    ("sandboxes:\n  - match: a/*\n    on_alert: nuke\n", "fleet.yaml:3: sandboxes[0].on_alert: 'nuke' is not one of"),
    ("sandboxes:\n  - match: a/*\n  - match: [b/*, 'c/**']\n", "fleet.yaml:3: sandboxes[1].match: 'c/**': a pattern cannot end"),
    ("sandboxes:\n  - match: a/*\n    runtime: lxc\n", "fleet.yaml:3: sandboxes[0].runtime: 'lxc' is not one of"),
    ("sandboxes:\n  - match: a/*\n    min_severity: urgent\n", "fleet.yaml:3: sandboxes[0].min_severity:"),
    ("sandboxes:\n  - match: a/*\n    labels: [x]\n", "fleet.yaml:3: sandboxes[0].labels: must be a mapping"),
    ("sandboxes:\n  - match: a/*\n    dry_run: maybe\n", "fleet.yaml:3: sandboxes[0].dry_run: must be true or false"),
    ("sandboxes:\n  - match: a/*\n    extra: 1\n", "fleet.yaml:3: sandboxes[0].extra: unknown key"),
    ("control: {group: no-such-group-aw}\nsandboxes: [{match: a/*}]\n", "fleet.yaml:1: control.group: no such group"),
    ("control: {mode: rwx}\nsandboxes: [{match: a/*}]\n", "fleet.yaml:1: control.mode: 'rwx' is not an octal"),
    ("control: {socket: rel.sock}\nsandboxes: [{match: a/*}]\n", "fleet.yaml:1: control.socket: must be an absolute"),
    ("internal_cidrs: [10.0.0.0/33]\nsandboxes: [{match: a/*}]\n", "fleet.yaml:1: internal_cidrs: '10.0.0.0/33'"),
    ("max_sandboxes: 0\nsandboxes: [{match: a/*}]\n", "fleet.yaml:1: max_sandboxes:"),
    ("sandboxes:\n  - match: a/*\n    policy: /nonexistent/p.yaml\n",
     "fleet.yaml:3: sandboxes[0].policy: /nonexistent/p.yaml: cannot read the policy"),
])
def test_errors_name_file_line_and_field(text, message):
    with pytest.raises(ConfigError) as exc:
        parse(text, "fleet.yaml")
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_bad_policy_file_reports_the_policy_s_own_line(tmp_path):
    (tmp_path / "p.yaml").write_text("name: p\nrules:\n  - name: x\n    action: maybe\n")
    (tmp_path / "fleet.yaml").write_text("sandboxes:\n  - match: a/*\n    policy: p.yaml\n")
    with pytest.raises(ConfigError) as exc:
        fleetconfig.load(tmp_path / "fleet.yaml")
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path}/fleet.yaml:3: sandboxes[0].policy: {tmp_path}/p.yaml:4:"), msg


def test_a_missing_file_is_one_line():
    with pytest.raises(ConfigError, match=r"^/no/such/aw.yaml:1: config: cannot read it"):
        fleetconfig.load("/no/such/aw.yaml")
