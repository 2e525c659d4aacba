"""Metrics: the text format, and real scrapes over HTTP on 127.0.0.1 whose values follow real
work (events through a real Engine, alerts through a real outputs Dispatcher)."""

from __future__ import annotations

import re
import textwrap
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sentinel.compiler import compile_rules
from sentinel.engine import Engine
from sentinel.loader import load_ruleset
from sentinel.metrics import (
    EngineCollector,
    Family,
    Metrics,
    MetricsServer,
    RunMetrics,
    dispatcher_collector,
    size_collector,
)

RULES = """
- rule: Shell spawned
  desc: d
  condition: evt.type = execve and proc.name = "bash"
  output: "shell %proc.name"
  priority: WARNING
- rule: Write below etc
  desc: d
  condition: evt.type = openat and fd.name startswith "/etc/"
  output: "write %fd.name"
  priority: ERROR
"""


def scrape(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` in a Prometheus text page (exact label set), or None."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?) (\S+)", line)
        assert m, f"malformed sample line: {line!r}"
        if m.group(1) == key:
            return float(m.group(2))
    return None


def test_text_format_with_labels_and_escaping() -> None:
    m = Metrics()
    c = m.counter("t_total", "a \\ help\nline", ["rule", "action"])
    c.labels('say "hi"\n', "alert").inc()
    c.inc(2, rule="r", action="deny")
    g = m.gauge("t_depth", "depth")
    g.set(7)
    text = m.render()
    assert "# HELP t_total a \\\\ help\\nline\n# TYPE t_total counter\n" in text
    assert 't_total{rule="say \\"hi\\"\\n",action="alert"} 1\n' in text
    assert 't_total{rule="r",action="deny"} 2\n' in text
    assert "# TYPE t_depth gauge\nt_depth 7\n" in text
    assert value(text, "sentinel_metrics_collector_errors_total") == 0


def test_registry_rejects_misuse() -> None:
    m = Metrics()
    c = m.counter("x_total", "x", ["a"])
    with pytest.raises(ValueError):
        c.inc(-1, a="1")
    with pytest.raises(ValueError):
        c.set(3, a="1")
    with pytest.raises(ValueError):
        c.inc(b="1")
    with pytest.raises(ValueError):
        m.gauge("x_total", "x", ["a"])
    with pytest.raises(ValueError):
        m.counter("bad-name", "x")
    assert m.counter("x_total", "x", ["a"]) is c  # same definition: same metric


def test_broken_collector_is_counted_not_fatal() -> None:
    m = Metrics()

    def broken() -> list[Family]:
        raise RuntimeError("boom")

    m.collect_from(broken)
    m.gauge("ok_gauge", "still here").set(1)
    text = m.render()
    assert value(text, "ok_gauge") == 1
    assert value(text, "sentinel_metrics_collector_errors_total") == 1


def test_concurrent_increments_are_not_lost() -> None:
    m = Metrics()
    c = m.counter("n_total", "n", ["k"])

    def work() -> None:
        for _ in range(10_000):
            c.labels("a").inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.get(k="a") == 40_000


def test_http_scrape_follows_real_engine_work(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(textwrap.dedent(RULES).lstrip())
    engine = Engine(compile_rules(load_ruleset([f])), hostname="h")
    m = Metrics()
    run = RunMetrics(m)
    stats = EngineCollector(engine)
    m.collect_from(stats.collect)
    table: dict[int, str] = {1: "init"}
    m.collect_from(size_collector("sentinel_process_table_size", "processes", table))

    def feed(event: dict[str, object]) -> None:
        run.event(str(event["evt.type"]))
        for alert in engine.process(event):
            run.alert(alert)

    with MetricsServer(m, "127.0.0.1", 0) as srv:
        assert srv.port > 0
        status, ctype, before = scrape(srv.url + "/metrics")
        assert status == 200
        assert ctype.startswith("text/plain; version=0.0.4")
        assert value(before, "sentinel_engine_events_total") == 0
        assert value(before, "sentinel_events_total", evt_type="execve") is None
        assert value(before, "sentinel_process_table_size") == 1

        for name in ("bash", "bash", "ls"):
            feed({"evt.type": "execve", "proc.name": name})
        feed({"evt.type": "openat", "fd.name": "/etc/shadow"})
        table[2] = "bash"
        _, _, after = scrape(srv.url + "/metrics")

    assert value(after, "sentinel_engine_events_total") == 4
    assert value(after, "sentinel_events_total", evt_type="execve") == 3
    assert value(after, "sentinel_events_total", evt_type="openat") == 1
    assert (
        value(
            after, "sentinel_alerts_total", rule="Shell spawned", priority="Warning", action="alert"
        )
        == 2
    )
    assert (
        value(
            after, "sentinel_alerts_total", rule="Write below etc", priority="Error", action="alert"
        )
        == 1
    )
    assert value(after, "sentinel_engine_rule_matches_total", rule="Shell spawned") == 2
    assert value(after, "sentinel_process_table_size") == 2


def test_engine_counters_survive_a_rules_swap(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(textwrap.dedent(RULES).lstrip())
    old = Engine(compile_rules(load_ruleset([f])), hostname="h")
    stats = EngineCollector(old)
    old.process({"evt.type": "execve", "proc.name": "bash"})
    new = Engine(compile_rules(load_ruleset([f])), hostname="h")
    stats.swap(new)
    new.process({"evt.type": "execve", "proc.name": "bash"})
    m = Metrics()
    m.collect_from(stats.collect)
    text = m.render()
    assert value(text, "sentinel_engine_events_total") == 2
    assert value(text, "sentinel_engine_rule_matches_total", rule="Shell spawned") == 2


def test_healthz_and_unknown_paths() -> None:
    state = {"ok": True}

    def health() -> tuple[bool, str]:
        return (True, "ok") if state["ok"] else (False, "sensor not polled for 12s")

    with MetricsServer(Metrics(), "127.0.0.1", 0, health=health) as srv:
        assert scrape(srv.url + "/healthz")[::2] == (200, "ok\n")
        state["ok"] = False
        assert scrape(srv.url + "/healthz")[::2] == (503, "sensor not polled for 12s\n")
        assert scrape(srv.url + "/nope")[0] == 404


def test_ipv6_loopback() -> None:
    with MetricsServer(Metrics(), "::1", 0) as srv:
        assert srv.url.startswith("http://[::1]:")
        assert scrape(srv.url + "/metrics")[0] == 200


def test_dispatcher_metrics_through_a_real_dispatcher(tmp_path: Path) -> None:
    """Real outputs Dispatcher writing to a real file sink: queue depth and sent counts."""
    from sentinel.alerts import Alert
    from sentinel.outputs import Dispatcher, OutputsConfig

    out = tmp_path / "alerts.jsonl"
    cfg = OutputsConfig.model_validate(
        {
            "outputs": [{"type": "file", "name": "f", "path": str(out)}],
            "spool": {"dir": str(tmp_path / "spool")},
        }
    )
    d = Dispatcher(cfg)
    d.start()
    m = Metrics()
    m.collect_from(dispatcher_collector(d))
    try:
        for i in range(5):
            d.emit(
                Alert(
                    rule=f"r{i}",
                    priority="Warning",
                    output="o",
                    output_fields={},
                    source="syscall",
                )
            )
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = m.render()
            if value(text, "sentinel_output_events_total", output="f", result="sent") == 5:
                break
            time.sleep(0.05)
    finally:
        d.close(5)
    assert value(text, "sentinel_output_events_total", output="f", result="sent") == 5
    assert value(text, "sentinel_output_events_total", output="f", result="spooled") == 5
    assert value(text, "sentinel_output_queue_depth", output="f") == 0
    assert len(out.read_text().splitlines()) == 5
