"""The default rules stay quiet on ordinary work: one ``sentinel run`` of rules/ while a
workload does what an administrator's or a CI job's day is made of, offline:

- the project's own setup (``scripts/setup.sh``, whose second run only checks);
- a Python build: a wheel of a small local package (setuptools, no build isolation, no index),
  installed into a fresh venv, the same package installed editable, ``python -m compileall``;
- a C build: gcc and make;
- package work: a .deb built with dpkg-deb (a program below /usr/bin, a set-uid binary, a
  conffile below /etc, maintainer scripts that run update-alternatives and ldconfig and write
  below /etc), installed and purged with ``dpkg``, then again with ``apt-get`` (local file);
- reading: ``find /usr/share/doc -type f | xargs cat``, ``grep -r``, ``tar``.

The alerts raised by the workload's processes (the workload's root is the test's bash; an
alert is the workload's when that pid is the process or one of its ancestors, from
``proc.apid`` appended to every alert) must be none. The report (printed; ``pytest -s``)
lists them, the alerts other processes on the machine raised meanwhile, and how many events
of each type the kernel passed to user space.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import log_records
from tests.kernel.rules_live import REPO, LiveRun, fields, sentinel_run, wait_for

pytestmark = pytest.mark.kernel

CONFIG = """
append_output: [container.id, container.name, container.image, proc.apid]
matching: all
spool:
  dir: {spool}
"""

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "sentinel-quiet-demo"
version = "1.0"

[project.scripts]
sentinel-quiet-demo = "demo:main"
"""

CONTROL = """Package: sentinel-quiet-test
Version: 1.0
Architecture: all
Maintainer: Sentinel tests <tests@localhost>
Description: a package the quiet-run test installs and removes
"""

POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
  update-alternatives --quiet --install /usr/bin/sentinel-quiet-alt sentinel-quiet-alt \\
    /usr/bin/sentinel-quiet-hello 10
  echo installed > /etc/sentinel-quiet/state
  ldconfig
fi
"""

PRERM = """#!/bin/sh
set -e
if [ "$1" = remove ]; then
  update-alternatives --quiet --remove sentinel-quiet-alt /usr/bin/sentinel-quiet-hello
fi
"""

POSTRM = """#!/bin/sh
set -e
if [ "$1" = purge ]; then rm -f /etc/sentinel-quiet/state; fi
"""

# The workload, one bash process tree; W is a scratch directory, REPO the checkout.
WORKLOAD = r"""
set -euo pipefail
W=$1; REPO=$2
step() { echo "== $*" >&2; }
APT=(-y -q -o DPkg::Lock::Timeout=300)

step setup.sh
(cd "$REPO" && bash scripts/setup.sh)

