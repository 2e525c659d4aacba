"""A small pure-Python reader of kernel BTF (``/sys/kernel/btf/vmlinux``).

Why: bcc compiles our BPF C against whatever kernel headers are installed, and on the machines
Sentinel runs on those headers do not describe the running kernel (``struct file`` has
``f_path`` at 16 in the 6.1 headers, at 64 in the running 6.18 kernel). The running kernel's
BTF is the only trustworthy source of struct layouts, so every struct field the BPF code reads
is read at an offset computed here and passed to the compiler as a ``-D`` macro. No bpftool is
needed at run time.

Only what offset computation needs is decoded: type kinds, names, sizes and struct/union
members (following typedefs and qualifiers, descending into anonymous members).
The format is documented in the kernel's ``Documentation/bpf/btf.rst``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F

# Kinds (include/uapi/linux/btf.h).
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

# Bytes that follow the 12-byte common header, per kind: (fixed, per vlen entry).
_EXTRA: dict[int, tuple[int, int]] = {
    KIND_INT: (4, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}
_SKIP = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)

_HDR = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_ARRAY = struct.Struct("<III")


class BtfError(Exception):
    """BTF missing, malformed, or lacking a requested struct or member."""


@dataclass(frozen=True, slots=True)
class Member:
    """One struct/union member: name ('' when anonymous), type id, offset in bits."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


