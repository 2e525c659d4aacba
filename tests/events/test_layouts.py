"""C layouts checked against Python's (Tetragon's ``pkg/alignchecker`` is the model).

The record structs are generated from the event table, and the prefilter's map keys are
hand-written in ``bpf/prefilter/filter.h`` with ctypes mirrors in sentinel.prefilter.maps.
Either way, a C compiler decides the real layout: this test compiles the C (gcc, x86-64,
the same natural alignment as clang's BPF target for these types) with a program that prints
every member's offset and size, and compares them with what Python decodes or writes. A
mismatch fails here, not in production.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import pytest

from sentinel.events import FAMILIES
from sentinel.events.cgen import defines, structs
from sentinel.events.common import HDR
from sentinel.events.schema import Layout
from sentinel.paths import BPF_DIR
from sentinel.prefilter import maps
from sentinel.prefilter.layout import NWORDS
from sentinel.prefilter.layout import defines as prefilter_defines

TYPEDEFS = """
#include <stddef.h>
#include <stdio.h>
typedef unsigned char u8; typedef unsigned short u16; typedef short s16;
typedef unsigned int u32; typedef int s32; typedef unsigned long long u64; typedef long long s64;
"""
PREFILTER_STRUCTS = ("fmask", "f_fam_cfg", "f_comm_key", "f_num_key", "f_path_key", "f_lpm_key")


def _filter_structs() -> str:
    """The map key/value structs, cut from the real filter.h."""
    text = (BPF_DIR / "prefilter" / "filter.h").read_text()
    out = []
    for name in PREFILTER_STRUCTS:
        m = re.search(rf"^struct {name} \{{.*?^\}};", text, re.S | re.M)
        assert m, f"struct {name} not found in filter.h"
        out.append(m.group(0))
    return "\n".join(out)


def _members(struct_text: str, name: str) -> list[str]:
    body = re.search(rf"struct {name} \{{(.*?)\}};", struct_text, re.S)
    assert body, name
    names = []
    for decl in body.group(1).split(";"):
        decl = re.sub(r"//.*", "", decl).strip()
        if decl:
            names.append(re.split(r"[\s*]+", decl.split("[")[0])[-1])
    return names


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, tuple[int, int]]]:
    """struct -> member -> (offset, size), and struct -> "sizeof" -> (size, 0), from gcc."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to check C layouts (scripts/setup.sh installs it)")
    records = structs()
    prefilter = _filter_structs()
    prints = []
    layouts: list[tuple[str, str]] = [(HDR.name, records)] + [
        (f.layout.name, records) for f in FAMILIES
    ]
    layouts += [(n, prefilter) for n in PREFILTER_STRUCTS]
    for sname, text in layouts:
        for member in _members(text, sname):
            prints.append(
                f'printf("{sname} {member} %zu %zu\\n", offsetof(struct {sname}, {member}),'
                f" sizeof(((struct {sname} *)0)->{member}));"
            )
        prints.append(f'printf("{sname} sizeof %zu 0\\n", sizeof(struct {sname}));')
    src = (
        TYPEDEFS
        + defines()
        + prefilter_defines(NWORDS)
        + records
        + "\n"
        + prefilter
        + "\nint main(void) {\n"
        + "\n".join(prints)
        + "\nreturn 0; }\n"
    )
    d = tmp_path_factory.mktemp("align")
    (d / "layout.c").write_text(src)
    subprocess.run(
        ["gcc", "-std=c11", "-Wall", "-Werror", "-o", str(d / "layout"), str(d / "layout.c")],
        check=True,
    )
    out = subprocess.run([str(d / "layout")], check=True, capture_output=True, text=True)
    result: dict[str, dict[str, tuple[int, int]]] = {}
    for line in out.stdout.splitlines():
        sname, member, off, size = line.split()
        result.setdefault(sname, {})[member] = (int(off), int(size))
    return result


def mismatches(layout: Layout, c: dict[str, tuple[int, int]]) -> list[str]:
    """Where Python's layout and the compiled C disagree (empty: they agree)."""
    out = []
    if c["sizeof"][0] != layout.size:
        out.append(f"sizeof {c['sizeof'][0]} != {layout.size}")
    if layout.base is not None and c.get("h") != (0, layout.base.size):
        out.append("header")
    for m in layout.members:
        if c.get(m.name) != (layout.offsets[m.name], m.size):
            out.append(f"{m.name}: C {c.get(m.name)} != {(layout.offsets[m.name], m.size)}")
    # the Python decoder reads the scalars exactly there: one unpack of the fixed part
    fixed_end = max(layout.offsets[n] + layout.sizes[n] for n in layout.fixed_names)
    if layout.fixed_offset + layout.fixed.size != fixed_end:
        out.append("fixed part")
    return out


@pytest.mark.parametrize("layout", [HDR, *(f.layout for f in FAMILIES)], ids=lambda x: x.name)
def test_record_layouts_match_c(layout: Layout, c_layout: dict) -> None:  # type: ignore[type-arg]
    assert mismatches(layout, c_layout[layout.name]) == []


def test_a_wrong_layout_is_caught(c_layout: dict) -> None:  # type: ignore[type-arg]
    """The check can fail: connect_ev declared in Python with two members swapped (what a
    hand-kept copy drifting from the C would look like) is reported, member by member."""
    from sentinel.events.net import LAYOUT
    from sentinel.events.schema import members

    swapped = [*members("s64 res, u32 addrlen, s32 fd"), *LAYOUT.members[3:]]
    wrong = Layout(LAYOUT.name, swapped, base=HDR)
    found = mismatches(wrong, c_layout[LAYOUT.name])
    assert [f.split(":")[0] for f in found] == ["addrlen", "fd"]


def test_prefilter_map_keys_match_c(c_layout: dict) -> None:  # type: ignore[type-arg]
    def check(sname: str, ct: type[ctypes.Structure]) -> None:
        c = c_layout[sname]
        assert c["sizeof"][0] == ctypes.sizeof(ct), sname
        for name, _t in ct._fields_:
            field = getattr(ct, name)
            assert c[name] == (field.offset, field.size), f"{sname}.{name}"

    check("f_comm_key", maps.CommKey)
    check("f_num_key", maps.NumKey)
    check("f_path_key", maps.PathKey)
    check("f_lpm_key", maps.LpmKey)
    check("f_fam_cfg", maps._fam_cfg_type(NWORDS))
