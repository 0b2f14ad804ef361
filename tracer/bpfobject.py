"""Compiled BPF objects: BCC compiles once, agentwatch loads from a cache.

BCC 0.26 has no compile cache and no way to load what it compiled before:
every `BPF(text=...)` runs clang and LLVM again (1.2 s for the main program
on a 2-CPU VM, most of agentwatch's start-up). What BCC produces is only
bytecode with map file descriptors written into its `ld_imm64`
instructions, plus a description of each map. So that is what is kept: a
`CompiledObject` is the maps (type, sizes, flags, BCC's key/leaf type
descriptions) and the bytecode of every function, written to a cache file
named by a hash of everything the bytecode depends on (source text, cflags,
kernel build, BCC version). A later run creates the maps itself, writes
their new fds into the instructions, and loads the programs with bpf(2).

Values that change every run (agentwatch's own tgid) are compiled as a
placeholder constant and written into the instructions at load (the way
Cilium once patched inline constants); map sizes that change per run
(the ring buffer, the cgroup map) are given at map creation, where they
live, not in the code.

The loaded object (`LoadedObject`) offers the part of BCC's `BPF` API that
tracer/probes.py uses (maps by name with ctypes Key/Leaf, load_func,
tracepoint attach/detach, ring buffers, cgroup attach, cleanup), over
libbcc's thin bpf(2) wrappers.

The cache is root's: a directory of mode 0700 owned by root, files owned by
root and written by rename. A file that is not (or does not parse) is
ignored and compiled again: bytecode loaded into the kernel must not come
from anyone else.
"""

from __future__ import annotations

import base64
import ctypes as ct
import hashlib
import json
import os
import platform
import stat
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 1  # bump when CompiledObject's layout or meaning changes
CACHE_ENV = "AGENTWATCH_BPF_CACHE"  # a directory, or "off"
DEFAULT_CACHE_DIR = Path("/var/cache/agentwatch/bpf")
CACHE_KEEP = 16  # newest files kept: one per variant (run, --contain, watch, the daemon, ...)

# Compiled in place of agentwatch's tgid, written over at load (bpf/common.h AW_SELF_TGID).
SELF_TGID_PLACEHOLDER = 0x7EA1F00D

# Kernel UAPI numbers (linux/bpf.h): stable, so not taken from BCC.
BPF_MAP_CREATE, BPF_PROG_LOAD = 0, 5
PROG_TRACEPOINT, PROG_RAW_TRACEPOINT, PROG_CGROUP_SOCK_ADDR = 5, 17, 18
PERCPU_MAP_TYPES = {5, 6, 10}  # percpu hash, percpu array, lru percpu hash
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1

# libbcc strips these from a function's name to make the kernel's program name.
_NAME_PREFIXES = (b"tracepoint__", b"raw_tracepoint__")


class ObjectError(Exception):
    """Loading a compiled object failed; the message says which map or program."""


# --------------------------------------------------------------------------
# The compiled form


@dataclass
class MapSpec:
    name: str
    type: int
    key_size: int
    leaf_size: int
    max_entries: int
    flags: int
    key_desc: str    # BCC's JSON description of the key type (for ctypes)
    leaf_desc: str
    compiled_fd: int  # the fd BCC wrote into the instructions


@dataclass
class CompiledObject:
    license: str
    kern_version: int
    maps: list[MapSpec]
    functions: dict[str, bytes] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({
            "format": FORMAT,
            "license": self.license,
            "kern_version": self.kern_version,
            "maps": [m.__dict__ for m in self.maps],
            "functions": {k: base64.b64encode(v).decode() for k, v in self.functions.items()},
        }).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "CompiledObject":
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
        return cls(doc["license"], int(doc["kern_version"]), [MapSpec(**m) for m in doc["maps"]],
                   {k: base64.b64decode(v) for k, v in doc["functions"].items()})


