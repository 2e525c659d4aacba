"""The vocabulary of the event table: record layouts, parameters, event types and families.

Why a table: everything about one kind of event (its record bytes, event code, tracepoints, how
its arguments decode and render, which Falco fields it fills, which kernel dimensions the
prefilter may test, which deny shape it has) used to be spread over parallel lists in two
languages. Here it is declared once, as data (libsinsp's ``driver/event_table.c`` is the
model: one entry per event, with its parameters and their types), and both the C side (see
:mod:`.cgen`) and the Python side (record decoding, ``evt.arg.*``, counters, the prefilter's
dimensions) are derived from it.

- A :class:`Layout` is one C struct, laid out here with C's natural alignment. Python decodes
  it with one ``struct`` format; :mod:`.cgen` prints the C declaration; a test compiles that
  C and compares every offset (``tests/events/test_layouts.py``).
- A :class:`Family` is a group of event types that share a record layout and one BPF handler
  (``bpf/sensor/<family>.h``), and one prefilter family.
- An :class:`EventType` is one Falco event type (``evt.type``): its code (its index in the
  table, also its counter index), its producer (a tracepoint and the handler call the generated
  stub makes), its parameters, the fields it defines and its dimensions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sentinel.events.dims import Bind

# ---- record layouts ----------------------------------------------------------------------------

# C scalar type -> (struct format char, size); arrays are declared with a count.
C_TYPES: dict[str, tuple[str, int]] = {
    "u8": ("B", 1),
    "u16": ("H", 2),
    "s16": ("h", 2),
    "u32": ("I", 4),
    "s32": ("i", 4),
    "u64": ("Q", 8),
    "s64": ("q", 8),
    "char": ("s", 1),
}
# A char array at least this long is a *buffer*: sliced out of the raw bytes lazily, never
# unpacked with the fixed part (so a record costs one small unpack when it arrives).
BUFFER_MIN = 64


@dataclass(frozen=True, slots=True)
class Member:
    """One struct member: a scalar (``count == 0``) or an array of ``count`` elements."""

    name: str
    ctype: str
    count: int = 0

    @property
    def size(self) -> int:
        return C_TYPES[self.ctype][1] * max(self.count, 1)

    @property
    def align(self) -> int:
        return C_TYPES[self.ctype][1]

    @property
    def buffer(self) -> bool:
        return self.ctype == "char" and self.count >= BUFFER_MIN

    def c_decl(self) -> str:
        return f"{self.ctype} {self.name}" + (f"[{self.count}]" if self.count else "") + ";"


def members(decl: str) -> list[Member]:
    """C-like member declarations -> members: ``"s64 res, u32 flags, char path[256]"``."""
    out = []
    for part in decl.split(","):
        ctype, name = part.split()
        count = 0
        if name.endswith("]"):
            name, _, n = name[:-1].partition("[")
            count = int(n)
        out.append(Member(name, ctype, count))
    return out


# A program tail-called through a program array: (array, index, function, program type).
TailCall = tuple[str, int, str, str]


class LayoutError(ValueError):
    pass


class Layout:
    """One C struct, with ``base`` (the record header) as its first member ``h``.

    Offsets follow C's natural alignment on x86-64; implicit padding is refused (declare it),
    so that the Python ``struct`` format ("<", no padding) and the C compiler agree by
    construction, and the layout test proves it. Buffers (char arrays of ``BUFFER_MIN`` bytes
    or more) come last and are read by offset only when a field needs them."""

    size: int

    def __init__(self, name: str, decl: str | Sequence[Member], base: Layout | None = None) -> None:
        self.name = name
        self.base = base
        self.members = members(decl) if isinstance(decl, str) else list(decl)
        self.offsets: dict[str, int] = {}
        off = base.size if base is not None else 0
        seen_buffer = False
        fmt = "<"
        self.fixed_names: list[str] = []
        for m in self.members:
            if off % m.align:
                raise LayoutError(f"{name}.{m.name} at {off} is not {m.align}-aligned: pad it")
            self.offsets[m.name] = off
            off += m.size
            if m.buffer:
                seen_buffer = True
                continue
            if seen_buffer:
                raise LayoutError(f"{name}.{m.name} follows a buffer: buffers come last")
            code = C_TYPES[m.ctype][0]
            fmt += f"{m.count}s" if m.ctype == "char" else (f"{m.count}{code}" if m.count else code)
            if m.count and m.ctype != "char":
                raise LayoutError(f"{name}.{m.name}: only char arrays are supported")
            self.fixed_names.append(m.name)
        align = max([8, *(m.align for m in self.members)])
        if off % align:
            raise LayoutError(f"{name} is {off} bytes, not a multiple of {align}: pad it")
        self.size = off
        self.fixed = struct.Struct(fmt)  # the scalar members, from the end of the base
        self.fixed_offset = base.size if base is not None else 0
        self.index = {n: i for i, n in enumerate(self.fixed_names)}
        self.sizes = {m.name: m.size for m in self.members}

    def offset(self, name: str) -> int:
        return self.offsets[name]

    def unpack(self, raw: bytes) -> tuple[Any, ...]:
        return self.fixed.unpack_from(raw, self.fixed_offset)

    def c_struct(self) -> str:
        lines = [f"struct {self.name} {{"]
        if self.base is not None:
            lines.append(f"    struct {self.base.name} h;")
        lines += [f"    {m.c_decl()}" for m in self.members]
        lines.append(f"}};  // {self.size} bytes")
        return "\n".join(lines)


BufferEncoder = Callable[[Any], tuple[bytes, int]]  # readable value -> (bytes stored, length)


def buffers(
    spec: Mapping[str, tuple[str | None, BufferEncoder]], **defaults: Any
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A family's record-builder encoder: ``spec`` maps a buffer member to its length member
    (None: it has none) and how a readable value becomes its bytes (sentinel.events.builder)."""

    def encode(values: dict[str, Any]) -> dict[str, Any]:
        out = {**defaults, **values}
        for name, (length, to_bytes) in spec.items():
            value = out.pop(name, None)
            if value is not None:
                out[name], n = to_bytes(value)
                if length is not None:
                    out.setdefault(length, n)
        return out

    return encode


