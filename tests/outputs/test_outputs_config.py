"""The ``outputs:``/``spool:`` config: defaults, validation errors that name the problem."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from sentinel.outputs import OutputsConfig
from sentinel.outputs.config import HttpOutput, StdoutOutput, SyslogOutput


def test_default_is_one_stdout_json_output() -> None:
    cfg = OutputsConfig()
    assert len(cfg.outputs) == 1
    out = cfg.outputs[0]
    assert isinstance(out, StdoutOutput) and out.format == "json"
    assert cfg.spool.full_policy == "drop_oldest"


def test_yaml_with_every_output_type() -> None:
    text = """
outputs:
  - type: stdout
  - type: file
    path: /var/log/sentinel/alerts.jsonl
    fsync: always
  - type: syslog
    name: siem-tls
    transport: tls
    host: 127.0.0.1
    format: cef
    tls: {ca_file: /etc/ca.pem, server_name: siem.local}
  - type: http
    name: es
    flavor: elasticsearch
    format: ecs
    url: https://127.0.0.1:9200
spool: {dir: /tmp/spool, max_bytes: 1048576, full_policy: block}
"""
    cfg = OutputsConfig.model_validate(yaml.safe_load(text))
    kinds = [type(o).__name__ for o in cfg.outputs]
    assert kinds == ["StdoutOutput", "FileOutput", "SyslogOutput", "HttpOutput"]
    syslog = cfg.outputs[2]
    assert isinstance(syslog, SyslogOutput)
    assert syslog.effective_port == 6514 and syslog.facility_code == 16
    assert cfg.spool.full_policy == "block" and cfg.spool.effective_segment_bytes == 65536


@pytest.mark.parametrize(
    ("outputs", "needle"),
    [
        ([{"type": "stdout", "colour": "red"}], "colour"),  # typo: forbidden, not ignored
        ([{"type": "kafka"}], "kafka"),
        ([{"type": "stdout"}, {"type": "stdout"}], "unique name"),
        ([{"type": "http", "url": "ftp://x"}], "http://"),
        ([{"type": "http", "url": "http://127.0.0.1", "flavor": "splunk_hec"}], "token"),
        ([{"type": "http", "url": "http://127.0.0.1", "format": "cef"}], "cef"),
        ([{"type": "syslog", "facility": "local9"}], "facility"),
        ([{"type": "syslog", "app_name": "has space"}], "app_name"),
        ([{"type": "file"}], "path"),
        ([{"type": "stdout", "name": "../etc"}], "output name"),
        ([{"type": "stdout", "format": "xml"}], "format"),
    ],
)
def test_bad_config_is_a_clear_error(outputs: list[dict[str, object]], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        OutputsConfig.model_validate({"outputs": outputs})
    assert needle in str(err.value)


def test_spool_policy_must_be_known() -> None:
    with pytest.raises(ValidationError, match="drop_oldest"):
        OutputsConfig.model_validate({"spool": {"full_policy": "drop_newest"}})


def test_http_defaults() -> None:
    out = HttpOutput(type="http", url="http://127.0.0.1:8088", flavor="splunk_hec", token="t")
    assert out.batch.max_count == 500 and out.retry.max_backoff == 30.0


def test_the_documented_example_is_valid() -> None:
    import sentinel.outputs as pkg

    doc = pkg.__doc__ or ""
    example = doc.split("::\n", 1)[1]
    cfg = OutputsConfig.model_validate(yaml.safe_load(example))
    assert [o.type for o in cfg.outputs] == ["file", "syslog", "http"]
