"""Configuration of the outputs and of the spool (the ``outputs:`` and ``spool:`` keys).

Pydantic models with ``extra="forbid"`` so that a typo in the YAML config is an error naming the
key instead of a silently ignored setting: for a SIEM pipeline a misspelt ``ca_file`` would mean
an unverified TLS connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Format = Literal["json", "ecs", "ocsf", "cef"]

# RFC 5424 section 6.2.1 facility codes, by the names syslog.conf uses.
FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Strict):
    """Capped exponential backoff with jitter, for transport errors, 408, 429 and 5xx."""

    initial_backoff: float = Field(default=0.5, gt=0)
    max_backoff: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(
        default=0.2, ge=0, le=1, description="fraction of the delay drawn at random"
    )


class TlsConfig(_Strict):
    """Client-side TLS. The server certificate is always checked against ``ca_file`` (or the
    system store) and ``server_name`` unless ``verify`` is explicitly false."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    verify: bool = True


class _OutputBase(_Strict):
    name: str = Field(default="", description="unique; defaults to the type; names the cursor file")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    dead_letter: Path | None = Field(
        default=None,
        description="JSON Lines file for rejected alerts; default <spool dir>/<name>.dead",
    )
    ocsf_class: Literal["detection_finding", "activity"] = Field(
        default="detection_finding",
        description="format ocsf: Detection Finding (2004), or the event's activity class "
        "(Process/File System/Network Activity) with the security_control profile",
    )


class StdoutOutput(_OutputBase):
    type: Literal["stdout"] = "stdout"
    format: Format = "json"


class FileOutput(_OutputBase):
    type: Literal["file"]
    format: Format = "json"
    path: Path
    max_bytes: int = Field(
        default=100 * 1024 * 1024, gt=0, description="rotate when the file reaches it"
    )
    backups: int = Field(default=5, ge=0, description="rotated files kept: path.1 .. path.N")
    fsync: Literal["always", "batch", "never"] = "batch"


class SyslogOutput(_OutputBase):
    type: Literal["syslog"]
    format: Format = "json"
    transport: Literal["udp", "tcp", "tls"] = "tcp"
    host: str = "127.0.0.1"
    port: int | None = Field(
        default=None, ge=1, le=65535, description="default 514, or 6514 for tls"
    )
    framing: Literal["octet_counting", "non_transparent"] = "octet_counting"
    facility: str | int = "local0"
    app_name: str = "sentinel"
    msgid: str = Field(default="", description="default: the alert's action (alert, deny, ...)")
    sd_id: str = "sentinel@32473"
    bom: bool = Field(default=True, description="RFC 5424 6.4: a UTF-8 MSG starts with a BOM")
    tls: TlsConfig = Field(default_factory=TlsConfig)
    timeout: float = Field(default=10.0, gt=0)
    batch_max_count: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SyslogOutput:
        if isinstance(self.facility, str) and self.facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {self.facility!r}")
        if isinstance(self.facility, int) and not 0 <= self.facility <= 23:
            raise ValueError("syslog facility must be 0..23")
        for label, value, limit in (("app_name", self.app_name, 48), ("msgid", self.msgid, 32)):
            if len(value) > limit or any(not 33 <= ord(c) <= 126 for c in value):
                raise ValueError(f"{label} must be at most {limit} printable ASCII characters")
        return self

    @property
    def facility_code(self) -> int:
        return FACILITIES[self.facility] if isinstance(self.facility, str) else self.facility

    @property
    def effective_port(self) -> int:
        return self.port or (6514 if self.transport == "tls" else 514)


class BatchConfig(_Strict):
    max_count: int = Field(default=500, ge=1)
    max_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="of spooled alerts per batch (the body's size "
        "differs by the format's overhead); one larger alert is still sent alone",
    )
    max_wait: float = Field(default=1.0, ge=0, description="seconds to wait for a batch to fill")


class HttpOutput(_OutputBase):
    type: Literal["http"]
    flavor: Literal["webhook", "splunk_hec", "elasticsearch"] = "webhook"
    format: Format = "json"
    url: str
    headers: dict[str, str] = {}
    token: str | None = Field(
        default=None, description="splunk_hec: sent as 'Authorization: Splunk …'"
    )
    api_key: str | None = Field(
        default=None, description="elasticsearch: 'Authorization: ApiKey …'"
    )
    username: str | None = None
    password: str | None = None
    index: str | None = Field(default=None, description="elasticsearch index / splunk index")
    sourcetype: str = "sentinel:alert"
    batch: BatchConfig = Field(default_factory=BatchConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> HttpOutput:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if self.format == "cef":
            raise ValueError("format cef is for syslog, file and stdout; use json, ecs or ocsf")
        if self.flavor == "splunk_hec" and not self.token:
            raise ValueError("splunk_hec needs a token")
        return self


OutputConfig = Annotated[
    StdoutOutput | FileOutput | SyslogOutput | HttpOutput, Field(discriminator="type")
]


class SpoolConfig(_Strict):
    """The bounded on-disk spool every alert is written to before any delivery."""

    dir: Path = Path("/var/lib/sentinel/spool")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    segment_bytes: int | None = Field(
        default=None, ge=4096, description="default: max_bytes / 16 (the unit of drop_oldest)"
    )
    # drop_oldest by default: blocking the event path blinds the sensor to *new* events while
    # an old backlog waits; either way the loss is counted and logged.
    full_policy: Literal["block", "drop_oldest"] = "drop_oldest"
    fsync: bool = Field(
        default=False, description="fsync each alert (survives power loss, not just a crash)"
    )

    @property
    def effective_segment_bytes(self) -> int:
        return self.segment_bytes or max(4096, self.max_bytes // 16)


def _default_outputs() -> list[OutputConfig]:
    return [StdoutOutput()]


class OutputsConfig(_Strict):
    outputs: list[OutputConfig] = Field(default_factory=_default_outputs)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> OutputsConfig:
        seen: set[str] = set()
        for out in self.outputs:
            name = out.name or out.type
            if name in seen:
                raise ValueError(f"two outputs are named {name!r}; give each a unique name")
            if not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
                raise ValueError(f"output name {name!r}: use letters, digits, '-', '_', '.'")
            seen.add(name)
        return self


def output_name(out: OutputConfig) -> str:
    return out.name or out.type
