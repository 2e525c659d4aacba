"""The first deny rules arrive by reload: ``sentinel run`` started without any attaches the
BPF LSM programs then (compiled in the loader child), inside the BPF LSM VM."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

from tests.helpers import wait_armed
from tests.vm.guest.test_run_reload import BASE, Run, _lsm_progs, _writable

ROOT = BASE.parent / "run-reload-attach"


def test_first_deny_rules_by_reload_attach_and_enforce() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    a = ROOT / "a"
    a.mkdir(parents=True)
    (a / "data.txt").write_text("original\n")
    rules = ROOT / "rules.yaml"
    cfg = ROOT / "sentinel.yaml"
    cfg.write_text(f'rules: [{rules}]\nmetrics_address: ""\nspool:\n  dir: {ROOT / "spool"}\n')
    r = Run(
        proc=None,  # type: ignore[arg-type]
        rules=rules,
        a=a,
        b=a,
        keep=a,
        marker=ROOT / "marker",
        lsm_before=_lsm_progs(),
    )
    r.write_rules()  # no deny rule: nothing attached at start
    r.proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    armed = threading.Event()

    def read_out() -> None:
        import json

        assert r.proc.stdout is not None
        for line in r.proc.stdout:
            if line.startswith("{"):
                r.alerts.put(json.loads(line))

    def read_err() -> None:
        assert r.proc.stderr is not None
        for line in r.proc.stderr:
            with r.lock:
                r.stderr.append(line)
            if '"armed"' in line:  # the structlog JSON record {"event": "armed", ...}
                armed.set()

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    try:
        wait_armed(r.proc, armed, 600, r.stderr)
        assert _lsm_progs() == r.lsm_before, "no deny rules: nothing attached"
        assert _writable(a / "data.txt")
        r.write_rules(("Protect A", a))
        t0 = time.monotonic()
        line = r.reload('"enforcing"', timeout=600)
        print(f"attach on reload took {time.monotonic() - t0:.1f} s: {line.strip()}")
        assert _lsm_progs() > r.lsm_before
        assert not _writable(a / "data.txt")
        assert [x["rule"] for x in r.deny_alerts()] == ["Protect A"]
        assert r.proc.poll() is None
    finally:
        r.proc.terminate()
        try:
            r.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            r.proc.kill()
    assert _lsm_progs() == r.lsm_before, "stopping detaches"
    assert _writable(a / "data.txt")
