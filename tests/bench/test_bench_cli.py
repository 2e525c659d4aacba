"""``python -m bench AREA [OPTIONS]`` reaches every area's own argument parser.

Cheap on purpose: ``--help`` must parse and exit before any benchmark runs (no root, no BPF,
no VM), so a crash like bench_outputs parsing the whole ``argv`` shows up in the host suite."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import areas
from bench.__main__ import main as bench_main

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {"bpfstats", "containers", "engine", "families", "kernel", "lsm", "outputs"}


def test_every_area_is_found() -> None:
    assert set(areas()) >= EXPECTED


@pytest.mark.parametrize("area", areas())
@pytest.mark.parametrize(
    ("option", "code", "says"),
    [("--help", 0, "usage:"), ("--no-such-option", 2, "--no-such-option")],
)
def test_area_main_parses_its_argv(
    area: str, option: str, code: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(f"bench.bench_{area}")
    with pytest.raises(SystemExit) as exc:
        module.main([option])
    assert exc.value.code == code
    out = capsys.readouterr()
    assert says in (out.out if code == 0 else out.err)


def test_options_go_to_the_one_named_area() -> None:
    # the README's form, through the real entry point (it crashed for outputs: issue 16)
    res = subprocess.run(
        [sys.executable, "-m", "bench", "outputs", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "--alerts" in res.stdout  # bench_outputs' own option: its parser answered


def test_bad_requests_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["no_such_area"]) == 2
    assert "unknown area 'no_such_area'" in capsys.readouterr().err
    assert bench_main(["kernel", "engine", "--rounds", "3"]) == 2
    assert "exactly one area" in capsys.readouterr().err