def compile_with_bcc(text: str, cflags: list[str]) -> CompiledObject:
    """clang and LLVM through BCC, nothing attached; the maps BCC made are closed again."""
    from bcc import BPF  # noqa: PLC0415
    from bcc.libbcc import lib  # noqa: PLC0415

    class _CompileOnly(BPF):
        def _trace_autoload(self):  # BCC attaches tracepoint__* functions here; the loader does
            pass

    _declare_module_readers(lib)
    bpf = _CompileOnly(text=text.encode(), cflags=cflags)
    try:
        m = bpf.module
        maps = []
        for i in range(lib.bpf_num_tables(m)):
            maps.append(MapSpec(
                name=lib.bpf_table_name(m, i).decode(),
                type=int(lib.bpf_table_type_id(m, i)),
                key_size=int(lib.bpf_table_key_size_id(m, i)),
                leaf_size=int(lib.bpf_table_leaf_size_id(m, i)),
                max_entries=int(lib.bpf_table_max_entries_id(m, i)),
                flags=int(lib.bpf_table_flags_id(m, i)),
                key_desc=(lib.bpf_table_key_desc_id(m, i) or b"").decode(),
                leaf_desc=(lib.bpf_table_leaf_desc_id(m, i) or b"").decode(),
                compiled_fd=int(lib.bpf_table_fd_id(m, i)),
            ))
        functions = {}
        for i in range(lib.bpf_num_functions(m)):
            name = lib.bpf_function_name(m, i)
            functions[name.decode()] = ct.string_at(lib.bpf_function_start(m, name),
                                                    lib.bpf_function_size(m, name))
        obj = CompiledObject(lib.bpf_module_license(m).decode(), int(lib.bpf_module_kern_version(m)),
                             maps, functions)
    finally:
        bpf.cleanup()
    check_relocations(obj)
    return obj


