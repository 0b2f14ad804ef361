"""The kernel/user contract: bpf/events.h against its ctypes mirror.

The idea of Tetragon's alignchecker: let the C compiler say where every
field of every record lies, and compare with what tracer.events believes.
check_layout() works on any header path, so the tests below also prove it
catches drift, by running it on edited copies of events.h in tmp_path.
"""

from __future__ import annotations

import ctypes as ct
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tracer import events

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(
    GCC is None, reason="gcc is not installed: cannot compile bpf/events.h to check the C/Python layout"
)

# Every AW_ object-like macro, written any way the C preprocessor accepts.
_C_DEFINE = re.compile(r"^\s*#\s*define\s+(AW_\w+)(?!\()\b", re.MULTILINE)


class LayoutCheckError(RuntimeError):
    pass


@dataclass
class Measured:
    """What the C compiler says about the header."""

    sizeof: dict[str, int] = field(default_factory=dict)
    alignof: dict[str, int] = field(default_factory=dict)
    offsetof: dict[tuple[str, str], int] = field(default_factory=dict)
    fieldsize: dict[tuple[str, str], int] = field(default_factory=dict)
    signed: dict[tuple[str, str], bool] = field(default_factory=dict)
    defines: dict[str, int] = field(default_factory=dict)


def _is_scalar(ctype) -> bool:
    return not issubclass(ctype, (ct.Array, ct.Structure, ct.Union))


def _ctype_signed(ctype) -> bool:
    return ctype(-1).value < 0


def c_define_names(header: Path) -> list[str]:
    return _C_DEFINE.findall(header.read_text())


