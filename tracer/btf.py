"""Minimal reader of raw BTF (BPF Type Format) blobs, stdlib only.

Why this exists: our BPF programs are compiled by BCC against kernel headers
that may not match the running kernel, so struct member offsets taken from
those headers can be silently wrong.  At load time we read the offsets we need
from the running kernel's own type information (``/sys/kernel/btf/vmlinux``)
and pass them to the compiler as ``-DOFF_<STRUCT>_<MEMBER>=<bytes>``.

Format reference: the kernel's Documentation/bpf/btf.rst.  A blob is::

    struct btf_header { __u16 magic (0xeB9F); __u8 version; __u8 flags;
                        __u32 hdr_len; __u32 type_off; __u32 type_len;
                        __u32 str_off; __u32 str_len; };

followed (at ``hdr_len``) by the type section and the string section, whose
offsets are relative to the end of the header.  The type section is a
sequence of ``struct btf_type {__u32 name_off; __u32 info; __u32 size_or_type}``
records, each followed by kind-specific data; type ids start at 1 (id 0 is
``void``).  Every record and its trailing data is a whole number of 32-bit
words, which the parser below relies on to walk the section quickly.

Only split-less (base) BTF such as vmlinux is supported; module BTF
(``/sys/kernel/btf/<module>``) refers to vmlinux type ids and strings and is
not handled.

Usage::

    from tracer import btf
    btf.load_btf().member_offset("task_struct", "tgid")      # -> 1268
    btf.offsets([("task_struct", "tgid"), ("sock_common", "skc_num")])
    # -> {"OFF_TASK_STRUCT_TGID": 1268, "OFF_SOCK_COMMON_SKC_NUM": 14}
    btf.cflags([...])  # -> ["-DOFF_TASK_STRUCT_TGID=1268", ...]
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from typing import Iterable, Mapping, Sequence, Union

__all__ = [
    "BtfError",
    "Btf",
    "VMLINUX_PATH",
    "load_btf",
    "parse_btf",
    "macro_name",
    "offsets",
    "cflags",
    "clear_cache",
]

VMLINUX_PATH = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, 4 x u32
_HEADER_BE = struct.Struct(">HBBIIIII")

# BTF kinds (include/uapi/linux/btf.h).
KIND_UNKN = 0
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

KIND_NAMES = {
    KIND_UNKN: "UNKN", KIND_INT: "INT", KIND_PTR: "PTR", KIND_ARRAY: "ARRAY",
    KIND_STRUCT: "STRUCT", KIND_UNION: "UNION", KIND_ENUM: "ENUM",
    KIND_FWD: "FWD", KIND_TYPEDEF: "TYPEDEF", KIND_VOLATILE: "VOLATILE",
    KIND_CONST: "CONST", KIND_RESTRICT: "RESTRICT", KIND_FUNC: "FUNC",
    KIND_FUNC_PROTO: "FUNC_PROTO", KIND_VAR: "VAR", KIND_DATASEC: "DATASEC",
    KIND_FLOAT: "FLOAT", KIND_DECL_TAG: "DECL_TAG", KIND_TYPE_TAG: "TYPE_TAG",
    KIND_ENUM64: "ENUM64",
}

# Trailing data after the 3-word btf_type header, in 32-bit words:
# extra = _FIXED_WORDS[kind] + _VLEN_WORDS[kind] * vlen.
_FIXED_WORDS = (
    None,  # UNKN: never valid in the type section
    1,     # INT: __u32 encoding/offset/bits
    0,     # PTR
    3,     # ARRAY: struct btf_array {type, index_type, nelems}
    0, 0,  # STRUCT, UNION (members counted below)
    0,     # ENUM
    0,     # FWD
    0,     # TYPEDEF
    0,     # VOLATILE
    0,     # CONST
    0,     # RESTRICT
    0,     # FUNC
    0,     # FUNC_PROTO
    1,     # VAR: struct btf_var {linkage}
    0,     # DATASEC
    0,     # FLOAT
    1,     # DECL_TAG: struct btf_decl_tag {component_idx}
    0,     # TYPE_TAG
    0,     # ENUM64
)
_VLEN_WORDS = (
    0, 0, 0, 0,
    3, 3,  # STRUCT/UNION: struct btf_member {name_off, type, offset}
    2,     # ENUM: struct btf_enum {name_off, val}
    0, 0, 0, 0, 0, 0,
    2,     # FUNC_PROTO: struct btf_param {name_off, type}
    0,
    3,     # DATASEC: struct btf_var_secinfo {type, offset, size}
    0, 0, 0,
    3,     # ENUM64: struct btf_enum64 {name_off, val_lo32, val_hi32}
)
_NUM_KINDS = len(_FIXED_WORDS)


def _step_tables():
    """Byte-step tables indexed by the high byte of btf_type.info."""
    fixed: list = [None] * 256
    per_vlen = [0] * 256
    su = [False] * 256
    for kind in range(1, _NUM_KINDS):
        for flag in (0, 0x80):  # kind_flag; bits 5-6 must be zero
            fixed[kind | flag] = 4 * (3 + _FIXED_WORDS[kind])
            per_vlen[kind | flag] = 4 * _VLEN_WORDS[kind]
            su[kind | flag] = kind in (4, 5)
    return tuple(fixed), tuple(per_vlen), tuple(su)


_STEP_FIXED, _STEP_VLEN, _IS_STRUCT_OR_UNION = _step_tables()
_NAME_SIZE = struct.Struct("<I4xI")   # btf_type.name_off, .size
_TYPE = struct.Struct("<III")         # btf_type / btf_member / btf_array
_U32 = struct.Struct("<I")

# Kinds whose size_or_type field is a type id we follow to find a size /
# the underlying struct of an anonymous member.
_MODIFIER_KINDS = frozenset(
    {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}
)
_SIZED_KINDS = frozenset(
    {KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT}
)
_POINTER_SIZE = 8  # BPF targets are 64-bit; BTF PTR has no size field.
_MAX_CHAIN = 64    # guard against malformed typedef/modifier loops


class BtfError(Exception):
    """Raised for unreadable/malformed BTF or when a struct/member is missing."""


def _kind_name(kind: int) -> str:
    return KIND_NAMES.get(kind, f"kind {kind}")


class Btf:
    """A parsed BTF blob.

    Parsing is a single pass over the type section that records where each
    type id starts and, for STRUCT/UNION records, the id of the first
    definition per name offset; members are decoded lazily on lookup.
    """

    def __init__(self, data: bytes, source: str = "<bytes>"):
        self.source = source
        if len(data) < _HEADER.size:
            raise BtfError(
                f"{source}: not BTF: only {len(data)} bytes, header needs {_HEADER.size}"
            )
        magic = struct.unpack_from("<H", data, 0)[0]
        if magic == BTF_MAGIC:
            hdr, order = _HEADER, "little"
        elif magic == 0x9FEB:  # BTF written in big-endian byte order
            hdr, order = _HEADER_BE, "big"
        else:
            raise BtfError(
                f"{source}: not BTF: bad magic 0x{magic:04x} (expected 0x{BTF_MAGIC:04x})"
            )
        (_magic, self.version, self.flags, hdr_len, type_off, type_len,
         str_off, str_len) = hdr.unpack_from(data, 0)
        if self.version != 1:
            raise BtfError(f"{source}: unsupported BTF version {self.version}")
        if hdr_len < _HEADER.size or hdr_len > len(data):
            raise BtfError(f"{source}: bad BTF header length {hdr_len}")
        t_start = hdr_len + type_off
        s_start = hdr_len + str_off
        if t_start + type_len > len(data) or s_start + str_len > len(data):
            raise BtfError(
                f"{source}: truncated BTF: sections end at "
                f"{max(t_start + type_len, s_start + str_len)} but blob is {len(data)} bytes"
            )
        if type_len % 4:
            raise BtfError(f"{source}: type section length {type_len} not a multiple of 4")

        self._strs = bytes(data[s_start:s_start + str_len])
        tsec = bytes(data[t_start:t_start + type_len])
        if order == "big":
            # Every field of every type record is a 32-bit word, so swapping
            # each word turns the whole section into little-endian.
            words = array("I")
            if words.itemsize != 4:  # pragma: no cover - every supported platform
                raise BtfError("platform has no 32-bit unsigned array type")
            words.frombytes(tsec)
            words.byteswap()
            tsec = words.tobytes()
        self._t = tsec

        # --- single pass over the type section -------------------------
        # Walk the raw bytes (little-endian): the high byte of `info` (byte 7
        # of a record) holds kind (bits 0-4) and kind_flag (bit 7); vlen is
        # bytes 4-5.  Indexing bytes is cheaper than unpacking words, and
        # the record length comes from two 256-entry tables keyed by that
        # byte; bytes with an invalid kind map to None (-> TypeError).
        fixed_b, vlen_b, is_su = _STEP_FIXED, _STEP_VLEN, _IS_STRUCT_OR_UNION
        unpack_name_size = _NAME_SIZE.unpack_from
        starts = [0]            # starts[type_id] = byte offset; id 0 is void
        append = starts.append
        struct_by_name: dict[int, int] = {}   # name_off -> first sized STRUCT/UNION id
        empty_by_name: dict[int, int] = {}    # name_off -> first zero-size one
        b = tsec
        pos, end, k = 0, len(b), 0
        try:
            while pos < end:
                append(pos)
                k = b[pos + 7]
                v = vlen_b[k]
                if v:
                    if is_su[k]:
                        name_off, size = unpack_name_size(b, pos)
                        if name_off:
                            if size:
                                if name_off not in struct_by_name:
                                    struct_by_name[name_off] = len(starts) - 1
                            elif name_off not in empty_by_name:
                                empty_by_name[name_off] = len(starts) - 1
                    pos += fixed_b[k] + v * (b[pos + 4] | (b[pos + 5] << 8))
                else:
                    pos += fixed_b[k]
        except (IndexError, TypeError):
            tid = len(starts) - 1
            if pos + 12 > end:
                raise BtfError(
                    f"{source}: type section truncated inside type id {tid}"
                ) from None
            raise BtfError(
                f"{source}: unknown or invalid BTF kind {k & 0x1F} "
                f"(info byte 0x{k:02x}) for type id {tid} "
                f"(byte {t_start + pos} of the blob)"
            ) from None
        if pos != end:
            raise BtfError(
                f"{source}: type section truncated inside type id {len(starts) - 1}"
            )
        self._starts = starts
        self._sized_by_off = struct_by_name
        self._empty_by_off = empty_by_name
        self._structs: dict[bytes, int] | None = None  # built on first lookup
        self._resolved: dict[tuple[str, str], tuple[int, int, int]] = {}

    # ---- low level accessors ---------------------------------------------

    @property
    def type_count(self) -> int:
        """Number of types (the highest type id)."""
        return len(self._starts) - 1

    def _type(self, tid: int) -> tuple[int, int, int, int, int, int]:
        """(pos, name_off, kind, vlen, kind_flag, size_or_type) of a type id."""
        if not 0 < tid < len(self._starts):
            raise BtfError(f"{self.source}: type id {tid} out of range")
        pos = self._starts[tid]
        name_off, info, size_or_type = _TYPE.unpack_from(self._t, pos)
        return (pos, name_off, (info >> 24) & 0x1F, info & 0xFFFF,
                info >> 31, size_or_type)

    def _struct_index(self) -> dict[bytes, int]:
        """name -> type id of the STRUCT/UNION definition to use (built once).

        Keyed by the decoded name rather than the string offset so that a
        name stored more than once in the string section is still found.
        """
        if self._structs is None:
            strs = self._strs
            find = strs.find
            index: dict[bytes, int] = {}
            for by_off in (self._sized_by_off, self._empty_by_off):
                fallback: dict[bytes, int] = {}
                for off, tid in by_off.items():
                    end = find(b"\0", off)
                    name = strs[off:end] if end >= 0 else strs[off:]
                    if name not in index and fallback.get(name, tid) >= tid:
                        fallback[name] = tid
                index.update(fallback)
            self._structs = index
        return self._structs

    def find_struct(self, name: str) -> int:
        """Type id of the struct/union definition called ``name``.

        Uses the first STRUCT/UNION with that name and a non-zero size (a
        zero-size definition only if there is no sized one); FWD declarations
        are never returned.
        """
        if not name:
            raise BtfError("empty struct name")
        tid = self._struct_index().get(name.encode())
        if tid is None:
            raise BtfError(f"{self.source}: no struct or union named '{name}' in BTF")
        return tid

    def _resolve_modifiers(self, tid: int) -> int:
        for _ in range(_MAX_CHAIN):
            if tid == 0:
                return 0
            kind = self._type(tid)[2]
            if kind not in _MODIFIER_KINDS:
                return tid
            tid = self._type(tid)[5]
        raise BtfError(f"{self.source}: type chain too deep / looping at type id {tid}")

    def type_size(self, tid: int) -> int:
        """Byte size of a type, following typedef/const/volatile/restrict/type_tag."""
        for _ in range(_MAX_CHAIN):
            if tid == 0:
                raise BtfError(f"{self.source}: 'void' has no size")
            pos, _n, kind, _v, _kf, size_or_type = self._type(tid)
            if kind in _SIZED_KINDS:
                return size_or_type
            if kind == KIND_PTR:
                return _POINTER_SIZE
            if kind == KIND_ARRAY:
                elem, _index, nelems = _TYPE.unpack_from(self._t, pos + 12)
                return nelems * self.type_size(elem) if nelems else 0
            if kind in _MODIFIER_KINDS:
                tid = size_or_type
                continue
            raise BtfError(
                f"{self.source}: type id {tid} ({_kind_name(kind)}) has no size"
            )
        raise BtfError(f"{self.source}: type chain too deep / looping at type id {tid}")

    # ---- member lookup ------------------------------------------------------

    def _find_member(self, sid: int, target: bytes, base_bits: int, depth: int = 0):
        """Depth-first search for a member called ``target`` (NUL terminated).

        Descends into anonymous struct/union members, accumulating their
        offsets.  Returns (bit_offset, bitfield_size, member_type_id) or None.
        """
        if depth > _MAX_CHAIN:
            raise BtfError(f"{self.source}: anonymous members nested too deep")
        pos, _n, _kind, vlen, kind_flag, _size = self._type(sid)
        t = self._t
        for p in range(pos + 12, pos + 12 + 12 * vlen, 12):
            m_name, m_type, m_off = _TYPE.unpack_from(t, p)
            if kind_flag:
                bits, bf_size = m_off & 0xFFFFFF, m_off >> 24
            else:
                bits, bf_size = m_off, 0
            if m_name and self._strs.startswith(target, m_name):
                if not kind_flag and m_type:
                    # Old-style bitfield: encoded in the INT type itself.
                    t_pos, _tn, t_kind, _tv, _tkf, t_size = self._type(m_type)
                    if t_kind == KIND_INT:
                        enc = _U32.unpack_from(t, t_pos + 12)[0]
                        int_off, int_bits = (enc >> 16) & 0xFF, enc & 0xFF
                        if int_off or int_bits != 8 * t_size:
                            bits += int_off
                            bf_size = int_bits
                return base_bits + bits, bf_size, m_type
            if m_name == 0 and m_type:
                inner = self._resolve_modifiers(m_type)
                if inner and self._type(inner)[2] in (KIND_STRUCT, KIND_UNION):
                    hit = self._find_member(inner, target, base_bits + bits, depth + 1)
                    if hit is not None:
                        return hit
        return None

    def _lookup(self, struct_name: str, member: str) -> tuple[int, int, int]:
        key = (struct_name, member)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        sid = self.find_struct(struct_name)
        hit = self._find_member(sid, member.encode() + b"\0", 0) if member else None
        if hit is None:
            kind = _kind_name(self._type(sid)[2]).lower()
            raise BtfError(
                f"{self.source}: {kind} '{struct_name}' (type id {sid}) has no "
                f"member '{member}'"
            )
        self._resolved[key] = hit
        return hit

    def member_bit_offset(self, struct_name: str, member: str) -> int:
        """Bit offset of a member (bitfields allowed)."""
        return self._lookup(struct_name, member)[0]

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``member`` in struct/union ``struct_name``.

        Members of anonymous structs/unions are found too (their offsets are
        added).  Raises BtfError if the struct or member does not exist, or
        if the member is a bitfield that does not start on a byte boundary.
        """
        bits, bf_size, _t = self._lookup(struct_name, member)
        if bits % 8:
            raise BtfError(
                f"{self.source}: {struct_name}.{member} is a bitfield "
                f"({bf_size} bits at bit offset {bits}) not aligned to a byte"
            )
        return bits // 8

    def member_size(self, struct_name: str, member: str) -> int:
        """Byte size of ``member``'s type (typedefs etc. resolved; pointers 8).

        For a bitfield, its width in bytes if it is a whole number of bytes,
        else BtfError.
        """
        bits, bf_size, m_type = self._lookup(struct_name, member)
        if bf_size:
            if bf_size % 8:
                raise BtfError(
                    f"{self.source}: {struct_name}.{member} is a {bf_size}-bit "
                    f"bitfield, not a whole number of bytes"
                )
            return bf_size // 8
        try:
            return self.type_size(m_type)
        except BtfError as e:
            raise BtfError(f"{struct_name}.{member}: {e}") from None

    def struct_size(self, struct_name: str) -> int:
        """Byte size of struct/union ``struct_name``."""
        return self._type(self.find_struct(struct_name))[5]


