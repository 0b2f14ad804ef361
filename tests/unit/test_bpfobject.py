"""The compiled-object cache's pure parts: relocation, the check of map references, trust of cache files."""

import os
import struct

import pytest

from tracer import bpfobject
from tracer.bpfobject import CompiledObject, MapSpec, ObjectError


def insn(op, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", op, (src << 4) | dst, off, imm)


def ld_map(fd):
    return insn(0x18, dst=1, src=1, imm=fd) + insn(0)


def obj(code, fds=(7,)):
    maps = [MapSpec(f"m{fd}", 1, 4, 4, 16, 0, '"int"', '"int"', fd) for fd in fds]
    return CompiledObject("GPL", 0, maps, {"prog": code})


def test_map_fds_and_placeholders_are_rewritten_and_nothing_else():
    magic = bpfobject.SELF_TGID_PLACEHOLDER
    code = ld_map(7) + insn(0x15, dst=1, imm=magic) + insn(0xb7, imm=42) + insn(0x95)
    out = bpfobject.relocate(code, {7: 31}, {magic: 1234})
    assert struct.unpack_from("<i", out, 4)[0] == 31
    assert struct.unpack_from("<i", out, 20)[0] == 1234
    assert out[24:] == code[24:]


def test_a_reference_to_an_unknown_map_is_refused():
    with pytest.raises(ObjectError, match="map fd 9"):
        bpfobject.check_relocations(obj(ld_map(9) + insn(0x95)))
    bpfobject.check_relocations(obj(ld_map(7) + insn(0x95)))


def test_sub_program_calls_are_refused():
    with pytest.raises(ObjectError, match="sub-program"):
        bpfobject.check_relocations(obj(insn(0x85, src=1, imm=2) + insn(0x95)))


def test_round_trip_through_the_cache(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the cache trusts only root's files")
    d = tmp_path / "cache"
    o = obj(ld_map(7) + insn(0x95))
    assert bpfobject.store_cached(d, "k", o)
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    back = bpfobject.load_cached(d, "k")
    assert back.functions == o.functions and back.maps == o.maps


def test_a_cache_file_others_can_write_is_ignored(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the cache trusts only root's files")
    d = tmp_path / "cache"
    bpfobject.store_cached(d, "k", obj(ld_map(7) + insn(0x95)))
    (d / "k.json").chmod(0o666)
    assert bpfobject.load_cached(d, "k") is None


def test_a_damaged_cache_file_is_ignored(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the cache trusts only root's files")
    d = tmp_path / "cache"
    bpfobject.store_cached(d, "k", obj(ld_map(7) + insn(0x95)))
    (d / "k.json").write_bytes(b"{not json")
    assert bpfobject.load_cached(d, "k") is None


def test_the_key_follows_source_and_flags():
    assert bpfobject.cache_key("a", ["-DX=1"]) == bpfobject.cache_key("a", ["-DX=1"])
    assert bpfobject.cache_key("a", ["-DX=1"]) != bpfobject.cache_key("a", ["-DX=2"])
    assert bpfobject.cache_key("a", []) != bpfobject.cache_key("b", [])