step python build
"$REPO/.venv/bin/pip" wheel -q --no-index --no-build-isolation --no-deps -w "$W/wheels" "$W/pkg"
/usr/bin/python3 -m venv "$W/venv"
"$W/venv/bin/pip" install -q --no-index --no-deps "$W"/wheels/*.whl
test "$("$W/venv/bin/sentinel-quiet-demo")" = "demo ok"
/usr/bin/python3 -m venv --system-site-packages "$W/venv-editable"
"$W/venv-editable/bin/pip" install -q --no-index --no-build-isolation --no-deps -e "$W/pkg"
"$W/venv-editable/bin/python" -m compileall -q "$W/pkg"

step c build
gcc -O2 -Wall -o "$W/c/hello" "$W/c/hello.c"
make -s -C "$W/c" all
test "$("$W/c/hello")" = "hello"

step packages
test -e "$W/quiet.deb" || dpkg-deb --root-owner-group --build "$W/deb" "$W/quiet.deb" > /dev/null
# dpkg itself has no lock timeout: retry while another dpkg/apt holds the lock.
dpkg_retry() {
  for _ in 1 2 3 4 5 6 7 8 9 10; do dpkg "$@" > /dev/null && return; sleep 10; done
  return 1
}
dpkg_retry -i "$W/quiet.deb"
test "$(sentinel-quiet-alt)" = "hello"
test -u /usr/bin/sentinel-quiet-suid
dpkg_retry --purge sentinel-quiet-test
apt-get install "${APT[@]}" "$W/quiet.deb" > /dev/null
test "$(sentinel-quiet-alt)" = "hello"
apt-get purge "${APT[@]}" sentinel-quiet-test > /dev/null
test ! -e /usr/bin/sentinel-quiet-hello

step reading
find /usr/share/doc -type f -print0 | xargs -0 cat > /dev/null
grep -r -s -l -i license /usr/share/common-licenses > /dev/null
tar -C "$W" -czf "$W/pkg.tgz" pkg
step done
"""


def prepare(w: Path) -> None:
    """Sources for the workload: a Python package, a C program with a Makefile, a .deb tree."""
    (w / "wheels").mkdir()
    pkg = w / "pkg" / "demo"
    pkg.mkdir(parents=True)
    (w / "pkg" / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "__init__.py").write_text('def main() -> None:\n    print("demo ok")\n')
    c = w / "c"
    c.mkdir()
    (c / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello"); }\n')
    (c / "lib.c").write_text("int twice(int x) { return 2 * x; }\n")
    (c / "Makefile").write_text("all: liblib.a\nliblib.a: lib.o\n\tar rcs $@ $^\n")
    deb = w / "deb"
    for d in ("DEBIAN", "usr/bin", "etc/sentinel-quiet"):
        (deb / d).mkdir(parents=True)
    (deb / "DEBIAN" / "control").write_text(CONTROL)
    (deb / "DEBIAN" / "conffiles").write_text("/etc/sentinel-quiet/hello.conf\n")
    for name, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
        (deb / "DEBIAN" / name).write_text(text)
        (deb / "DEBIAN" / name).chmod(0o755)
    hello = deb / "usr" / "bin" / "sentinel-quiet-hello"
    hello.write_text("#!/bin/sh\necho hello\n")
    hello.chmod(0o755)
    suid = deb / "usr" / "bin" / "sentinel-quiet-suid"
    suid.write_bytes(Path("/bin/true").read_bytes())
    suid.chmod(0o4755)
    (deb / "etc" / "sentinel-quiet" / "hello.conf").write_text("greeting=hello\n")


def ours(alert: dict[str, Any], root: int) -> bool:
    f = fields(alert)
    return f.get("proc.pid") == root or root in (f.get("proc.apid") or [])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("work")
    prepare(w)
    return w


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    d = tmp_path_factory.mktemp("sentinel")
    config = d / "sentinel.yaml"
    config.write_text(CONFIG.format(spool=d / "spool"))
    with sentinel_run("--config", str(config)) as r:
        yield r


def test_ordinary_work_raises_no_alert(run: LiveRun, work: Path, tmp_path: Path) -> None:
    script = tmp_path / "workload.sh"
    script.write_text(WORKLOAD)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(script), str(work), str(REPO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=900)
    took = time.monotonic() - started
    assert proc.returncode == 0, f"the workload failed:\n{out}\n{err}"
    alerts = run.settle(2.0)
    mine = [a for a in alerts if ours(a, proc.pid)]
    others = [a for a in alerts if not ours(a, proc.pid)]
    report = {
        "workload_seconds": round(took, 1),
        "workload_alerts": [(a["rule"], a["output"]) for a in mine],
        "other_alerts": sorted({a["rule"] for a in others}),
        "steps": [line for line in err.splitlines() if line.startswith("== ")],
    }
    print("quiet run:", json.dumps(report, indent=1))
    assert report["steps"][-1] == "== done"
    listing = "\n".join(f"{r}: {o}" for r, o in report["workload_alerts"])
    assert not mine, textwrap.indent(listing, "  ")


def test_the_same_files_installed_by_hand_alert(run: LiveRun, work: Path) -> None:
    """The package's files unpacked by something other than the package manager (dpkg-deb -x
    into /, as an intruder could) raise the alerts the package manager is exempt from: what
    keeps the workload above quiet is the exemption, not a blind spot."""
    deb = work / "quiet.deb"
    if not deb.exists():
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", str(work / "deb"), str(deb)],
            check=True,
            capture_output=True,
        )
    proc = subprocess.Popen(["dpkg-deb", "-x", str(deb), "/"])
    proc.wait(60)
    installed = [
        Path("/usr/bin/sentinel-quiet-hello"),
        Path("/usr/bin/sentinel-quiet-suid"),
        Path("/etc/sentinel-quiet/hello.conf"),
    ]
    try:
        assert all(p.exists() for p in installed)
        assert Path("/usr/bin/sentinel-quiet-suid").stat().st_mode & 0o4000
    finally:
        for p in installed:
            p.unlink(missing_ok=True)
        Path("/etc/sentinel-quiet").rmdir()
    wait_for(run, lambda a: ours(a, proc.pid) and a["rule"] == "Set-uid or Set-gid Bit Set")
    rules = {a["rule"] for a in run.settle(1.0) if ours(a, proc.pid)}
    assert {
        "Write Below a Binary Directory",
        "Write Below System Configuration",
        "Set-uid or Set-gid Bit Set",
    } <= rules, rules


def test_kernel_counts(run: LiveRun) -> None:
    """How many events of each type reached user space over this module (machine-wide)."""
    run.stop()
    stopped = [r for r in log_records(run.stderr) if r.get("event") == "stopped"]
    assert stopped, run.stderr[-5:]
    passed = {k: v for k, v in stopped[-1].items() if k.startswith(("passed_", "filtered_"))}
    print("kernel counts:", json.dumps(passed, indent=1, sort_keys=True))
    assert passed.get("passed_execve", 0) > 0
