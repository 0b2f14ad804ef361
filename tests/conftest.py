"""Tiers: tests/unit runs anywhere; tests/kernel and tests/scenarios need root and the real kernel.

The root tiers are skipped with the reason when the machine cannot run them,
never silently.
"""

from __future__ import annotations

import os

import pytest

from tracer.probes import tracefs

ROOT_TIERS = ("tests/kernel/", "tests/scenarios/")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (run `make test` as root)"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if tracefs() is None:
        return "tracefs not mounted (run `make setup`)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc Python module missing (run `make setup`)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_not()
    if reason and os.environ.get("AGENTWATCH_REQUIRE_KERNEL") == "1":
        # CI sets this: there a skipped kernel tier is a failure, not a pass.
        raise pytest.UsageError(f"AGENTWATCH_REQUIRE_KERNEL=1 but the kernel tiers cannot run: {reason}")
    for item in items:
        if any(tier in str(item.fspath) for tier in ROOT_TIERS):
            item.add_marker(pytest.mark.root)
            if "tests/scenarios/" in str(item.fspath):
                item.add_marker(pytest.mark.scenario)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


