"""Unit tests for tracer/btf.py on synthetic BTF blobs (no root, no /sys)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess

import pytest

from tracer import btf
from tracer.btf import BtfError


# --------------------------------------------------------------------------
# A tiny BTF writer.  Every add_* method returns the new type id (ids start
# at 1 and follow insertion order, as in the kernel format).
# --------------------------------------------------------------------------

class BtfBuilder:
    def __init__(self) -> None:
        self._strs = bytearray(b"\0")
        self._str_off: dict[str, int] = {"": 0}
        self._types: list[bytes] = []

    # strings / raw records
    def s(self, name: str | None) -> int:
        if not name:
            return 0
        if name not in self._str_off:
            self._str_off[name] = len(self._strs)
            self._strs += name.encode() + b"\0"
        return self._str_off[name]

    def _add(self, name, kind, vlen=0, size_or_type=0, kind_flag=0, extra=b""):
        info = (kind_flag << 31) | (kind << 24) | vlen
        self._types.append(
            struct.pack("<III", self.s(name), info, size_or_type) + extra
        )
        return len(self._types)

    # kinds
    def int_(self, name, size, nr_bits=None, bit_offset=0, encoding=0):
        nr_bits = size * 8 if nr_bits is None else nr_bits
        enc = (encoding << 24) | (bit_offset << 16) | nr_bits
        return self._add(name, btf.KIND_INT, 0, size, extra=struct.pack("<I", enc))

    def ptr(self, t):
        return self._add(None, btf.KIND_PTR, 0, t)

    def array(self, elem, index, nelems):
        return self._add(None, btf.KIND_ARRAY, 0, 0,
                         extra=struct.pack("<III", elem, index, nelems))

    def struct(self, name, size, members, kind_flag=0, union=False):
        """members: (name, type_id, bit_offset[, bitfield_size])."""
        extra = b""
        for m in members:
            m_name, m_type, bits = m[:3]
            bf = m[3] if len(m) > 3 else 0
            off = (bf << 24) | bits if kind_flag else bits
            extra += struct.pack("<III", self.s(m_name), m_type, off)
        kind = btf.KIND_UNION if union else btf.KIND_STRUCT
        return self._add(name, kind, len(members), size, kind_flag, extra)

    def union(self, name, size, members, kind_flag=0):
        return self.struct(name, size, members, kind_flag, union=True)

    def enum(self, name, size, values):
        extra = b"".join(struct.pack("<Ii", self.s(n), v) for n, v in values)
        return self._add(name, btf.KIND_ENUM, len(values), size, extra=extra)

    def enum64(self, name, size, values):
        extra = b"".join(
            struct.pack("<III", self.s(n), v & 0xFFFFFFFF, v >> 32) for n, v in values
        )
        return self._add(name, btf.KIND_ENUM64, len(values), size, extra=extra)

    def fwd(self, name, union=False):
        return self._add(name, btf.KIND_FWD, 0, 0, kind_flag=int(union))

    def typedef(self, name, t):
        return self._add(name, btf.KIND_TYPEDEF, 0, t)

    def volatile(self, t):
        return self._add(None, btf.KIND_VOLATILE, 0, t)

    def const(self, t):
        return self._add(None, btf.KIND_CONST, 0, t)

    def restrict(self, t):
        return self._add(None, btf.KIND_RESTRICT, 0, t)

    def func(self, name, proto, linkage=1):
        return self._add(name, btf.KIND_FUNC, linkage, proto)

    def func_proto(self, ret, params):
        extra = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        return self._add(None, btf.KIND_FUNC_PROTO, len(params), ret, extra=extra)

    def var(self, name, t, linkage=1):
        return self._add(name, btf.KIND_VAR, 0, t, extra=struct.pack("<I", linkage))

    def datasec(self, name, size, entries):
        extra = b"".join(struct.pack("<III", t, off, sz) for t, off, sz in entries)
        return self._add(name, btf.KIND_DATASEC, len(entries), size, extra=extra)

    def float_(self, name, size):
        return self._add(name, btf.KIND_FLOAT, 0, size)

    def decl_tag(self, name, t, component_idx=-1):
        return self._add(name, btf.KIND_DECL_TAG, 0, t,
                         extra=struct.pack("<i", component_idx))

    def type_tag(self, name, t):
        return self._add(name, btf.KIND_TYPE_TAG, 0, t)

    def raw(self, record: bytes):
        self._types.append(record)
        return len(self._types)

    # output
    def build(self, magic=btf.BTF_MAGIC, version=1, big_endian=False) -> bytes:
        tsec = b"".join(self._types)
        ssec = bytes(self._strs)
        order = ">" if big_endian else "<"
        if big_endian:  # every type-section field is a u32: swap word by word
            n = len(tsec) // 4
            tsec = struct.pack(f">{n}I", *struct.unpack(f"<{n}I", tsec))
        hdr = struct.pack(f"{order}HBBIIIII", magic, version, 0, 24,
                          0, len(tsec), len(tsec), len(ssec))
        return hdr + tsec + ssec

    def parse(self, **kw) -> btf.Btf:
        return btf.parse_btf(self.build(**kw), "<test>")


def base_types(b: BtfBuilder):
    u8 = b.int_("unsigned char", 1)
    u16 = b.int_("short unsigned int", 2)
    u32 = b.int_("unsigned int", 4)
    u64 = b.int_("long long unsigned int", 8)
    return u8, u16, u32, u64


# --------------------------------------------------------------------------

def test_plain_struct():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.struct("point", 16, [("x", u32, 0), ("flag", u8, 32), ("y", u64, 64)])
    t = b.parse()
    assert t.member_offset("point", "x") == 0
    assert t.member_offset("point", "flag") == 4
    assert t.member_offset("point", "y") == 8
    assert t.member_size("point", "y") == 8
    assert t.member_size("point", "flag") == 1
    assert t.struct_size("point") == 16
    assert t.type_count == 5


def test_member_name_prefix_does_not_match():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    # "pidfd" / "tgid_x" come first and must not be confused with "pid"/"tgid"
    b.struct("task", 24, [("pidfd", u32, 0), ("tgid_x", u32, 32),
                          ("pid", u32, 64), ("tgid", u32, 96), ("x_pid", u64, 128)])
    t = b.parse()
    assert t.member_offset("task", "pid") == 8
    assert t.member_offset("task", "tgid") == 12
    with pytest.raises(BtfError, match="no member 'pi'"):
        t.member_offset("task", "pi")


def test_nested_anonymous_union_in_anonymous_struct():
    """Mimics sock_common: skc_num sits in anon struct > anon union > anon struct."""
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    ports = b.struct(None, 4, [("skc_dport", u16, 0), ("skc_num", u16, 16)])
    portpair = b.union(None, 4, [("skc_portpair", u32, 0), (None, ports, 0)])
    addrs = b.struct(None, 8, [("skc_daddr", u32, 0), ("skc_rcv_saddr", u32, 32)])
    addrpair = b.union(None, 8, [("skc_addrpair", u64, 0), (None, addrs, 0)])
    outer_anon = b.struct(None, 8, [("skc_hash", u32, 0), (None, portpair, 32)])
    const_anon = b.const(outer_anon)  # anonymous member reached through a modifier
    b.struct("sock_common", 40, [
        (None, addrpair, 0),
        (None, outer_anon, 64),     # bytes 8..15
        ("skc_family", u16, 128),
        (None, const_anon, 192),    # bytes 24..31 (second copy, later)
    ])
    t = b.parse()
    assert t.member_offset("sock_common", "skc_rcv_saddr") == 4
    assert t.member_offset("sock_common", "skc_daddr") == 0
    assert t.member_offset("sock_common", "skc_hash") == 8
    assert t.member_offset("sock_common", "skc_portpair") == 12
    assert t.member_offset("sock_common", "skc_dport") == 12
    assert t.member_offset("sock_common", "skc_num") == 14   # first match wins
    assert t.member_size("sock_common", "skc_num") == 2
    assert t.member_offset("sock_common", "skc_family") == 16
    with pytest.raises(BtfError, match="no member 'skc_v6'"):
        t.member_offset("sock_common", "skc_v6")


def test_union_as_container():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    inner = b.struct(None, 8, [("lo", u32, 0), ("hi", u32, 32)])
    b.union("word", 8, [("v", u64, 0), (None, inner, 0)])
    t = b.parse()
    assert t.member_offset("word", "hi") == 4
    assert t.member_size("word", "v") == 8
    assert t.struct_size("word") == 8


def test_bitfields_with_kind_flag():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.struct("bits", 16, [
        ("lo", u32, 0, 3),         # bits 0..2
        ("mid", u32, 3, 5),        # bits 3..7
        ("byte", u32, 16, 8),      # byte-aligned 8-bit bitfield
        ("odd", u32, 27, 3),       # not byte-aligned
        ("wide", u32, 32, 16),     # byte-aligned, 2 bytes wide
        ("plain", u64, 64, 0),     # ordinary member in a kind_flag struct
    ], kind_flag=1)
    t = b.parse()
    assert t.member_offset("bits", "lo") == 0
    assert t.member_offset("bits", "byte") == 2
    assert t.member_size("bits", "byte") == 1
    assert t.member_offset("bits", "wide") == 4
    assert t.member_size("bits", "wide") == 2
    assert t.member_offset("bits", "plain") == 8
    assert t.member_size("bits", "plain") == 8
    assert t.member_bit_offset("bits", "odd") == 27
    with pytest.raises(BtfError, match=r"bits\.odd is a bitfield \(3 bits at bit offset 27\)"):
        t.member_offset("bits", "odd")
    with pytest.raises(BtfError, match="bits.mid is a bitfield"):
        t.member_offset("bits", "mid")
    with pytest.raises(BtfError, match="3-bit bitfield"):
        t.member_size("bits", "lo")


def test_bitfield_without_kind_flag_uses_int_encoding():
    """Old-style bitfields: the INT type carries the bit offset and width."""
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    bf3 = b.int_("unsigned int", 4, nr_bits=3, bit_offset=2)
    bf8 = b.int_("unsigned int", 4, nr_bits=8, bit_offset=0)
    b.struct("old", 8, [("a", bf3, 0), ("b", bf8, 8), ("c", u32, 32)])
    t = b.parse()
    with pytest.raises(BtfError, match="not aligned to a byte"):
        t.member_offset("old", "a")
    assert t.member_offset("old", "b") == 1
    assert t.member_size("old", "b") == 1
    assert t.member_offset("old", "c") == 4


def test_typedefd_member_sizes():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    pid_t = b.typedef("pid_t", b.int_("int", 4, encoding=1))
    vpid = b.volatile(b.const(pid_t))
    u16_t = b.typedef("__u16", u16)
    arr = b.array(u16_t, u32, 4)
    arr2 = b.array(arr, u32, 3)              # u16[3][4]
    inner = b.struct("inner", 24, [("x", u64, 0)])
    inner_t = b.typedef("inner_t", inner)
    p = b.ptr(inner)
    cp = b.restrict(b.const(b.typedef("inner_p", p)))
    e = b.enum("state", 4, [("A", 0), ("B", 1)])
    e64 = b.enum64("big", 8, [("X", 1 << 40)])
    dbl = b.typedef("dbl", b.float_("double", 8))
    tagged = b.type_tag("user", p)
    flex = b.array(u8, u32, 0)
    b.struct("holder", 128, [
        ("pid", vpid, 0), ("ports", arr, 32), ("grid", arr2, 96), ("in", inner_t, 192),
        ("ptr", cp, 384), ("st", e, 448), ("st64", e64, 512), ("d", dbl, 576),
        ("uptr", tagged, 640), ("tail", flex, 704),
    ])
    t = b.parse()
    sizes = {m: t.member_size("holder", m) for m in
             ("pid", "ports", "grid", "in", "ptr", "st", "st64", "d", "uptr", "tail")}
    assert sizes == {"pid": 4, "ports": 8, "grid": 24, "in": 24, "ptr": 8,
                     "st": 4, "st64": 8, "d": 8, "uptr": 8, "tail": 0}
    assert t.member_offset("holder", "ptr") == 48


def test_member_of_fwd_only_type_has_no_size():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    opaque = b.fwd("opaque")
    b.struct("box", 8, [("o", opaque, 0)])
    t = b.parse()
    with pytest.raises(BtfError, match=r"box\.o: .*FWD.* has no size"):
        t.member_size("box", "o")


def test_fwd_and_empty_declarations_before_definition():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.fwd("target")
    b.struct("target", 0, [])                     # zero-size: not the definition
    p = b.ptr(b.fwd("target", union=False))
    b.struct("user", 8, [("t", p, 0)])
    tid = b.struct("target", 16, [("a", u64, 0), ("b", u32, 64)])
    b.struct("target", 32, [("a", u64, 128)])    # later duplicate: ignored
    b.struct("only_empty", 0, [])
    b.fwd("only_fwd")
    t = b.parse()
    assert t.find_struct("target") == tid
    assert t.member_offset("target", "b") == 8
    assert t.struct_size("target") == 16
    assert t.member_size("user", "t") == 8
    assert t.struct_size("only_empty") == 0
    with pytest.raises(BtfError, match="no member 'x'"):
        t.member_offset("only_empty", "x")
    with pytest.raises(BtfError, match="no struct or union named 'only_fwd'"):
        t.member_offset("only_fwd", "x")


def test_missing_struct_and_member_errors():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.struct("task_struct", 8, [("pid", u32, 0)])
    b.typedef("not_a_struct", u32)
    t = b.parse()
    with pytest.raises(BtfError, match="no struct or union named 'files_struct'"):
        t.member_offset("files_struct", "fdt")
    with pytest.raises(BtfError, match="no struct or union named 'not_a_struct'"):
        t.member_offset("not_a_struct", "x")
    with pytest.raises(BtfError, match="struct 'task_struct' .* has no member 'tgid'"):
        t.member_offset("task_struct", "tgid")
    with pytest.raises(BtfError, match="has no member"):
        t.member_size("task_struct", "tgid")
    with pytest.raises(BtfError, match="no member ''"):
        t.member_offset("task_struct", "")
    with pytest.raises(BtfError, match="empty struct name"):
        t.member_offset("", "pid")
    with pytest.raises(BtfError, match="has no member 'tgid'"):
        btf.offsets([("task_struct", "pid"), ("task_struct", "tgid")], btf=t)


def test_all_kinds_interleaved_before_target():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    i32 = b.int_("int", 4, encoding=1)
    b.enum("e", 4, [("E0", 0), ("E1", 1), ("E2", -1)])
    proto = b.func_proto(i32, [("a", u32), ("b", b.ptr(u8)), (None, 0)])
    b.func("do_thing", proto, linkage=1)
    b.func_proto(0, [])
    v = b.var("some_var", u32, linkage=1)
    v2 = b.var("other_var", u64)
    b.datasec(".data..percpu", 12, [(v, 0, 4), (v2, 4, 8)])
    b.enum64("e64", 8, [("BIG", 1 << 40), ("SMALL", 3)])
    b.decl_tag("tag", v, -1)
    b.type_tag("user", u32)
    b.float_("double", 8)
    b.array(u8, u32, 16)
    b.volatile(u32)
    b.restrict(b.ptr(u8))
    b.fwd("some_union", union=True)
    # STRUCT/UNION members with names identical to the wanted ones, elsewhere
    b.struct("decoy", 64, [("tgid", u32, 256)])
    b.enum("tgid_enum", 4, [("tgid", 7)])         # enumerator named like member
    b.func_proto(0, [("tgid", u32)])             # parameter named like member
    b.union("u", 8, [("x", u64, 0), ("y", u32, 0)])
    tid = b.struct("task_struct", 16, [("pid", u32, 32), ("tgid", u32, 64)])
    b.decl_tag("after", tid, 1)
    t = b.parse()
    assert t.find_struct("task_struct") == tid
    assert t.type_count == tid + 1
    assert t.member_offset("task_struct", "pid") == 4
    assert t.member_offset("task_struct", "tgid") == 8
    assert t.member_offset("decoy", "tgid") == 32
    assert t.member_offset("u", "y") == 0


def test_big_endian_blob():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.enum64("e64", 8, [("BIG", 1 << 40)])
    b.struct("be", 16, [("a", u32, 0), ("b", u64, 64, 0)], kind_flag=1)
    t = b.parse(big_endian=True)
    assert t.member_offset("be", "b") == 8
    assert t.member_size("be", "b") == 8


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: b"\x00\x00" + d[2:], "bad magic 0x0000"),
    (lambda d: b"\x7fELF" + d[4:], "bad magic 0x457f"),
    (lambda d: d[:10], "only 10 bytes"),
    (lambda d: d[:2] + b"\x02" + d[3:], "unsupported BTF version 2"),
    (lambda d: d[:-3], "truncated BTF"),
])
def test_bad_headers(mutate, msg):
    b = BtfBuilder()
    base_types(b)
    data = mutate(b.build())
    with pytest.raises(BtfError, match=msg):
        btf.parse_btf(data, "<test>")


def test_unknown_kind_and_truncated_type_section():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.raw(struct.pack("<III", 0, 25 << 24, 0))          # kind 25 does not exist
    with pytest.raises(BtfError, match="unknown or invalid BTF kind 25 .*type id 5"):
        b.parse()

    b = BtfBuilder()
    base_types(b)
    b.raw(struct.pack("<III", 0, 0, 0))                 # kind 0 (UNKN)
    with pytest.raises(BtfError, match="invalid BTF kind 0"):
        b.parse()

    b = BtfBuilder()
    base_types(b)
    # a struct claiming 5 members but carrying only 1
    b.raw(struct.pack("<III", b.s("cut"), (btf.KIND_STRUCT << 24) | 5, 8)
          + struct.pack("<III", b.s("m"), 1, 0))
    with pytest.raises(BtfError, match="truncated inside type id 5"):
        b.parse()


def test_offsets_and_cflags_helpers():
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.struct("task_struct", 16, [("pid", u32, 32), ("tgid", u32, 64)])
    b.struct("sock", 8, [("sk_protocol", u16, 48)])
    t = b.parse()
    pairs = [("task_struct", "tgid"), ("sock", "sk_protocol")]
    assert btf.macro_name("task_struct", "tgid") == "OFF_TASK_STRUCT_TGID"
    assert btf.offsets(pairs, btf=t) == {
        "OFF_TASK_STRUCT_TGID": 8, "OFF_SOCK_SK_PROTOCOL": 6}
    assert btf.offsets({"MY_PID": ("task_struct", "pid")}, btf=t) == {"MY_PID": 4}
    assert btf.cflags(pairs, btf=t) == [
        "-DOFF_TASK_STRUCT_TGID=8", "-DOFF_SOCK_SK_PROTOCOL=6"]


def test_load_btf_from_file_and_cache(tmp_path):
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.struct("task_struct", 16, [("pid", u32, 32), ("tgid", u32, 64)])
    path = tmp_path / "vmlinux"
    path.write_bytes(b.build())
    btf.clear_cache()
    t1 = btf.load_btf(str(path))
    assert btf.load_btf(path) is t1                       # memoized (PathLike ok)
    assert btf.offsets([("task_struct", "tgid")], path=str(path)) == {
        "OFF_TASK_STRUCT_TGID": 8}

    # a changed file (new mtime/size) is re-read
    b2 = BtfBuilder()
    u8, u16, u32, u64 = base_types(b2)
    b2.struct("task_struct", 24, [("pid", u32, 32), ("x", u64, 64), ("tgid", u32, 128)])
    path.write_bytes(b2.build())
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    t2 = btf.load_btf(str(path))
    assert t2 is not t1
    assert t2.member_offset("task_struct", "tgid") == 16
    btf.clear_cache()


def test_load_btf_missing_file(tmp_path):
    with pytest.raises(BtfError, match="cannot read BTF from .*nope"):
        btf.load_btf(str(tmp_path / "nope"))


def test_cli(tmp_path, capsys):
    b = BtfBuilder()
    u8, u16, u32, u64 = base_types(b)
    b.struct("task_struct", 16, [("pid", u32, 32), ("tgid", u32, 64)])
    path = tmp_path / "vmlinux"
    path.write_bytes(b.build())
    assert btf._main(["--path", str(path), "task_struct.tgid"]) == 0
    assert "-DOFF_TASK_STRUCT_TGID=8" in capsys.readouterr().out
    assert btf._main(["--path", str(path), "task_struct.nope"]) == 1
    assert "has no member 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------
# The running kernel, cross-checked against bpftool (skipped where either is
# missing: the synthetic tests above are the ones that must run everywhere).
# --------------------------------------------------------------------------

LIVE_FIELDS = [
    ("task_struct", "tgid"), ("task_struct", "pid"), ("task_struct", "real_parent"),
    ("task_struct", "group_leader"), ("task_struct", "start_boottime"),
    ("task_struct", "exit_code"), ("task_struct", "files"), ("task_struct", "mm"),
    ("mm_struct", "arg_start"), ("mm_struct", "arg_end"),
    ("files_struct", "fdt"), ("fdtable", "fd"), ("fdtable", "max_fds"),
    ("file", "private_data"), ("socket", "type"), ("socket", "sk"), ("socket", "file"),
    ("sock", "__sk_common"), ("sock", "sk_protocol"),
    ("sock_common", "skc_rcv_saddr"), ("sock_common", "skc_num"),
    ("sock_common", "skc_v6_rcv_saddr"),
]
try:  # also whatever the probes actually ask for
    from tracer.probes import KERNEL_FIELDS as _PROBE_FIELDS
except Exception:  # pragma: no cover - probes module broken/absent
    _PROBE_FIELDS = []
LIVE_FIELDS += [f for f in _PROBE_FIELDS if f not in LIVE_FIELDS]

_TYPE_LINE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER_LINE = re.compile(
    r"^\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?")


class BpftoolRaw:
    """Independent resolver over `bpftool btf dump ... format raw` text."""

    def __init__(self, text: str):
        self.types: dict[int, tuple[str, str, dict[str, str], list]] = {}
        cur = None
        for line in text.splitlines():
            m = _TYPE_LINE.match(line)
            if m:
                attrs = dict(re.findall(r"(\w+)=(\S+)", m.group(4)))
                cur = (m.group(2), m.group(3), attrs, [])
                self.types[int(m.group(1))] = cur
                continue
            m = _MEMBER_LINE.match(line)
            if m and cur is not None and cur[0] in ("STRUCT", "UNION"):
                cur[3].append((m.group(1), int(m.group(2)), int(m.group(3)),
                               int(m.group(4) or 0)))

    def find_struct(self, name):
        for tid in sorted(self.types):
            kind, n, attrs, _ = self.types[tid]
            if kind in ("STRUCT", "UNION") and n == name and int(attrs["size"]):
                return tid
        raise KeyError(name)

    def strip(self, tid):
        while self.types[tid][0] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = int(self.types[tid][2]["type_id"])
        return tid

    def size(self, tid):
        tid = self.strip(tid)
        kind, _, attrs, _ = self.types[tid]
        if kind == "PTR":
            return 8
        if kind == "ARRAY":
            return int(attrs["nr_elems"]) * self.size(int(attrs["type_id"]))
        return int(attrs["size"])

    def member(self, sid, name, base=0):
        """(bit offset, bitfield size, type id) or None."""
        for m_name, m_type, bits, bf in self.types[sid][3]:
            if m_name == name:
                return base + bits, bf, m_type
            if m_name == "(anon)":
                inner = self.strip(m_type)
                if self.types[inner][0] in ("STRUCT", "UNION"):
                    hit = self.member(inner, name, base + bits)
                    if hit:
                        return hit
        return None


def _bpftool_raw() -> str:
    if not os.access(btf.VMLINUX_PATH, os.R_OK):
        pytest.skip(f"{btf.VMLINUX_PATH} not readable (kernel without BTF?)")
    tool = shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.access(p, os.X_OK)), None)
    if tool is None:
        pytest.skip("bpftool not installed: nothing to cross-check the offsets against")
    proc = subprocess.run([tool, "btf", "dump", "file", btf.VMLINUX_PATH, "format", "raw"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        pytest.skip(f"bpftool btf dump failed ({proc.returncode}): {proc.stderr.strip()[:200]}")
    return proc.stdout


def test_running_kernel_offsets_match_bpftool():
    ref = BpftoolRaw(_bpftool_raw())
    btf.clear_cache()
    live = btf.load_btf()
    assert live.type_count == max(ref.types)
    got = btf.offsets(LIVE_FIELDS)
    for s, m in LIVE_FIELDS:
        hit = ref.member(ref.find_struct(s), m)
        assert hit is not None, f"bpftool shows no {s}.{m}"
        bits, bf, m_type = hit
        assert bits % 8 == 0, f"{s}.{m} is not byte aligned in bpftool's dump"
        assert got[btf.macro_name(s, m)] == bits // 8, f"{s}.{m}"
        if not bf:
            assert live.member_size(s, m) == ref.size(m_type), f"size of {s}.{m}"
    # pointer-sized and pid_t members cannot change width across kernels
    for s, m in [("task_struct", "real_parent"), ("task_struct", "group_leader"),
                 ("task_struct", "files"), ("files_struct", "fdt"), ("fdtable", "fd"),
                 ("file", "private_data"), ("socket", "sk")]:
        assert live.member_size(s, m) == 8, f"{s}.{m}"
    assert live.member_size("task_struct", "pid") == 4
    assert live.member_size("task_struct", "tgid") == 4
    assert live.member_offset("task_struct", "tgid") == live.member_offset("task_struct", "pid") + 4
