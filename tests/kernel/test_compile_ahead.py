"""bpfobject.Ahead: a compile in a forked child gives the object a compile here gives, while this process compiles another."""

from __future__ import annotations

import os

import pytest

from tracer import bpfobject
from tracer.probes import PolicyProbes, ProbeError, _policy_program

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BCC compiles need root here (kernel headers, /sys)")

SMALL = """
BPF_HASH(aw_seen, u32, u64, 16);
int tracepoint__syscalls__sys_enter_getppid(void *ctx) {
    u32 k = 1; u64 v = bpf_ktime_get_ns();
    aw_seen.update(&k, &v);
    return 0;
}
"""


def _same(a: bpfobject.CompiledObject, b: bpfobject.CompiledObject) -> None:
    assert a.functions == b.functions
    assert [(m.name, m.type, m.key_size, m.leaf_size, m.max_entries) for m in a.maps] == \
           [(m.name, m.type, m.key_size, m.leaf_size, m.max_entries) for m in b.maps]


def test_the_child_compiles_what_a_compile_here_gives_and_the_cache_keeps_it(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    ahead = bpfobject.compile_ahead(SMALL, [], cache)
    assert ahead is not None and ahead.pid > 0
    here = bpfobject.compile_with_bcc(SMALL, [])  # meanwhile, in this process: BCC is not shared
    obj, from_cache = bpfobject.compiled(SMALL, [], cache, ahead=ahead)
    assert not from_cache
    _same(obj, here)
    with pytest.raises(ChildProcessError):
        os.waitpid(ahead.pid or -1, os.WNOHANG)  # reaped
    # Now cached: nothing to compile ahead.
    assert bpfobject.compile_ahead(SMALL, [], cache) is None
    _same(bpfobject.compiled(SMALL, [], cache)[0], here)


def test_a_compile_error_in_the_child_is_the_compile_error_here(tmp_path):
    ahead = bpfobject.compile_ahead("int broken( {", [], tmp_path)
    with pytest.raises(bpfobject.CompileError, match=r"\S"):
        ahead.result()


def test_a_cancelled_compile_leaves_no_process(tmp_path):
    ahead = bpfobject.compile_ahead(SMALL, ["-DAW_UNUSED=1"], tmp_path)
    pid = ahead.pid
    ahead.cancel()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    ahead.cancel()  # twice is harmless (the session's callback after PolicyProbes took it)


def test_policy_probes_take_the_object_compiled_ahead(tmp_path, monkeypatch):
    monkeypatch.setenv(bpfobject.CACHE_ENV, str(tmp_path))
    os.chmod(tmp_path, 0o700)
    ahead = PolicyProbes.compile_ahead()
    assert ahead is not None
    try:
        with PolicyProbes(ahead) as pp:
            assert not pp.from_cache
    except ProbeError as exc:  # a kernel without cgroup sock_addr programs: the compile still counts
        pytest.skip(str(exc))
    text, cflags = _policy_program()
    assert bpfobject.compile_ahead(text, cflags) is None  # stored in the cache by the parent