def c_struct_members(header: Path) -> dict[str, list[str]]:
    """struct name -> member names in order, from the header text."""
    text = re.sub(r"/\*.*?\*/", " ", header.read_text(), flags=re.DOTALL)
    text = re.sub(r"//[^\n]*", " ", text)
    out = {}
    for name, body in re.findall(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*;", text, flags=re.DOTALL):
        members = []
        for decl in body.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            m = re.fullmatch(r".*?\b(\w+)\s*(?:\[[^\]]*\])?", decl)
            if m is None:
                raise LayoutCheckError(f"struct {name}: cannot read member {decl!r}")
            members.append(m.group(1))
        out[name] = members
    return out


def c_program(mirrors: dict[str, type[ct.Structure]], define_names: list[str]) -> str:
    lines = [
        "#include <stddef.h>",
        "int printf(const char *, ...);  /* not <stdio.h>: a third of the compile time */",
        '#include "events.h"',
        "int main(void) {",
    ]
    for sname, cls in mirrors.items():
        lines.append(f'\tprintf("size {sname} %zu\\n", sizeof(struct {sname}));')
        lines.append(f'\tprintf("align {sname} %zu\\n", _Alignof(struct {sname}));')
        for fname, ftype in cls._fields_:
            member = f"((struct {sname} *)0)->{fname}"
            lines.append(f'\tprintf("offset {sname} {fname} %zu\\n", offsetof(struct {sname}, {fname}));')
            lines.append(f'\tprintf("fsize {sname} {fname} %zu\\n", sizeof({member}));')
            if _is_scalar(ftype):
                lines.append(
                    f'\tprintf("signed {sname} {fname} %d\\n", (int)(((__typeof__({member}))-1) < 0));'
                )
    for name in define_names:
        lines.append(f'\tprintf("define {name} %lld\\n", (long long)({name}));')
    lines += ["\treturn 0;", "}", ""]
    return "\n".join(lines)


def measure(header: Path, mirrors, define_names: list[str], workdir: Path) -> Measured:
    """Compile a program against `header` (as "events.h") and read its answers."""
    inc = workdir / "include"
    inc.mkdir(parents=True, exist_ok=True)
    if header.resolve() != (inc / "events.h").resolve():
        shutil.copyfile(header, inc / "events.h")
    src, exe = workdir / "layout.c", workdir / "layout"
    src.write_text(c_program(mirrors, define_names))
    cc = subprocess.run(
        [GCC, "-std=gnu11", "-Wall", f"-I{inc}", "-o", str(exe), str(src)],
        capture_output=True,
        text=True,
    )
    if cc.returncode != 0:
        raise LayoutCheckError(f"events.h does not compile against the mirror:\n{cc.stderr}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    m = Measured()
    for line in out.splitlines():
        what, *keys, value = line.split()
        if what == "size":
            m.sizeof[keys[0]] = int(value)
        elif what == "align":
            m.alignof[keys[0]] = int(value)
        elif what == "offset":
            m.offsetof[tuple(keys)] = int(value)
        elif what == "fsize":
            m.fieldsize[tuple(keys)] = int(value)
        elif what == "signed":
            m.signed[tuple(keys)] = value == "1"
        elif what == "define":
            m.defines[keys[0]] = int(value)
    return m


def check_layout(header: Path, workdir: Path, mirrors=None) -> list[str]:
    """Every disagreement between `header` and the ctypes mirrors, as text."""
    return _check(header, workdir, mirrors)[0]


def _check(header: Path, workdir: Path, mirrors=None) -> tuple[list[str], Measured | None]:
    mirrors = events.MIRRORS if mirrors is None else mirrors
    problems: list[str] = []

    names = c_define_names(header)
    try:
        py_defines = events.read_defines(header)
    except (ValueError, KeyError) as exc:
        problems.append(f"read_defines cannot read the header: {exc!r}")
        py_defines = None

    try:
        c_members = c_struct_members(header)
    except LayoutCheckError as exc:
        problems.append(str(exc))
        c_members = {}
    for sname in sorted(set(c_members) - set(mirrors)):
        problems.append(f"struct {sname} is in C but has no ctypes mirror")
    for sname, cls in mirrors.items():
        py_names = [f for f, _ in cls._fields_]
        if sname in c_members and c_members[sname] != py_names:
            problems.append(f"struct {sname}: members in C {c_members[sname]}, in Python {py_names}")
        for fname, ftype in cls._fields_:
            if issubclass(ftype, ct.Structure) and ftype not in mirrors.values():
                problems.append(f"{sname}.{fname}: nested {ftype.__name__} is not itself checked")

    try:
        m = measure(header, mirrors, names, workdir)
    except LayoutCheckError as exc:
        return problems + [str(exc)], None

    def differ(what: str, c_value, py_value) -> None:
        if c_value != py_value:
            problems.append(f"{what}: C says {c_value}, Python says {py_value}")

    for sname, cls in mirrors.items():
        differ(f"sizeof(struct {sname})", m.sizeof[sname], ct.sizeof(cls))
        differ(f"_Alignof(struct {sname})", m.alignof[sname], ct.alignment(cls))
        for fname, ftype in cls._fields_:
            desc = getattr(cls, fname)
            differ(f"offsetof(struct {sname}, {fname})", m.offsetof[sname, fname], desc.offset)
            differ(f"sizeof({sname}.{fname})", m.fieldsize[sname, fname], desc.size)
            if _is_scalar(ftype):
                differ(f"signedness of {sname}.{fname}", m.signed[sname, fname], _ctype_signed(ftype))

    if py_defines is not None:
        for name in names:
            if name not in py_defines:
                problems.append(f"#define {name} is not read by tracer.events.read_defines")
            else:
                differ(f"#define {name}", m.defines[name], py_defines[name])
        for name in sorted(set(py_defines) - set(names)):
            problems.append(f"read_defines found {name}, which the header does not define")
    return problems, m


# --------------------------------------------------------------------------
# The real header.


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return _check(events.EVENTS_H, tmp_path_factory.mktemp("layout"))


def test_events_h_matches_ctypes_mirror(real):
    problems, _ = real
    assert problems == [], "bpf/events.h and tracer/events.py disagree:\n" + "\n".join(problems)


def test_every_mirror_field_was_measured(real):
    """The check compared every field, not an empty set."""
    _, m = real
    expected = {(s, f) for s, cls in events.MIRRORS.items() for f, _ in cls._fields_}
    assert set(m.offsetof) == expected
    assert set(m.sizeof) == set(events.MIRRORS)
    assert set(m.defines) == set(events.read_defines())
    assert "AW_ARGV_BUF" in m.defines and m.defines["AW_ARGV_BUF"] == 2 * m.defines["AW_ARGV_BYTES"]


def test_every_c_struct_has_a_mirror_and_hdr_comes_first():
    members = c_struct_members(events.EVENTS_H)
    assert set(members) == set(events.MIRRORS)
    for sname, cls in events.MIRRORS.items():
        if sname != "aw_header" and sname not in events.MAP_KEYS:
            assert cls._fields_[0] == ("hdr", events.RawHeader)
            assert members[sname][0] == "hdr"


def test_exec_fixed_part_is_offset_of_argv(real):
    _, m = real
    assert events.EXEC_FIXED_SIZE == m.offsetof["aw_exec", "argv"]
    assert events.HEADER_SIZE == m.sizeof["aw_header"]


# --------------------------------------------------------------------------
# The checker against edited copies of the header: it must see each drift.


def _insert_after(anchor: str, new: str):
    def edit(text: str) -> str:
        assert anchor in text, anchor
        return text.replace(anchor, anchor + new, 1)

    return edit


def _replace(old: str, new: str):
    def edit(text: str) -> str:
        assert text.count(old) == 1, old
        return text.replace(old, new)

    return edit


DRIFTS = [
    pytest.param(
        _insert_after("char argv[AW_ARGV_BUF];\n", "\t__u32 added;\n"),
        ["sizeof(struct aw_exec): C says 16728, Python says 16720", "members in C"],
        id="C-only field at the end of aw_exec",
    ),
    pytest.param(
        _insert_after("__u32 exit_code;    /* wait(2) status: code << 8 | signal */\n", "\t__u32 added;\n"),
        ["sizeof(struct aw_exit): C says 80, Python says 72", "offsetof(struct aw_exit, _pad): C says 72"],
        id="C-only field in the middle of aw_exit",
    ),
    pytest.param(
        _insert_after("__u32 uid;\n", "\t__u32 gid;\n"),
        [
            "sizeof(struct aw_header): C says 72, Python says 64",
            "offsetof(struct aw_header, comm)",
            "offsetof(struct aw_fork, child_pid)",
            "sizeof(struct aw_connect)",
        ],
        id="C-only field in the common header",
    ),
    pytest.param(
        _replace("__u16 dport;        /* host order */\n\t__u32 repeats;",
                 "__u32 dport;        /* host order */\n\t__u32 repeats;"),
        ["sizeof(aw_connect.dport): C says 4, Python says 2", "offsetof(struct aw_connect, repeats)"],
        id="field widened in C",
    ),
    pytest.param(
        _replace("__s32 retval;       /* 0, or -errno of a failed exec */", "__u32 retval;"),
        ["signedness of aw_exec.retval: C says False, Python says True"],
        id="signedness changed in C, same layout",
    ),
    pytest.param(
        _replace("__u32 child_pid;", "__u32 child_tgid;"),
        ["does not compile against the mirror", "child_pid", "members in C"],
        id="field renamed in C",
    ),
    pytest.param(
        _replace("__u32 exit_code;    /* wait(2) status: code << 8 | signal */\n\t__u32 _pad;",
                 "__u32 exit_code;\n\t__u32 core_dumped;"),
        ["struct aw_exit: members in C ['hdr', 'exit_code', 'core_dumped']"],
        id="padding taken by a C field, same layout",
    ),
    pytest.param(
        _replace("#define AW_COMM_LEN 16", "#define AW_COMM_LEN 32"),
        ["sizeof(struct aw_header): C says 80, Python says 64", "sizeof(aw_header.comm): C says 32"],
        id="array length changed in C",
    ),
    pytest.param(
        _replace("#define AW_ARGV_MAX_ARGS 128", "#define AW_ARGV_MAX_ARGS 0200"),
        ["cannot read #define AW_ARGV_MAX_ARGS 0200"],
        id="define the Python reader refuses (octal)",
    ),
    pytest.param(
        _replace("#define AW_STATS 3", "#  define AW_STATS 3"),
        ["#define AW_STATS is not read by tracer.events.read_defines"],
        id="define the Python reader does not see",
    ),
    pytest.param(
        _replace("#define AW_EVENT_TYPES 12", "#define AW_EVENT_TYPES (AW_EVENT_FILE + 1)"),
        ["read_defines cannot read the header"],
        id="define the Python reader cannot evaluate",
    ),
    pytest.param(
        _insert_after("#endif /* AGENTWATCH_EVENTS_H */", "\nstruct aw_new { __u32 x; };\n"),
        ["struct aw_new is in C but has no ctypes mirror"],
        id="new C struct without a mirror",
    ),
]


@pytest.fixture(scope="module")
def drift_reports(tmp_path_factory) -> dict[str, list[str]]:
    """check_layout on every edited header, compiled in parallel (gcc dominates the time)."""
    base = tmp_path_factory.mktemp("drift")
    original = events.EVENTS_H.read_text()

    def run(index: int, param) -> list[str]:
        edit, _ = param.values
        workdir = base / str(index)
        workdir.mkdir()
        header = workdir / "events.h"
        header.write_text(edit(original))
        return check_layout(header, workdir / "work")

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reports = pool.map(run, range(len(DRIFTS)), DRIFTS)
        return {param.id: report for param, report in zip(DRIFTS, reports)}


@pytest.mark.parametrize("edit, expected", DRIFTS)
def test_checker_reports_drift(request, drift_reports, edit, expected):
    problems = drift_reports[request.node.callspec.id]
    report = "\n".join(problems)
    assert problems, "the checker saw no difference"
    for needle in expected:
        assert needle in report, f"{needle!r} not in:\n{report}"


def test_checker_reports_a_mirror_only_field(tmp_path):
    """The other direction: a field Python has and C does not."""

    class Exit(ct.Structure):
        _fields_ = events.RawExit._fields_ + [("extra", ct.c_uint32)]

    mirrors = dict(events.MIRRORS, aw_exit=Exit)
    report = "\n".join(check_layout(events.EVENTS_H, tmp_path, mirrors))
    assert "does not compile against the mirror" in report
    assert "extra" in report


def test_checker_reports_an_unchecked_nested_struct(tmp_path):
    class Header(ct.Structure):
        _fields_ = events.RawHeader._fields_

    class Fork(ct.Structure):
        _fields_ = [("hdr", Header)] + events.RawFork._fields_[1:]

    mirrors = dict(events.MIRRORS, aw_fork=Fork)
    report = "\n".join(check_layout(events.EVENTS_H, tmp_path, mirrors))
    assert "aw_fork.hdr: nested Header is not itself checked" in report
