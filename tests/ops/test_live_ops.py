"""The operations pieces around a real sensor, wired the way ``sentinel run`` should wire them:
live kernel events -> Enricher -> Engine, metrics scraped over HTTP while events flow, and a
rules reload (good and bad files, real SIGHUPs) in the middle of an exec storm, with every
storm event accounted for and zero kernel losses.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from sentinel.config import load_config
from sentinel.logging import configure_logging
from sentinel.ops import Operations, Reloaded
from sentinel.reload import RulesReloader
from tests.ops.test_metrics import value

pytestmark = pytest.mark.kernel

STORM_RULE = """
- rule: Storm {version}
  desc: the storm's execs
  condition: evt.type = execve and proc.name = "true" and proc.args contains "{marker}"
  output: "storm %proc.args"
  priority: NOTICE
- rule: Marker open {version}
  desc: opens of the marker file
  condition: evt.type = openat and fd.name = "{path}"
  output: "open %fd.name"
  priority: NOTICE
"""

BAD_RULES = """
- rule: Broken
  desc: d
  condition: evt.type = execve and (proc.name = "x"
  output: "x"
  priority: NOTICE
"""


def require_root() -> None:
    if os.geteuid() != 0:
        print("SKIP: live sensor tests need root")
        pytest.skip("needs root")


class LiveLoop:
    """sentinel run's loop in miniature, wired through :class:`sentinel.ops.Operations`
    exactly as run should be."""

    def __init__(self, rules: Path, tmp: Path, families: frozenset[str]) -> None:
        from sentinel.enrichment.containers import ContainerResolver
        from sentinel.enrichment.live import Enricher
        from sentinel.kernel.sensor import Sensor

        self.config_path = tmp / "sentinel.yaml"
        self.config_path.write_text(
            f"rules: [{rules}]\nmatching: all\nmetrics_address: '127.0.0.1:0'\n"
            f"hostname: test\nspool: {{dir: {tmp / 'spool'}}}\n"
        )
        cfg = load_config(self.config_path, {})
        self.ops = Operations(cfg, self.config_path, configure_logs=False)
        self.ops.initial_engine()
        self.sensor = Sensor(families)
        self.resolver = ContainerResolver(fetch_metadata=False)
        self.enricher = Enricher(resolver=self.resolver)
        self.ops.watch(sensor=self.sensor, process_table=self.enricher.table)
        self.alerts: list[str] = []

    @property
    def reloader(self) -> RulesReloader[Reloaded]:
        return self.ops.reloader

    def on_raw(self, raw: bytes) -> None:
        ev = self.enricher.event(raw)
        self.ops.event(ev.get("evt.type"))
        for alert in self.ops.engine.process(ev):
            self.ops.alert(alert)
            self.alerts.append(alert.rule)

    def start(self) -> None:
        self.sensor.start(self.on_raw)
        self.resolver.start()
        self.enricher.seed()
        self.ops.start(programs=sorted(self.sensor.syscalls))

    @property
    def url(self) -> str:
        assert self.ops.server is not None
        return self.ops.server.url

    def step(self) -> None:
        self.sensor.poll(5)
        self.ops.step()

    def close(self) -> None:
        self.ops.close()
        self.sensor.drain()
        self.sensor.close()
        self.resolver.close()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        body: bytes = r.read()
        return body.decode()


def write_rules(path: Path, version: str, marker: str, open_path: Path) -> None:
    text = STORM_RULE.format(version=version, marker=marker, path=open_path)
    path.write_text(textwrap.dedent(text).lstrip())


def test_metrics_follow_live_kernel_events(tmp_path: Path) -> None:
    require_root()
    configure_logging("json", "info", stream=io.StringIO())
    marker = f"mk{os.getpid()}"
    target = tmp_path / "marker.txt"
    rules = tmp_path / "rules.yaml"
    write_rules(rules, "v1", marker, target)
    loop = LiveLoop(rules, tmp_path, frozenset({"openat"}))
    loop.start()
    try:
        url = loop.url
        before = scrape(url + "/metrics")
        n = 25
        proc = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                f"for i in $(seq {n}); do /bin/true {marker}; : > {target}; done",
            ]
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (
            proc.poll() is None or loop.alerts.count("Storm v1") < n
        ):
            loop.step()
        for _ in range(20):
            loop.step()
        after = scrape(url + "/metrics")
        health = urllib.request.urlopen(url + "/healthz", timeout=5)
        assert health.status == 200
    finally:
        loop.close()
    assert proc.returncode == 0
    assert loop.alerts.count("Storm v1") == n
    assert loop.alerts.count("Marker open v1") == n
    storm = {"rule": "Storm v1", "priority": "Notice", "action": "alert"}
    assert value(before, "sentinel_alerts_total", **storm) is None
    assert value(after, "sentinel_alerts_total", **storm) == n
    ev_before = value(before, "sentinel_events_total", evt_type="execve") or 0
    ev_after = value(after, "sentinel_events_total", evt_type="execve") or 0
    assert ev_after - ev_before >= n
    assert (value(after, "sentinel_events_total", evt_type="openat") or 0) >= n
    # The sensor counts per Falco event type what it passed, filtered and lost.
    assert value(after, "sentinel_kernel_lost_events_total", evt_type="execve") == 0
    passed = value(after, "sentinel_kernel_passed_events_total", evt_type="execve") or 0
    assert passed >= ev_after - ev_before
    assert (value(after, "sentinel_process_table_size") or 0) > 10
    engine_events = value(after, "sentinel_engine_events_total") or 0
    assert engine_events >= ev_after


def test_reload_during_an_exec_storm_loses_nothing(tmp_path: Path) -> None:
    """SIGHUP every 100 ms while a child execs 3000 times; the rules file alternates between
    a good new version and a broken one. Every storm exec must raise exactly one alert under
    whichever rules version was live, the broken files must be rejected, and the kernel must
    report zero lost events."""
    require_root()
    logs = io.StringIO()
    configure_logging("json", "info", stream=logs)
    marker = f"st{os.getpid()}"
    target = tmp_path / "marker.txt"
    rules = tmp_path / "rules.yaml"
    write_rules(rules, "v0", marker, target)
    # exec/fork/exit only (always attached): the storm is ours, not every open on the machine.
    loop = LiveLoop(rules, tmp_path, frozenset())
    loop.start()
    n = 3000
    versions: list[str] = []
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true {marker}; i=$((i+1)); done"]
        )
        next_hup = time.monotonic()
        k = 0
        while proc.poll() is None:
            loop.step()
            now = time.monotonic()
            if now >= next_hup and not loop.reloader.busy():
                k += 1
                if k % 3 == 0:
                    rules.write_text(textwrap.dedent(BAD_RULES).lstrip())
                else:
                    write_rules(rules, f"v{k}", marker, target)
                    versions.append(f"Storm v{k}")
                os.kill(os.getpid(), signal.SIGHUP)
                next_hup = now + 0.1
        storm_secs = time.monotonic() - t0
        end = time.monotonic() + 10
        while time.monotonic() < end and sum(r.startswith("Storm") for r in loop.alerts) < n:
            loop.step()
        loop.reloader.wait()
        for _ in range(10):
            loop.step()
        lost = loop.sensor.lost()
        metrics_text = scrape(loop.url + "/metrics")
    finally:
        loop.close()
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    storm_alerts = [r for r in loop.alerts if r.startswith("Storm")]
    print(
        f"storm: {n} execs in {storm_secs:.2f}s, {loop.reloader.reloads} reloads, "
        f"{loop.reloader.failures} rejected, lost={sum(lost.values())}"
    )
    assert proc.returncode == 0
    assert len(storm_alerts) == n
    assert set(storm_alerts) <= {"Storm v0", *versions}
    assert len(set(storm_alerts)) >= 3  # several rules versions really took turns
    assert sum(lost.values()) == 0, lost
    assert loop.reloader.reloads >= 3
    assert loop.reloader.failures >= 1
    entries = [json.loads(ln) for ln in logs.getvalue().splitlines()]
    rejected = [e for e in entries if e["event"] == "rules_reload_rejected"]
    assert len(rejected) == loop.reloader.failures
    assert rejected[0]["problems"][0]["file"] == str(rules)
    assert rejected[0]["problems"][0]["line"] == 3
    assert value(metrics_text, "sentinel_rules_reloads_total", result="rejected") == len(rejected)
    assert value(metrics_text, "sentinel_rules_reloads_total", result="ok") == (
        loop.reloader.reloads
    )
    for kind in ("execve", "clone", "procexit"):
        assert value(metrics_text, "sentinel_kernel_lost_events_total", evt_type=kind) == 0