# ---- module-level helpers / cache ----------------------------------------

_cache: dict[tuple[str, int, int, int, int], Btf] = {}


def clear_cache() -> None:
    """Forget every parsed blob memoized by load_btf()."""
    _cache.clear()


def parse_btf(data: bytes, source: str = "<bytes>") -> Btf:
    """Parse an in-memory BTF blob (no caching)."""
    return Btf(data, source)


def load_btf(path: str = VMLINUX_PATH) -> Btf:
    """Read and parse the BTF blob at ``path``, memoized by path + inode + mtime + size."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            btf = _cache.get(key)
            if btf is not None:
                return btf
            data = f.read()
    except OSError as e:
        raise BtfError(f"cannot read BTF from {path}: {e.strerror or e}") from e
    btf = Btf(data, path)
    _cache[key] = btf
    return btf


Spec = Union[Mapping[str, Sequence[str]], Iterable[Sequence[str]]]


def macro_name(struct_name: str, member: str) -> str:
    """'task_struct', 'tgid' -> 'OFF_TASK_STRUCT_TGID'."""
    return f"OFF_{struct_name.upper()}_{member.upper()}"


def _spec_items(spec: Spec) -> list[tuple[str, str, str]]:
    if isinstance(spec, Mapping):
        items = []
        for macro, pair in spec.items():
            s, m = pair
            items.append((macro, s, m))
        return items
    return [(macro_name(s, m), s, m) for s, m in spec]


def offsets(spec: Spec, path: str = VMLINUX_PATH, btf: Btf | None = None) -> dict[str, int]:
    """Byte offsets for a set of members, keyed by macro name.

    ``spec`` is either a list of ``(struct, member)`` pairs (macro names are
    derived with macro_name(), e.g. ``OFF_TASK_STRUCT_TGID``) or a mapping of
    ``macro name -> (struct, member)``.  Raises BtfError naming the first
    missing struct/member.
    """
    if btf is None:
        btf = load_btf(path)
    return {macro: btf.member_offset(s, m) for macro, s, m in _spec_items(spec)}


def cflags(spec: Spec, path: str = VMLINUX_PATH, btf: Btf | None = None) -> list[str]:
    """offsets() formatted as compiler flags: ['-DOFF_TASK_STRUCT_TGID=1268', ...]."""
    return [f"-D{k}={v}" for k, v in offsets(spec, path, btf).items()]


def _main(argv: Sequence[str]) -> int:
    """python3 -m tracer.btf [--path P] struct.member ...  -> prints -D flags."""
    import argparse

    ap = argparse.ArgumentParser(description="Print -DOFF_* flags from kernel BTF")
    ap.add_argument("--path", default=VMLINUX_PATH)
    ap.add_argument("members", nargs="+", metavar="STRUCT.MEMBER")
    args = ap.parse_args(argv)
    pairs = []
    for item in args.members:
        s, sep, m = item.partition(".")
        if not sep or not s or not m:
            ap.error(f"expected STRUCT.MEMBER, got {item!r}")
        pairs.append((s, m))
    try:
        btf = load_btf(args.path)
        for (s, m), flag in zip(pairs, cflags(pairs, btf=btf)):
            print(f"{flag}\t# size {btf.member_size(s, m)}")
    except BtfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
