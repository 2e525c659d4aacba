"""Config validation: every error names the file, the key and (when in the file) its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sentinel.config import ConfigError, SentinelConfig, env_keys, load_config, parse_address


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sentinel.yaml"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def error_of(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return str(info.value)


def test_defaults_without_file() -> None:
    cfg = load_config(None, {})
    assert cfg.matching == "first"
    assert cfg.metrics_address == "127.0.0.1:9376"
    assert cfg.logging.format == "auto" and cfg.logging.level == "info"
    assert cfg.reload.watch is False
    assert cfg.ringbuf_pages == 2048


def test_full_valid_file(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
        rules: [/etc/sentinel/rules.d]
        matching: all
        minimum_priority: warning
        hostname: node-1
        ringbuf_pages: 4096
        metrics_address: "[::1]:9000"
        logging: {format: json, level: DEBUG}
        reload: {watch: true, interval: 0.5}
        enforcement: {unavailable: alert}
        outputs:
          - type: stdout
        """,
    )
    cfg = load_config(p, {})
    assert cfg.rules == [Path("/etc/sentinel/rules.d")]
    assert cfg.matching == "all"
    assert cfg.minimum_priority == "Warning"  # normalised to Falco's spelling
    assert cfg.logging.level == "debug"
    assert cfg.reload.watch is True and cfg.reload.interval == 0.5
    assert parse_address(cfg.metrics_address) == ("::1", 9000)
    assert cfg.enforcement.unavailable == "alert"


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
        matching: first
        logging:
          level: info
          formatt: json
        """,
    )
    assert error_of(p) == f"{p}:4: logging.formatt: unknown key"


def test_unknown_key_inside_an_output_list_item(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
        outputs:
          - type: stdout
          - type: file
            path: /tmp/x
            rotate_bytez: 5
        """,
    )
    msg = error_of(p)
    assert msg.startswith(f"{p}:5: outputs.1.rotate_bytez: ")
    assert "unknown key" in msg


def test_every_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
        matching: best
        ringbuf_pages: 1000
        metrics_address: "localhost"
        minimum_priority: loud
        """,
    )
    lines = error_of(p).splitlines()
    assert len(lines) == 4
    by_key = {ln.split(": ")[1]: ln for ln in lines}
    assert by_key["matching"].startswith(f"{p}:1: matching: ")
    assert "'first' or 'all'" in by_key["matching"]
    assert by_key["ringbuf_pages"] == (
        f"{p}:2: ringbuf_pages: must be a power of two (the kernel requires it), got 1000"
    )
    assert by_key["metrics_address"] == (
        f"{p}:3: metrics_address: expected HOST:PORT, got 'localhost'"
    )
    assert "invalid priority 'loud'" in by_key["minimum_priority"]
    assert by_key["minimum_priority"].startswith(f"{p}:4: ")


def test_invalid_yaml_has_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, "matching: first\nlogging: {level: info\nreload: {}\n")
    msg = error_of(p)
    assert msg.startswith(f"{p}:")
    assert "invalid YAML" in msg
    line = int(msg.split(":")[1])
    assert line in (2, 3)


def test_not_a_mapping_and_unreadable(tmp_path: Path) -> None:
    p = write(tmp_path, "- a\n- b\n")
    assert error_of(p) == f"{p}: the config must be a YAML mapping"
    missing = tmp_path / "missing.yaml"
    assert error_of(missing) == f"{missing}: cannot read config: No such file or directory"


def test_env_overrides_top_level_and_sections(tmp_path: Path) -> None:
    p = write(tmp_path, "matching: first\nlogging: {format: console}\n")
    env = {
        "SENTINEL_MATCHING": "all",
        "SENTINEL_RINGBUF_PAGES": "512",
        "SENTINEL_LOGGING__FORMAT": "json",
        "SENTINEL_RELOAD__WATCH": "true",
        "SENTINEL_UNRELATED": "ignored",
    }
    cfg = load_config(p, env)
    assert cfg.matching == "all"
    assert cfg.ringbuf_pages == 512
    assert cfg.logging.format == "json"
    assert cfg.reload.watch is True


def test_bad_env_override_names_the_variable(tmp_path: Path) -> None:
    p = write(tmp_path, "matching: first\n")
    msg = error_of(p, {"SENTINEL_LOGGING__LEVEL": "chatty"})
    assert msg.startswith(f"{p} (overridden by SENTINEL_LOGGING__LEVEL): logging.level: ")
    msg = error_of(None, {"SENTINEL_RINGBUF_PAGES": "many"})
    assert msg.startswith("config (overridden by SENTINEL_RINGBUF_PAGES): ringbuf_pages: ")


def test_env_keys_cover_every_scalar_override() -> None:
    keys = env_keys()
    assert "SENTINEL_METRICS_ADDRESS" in keys
    assert "SENTINEL_LOGGING__LEVEL" in keys
    # Each listed variable really is read: setting it to garbage must fail validation
    # (hostname accepts any string, so it is the one exception).
    for k in keys:
        if k == "SENTINEL_HOSTNAME":
            continue
        with pytest.raises(ConfigError, match=k):
            load_config(None, {k: "\x00not-valid\x00"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9376", ("127.0.0.1", 9376)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_parse_address(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["9376", ":9376", "::1:9376", "h:99999", "h:x"])
def test_parse_address_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_address(value)


def test_metrics_can_be_turned_off() -> None:
    assert SentinelConfig(metrics_address="").metrics_address == ""
