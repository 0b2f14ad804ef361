"""Sandbox patterns, what a cgroup path says about its runtime, and the start-up scan (no root)."""

from __future__ import annotations

import os

import pytest

from tracer.sandboxes import Pattern, PatternError, SandboxClass, classify, components, identify, scan, within

DOCKER_ID = "3f1c" + "a" * 60
CRI_ID = "b" * 64
POD = "0d5e1f2a-1111-2222-3333-444455556666"


def klass(*patterns: str, **kw) -> SandboxClass:
    return SandboxClass(tuple(Pattern.parse(p) for p in patterns), **kw)


@pytest.mark.parametrize("pattern, path, matches", [
    ("docker/*", f"/docker/{DOCKER_ID}", True),
    ("docker/*", "/docker", False),
    ("docker/*", f"/docker/{DOCKER_ID}/child", False),
    ("system.slice/docker-*.scope", f"/system.slice/docker-{DOCKER_ID}.scope", True),
    ("system.slice/docker-*.scope", "/system.slice/ssh.service", False),
    ("kubepods*/**/cri-containerd-*.scope",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/"
     f"cri-containerd-{CRI_ID}.scope", True),
    ("kubepods*/**/cri-containerd-*.scope", f"/kubepods/cri-containerd-{CRI_ID}.scope", True),  # ** may be empty
    ("system.slice/rollout@*.service", "/system.slice/rollout@7.service", True),
    ("system.slice/rollout@*.service", "/system.slice/rollout.service", False),
    ("agentwatch.slice/*", "agentwatch.slice/sb-1", True),  # with or without the leading /
])
def test_patterns_match_whole_components(pattern, path, matches):
    assert Pattern.parse(pattern).matches(components(path)) is matches


def test_may_contain_is_true_only_for_proper_prefixes_of_a_match():
    k8s = Pattern.parse("kubepods*/**/cri-containerd-*.scope")
    assert k8s.may_contain(())
    assert k8s.may_contain(("kubepods.slice",))
    assert k8s.may_contain(("kubepods.slice", "kubepods-burstable.slice", "kubepods-burstable-podX.slice"))
    assert not k8s.may_contain(("system.slice",))
    docker = Pattern.parse("docker/*")
    assert docker.may_contain(("docker",))
    assert not docker.may_contain(("docker", DOCKER_ID))  # a sandbox itself, nothing below it is one


@pytest.mark.parametrize("bad", ["/", "", "a/**", "a/b**/c", "a/../b"])
def test_bad_patterns_are_refused(bad):
    with pytest.raises(PatternError):
        Pattern.parse(bad)


def test_identify_docker_both_drivers_kubernetes_systemd_and_plain():
    d = identify(f"/system.slice/docker-{DOCKER_ID}.scope")
    assert (d.runtime, d.container_id, d.name) == ("docker", DOCKER_ID, f"docker-{DOCKER_ID[:12]}")
    d = identify(f"/docker/{DOCKER_ID}")
    assert (d.runtime, d.container_id) == ("docker", DOCKER_ID)
    k = identify(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD.replace('-', '_')}.slice/"
                 f"cri-containerd-{CRI_ID}.scope")
    assert (k.runtime, k.pod_uid, k.container_id) == ("kubernetes", POD, CRI_ID)
    assert k.name == f"pod-{POD[:8]}/{CRI_ID[:12]}"
    k = identify(f"/kubepods/burstable/pod{POD}/{CRI_ID}")  # the cgroupfs driver's layout
    assert (k.runtime, k.pod_uid) == ("kubernetes", POD)
    s = identify("/system.slice/rollout@7.service")
    assert (s.runtime, s.name) == ("systemd", "rollout@7")
    c = identify("/agentwatch.slice/sb-3")
    assert (c.runtime, c.name, c.container_id) == ("cgroup", "sb-3", None)
    assert identify("/agentwatch.slice/sb-3", "docker").runtime == "docker"  # the config's word wins


def test_classify_first_class_wins_and_parents_are_prefixes():
    classes = [klass("docker/*", on_alert="kill_agent"), klass("**/sb-*")]
    kind, k = classify(f"/docker/{DOCKER_ID}", classes)
    assert kind == "sandbox" and k is classes[0]
    assert classify("/docker", classes)[0] == "parent"
    assert classify("/a/b/sb-1", classes)[1] is classes[1]
    assert classify("/docker/x/y", [klass("docker/*")]) == (None, None)


def test_the_cgroups_of_run_contain_are_never_sandboxes():
    classes = [klass("agentwatch.slice/*")]
    assert classify("/agentwatch.slice/agent-0123456789ab", classes) == (None, None)
    assert classify("/agentwatch.slice/rollout-1", classes)[0] == "sandbox"


def test_within():
    assert within("/a/b/c", "/a/b") and within("/a/b", "/a/b")
    assert not within("/a/bc", "/a/b")


def test_scan_walks_only_parents(tmp_path, monkeypatch):
    for d in [f"docker/{DOCKER_ID}/inner", "system.slice/ssh.service", "user.slice/user-0.slice/deep/deeper",
              "agentwatch.slice/sb-1", "agentwatch.slice/sb-2"]:
        (tmp_path / d).mkdir(parents=True)
    visited = []
    real_scandir = os.scandir

    def counting(path):
        visited.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    sandboxes, parents = scan(tmp_path, [klass("docker/*"), klass("agentwatch.slice/*")])
    assert [f.path for f in sandboxes] == ["/agentwatch.slice/sb-1", "/agentwatch.slice/sb-2", f"/docker/{DOCKER_ID}"]
    assert sorted(p.path for p in parents) == ["/", "/agentwatch.slice", "/docker"]
    assert sandboxes[0].cgroup_id == os.stat(tmp_path / "agentwatch.slice/sb-1").st_ino
    # Never below a sandbox, never into cgroups no pattern can reach.
    assert not any(v.startswith(("user.slice", "system.slice")) or "inner" in v or "sb-" in v for v in visited)
