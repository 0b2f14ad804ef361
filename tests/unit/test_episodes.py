"""Episode timelines: a record belongs to the episode in force at its kernel time."""

from __future__ import annotations

import pytest

from tracer.episodes import KEEP, EpisodeError, Timeline, check_id


def test_a_record_falls_in_the_episode_of_its_kernel_time_not_of_its_reading():
    t = Timeline()
    assert t.at(50) is None and t.current is None
    e1, ended = t.begin("ep-1", {"task": "a"}, 100)
    assert ended is None
    e2, ended = t.begin("ep-2", {"task": "b"}, 200)  # begin ends the one in force, at the same instant
    assert ended is e1 and e1.end_ns == 200
    assert t.at(99) is None
    assert t.at(100) is e1 and t.at(199) is e1
    assert t.at(200) is e2
    t.end(300)
    assert t.at(299) is e2 and t.at(300) is None and t.current is None
    assert t.at(None) is None  # now: between episodes
    e3, _ = t.begin("ep-3", {}, 400)
    assert t.at(350) is None and t.at(10**12) is e3 and t.at(None) is e3


def test_ids_are_unique_per_sandbox_and_time_only_goes_forward():
    t = Timeline()
    t.begin("a", {}, 10)
    with pytest.raises(EpisodeError):
        t.begin("a", {}, 20)
    with pytest.raises(EpisodeError):
        t.begin("b", {}, 5)
    for bad in ["", "-x", "a b", "x" * 200, "a/b", "a\nb"]:
        with pytest.raises(EpisodeError):
            check_id(bad)
    assert check_id("swe-123:step@4.1_x") == "swe-123:step@4.1_x"


def test_only_the_last_episodes_are_kept_and_alerts_are_bounded():
    t = Timeline()
    for i in range(KEEP + 10):
        t.begin(f"e{i}", {}, i * 10)
    assert t.count == KEEP + 10
    assert t.find("e0") is None and t.find(f"e{KEEP + 9}") is not None
    assert t.at(5) is None  # older than anything kept
    ep = t.current
    for i in range(1005):
        ep.add_alert({"n": i})
    assert ep.alert_count == 1005 and len(ep.alerts) == 1000


def test_restore_carries_the_episode_in_force_over_a_restart():
    t = Timeline()
    ep, _ = t.begin("ep-9", {"k": "v"}, 1000)
    ep.alert_count, ep.records = 2, 7
    saved = ep.state()
    fresh = Timeline()
    fresh.restore(saved, count=9)
    assert fresh.current.id == "ep-9" and fresh.current.alert_count == 2 and fresh.current.records == 7
    assert fresh.at(1500).labels == {"k": "v"} and fresh.count == 9
    fresh.begin("ep-10", {}, 2000)
    assert fresh.count == 10
