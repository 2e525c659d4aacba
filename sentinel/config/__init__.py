"""Sentinel's configuration file (YAML), one pydantic model.

Every key is optional; an unknown key is an error naming it (a typo in a security tool's
config must not silently fall back to a default). ``SENTINEL_<KEY>`` environment variables
override top-level scalar keys (e.g. ``SENTINEL_MATCHING=all``), and ``SENTINEL_<SECTION>__<KEY>``
scalar keys of a section (e.g. ``SENTINEL_LOGGING__LEVEL=debug``), applied before validation so an
override is checked like the file. Errors name the file, the key and, when the key is in the
file, its line: an operator with a fleet of hosts must find the mistake without guessing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sentinel.loader.models import normalize_priority
from sentinel.outputs.config import OutputConfig, SpoolConfig, _default_outputs
from sentinel.paths import RULES_DIR

ENV_PREFIX = "SENTINEL_"


class EnforcementConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unavailable: Literal["refuse", "alert", "kill"] = Field(
        default="refuse",
        description="when BPF LSM is unavailable and deny rules are loaded: refuse to start, "
        "run them as alerts marked deny-unenforced, or kill the offending process from "
        "tracepoint programs (alerts marked kill; see sentinel/enforcement/kill.py)",
    )


class LoggingConfig(BaseModel):
    """Sentinel's own log (stderr), not the alerts."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="json for log collectors, console for people; auto = console on a TTY, "
        "else json",
    )
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class ReloadConfig(BaseModel):
    """Hot reload of the rules. SIGHUP always reloads; ``watch`` also polls the rules' mtimes."""

    model_config = ConfigDict(extra="forbid")
    watch: bool = Field(default=False, description="poll the rules files/directories for changes")
    interval: float = Field(default=2.0, gt=0, le=3600, description="seconds between polls")


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). Raises ValueError with the reason."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:9376, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be a number 0-65535, got {port!r}")
    return host, int(port)


class SentinelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Path] = Field(default_factory=lambda: [RULES_DIR])
    matching: Literal["first", "all"] = "first"
    minimum_priority: str = "Debug"
    hostname: str | None = None
    append_output: list[str] | None = Field(
        default=None,
        description="fields appended to every syscall alert's output and output_fields "
        "(as Falco's append_output with the container plugin); [] for none. Unset: "
        "container.id, container.name, container.image, and on a Kubernetes node (a CRI "
        "runtime socket found) also container.image.repository, k8s.ns.name, k8s.pod.name",
    )
    outputs: list[OutputConfig] = Field(default_factory=_default_outputs)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    enforcement: EnforcementConfig = Field(default_factory=EnforcementConfig)
    ringbuf_pages: int = Field(default=2048, ge=1, description="ring buffer size in pages")
    metrics_address: str = Field(
        default="127.0.0.1:9376",
        description="HOST:PORT of /metrics and /healthz; an empty string turns them off",
    )
    bpf_stats: bool = Field(
        default=False,
        description="hold the kernel's BPF statistics on and export each program's runs and "
        "run time on /metrics (sentinel_bpf_program_*). Off by default: they are "
        "system-wide, every BPF program on the machine pays them, and they cost ~3% of an "
        "open()+close() storm's CPU time (bench/results/bpfstats.json, docs/operations.md)",
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    reload: ReloadConfig = Field(default_factory=ReloadConfig)

    @field_validator("minimum_priority")
    @classmethod
    def _priority(cls, v: str) -> str:
        return normalize_priority(v)

    @field_validator("ringbuf_pages")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of two (the kernel requires it), got {v}")
        return v

    @field_validator("metrics_address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v:
            parse_address(v)
        return v


class ConfigError(Exception):
    pass


_SCALAR_KEYS = (
    "matching",
    "minimum_priority",
    "hostname",
    "ringbuf_pages",
    "metrics_address",
    "bpf_stats",
)
_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "logging": ("format", "level"),
    "reload": ("watch", "interval"),
    "enforcement": ("unavailable",),
}


def env_keys() -> list[str]:
    """Every environment variable ``load_config`` reads (for the docs and ``--help``)."""
    names = [f"{ENV_PREFIX}{k.upper()}" for k in _SCALAR_KEYS]
    for sec, keys in _SECTION_KEYS.items():
        names += [f"{ENV_PREFIX}{sec.upper()}__{k.upper()}" for k in keys]
    return names


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Path of every key/item in the YAML document -> its 1-based line (from compose marks)."""
    out: dict[tuple[str | int, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = (*path, str(k.value))
                out[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                out[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return out


def _locate(
    lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]
) -> tuple[str, int | None]:
    """(dotted key, line) for a pydantic ``loc``. Pydantic inserts union tags (e.g. the output
    ``type``) into ``loc``; skipping parts that are not in the file finds the key as written."""
    best: int | None = None
    path: tuple[str | int, ...] = ()
    for part in loc:
        cand = (*path, part)
        if cand in lines:
            path = cand
            best = lines[cand]
    shown = path if path and loc and path[-1] == loc[-1] else loc
    return ".".join(str(p) for p in shown) or "(top level)", best


def load_config(path: Path | None, env: dict[str, str] | None = None) -> SentinelConfig:
    """Read ``path`` (None: defaults), apply env overrides, validate. Raises ConfigError whose
    message has one line per problem: ``FILE:LINE: KEY: what is wrong``."""
    data: Any = {}
    text = ""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where}: invalid YAML: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a YAML mapping")
    env = dict(os.environ) if env is None else env
    from_env: dict[tuple[str, ...], str] = {}
    for key in _SCALAR_KEYS:
        val = env.get(f"{ENV_PREFIX}{key.upper()}")
        if val is not None:
            data[key] = val
            from_env[(key,)] = f"{ENV_PREFIX}{key.upper()}"
    for sec, keys in _SECTION_KEYS.items():
        for key in keys:
            name = f"{ENV_PREFIX}{sec.upper()}__{key.upper()}"
            val = env.get(name)
            if val is None:
                continue
            section = data.get(sec)
            if section is None:
                section = data[sec] = {}
            if isinstance(section, dict):
                section[key] = val
                from_env[(sec, key)] = name
    try:
        return SentinelConfig.model_validate(data)
    except ValidationError as exc:
        lines = _key_lines(text)
        where = str(path) if path else "config"
        out = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            key, line = _locate(lines, loc)
            env_name = from_env.get(tuple(str(p) for p in loc))
            src = f"{where}:{line}" if line is not None else where
            if env_name:
                src = f"{where} (overridden by {env_name})"
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            out.append(f"{src}: {key}: {msg}")
        raise ConfigError("\n".join(out)) from None


__all__ = [
    "ConfigError",
    "EnforcementConfig",
    "LoggingConfig",
    "ReloadConfig",
    "SentinelConfig",
    "env_keys",
    "load_config",
    "parse_address",
]
