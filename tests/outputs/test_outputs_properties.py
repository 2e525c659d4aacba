"""Property tests: escaping round-trips, and the spool never loses or reorders a record."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.outputs.config import SpoolConfig
from sentinel.outputs.formats import cef_ext_escape, cef_header_escape
from sentinel.outputs.spool import Spool
from sentinel.outputs.syslog import sd_escape


def _sd_unescape(v: str) -> str:
    return re.sub(r'\\([\\"\]])', r"\1", v)


def _cef_ext_unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), v)


@given(st.text())
def test_sd_param_value_round_trips(value: str) -> None:
    escaped = sd_escape(value)
    assert re.fullmatch(r'(?:[^\\"\]]|\\[\\"\]])*', escaped)  # no unescaped '"', '\', ']'
    assert _sd_unescape(escaped) == value


@given(st.text().map(lambda s: s.replace("\r\n", "\n")))
def test_cef_extension_value_round_trips(value: str) -> None:
    escaped = cef_ext_escape(value)
    assert "\n" not in escaped and "\r" not in escaped
    assert re.search(r"(?<!\\)(?:\\\\)*=", escaped) is None  # every '=' is escaped
    assert _cef_ext_unescape(escaped) == value


@given(st.text())
def test_cef_header_has_no_bare_pipe_or_newline(value: str) -> None:
    escaped = cef_header_escape(value)
    assert "\n" not in escaped and "\r" not in escaped
    assert re.search(r"(?<!\\)(?:\\\\)*\|", escaped) is None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=900)),
        st.tuples(st.just("consume"), st.integers(1, 20)),
        st.tuples(st.just("restart"), st.none()),
    ),
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_spool_delivers_every_record_in_order_across_restarts(
    steps: list[tuple[str, object]],
) -> None:
    d = Path(tempfile.mkdtemp(prefix="spool-prop-"))
    cfg = SpoolConfig(dir=d, max_bytes=1 << 20, segment_bytes=4096)
    try:
        sp = Spool(cfg, ["o"])
        appended: list[bytes] = []
        delivered: list[bytes] = []
        for op, arg in steps:
            if op == "append":
                assert isinstance(arg, bytes)
                sp.append(arg)
                appended.append(arg)
            elif op == "consume":
                assert isinstance(arg, int)
                recs = sp.read("o", arg, 1 << 20, wait=0)
                if recs:
                    sp.ack("o", recs[-1].end)
                delivered += [r.payload for r in recs]
            else:
                sp.close()
                sp = Spool(cfg, ["o"])
            assert sp.pending("o") == len(appended) - len(delivered)
        recs = sp.read("o", 10_000, 1 << 30, wait=0)
        delivered += [r.payload for r in recs]
        assert delivered == appended
        sp.close()
    finally:
        shutil.rmtree(d)
