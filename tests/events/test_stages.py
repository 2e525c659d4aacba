"""The benchmark's stage cuts (sentinel.events.stages) are where the profile says they are."""

from __future__ import annotations

from sentinel.events.cgen import constants, defines
from sentinel.events.stages import STAGES
from sentinel.paths import BPF_DIR


def test_codes_are_unique_and_never_a_production_build() -> None:
    codes = [s.code for s in STAGES]
    assert len(set(codes)) == len(codes)
    assert 0 not in codes


def test_every_stage_is_placed_in_the_program() -> None:
    """A stage named but never placed would measure the whole program under its name."""
    text = "".join(p.read_text() for p in sorted(BPF_DIR.rglob("*.h")))
    for s in STAGES:
        assert f"STAGE_{s.name})" in text or f"STAGE_{s.name} " in text, s.name
        assert constants()[f"STAGE_{s.name}"] == s.code


def test_a_production_build_cuts_nowhere() -> None:
    assert "#define BENCH_CUT 0" in defines()
