"""The sensor with its prefilter: one object that ``run``, the tests and the benchmarks share.

Wiring the two takes six steps that must happen in order: compute the map contents from the
rules (their term count sizes the BPF masks), compile the sensor with the prefilter's source
and hooks in front of it, ask for the prefilter's maps, start it, wrap the map fds in a
:class:`~sentinel.prefilter.maps.Prefilter`, and publish the first generation. Reloads then
publish new generations into the same maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sentinel.events import EVENT_TYPES
from sentinel.kernel.sensor import DEFAULT_RINGBUF_PAGES, POLL_MS, Sensor, syscalls_for
from sentinel.language import ast
from sentinel.prefilter.maps import MAP_NAMES, Prefilter, nwords_for, sensor_prelude
from sentinel.prefilter.tables import KernelTables, build_tables

RuleExprs = Sequence[tuple[str, ast.Expr]]  # (rule name, expanded condition) of enabled rules
ENV_FIELDS = frozenset({"proc.env"})  # what the exec's copy of its environment fills


def reads_env(rules: Iterable[Any]) -> bool:
    """Whether any of these compiled rules reads the environment, in its condition or its
    output: execs copy it (a page of user memory each) only then."""
    from sentinel.app.coverage import condition_fields

    for r in rules:
        used = condition_fields(r.expr) | {p[1] for p in r.output.parts if isinstance(p, tuple)}
        if used & ENV_FIELDS:
            return True
    return False


class FilteredSensor:
    """A :class:`~sentinel.kernel.sensor.Sensor` for ``rules``, with the in-kernel prefilter
    (``prefilter=False``: every event of the attached types goes to user space).

    ``event_types``: the Falco event types to trace (default: those the rules can match;
    unknown names are ignored). ``syscalls`` overrides the syscall event types attached."""

    def __init__(
        self,
        rules: RuleExprs,
        *,
        event_types: Iterable[str] | None = None,
        syscalls: Iterable[str] | None = None,
        prefilter: bool = True,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        extra_cflags: Iterable[str] = (),
        ignore_self: bool = True,
        extra_maps: Iterable[str] = (),
        copy_env: bool = True,
    ) -> None:
        self.tables: KernelTables = build_tables(rules)
        if syscalls is None:
            syscalls = syscalls_for(event_types if event_types is not None else ())
        self.prefilter_on = prefilter
        self.nwords = nwords_for(self.tables)
        self.sensor = Sensor(
            frozenset(syscalls),
            ringbuf_pages=ringbuf_pages,
            prelude=sensor_prelude(self.nwords) if prefilter else "",
            maps=[*(MAP_NAMES if prefilter else ()), *extra_maps],
            extra_cflags=extra_cflags,
            ignore_self=ignore_self,
        )
        self.prefilter: Prefilter | None = None
        self.loaded: dict[str, int] = {}
        self.env_copied = copy_env  # execs copy their environment (proc.env)

    def start(self, callback: Callable[[bytes], None]) -> None:
        """Compile, load and attach; then publish the rules' prefilter tables."""
        self.sensor.start(callback)
        self.sensor.copy_env(self.env_copied)
        if self.prefilter_on:
            self.prefilter = Prefilter({m: self.sensor.map_fd(m) for m in MAP_NAMES}, self.nwords)
            self.loaded = self.prefilter.load(self.tables)

    def reload(self, rules: RuleExprs, copy_env: bool = True) -> dict[str, int]:
        """Publish the prefilter tables of new rules (a no-op without the prefilter), and
        whether execs copy their environment for them."""
        self.env_copied = copy_env
        self.sensor.copy_env(copy_env)
        self.tables = build_tables(rules)
        if self.prefilter is not None:
            self.loaded = self.prefilter.load(self.tables)
        return self.loaded

    @property
    def syscalls(self) -> frozenset[str]:
        """The syscall event types attached (after start: those this kernel has)."""
        return self.sensor.syscalls

    def unfiltered(self) -> list[str]:
        """The event types the kernel does not filter now (no rule lets it, or too many
        terms), among those attached."""
        if self.prefilter is None:
            return []
        attached = self.syscalls | {t.name for t in EVENT_TYPES if t.sched}  # sched: always
        names = [n for n, t in self.tables.types.items() if t.pass_all and n in attached]
        return names + list(self.prefilter.overflow)

    # -- the sensor's own interface -------------------------------------------------------------

    def poll(self, timeout_ms: float = POLL_MS) -> int:
        return self.sensor.poll(timeout_ms)

    def drain(self) -> int:
        return self.sensor.drain()

    def counts(self) -> dict[str, dict[str, int]]:
        return self.sensor.counts()

    def lost(self) -> dict[str, int]:
        return self.sensor.lost()

    def map_fd(self, name: str) -> int:
        return self.sensor.map_fd(name)

    @property
    def attachments(self) -> list[str]:
        return self.sensor.attachments

    def close(self) -> None:
        self.sensor.close()

    def __enter__(self) -> FilteredSensor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