def utf8(value: str) -> tuple[bytes, int]:
    raw = value.encode("utf-8", "surrogateescape")
    return raw, len(raw)


# ---- parameters ------------------------------------------------------------------------------


class ParamType(StrEnum):
    """How an argument is rendered in ``evt.arg.<name>`` and ``evt.args`` (Falco's PT_*)."""

    FD = "fd"  # descriptor number; resolved: "<typechar>name" of the file when known
    ERRNO = "errno"  # result 0 / -errno; resolved: the errno name when negative
    PID = "pid"  # a pid; resolved: its process name
    UID = "uid"  # a user id; resolved: the user's name
    GID = "gid"  # a group id; resolved: the group's name
    INT = "int"  # signed decimal
    UINT = "uint"  # unsigned decimal
    HEX = "hex"  # unsigned, hexadecimal
    OCTAL = "octal"  # a number in octal, "0755" (Falco's PT_UINT32 with PF_OCT: open's mode)
    MODE = "mode"  # permission bits (PT_MODE): octal; resolved: "S_IRUSR|S_IWUSR|S_ISUID"
    FLAGS = "flags"  # a bit set; resolved: "A|B" from the param's name table
    ENUM = "enum"  # one value; resolved: its name from the param's name table
    PATH = "path"  # an absolute path, or relative to the cwd (PT_FSPATH)
    RELPATH = "relpath"  # a path relative to the param ``dirfd`` (PT_FSRELPATH)
    CHARBUF = "charbuf"  # a string, as is
    SOCKADDR = "sockaddr"  # an address as passed ("1.2.3.4:80", a unix path)
    SOCKTUPLE = "socktuple"  # the connection "lip:lport->rip:rport"


@dataclass(frozen=True, slots=True)
class Param:
    """One argument of an event type, as Falco names it (``evt.arg.<name>``).

    ``get`` reads its raw value from the live event (``None``: not known). For FLAGS and ENUM,
    ``names`` is the (value, name) table, rendered as libsinsp does. For PATH and RELPATH,
    ``resolve`` gives the absolute path a relative one names (joined to the cwd or to the
    directory of the dirfd parameter, as libsinsp's resolved text)."""

    name: str
    type: ParamType
    get: Callable[[Any], Any]
    names: Sequence[tuple[int, str]] = ()
    resolve: Callable[[Any], Any] | None = None
    text: Callable[[int], str] | None = None  # FLAGS: a renderer of its own (else ``names``)


# ---- event types and families ---------------------------------------------------------------


class Category(StrEnum):
    """Falco's ``evt.category`` values the sensor's events have."""

    PROCESS = "process"
    FILE = "file"
    NET = "net"


