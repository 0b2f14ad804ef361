"""--label parsing and the agent registry."""

from __future__ import annotations

import re

import pytest

from tracer.agents import Agent, AgentRegistry, LabelError, parse_labels


@pytest.mark.parametrize(
    "pairs, labels",
    [
        ([], {}),
        (("team=red",), {"team": "red"}),
        (["a=1", "b=2"], {"a": "1", "b": "2"}),
        (["url=https://x/?q=1&r=2"], {"url": "https://x/?q=1&r=2"}),  # split at the first '='
        (["empty="], {"empty": ""}),
        ([" key =value "], {"key": "value "}),  # key trimmed, value kept as given
        (["k=v", "k=w"], {"k": "w"}),  # the last one wins
        (["owner=caf\u00e9 \u6f22"], {"owner": "caf\u00e9 \u6f22"}),
    ],
)
def test_parse_labels_good(pairs, labels):
    assert parse_labels(pairs) == labels


@pytest.mark.parametrize("bad", ["novalue", "", "=value", "  =value", "\t=x"])
def test_parse_labels_bad(bad):
    with pytest.raises(LabelError, match=re.escape(repr(bad))):
        parse_labels(["ok=1", bad])


def test_label_error_is_a_value_error():
    assert issubclass(LabelError, ValueError)


def test_registry_ids_are_unique():
    reg = AgentRegistry()
    agents = [reg.new(1000 + i) for i in range(200)]
    assert [a.kernel_id for a in agents] == list(range(1, 201))  # 0 means "no agent" in the kernel
    assert len({a.id for a in agents}) == 200
    assert all(re.fullmatch(r"agent-[0-9a-f]{12}", a.id) for a in agents)
    assert all(reg.by_kernel_id(a.kernel_id) is a for a in agents)
    assert list(reg) == agents


def test_registry_lookup_misses():
    reg = AgentRegistry()
    reg.new(1)
    assert reg.by_kernel_id(0) is None
    assert reg.by_kernel_id(2) is None


def test_new_agent_with_explicit_id_and_labels():
    reg = AgentRegistry()
    labels = {"team": "red"}
    agent = reg.new(4242, labels, agent_id="my-agent")
    assert (agent.id, agent.kernel_id, agent.root_pid) == ("my-agent", 1, 4242)
    labels["team"] = "changed"
    assert agent.labels == {"team": "red"}  # copied, not shared with the caller
    assert agent.as_json() == {"id": "my-agent", "root_pid": 4242, "labels": {"team": "red"}}
    assert reg.new(1).labels == {}


def test_registries_are_independent():
    a, b = AgentRegistry(), AgentRegistry()
    assert a.new(1).kernel_id == b.new(2).kernel_id == 1
    assert isinstance(a.by_kernel_id(1), Agent) and a.by_kernel_id(1).root_pid == 1
