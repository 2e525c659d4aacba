"""Sentinel's configuration file (YAML), one pydantic model.

Every key is optional; an unknown key is an error naming it (a typo in a security tool's
config must not silently fall back to a default). ``SENTINEL_<KEY>`` environment variables
override top-level scalar keys (e.g. ``SENTINEL_MATCHING=all``), applied before validation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sentinel.outputs.config import OutputConfig, SpoolConfig, _default_outputs
from sentinel.paths import RULES_DIR


class EnforcementConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unavailable: Literal["refuse", "alert"] = Field(
        default="refuse",
        description="when BPF LSM is unavailable and deny rules are loaded: refuse to start, "
        "or run them as alerts marked deny-unenforced",
    )


class SentinelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Path] = Field(default_factory=lambda: [RULES_DIR])
    matching: Literal["first", "all"] = "first"
    minimum_priority: str = "Debug"
    hostname: str | None = None
    outputs: list[OutputConfig] = Field(default_factory=_default_outputs)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    enforcement: EnforcementConfig = Field(default_factory=EnforcementConfig)
    ringbuf_pages: int = Field(default=2048, ge=1, description="ring buffer size in pages")
    metrics_address: str = "127.0.0.1:9376"


class ConfigError(Exception):
    pass


_SCALAR_KEYS = ("matching", "minimum_priority", "hostname", "ringbuf_pages", "metrics_address")


def load_config(path: Path | None, env: dict[str, str] | None = None) -> SentinelConfig:
    """Read ``path`` (None: defaults), apply env overrides, validate. Raises ConfigError."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a YAML mapping")
    env = dict(os.environ) if env is None else env
    for key in _SCALAR_KEYS:
        val = env.get(f"SENTINEL_{key.upper()}")
        if val is not None:
            data[key] = val
    try:
        return SentinelConfig.model_validate(data)
    except ValidationError as exc:
        where = str(path) if path else "config"
        lines = [f"{where}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


__all__ = ["ConfigError", "EnforcementConfig", "SentinelConfig", "load_config"]
