"""Shipping recipes: the Kubernetes DaemonSet against Kubernetes' own schemas, and the Vector and
Fluent Bit configs against what the daemon writes (neither shipper is packaged by Debian, so
they are checked for structure here, not run)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tracer import fleetconfig

REPO = Path(__file__).resolve().parents[2]
DAEMONSET = REPO / "packaging" / "kubernetes" / "agentwatch-daemonset.yaml"
SHIPPING = REPO / "packaging" / "shipping"
K8S = "1.37.0"


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]


def test_every_document_validates_strictly_against_kubernetes_schemas():
    docs = documents()
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
    for d in docs:
        kubernetes_validate.validate(d, K8S, strict=True)


def test_a_broken_manifest_is_caught():
    ds = documents()[-1]
    ds["spec"]["template"]["spec"]["hostPid"] = True  # misspelt: strict validation refuses unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S, strict=True)


def test_the_daemonset_has_what_the_daemon_needs():
    ds = documents()[-1]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    [c] = pod["containers"]
    assert c["securityContext"]["privileged"] is True
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/sys/fs/cgroup", "/sys/kernel/tracing", "/sys/kernel/btf", "/lib/modules", "/run/agentwatch",
            "/var/log/agentwatch"} <= mounts
    hostpaths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/sys/fs/cgroup", "/sys/kernel/tracing", "/sys/kernel/btf"} <= hostpaths


def test_the_configmap_is_a_valid_daemon_config():
    cm = documents()[2]
    config = fleetconfig.parse(cm["data"]["agentwatch.yaml"], "configmap:agentwatch.yaml", REPO)
    assert any(p.text.startswith("kubepods") for c in config.sandboxes for p in c.patterns)
    assert config.output.startswith("/var/log/agentwatch/")


@pytest.mark.parametrize("name", ["vector.yaml", "fluent-bit.yaml"])
def test_shippers_read_the_daemon_s_log_directory_and_send_to_kafka_and_elasticsearch(name):
    conf = yaml.safe_load((SHIPPING / name).read_text())
    text = (SHIPPING / name).read_text()
    assert "/var/log/agentwatch/ecs.jsonl" in text
    if name == "vector.yaml":
        assert conf["sources"]["agentwatch"]["type"] == "file"
        kinds = {s["type"] for s in conf["sinks"].values()}
        for sink in conf["sinks"].values():
            assert set(sink["inputs"]) <= set(conf["transforms"]) | set(conf["sources"])
            assert sink["buffer"]["type"] == "disk"  # an outage of the SIEM waits on disk
    else:
        assert conf["pipeline"]["inputs"][0]["name"] == "tail"
        kinds = {o["name"] for o in conf["pipeline"]["outputs"]}
        assert conf["pipeline"]["inputs"][0]["storage.type"] == "filesystem"
    assert {"kafka"} <= kinds and ({"elasticsearch"} <= kinds or {"es"} <= kinds)
