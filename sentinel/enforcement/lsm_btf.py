"""Which BPF LSM hooks the running kernel offers, and their argument names, from BTF.

Why: a BPF LSM program attaches to ``bpf_lsm_<hook>``; a hook the kernel lacks makes the
whole load fail, and some hooks changed their argument lists between kernels (``inode_setattr``
gained a leading ``mnt_idmap`` in 6.x). Reading the ``FUNC``/``FUNC_PROTO`` records of the
running kernel's BTF tells us both, so ``lsm.c`` compiles only the hooks that exist and
reads each argument at its real position. ``sentinel.kernel.btf`` decodes structs only; this
module reads function records through the same parsed blob.
"""

from __future__ import annotations

import struct

from sentinel.kernel.btf import KIND_FUNC, KIND_FUNC_PROTO, Btf, BtfError

_TYPE = struct.Struct("<III")
_PARAM = struct.Struct("<II")
LSM_PREFIX = "bpf_lsm_"

_CACHE: dict[int, dict[str, list[str]]] = {}
_IDS: dict[int, dict[str, int]] = {}


def lsm_hooks(btf: Btf) -> dict[str, list[str]]:
    """Map every BPF LSM hook of the kernel (``file_open``...) to its parameter names."""
    key = id(btf)
    if key in _CACHE:
        return _CACHE[key]
    hooks: dict[str, list[str]] = {}
    ids: dict[str, int] = {}
    # The parsed blob and record index of Btf; kept private there, read-only here.
    data: bytes = btf._data
    offsets: list[int] = btf._offsets
    prefix = LSM_PREFIX.encode()
    str_start: int = btf._str_start
    for type_id in range(1, len(offsets)):
        pos = offsets[type_id]
        name_off, info, ref = _TYPE.unpack_from(data, pos)
        if (info >> 24) & 0x1F != KIND_FUNC:
            continue
        if data[str_start + name_off : str_start + name_off + len(prefix)] != prefix:
            continue
        name = btf.type_name(type_id)
        proto_kind, vlen, _ret, proto_pos = btf._record(ref)
        if proto_kind != KIND_FUNC_PROTO:
            raise BtfError(f"{name}: BTF FUNC does not point at a FUNC_PROTO")
        params = []
        for i in range(vlen):
            p_name, _p_type = _PARAM.unpack_from(data, proto_pos + 12 + 8 * i)
            params.append(btf._str(p_name) if p_name else "")
        hooks[name[len(LSM_PREFIX) :]] = params
        ids[name[len(LSM_PREFIX) :]] = type_id
    _CACHE[key] = hooks
    _IDS[key] = ids
    return hooks


def lsm_hook_btf_id(btf: Btf, hook: str) -> int:
    """BTF type id of ``bpf_lsm_<hook>`` (what BPF_PROG_LOAD's attach_btf_id wants)."""
    lsm_hooks(btf)
    try:
        return _IDS[id(btf)][hook]
    except KeyError:
        raise BtfError(f"the kernel has no BPF LSM hook {hook!r}") from None


def arg_index(hooks: dict[str, list[str]], hook: str, param: str) -> int:
    """Position of ``param`` in ``hook``'s argument list; BtfError if either is missing."""
    try:
        return hooks[hook].index(param)
    except KeyError:
        raise BtfError(f"the kernel has no BPF LSM hook {hook!r}") from None
    except ValueError:
        raise BtfError(
            f"BPF LSM hook {hook!r} has no argument {param!r} (has {hooks[hook]})"
        ) from None