def _declare_module_readers(lib) -> None:
    """Prototypes (bcc_common.h) of the module readers used here: bcc 0.26's libbcc.py leaves
    several undeclared, and ctypes would then cut their size_t and pointer results to int."""
    module, index = ct.c_void_p, ct.c_ulonglong
    for name, restype, argtypes in (
        ("bpf_num_tables", ct.c_ulonglong, [module]),
        ("bpf_table_name", ct.c_char_p, [module, index]),
        ("bpf_table_type_id", ct.c_int, [module, index]),
        ("bpf_table_fd_id", ct.c_int, [module, index]),
        ("bpf_table_flags_id", ct.c_int, [module, index]),
        ("bpf_table_max_entries_id", ct.c_ulonglong, [module, index]),
        ("bpf_table_key_size_id", ct.c_ulonglong, [module, index]),
        ("bpf_table_leaf_size_id", ct.c_ulonglong, [module, index]),
        ("bpf_table_key_desc_id", ct.c_char_p, [module, index]),
        ("bpf_table_leaf_desc_id", ct.c_char_p, [module, index]),
        ("bpf_num_functions", ct.c_ulonglong, [module]),
        ("bpf_function_name", ct.c_char_p, [module, index]),
        ("bpf_function_start", ct.c_void_p, [module, ct.c_char_p]),
        ("bpf_function_size", ct.c_ulonglong, [module, ct.c_char_p]),
        ("bpf_module_license", ct.c_char_p, [module]),
        ("bpf_module_kern_version", ct.c_uint, [module]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def check_relocations(obj: CompiledObject) -> None:
    """Every map reference in the code names one of the object's maps, and no other kind appears.

    The loader rewrites only map fds; anything else BCC might emit one day
    (map values, sub-program calls) would load wrong, so it is refused here.
    """
    fds = {m.compiled_fd for m in obj.maps}
    for name, code in obj.functions.items():
        if len(code) % 8:
            raise ObjectError(f"program {name}: {len(code)} bytes is not whole instructions")
        i = 0
        while i < len(code):
            op, regs, _off, imm = struct.unpack_from("<BBhi", code, i)
            src = regs >> 4
            if op == _LD_IMM64:
                if src == _PSEUDO_MAP_FD and imm not in fds:
                    raise ObjectError(f"program {name}: instruction {i // 8} names map fd {imm}, "
                                      "which is none of the object's maps")
                if src not in (0, _PSEUDO_MAP_FD):
                    raise ObjectError(f"program {name}: instruction {i // 8} is a ld_imm64 of kind {src}, "
                                      "which the loader does not relocate")
                i += 16
                continue
            if op == 0x85 and src != 0:
                raise ObjectError(f"program {name}: instruction {i // 8} calls a sub-program, "
                                  "which the loader does not relocate")
            i += 8


def relocate(code: bytes, map_fds: dict[int, int], constants: dict[int, int]) -> bytes:
    """The code with compile-time map fds replaced by the new ones and placeholders by values.

    A placeholder is matched in any instruction's 32-bit immediate (a jeq
    against AW_SELF_TGID compiles to one); ld_imm64's second half is left.
    """
    out = bytearray(code)
    i = 0
    n = len(out)
    while i < n:
        op, regs = out[i], out[i + 1]
        (imm,) = struct.unpack_from("<i", out, i + 4)
        if op == _LD_IMM64:
            if regs >> 4 == _PSEUDO_MAP_FD:
                struct.pack_into("<i", out, i + 4, map_fds[imm])
            elif imm in constants:
                struct.pack_into("<i", out, i + 4, constants[imm])
            i += 16
            continue
        if imm in constants:
            struct.pack_into("<i", out, i + 4, constants[imm])
        i += 8
    return bytes(out)


# --------------------------------------------------------------------------
# The cache


def cache_dir() -> Path | None:
    """Where compiled objects are kept; None when caching is off (AGENTWATCH_BPF_CACHE=off)."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "0", "no"):
        return None
    return Path(value) if value else DEFAULT_CACHE_DIR


def _bcc_version() -> str:
    try:
        import bcc  # noqa: PLC0415

        return str(getattr(bcc, "__version__", "?"))
    except ImportError:
        return "none"


def kernel_identity() -> str:
    """The kernel build: the tracepoint layouts BCC compiled in, and the BTF offsets, belong to it."""
    try:
        return Path("/proc/version").read_text().strip()
    except OSError:
        return platform.release()


def cache_key(text: str, cflags: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (f"agentwatch-bpf-object-{FORMAT}", kernel_identity(), _bcc_version(), text, *cflags):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _trusted(st: os.stat_result, is_dir: bool) -> bool:
    kind_ok = stat.S_ISDIR(st.st_mode) if is_dir else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load_cached(directory: Path, key: str) -> CompiledObject | None:
    path = directory / f"{key}.json"
    try:
        if not _trusted(os.stat(directory), True):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not _trusted(os.fstat(fd), False):
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            obj = CompiledObject.from_json(f.read())
        check_relocations(obj)
    except (OSError, ValueError, KeyError, TypeError, ObjectError):
        return None  # unreadable or damaged: compiled again and written over
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        os.utime(path)  # newest use first when the cache is trimmed
    except OSError:
        pass
    return obj


def store_cached(directory: Path, key: str, obj: CompiledObject) -> bool:
    """Write atomically; False (and nothing written) where the directory cannot be made safe."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _trusted(os.stat(directory), True):
            return False
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(obj.to_json())
            os.replace(tmp, directory / f"{key}.json")
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return False
    _trim(directory)
    return True


def _trim(directory: Path) -> None:
    try:
        files = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[CACHE_KEEP:]:
            old.unlink()
    except OSError:
        pass


def compiled(text: str, cflags: list[str], directory: Path | None = None,
             ahead: "Ahead | None" = None) -> tuple[CompiledObject, bool]:
    """The object for this source and these flags, from the cache or compiled now; (object, from_cache).

    ahead: the same compile, started earlier in a child (compile_ahead); its
    result is taken instead of compiling here.
    """
    directory = cache_dir() if directory is None else directory
    key = cache_key(text, cflags)
    if ahead is not None and ahead.key != key:  # another program after all
        ahead.cancel()
        ahead = None
    if directory is not None:
        obj = load_cached(directory, key)
        if obj is not None:
            if ahead is not None:
                ahead.cancel()
            return obj, True
    obj = ahead.result() if ahead is not None else compile_with_bcc(text, cflags)
    if directory is not None:
        store_cached(directory, key, obj)
    return obj, False


class CompileError(Exception):
    """A compile in a child (Ahead) failed; the message is BCC's."""


class Ahead:
    """One compile running in a forked child while this process compiles another.

    BCC compiles one program at a time per process (two in one crash it), and
    `run --contain` needs two objects: compiled one after the other on a cold
    cache they took 1.75 s + 0.9 s on a 2-CPU VM. The child compiles and
    writes the object, as the cache's JSON, into a pipe; result() reads it.
    Fork before any thread is started (the child runs only BCC and exits).
    """

    def __init__(self, text: str, cflags: list[str], key: str) -> None:
        self.key = key
        read_end, write_end = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # the child must not write the parent's buffers again
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: compile, write, exit without running the parent's cleanups
            os.close(read_end)
            status = 0
            try:
                data = compile_with_bcc(text, cflags).to_json()
            except BaseException as exc:  # noqa: BLE001  (reported to the parent, which raises it)
                data = b"!" + str(exc).encode(errors="replace")
                status = 1
            try:
                with os.fdopen(write_end, "wb") as out:
                    out.write(data)
            except OSError:
                status = 1
            os._exit(status)
        os.close(write_end)
        self.pid = pid
        self._read_end = read_end

    def result(self) -> CompiledObject:
        """The compiled object (waits for the child); raises CompileError if it failed."""
        with os.fdopen(self._read_end, "rb") as pipe:
            data = pipe.read()
        self._reap()
        if not data or data.startswith(b"!"):
            raise CompileError(data[1:].decode(errors="replace") or "the compiling process ended without a result")
        obj = CompiledObject.from_json(data)
        check_relocations(obj)
        return obj

    def cancel(self) -> None:
        """Not needed after all (or this run is ending): stop the child."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        try:
            os.close(self._read_end)
        except OSError:
            pass
        self._reap()

    def _reap(self) -> None:
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None


def compile_ahead(text: str, cflags: list[str], directory: Path | None = None) -> Ahead | None:
    """Start compiling in a child unless the cache holds the object already (then None)."""
    directory = cache_dir() if directory is None else directory
    key = cache_key(text, cflags)
    if directory is not None and load_cached(directory, key) is not None:
        return None
    return Ahead(text, cflags, key)


# --------------------------------------------------------------------------
# Loading


class _ProgLoadAttr(ct.Structure):
    # union bpf_attr, the BPF_PROG_LOAD member, up to expected_attach_type (linux/bpf.h).
    _fields_ = [
        ("prog_type", ct.c_uint32), ("insn_cnt", ct.c_uint32), ("insns", ct.c_uint64),
        ("license", ct.c_uint64), ("log_level", ct.c_uint32), ("log_size", ct.c_uint32),
        ("log_buf", ct.c_uint64), ("kern_version", ct.c_uint32), ("prog_flags", ct.c_uint32),
        ("prog_name", ct.c_char * 16), ("prog_ifindex", ct.c_uint32),
        ("expected_attach_type", ct.c_uint32),
    ]


class _MapCreateAttr(ct.Structure):
    # union bpf_attr, the BPF_MAP_CREATE member, up to map_name.
    _fields_ = [
        ("map_type", ct.c_uint32), ("key_size", ct.c_uint32), ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32), ("inner_map_fd", ct.c_uint32),
        ("numa_node", ct.c_uint32), ("map_name", ct.c_char * 16),
    ]


_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def _bpf_syscall(cmd: int, attr: ct.Structure) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise ObjectError(f"no bpf(2) syscall number known for {platform.machine()}")
    ret = _libc.syscall(ct.c_long(nr), ct.c_int(cmd), ct.byref(attr), ct.c_uint(ct.sizeof(attr)))
    if ret < 0:
        return -ct.get_errno()
    return int(ret)


def _kernel_name(name: str) -> bytes:
    raw = name.encode()
    for prefix in _NAME_PREFIXES:
        if raw.startswith(prefix):
            raw = raw[len(prefix):]
            break
    return raw[:15]


def _possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class Function:
    """A loaded program (BCC's BPF.Function has the same name and fd)."""

    def __init__(self, name: bytes, fd: int):
        self.name, self.fd = name, fd


class Map:
    """One map, by BCC's ctypes Key/Leaf types: get, set, delete, iterate (a percpu value is a list)."""

    def __init__(self, owner: "LoadedObject", spec: MapSpec, fd: int):
        from bcc import BPF  # noqa: PLC0415  (BCC's decoder of its own type descriptions)

        self._owner, self.name, self.map_fd, self.ttype = owner, spec.name, fd, spec.type
        self.max_entries = spec.max_entries
        self.Key = BPF._decode_table_type(json.loads(spec.key_desc)) if spec.key_desc else ct.c_int
        self.Leaf = BPF._decode_table_type(json.loads(spec.leaf_desc)) if spec.leaf_desc else ct.c_int
        self._percpu = spec.type in PERCPU_MAP_TYPES
        if self._percpu:
            if ct.sizeof(self.Leaf) % 8:
                raise ObjectError(f"map {spec.name}: per-CPU values of {ct.sizeof(self.Leaf)} bytes "
                                  "are not 8-byte aligned")
            self._ncpu = _possible_cpus()
        from bcc.libbcc import lib  # noqa: PLC0415

        self._lib = lib

    def _key(self, key):
        # A ctypes value of the key's size passes as it is (probes.py writes c_int into a u32 key).
        if isinstance(key, (ct._SimpleCData, ct.Structure, ct.Array)):
            if ct.sizeof(key) != ct.sizeof(self.Key):
                raise TypeError(f"map {self.name}: a {ct.sizeof(key)}-byte key, not {ct.sizeof(self.Key)}")
            return key
        return self.Key(key)

    def _value(self):
        return (self.Leaf * self._ncpu)() if self._percpu else self.Leaf()

    def __getitem__(self, key):
        k, v = self._key(key), self._value()
        if self._lib.bpf_lookup_elem(self.map_fd, ct.byref(k), ct.byref(v)) < 0:
            raise KeyError(key)
        return list(v) if self._percpu else v

    def __setitem__(self, key, leaf) -> None:
        k = self._key(key)
        if self._lib.bpf_update_elem(self.map_fd, ct.byref(k), ct.byref(leaf), 0) < 0:
            raise OSError(ct.get_errno(), f"cannot update map {self.name}")

    def __delitem__(self, key) -> None:
        k = self._key(key)
        if self._lib.bpf_delete_elem(self.map_fd, ct.byref(k)) < 0:
            raise KeyError(key)

    def keys(self):
        out = []
        prev, key = None, self.Key()
        while self._lib.bpf_get_next_key(self.map_fd, None if prev is None else ct.byref(prev),
                                         ct.byref(key)) == 0:
            out.append(key)
            prev, key = key, self.Key()
        return out

    def __iter__(self):
        return iter(self.keys())

    def items(self):
        out = []
        for k in self.keys():
            try:
                out.append((k, self[k]))
            except KeyError:  # deleted by the kernel since the walk
                pass
        return out

    def values(self):
        return [v for _k, v in self.items()]

    def __len__(self) -> int:
        return len(self.keys())

    def clear(self) -> None:
        for k in self.keys():
            try:
                del self[k]
            except KeyError:
                pass

    def open_ring_buffer(self, callback) -> None:
        self._owner.open_ring_buffer(self, callback)


_RINGBUF_CB = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_int)


class LoadedObject:
    """A CompiledObject's maps made and its programs loaded on demand: BCC's BPF, the part used."""

    def __init__(self, obj: CompiledObject, constants: dict[int, int] | None = None,
                 max_entries: dict[str, int] | None = None):
        from bcc.libbcc import lib  # noqa: PLC0415

        self._lib = lib
        self._obj = obj
        self._constants = constants or {}
        self._maps: dict[str, Map] = {}
        self._fd_map: dict[int, int] = {}
        self.funcs: dict[bytes, Function] = {}
        self.tracepoint_fds: dict[bytes, int] = {}
        self.raw_tracepoint_fds: dict[bytes, int] = {}
        self._ringbuf = None
        self._ringbuf_cbs: list = []
        sizes = max_entries or {}
        try:
            for spec in obj.maps:
                self._create_map(spec, sizes.get(spec.name, spec.max_entries))
        except BaseException:
            self.cleanup()
            raise

    def _create_map(self, spec: MapSpec, max_entries: int) -> None:
        attr = _MapCreateAttr(map_type=spec.type, key_size=spec.key_size, value_size=spec.leaf_size,
                              max_entries=max_entries, map_flags=spec.flags,
                              map_name=spec.name.encode()[:15])
        fd = _bpf_syscall(BPF_MAP_CREATE, attr)
        if fd < 0:
            raise ObjectError(f"cannot create map {spec.name}: {os.strerror(-fd)}")
        self._fd_map[spec.compiled_fd] = fd
        made = MapSpec(**{**spec.__dict__, "max_entries": max_entries})
        self._maps[spec.name] = Map(self, made, fd)

    def __getitem__(self, name) -> Map:
        key = name.decode() if isinstance(name, bytes) else name
        return self._maps[key]

    def function_names(self) -> list[bytes]:
        return [n.encode() for n in self._obj.functions]

    def load_func(self, func_name, prog_type: int, attach_type: int = -1) -> Function:
        name = func_name if isinstance(func_name, bytes) else func_name.encode()
        if name in self.funcs:
            return self.funcs[name]
        code = self._obj.functions.get(name.decode())
        if code is None:
            raise ObjectError(f"no program {name.decode()} in the object")
        code = relocate(code, self._fd_map, self._constants)
        insns = ct.create_string_buffer(code, len(code))
        license = ct.create_string_buffer(self._obj.license.encode())
        attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(code) // 8,
                             insns=ct.addressof(insns), license=ct.addressof(license),
                             kern_version=self._obj.kern_version, prog_name=_kernel_name(name.decode()),
                             expected_attach_type=max(attach_type, 0))
        fd = _bpf_syscall(BPF_PROG_LOAD, attr)
        if fd < 0:
            raise ObjectError(f"cannot load program {name.decode()}: {os.strerror(-fd)}{self._verifier_log(attr)}")
        fn = Function(name, fd)
        self.funcs[name] = fn
        return fn

    @staticmethod
    def _verifier_log(attr: _ProgLoadAttr) -> str:
        """Load again with a log, for the error message: the verifier's last lines."""
        size = 1 << 22
        buf = ct.create_string_buffer(size)
        attr.log_level, attr.log_size, attr.log_buf = 1, size, ct.addressof(buf)
        fd = _bpf_syscall(BPF_PROG_LOAD, attr)
        if fd >= 0:
            os.close(fd)
            return ""
        lines = buf.value.decode(errors="replace").strip().splitlines()
        return (": " + " / ".join(lines[-3:])) if lines else ""

    def attach_tracepoint(self, tp: bytes = b"", fn_name: bytes = b"") -> None:
        category, _, event = tp.partition(b":")
        fn = self.load_func(fn_name, PROG_TRACEPOINT)
        fd = self._lib.bpf_attach_tracepoint(fn.fd, category, event)
        if fd < 0:
            raise ObjectError(f"cannot attach {fn_name.decode()} to tracepoint {tp.decode()}")
        self.tracepoint_fds[tp] = fd

    def detach_tracepoint(self, tp: bytes) -> None:
        fd = self.tracepoint_fds.pop(tp, None)
        if fd is not None:
            self._lib.bpf_close_perf_event_fd(fd)

    def attach_raw_tracepoint(self, tp: bytes = b"", fn_name: bytes = b"") -> None:
        fn = self.load_func(fn_name, PROG_RAW_TRACEPOINT)
        fd = self._lib.bpf_attach_raw_tracepoint(fn.fd, tp)
        if fd < 0:
            raise ObjectError(f"cannot attach {fn_name.decode()} to raw tracepoint {tp.decode()}")
        self.raw_tracepoint_fds[tp] = fd

    def autoload(self) -> None:
        """What BCC does at BPF(): functions named tracepoint__CAT__EVENT / raw_tracepoint__EVENT attach."""
        for raw in self.function_names():
            if raw.startswith(b"tracepoint__"):
                self.attach_tracepoint(tp=raw[len(b"tracepoint__"):].replace(b"__", b":", 1), fn_name=raw)
            elif raw.startswith(b"raw_tracepoint__"):
                self.attach_raw_tracepoint(tp=raw[len(b"raw_tracepoint__"):], fn_name=raw)

    def attach_func(self, fn: Function, attachable_fd: int, attach_type: int, flags: int = 0) -> None:
        res = self._lib.bpf_prog_attach(fn.fd, attachable_fd, attach_type, flags)
        if res < 0:
            raise ObjectError(f"cannot attach {fn.name.decode()} (attach type {attach_type}): "
                              f"{os.strerror(-res) if res < -1 else os.strerror(ct.get_errno())}")

    def detach_func(self, fn: Function, attachable_fd: int, attach_type: int) -> None:
        res = self._lib.bpf_prog_detach2(fn.fd, attachable_fd, attach_type)
        if res < 0:
            raise ObjectError(f"cannot detach {fn.name.decode()} (attach type {attach_type})")

    def open_ring_buffer(self, table: Map, callback) -> None:
        cb = _RINGBUF_CB(callback)
        self._ringbuf_cbs.append(cb)  # libbcc holds only the C pointer
        if self._ringbuf is None:
            self._ringbuf = self._lib.bpf_new_ringbuf(table.map_fd, cb, None)
            if not self._ringbuf:
                raise ObjectError(f"cannot open ring buffer {table.name}")
        elif self._lib.bpf_add_ringbuf(self._ringbuf, table.map_fd, cb, None) < 0:
            raise ObjectError(f"cannot open ring buffer {table.name}")

    def ring_buffer_consume(self) -> None:
        if self._ringbuf:
            self._lib.bpf_consume_ringbuf(self._ringbuf)

    def ring_buffer_poll(self, timeout: int = -1) -> None:
        if self._ringbuf:
            self._lib.bpf_poll_ringbuf(self._ringbuf, timeout)

    def perf_fds(self) -> list[int]:
        return list(self.tracepoint_fds.values()) + list(self.raw_tracepoint_fds.values())

    def cleanup(self) -> None:
        """Detach what is attached and close every program and map (idempotent)."""
        for tp in list(getattr(self, "tracepoint_fds", {})):
            self.detach_tracepoint(tp)
        for tp, fd in list(getattr(self, "raw_tracepoint_fds", {}).items()):
            os.close(fd)
            del self.raw_tracepoint_fds[tp]
        if getattr(self, "_ringbuf", None):
            self._lib.bpf_free_ringbuf(self._ringbuf)
            self._ringbuf = None
        for fn in list(getattr(self, "funcs", {}).values()):
            os.close(fn.fd)
        self.funcs = {}
        for m in list(getattr(self, "_maps", {}).values()):
            os.close(m.map_fd)
        self._maps = {}