class Btf:
    """Parsed BTF. Construct with :meth:`load` (a file) or :meth:`from_bytes`."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HDR.size:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(
            data
        )
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian BTF is not supported)")
        self._data = data
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if self._types_end > len(data) or self._str_end > len(data):
            raise BtfError("BTF sections run past the end of the blob")
        # _offsets[type_id] = byte offset of that type's record; id 0 is 'void'.
        self._offsets: list[int] = [0]
        self._by_name: dict[str, int] = {}
        self._typedefs: dict[str, int] = {}
        self._enums: dict[str, int] | None = None
        self._enum_types: dict[str, int] = {}
        self._index()

    @classmethod
    def load(cls, path: Path | str = VMLINUX) -> Btf:
        """Read and index a raw BTF file (the kernel exports vmlinux's at ``VMLINUX``)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BtfError(f"cannot read BTF from {path}: {exc.strerror}") from exc
        return cls(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Btf:
        return cls(data)

    # -- indexing ---------------------------------------------------------------------------

    def _index(self) -> None:
        data = self._data
        pos = self._types_start
        end = self._types_end
        offsets = self._offsets
        by_name = self._by_name
        typedefs = self._typedefs
        enums = self._enum_types
        unpack = _TYPE.unpack_from
        extra = _EXTRA
        type_id = 0
        while pos < end:
            type_id += 1
            offsets.append(pos)
            name_off, info, _size = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            fixed, per = extra.get(kind, (0, 0))
            if kind in (KIND_STRUCT, KIND_UNION) and name_off:
                # First definition wins; later same-named types (rare) stay reachable by id.
                by_name.setdefault(self._str(name_off), type_id)
            elif kind == KIND_TYPEDEF:
                typedefs.setdefault(self._str(name_off), type_id)
            elif kind in (KIND_ENUM, KIND_ENUM64) and name_off:
                enums.setdefault(self._str(name_off), type_id)
            pos += 12 + fixed + per * (info & 0xFFFF)
        if pos != end:
            raise BtfError("BTF type section is malformed (record overruns section)")

    def _str(self, off: int) -> str:
        start = self._str_start + off
        stop = self._data.index(b"\0", start, self._str_end)
        return self._data[start:stop].decode("utf-8", "replace")

    # -- raw type access --------------------------------------------------------------------

    def _record(self, type_id: int) -> tuple[int, int, int, int]:
        """(kind, vlen, size_or_type, byte position) of a type id."""
        if type_id <= 0 or type_id >= len(self._offsets):
            raise BtfError(f"no BTF type with id {type_id}")
        pos = self._offsets[type_id]
        _name, info, size = _TYPE.unpack_from(self._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, size, pos

    def type_name(self, type_id: int) -> str:
        if type_id == 0:
            return "void"
        pos = self._offsets[type_id]
        return self._str(_TYPE.unpack_from(self._data, pos)[0])

    def kind(self, type_id: int) -> int:
        return self._record(type_id)[0]

    def resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type id."""
        for _ in range(64):
            if type_id == 0:
                return 0
            kind, _vlen, ref, _pos = self._record(type_id)
            if kind not in _SKIP:
                return type_id
            type_id = ref
        raise BtfError("typedef/qualifier chain too long")

    def type_size(self, type_id: int) -> int:
        """Size in bytes of any sized type (ints, pointers, arrays, structs, enums...)."""
        type_id = self.resolve(type_id)
        kind, _vlen, size, pos = self._record(type_id)
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            elem, _index, nelems = _ARRAY.unpack_from(self._data, pos + 12)
            return int(self.type_size(elem) * nelems)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return int(size)
        raise BtfError(f"type {type_id} (kind {kind}) has no size")

    def members(self, type_id: int) -> list[Member]:
        kind, vlen, _size, pos = self._record(self.resolve(type_id))
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"type {type_id} is not a struct or union")
        kind_flag = (_TYPE.unpack_from(self._data, pos)[1] >> 31) & 1
        out: list[Member] = []
        base = pos + 12
        for i in range(vlen):
            name_off, mtype, moff = _TYPE.unpack_from(self._data, base + 12 * i)
            if kind_flag:
                out.append(Member(self._str(name_off), mtype, moff & 0xFFFFFF, moff >> 24))
            else:
                out.append(Member(self._str(name_off), mtype, moff, 0))
        return out

    def enumerators(self, enum_name: str) -> dict[str, int]:
        """The values of a named enum (``"io_uring_op"``); empty when BTF has no such enum.
        Values the kernel defines this way (opcodes, ids) are read here rather than copied
        from a header that may not match the kernel."""
        for type_id in range(1, len(self._offsets)):
            kind, vlen, _size, pos = self._record(type_id)
            if kind not in (KIND_ENUM, KIND_ENUM64) or self.type_name(type_id) != enum_name:
                continue
            out: dict[str, int] = {}
            base = pos + 12
            for i in range(vlen):
                if kind == KIND_ENUM:
                    name_off, val = struct.unpack_from("<Ii", self._data, base + 8 * i)
                else:
                    name_off, lo, hi = struct.unpack_from("<III", self._data, base + 12 * i)
                    val = lo | (hi << 32)
                out[self._str(name_off)] = val
            return out
        return {}

    def struct_id(self, name: str) -> int:
        """Type id of a named struct or union (``"file"``, ``"struct file"`` both work)."""
        for prefix in ("struct ", "union "):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        try:
            return self._by_name[name]
        except KeyError:
            raise BtfError(f"no struct or union named {name!r} in BTF") from None

    # -- the public offset API --------------------------------------------------------------

    def _find_member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, member type id) of ``name`` in a struct, searching anonymous members."""
        for m in self.members(type_id):
            if m.name == name:
                return m.bit_offset, m.type_id
            if not m.name:
                inner = self.resolve(m.type_id)
                if self.kind(inner) in (KIND_STRUCT, KIND_UNION):
                    found = self._find_member(inner, name)
                    if found is not None:
                        return m.bit_offset + found[0], found[1]
        return None

    def _walk(self, struct_name: str, member_path: str) -> tuple[int, int]:
        type_id = self.struct_id(struct_name)
        bits = 0
        for part in member_path.split("."):
            resolved = self.resolve(type_id)
            if self.kind(resolved) not in (KIND_STRUCT, KIND_UNION):
                raise BtfError(
                    f"{struct_name}.{member_path}: {part!r} is inside a non-struct member"
                )
            found = self._find_member(resolved, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member path {member_path!r}")
            bits += found[0]
            type_id = found[1]
        return bits, type_id

    def offsetof(self, struct_name: str, member_path: str) -> int:
        """Byte offset of ``member_path`` (dotted through embedded structs) in a struct."""
        bits, _ = self._walk(struct_name, member_path)
        if bits % 8:
            raise BtfError(f"{struct_name}.{member_path} is a bitfield (bit offset {bits})")
        return bits // 8

    def member_size(self, struct_name: str, member_path: str) -> int:
        """Size in bytes of the member at ``member_path``."""
        _, type_id = self._walk(struct_name, member_path)
        return self.type_size(type_id)

    def sizeof(self, struct_name: str) -> int:
        return self.type_size(self.struct_id(struct_name))

    def func_proto_params(self, typedef_name: str) -> int | None:
        """Parameter count of the function (pointer) type a typedef names, e.g. a tracepoint's
        ``btf_trace_<name>`` (whose first parameter is the tracepoint's ``void *`` context)."""
        type_id = self._typedefs.get(typedef_name)
        if type_id is None:
            return None
        type_id = self.resolve(type_id)
        kind, _vlen, ref, _pos = self._record(type_id)
        if kind == KIND_PTR:
            type_id = self.resolve(ref)
        kind, vlen, _ref, _pos = self._record(type_id)
        return vlen if kind == KIND_FUNC_PROTO else None

    def enum_value(self, name: str) -> int | None:
        """The value of an enumerator (``DCACHE_DISCONNECTED``...), or None if no enum of this
        BTF declares it (many kernel constants are ``#define``s, which BTF does not carry)."""
        if self._enums is None:
            self._enums = {}
            for type_id in range(1, len(self._offsets)):
                kind, vlen, _size, pos = self._record(type_id)
                if kind == KIND_ENUM:
                    for i in range(vlen):
                        n_off, val = struct.unpack_from("<Ii", self._data, pos + 12 + 8 * i)
                        self._enums.setdefault(self._str(n_off), val)
                elif kind == KIND_ENUM64:
                    for i in range(vlen):
                        n_off, lo, hi = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
                        self._enums.setdefault(self._str(n_off), lo | (hi << 32))
        return self._enums.get(name)

    def enum_values(self, enum_name: str) -> dict[str, int]:
        """The members of a named enum (``"bpf_func_id"``) and their values; empty when the
        kernel has no such enum. Used for feature detection: a kernel's ``enum bpf_func_id``
        lists exactly the BPF helpers it offers."""
        type_id = self._enum_types.get(enum_name.removeprefix("enum "))
        if type_id is None:
            return {}
        kind, vlen, _size, pos = self._record(type_id)
        signed = (_TYPE.unpack_from(self._data, pos)[1] >> 31) & 1
        out: dict[str, int] = {}
        base = pos + 12
        if kind == KIND_ENUM:
            for i in range(vlen):
                name_off, val = struct.unpack_from(
                    "<Ii" if signed else "<II", self._data, base + 8 * i
                )
                out[self._str(name_off)] = val
        else:
            for i in range(vlen):
                name_off, lo, hi = struct.unpack_from("<III", self._data, base + 12 * i)
                val = hi << 32 | lo
                out[self._str(name_off)] = val - (1 << 64) if signed and hi >> 31 else val
        return out

    def has_struct(self, struct_name: str) -> bool:
        try:
            self.struct_id(struct_name)
        except BtfError:
            return False
        return True

    def has_member(self, struct_name: str, member_path: str) -> bool:
        try:
            self._walk(struct_name, member_path)
        except BtfError:
            return False
        return True

    def cflags(
        self, table: Mapping[str, tuple[str, str]] | Iterable[tuple[str, str, str]]
    ) -> list[str]:
        """``-D`` flags for a table of offsets.

        ``table`` maps a macro name to ``(struct, member_path)`` (or is an iterable of
        ``(macro, struct, member_path)``); each becomes ``-D<macro>=<byte offset>``. A member
        that does not exist raises :class:`BtfError` naming it, so a kernel that moved or
        renamed a field fails loudly at start-up instead of reading garbage.
        """
        items: Iterable[tuple[str, str, str]] = (
            ((k, v[0], v[1]) for k, v in table.items()) if isinstance(table, Mapping) else table
        )
        return [f"-D{macro}={self.offsetof(s, path)}" for macro, s, path in items]


_CACHE: dict[str, Btf] = {}
MODULES = Path("/sys/kernel/btf")


def with_module(base: Btf, module: bytes) -> Btf:
    """``base`` (vmlinux) and a module's split BTF as one: a module's BTF continues vmlinux's
    type ids and string offsets (Documentation/bpf/btf.rst, "split BTF"), so the two sections
    laid end to end are one ordinary blob in which every reference already resolves."""
    _m, _v, _f, b_hdr, b_toff, b_tlen, b_soff, b_slen = _HDR.unpack_from(base._data)
    _m, _v, _f, m_hdr, m_toff, m_tlen, m_soff, m_slen = _HDR.unpack_from(module)
    if _m != BTF_MAGIC:
        raise BtfError("module BTF has a bad magic")
    types = (
        base._data[b_hdr + b_toff : b_hdr + b_toff + b_tlen]
        + module[m_hdr + m_toff : m_hdr + m_toff + m_tlen]
    )
    strs = (
        base._data[b_hdr + b_soff : b_hdr + b_soff + b_slen]
        + module[m_hdr + m_soff : m_hdr + m_soff + m_slen]
    )
    hdr = _HDR.pack(BTF_MAGIC, 1, 0, _HDR.size, 0, len(types), len(types), len(strs))
    return Btf(hdr + types + strs)


def module_btf(module: str, base: Btf | None = None) -> Btf | None:
    """vmlinux's BTF joined with a loaded module's (``/sys/kernel/btf/<module>``), or None when
    that module is not loaded (or the kernel has no module BTF)."""
    key = f"module:{module}"
    if key not in _CACHE:
        try:
            data = (MODULES / module).read_bytes()
        except OSError:
            return None
        _CACHE[key] = with_module(base or vmlinux_btf(), data)
    return _CACHE[key]


def vmlinux_btf(path: Path | str = VMLINUX) -> Btf:
    """The running kernel's BTF, parsed once per process."""
    key = str(path)
    if key not in _CACHE:
        _CACHE[key] = Btf.load(path)
    return _CACHE[key]