# (live event) -> value or None. A live event (sentinel.enrichment.event.LiveEvent) offers
# ``rec`` (the Record), ``proc``/``table`` (the process table), ``clock``, ``num``,
# ``get(field)`` and ``memo(key, fn)`` (a per-event cache for values several getters share).
Getter = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Getters:
    """Fields and the functions that fill them, beside the code they read (libsinsp's
    filterchecks keep the field table and its extraction in one file). A field may have one
    getter for every event type of its owner, or getters for disjoint sets of them (``only``):
    fs.path.target is a rename's new path but a link's old one."""

    fns: dict[str, Getter] = field(default_factory=dict)
    typed: dict[str, dict[str, Getter]] = field(default_factory=dict)

    def __call__(self, name: str, *, only: Sequence[str] = ()) -> Callable[[Getter], Getter]:
        def deco(fn: Getter) -> Getter:
            self.add(name, fn, only=only)
            return fn

        return deco

    def add(self, name: str, fn: Getter, *, only: Sequence[str] = ()) -> None:
        if name in self.fns or (not only and name in self.typed):
            raise ValueError(f"field {name} has two getters")
        if not only:
            self.fns[name] = fn
            return
        per_type = self.typed.setdefault(name, {})
        for t in only:
            if t in per_type:
                raise ValueError(f"field {name} has two getters for {t}")
            per_type[t] = fn

    @property
    def only(self) -> dict[str, frozenset[str]]:
        """Field -> the event types it is limited to (fields for every type are absent)."""
        return {n: frozenset(per) for n, per in self.typed.items()}

    def for_type(self, evt_type: str) -> dict[str, Getter]:
        out = dict(self.fns)
        out.update({n: per[evt_type] for n, per in self.typed.items() if evt_type in per})
        return out


@dataclass(frozen=True, slots=True)
class Syscall:
    """A syscall exit that produces an event: the tracepoint ``syscalls:sys_exit_<name>`` and
    the C call the generated stub makes with its arguments. ``call`` is the handler's trailing
    arguments, comma-separated C expressions over ``a0``..``a3`` (the syscall's first four
    arguments, from the saved registers; see ``read_args`` in bpf/sensor/common.h); the stub
    passes ``ctx``, the result and the event code first. ``piggyback``: attached only when
    some other syscall tracepoint is (the cost is in being attached at all, see KERNEL.md)."""

    name: str
    handler: str
    call: str = ""
    piggyback: bool = False
    # The kernel's name of the syscall where it differs from Falco's (umount2 is
    # SYSCALL_DEFINE2(umount, ...), so its tracepoint is sys_exit_umount on every kernel).
    kernel_name: str = ""

    @property
    def tracepoint(self) -> str:
        """The name of its exit tracepoint in the ``syscalls`` category."""
        return f"sys_exit_{self.kernel_name or self.name}"

    @property
    def args(self) -> list[str]:
        """The C expressions of ``call``, split at its top-level commas."""
        out, depth, cur = [], 0, ""
        for ch in self.call:
            if ch == "," and depth == 0:
                out.append(cur.strip())
                cur = ""
                continue
            depth += (ch == "(") - (ch == ")")
            cur += ch
        return [x for x in [*out, cur.strip()] if x]


@dataclass(slots=True)
class EventType:
    """One Falco event type. ``code`` is assigned by the table (its index)."""

    name: str
    category: Category
    params: Sequence[Param]
    syscall: Syscall | None = None
    sched: str | None = None  # a sched raw tracepoint (handled in the family's C source)
    deny: str | None = None  # the deny shape its rules compile to (see enforcement.deny)
    returns: bool = True  # its first parameter is the syscall's result (evt.rawres)
    binds: Mapping[str, Bind] = field(default_factory=dict)  # kernel bindings of its own
    code: int = -1
    family: Family | None = None

    @property
    def truth(self) -> str:
        """Where its values come from (the family's ``truth``)."""
        t = self.family.truth if self.family is not None else {}
        return t.get(self.name) or t.get("*", "")

    @property
    def tracepoints(self) -> tuple[str, ...]:
        out = []
        if self.sched:
            out.append(f"raw:{self.sched}")
        if self.syscall:
            out.append(f"syscalls:{self.syscall.tracepoint}")
        return tuple(out)


@dataclass(slots=True)
class Family:
    """Event types that share a record layout, a BPF handler (``bpf/sensor/<source>``) and a
    prefilter family. ``kernel_fields`` binds the fields a rule may test to the dimension
    kinds the prefilter evaluates on this family's events (see ``sentinel.prefilter.plan``):
    only a field whose kernel value equals the user-space value may be bound. ``prefilter``:
    whether the prefilter judges this family at all (process records are never dropped)."""

    name: str
    layout: Layout
    source: str
    event_types: list[EventType]
    getters: Getters
    kernel_fields: Mapping[str, Bind] = field(default_factory=dict)
    prefilter: bool = True
    # Programs tail-called through a program array: (array, index, function, program type:
    # "tracepoint" or "raw_tracepoint", the caller's: a program array holds one type).
    tail_calls: Sequence[TailCall] = ()
    # Readable values -> raw member values (the record builder's half of the family's
    # decoding: a path as its walk, an address as sockaddr bytes...); see events.builder.
    encode: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Where what rules judge comes from: the kernel's objects, or the caller's memory (and
    # when it is read). Per event type name, "*" for the family's others (README, explain).
    truth: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t in self.event_types:
            t.family = self

    @property
    def type_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.event_types)
