"""What the running kernel's BPF offers the sensor, and what the sensor does without it.

Sentinel runs on any BTF kernel with BPF ring buffers (5.8+), but kernels differ in what a BPF
program may call: ``bpf_get_current_task_btf`` came in 5.11, ``bpf_task_pt_regs`` in 5.15, the
``group_dead`` argument of ``sched_process_exit`` in 6.16. Loading a program that calls a
helper the kernel lacks fails with a verifier log, which tells a user nothing. So the kernel is
asked first, here, and the sensor is compiled for what it has:

- **From BTF, no probe load.** A kernel's ``enum bpf_func_id`` lists exactly the helpers it
  implements (the verifier rejects any other id), and tracepoint prototypes are BTF
  ``btf_trace_<name>`` typedefs. Reading them costs no compile, which matters under emulation.
- **One place.** Every kernel-dependent choice of the sensor's C code is a ``-D`` flag made
  here (``HAVE_*`` and the values a fallback needs); ``bpf/sensor/common.h`` holds the
  ``#ifdef``s. ``sentinel doctor`` prints :meth:`KernelFeatures.lines`, and the ``started`` log
  line carries :meth:`KernelFeatures.summary`, so a degraded run says so.
- **Fallbacks keep the events.** A missing optional helper selects code that computes the same
  values another way (slower) or a coarser decision; only what the sensor cannot work without
  (the ring buffer helpers) stops start-up, with a sentence naming the missing helpers.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from sentinel.kernel.btf import Btf

Cost = Literal["none", "slower", "coarser"]

# Helpers the sensor cannot do without (BPF ring buffers and boot-time clock: Linux 5.8).
REQUIRED_HELPERS = (
    "ringbuf_output",
    "ringbuf_reserve",
    "ringbuf_submit",
    "ktime_get_boot_ns",
    "probe_read_kernel",
    "probe_read_kernel_str",
    "probe_read_user",
    "probe_read_user_str",
    "get_current_cgroup_id",
    "tail_call",
)

# x86-64's kernel stack: THREAD_SIZE = PAGE_SIZE << (2 + KASAN_STACK_ORDER), no padding on top
# (arch/x86/include/asm/page_64_types.h, TOP_OF_KERNEL_STACK_PADDING 0). KASAN doubles it; a
# KASAN kernel's BTF has struct kasan_cache (generic KASAN, the only kind x86 has).
X86_64_THREAD_SIZE = 16384


class UnsupportedKernel(Exception):
    """The kernel lacks something the sensor cannot work without (one line for the user)."""


@dataclass(frozen=True)
class Feature:
    """One kernel capability the sensor would like, whether this kernel has it, and what the
    sensor does otherwise (``cost``: same values (``none``), same values but more work per
    event (``slower``), or a less precise result (``coarser``))."""

    name: str
    present: bool
    what: str
    fallback: str
    cost: Cost

    def line(self) -> str:
        if self.present:
            return f"{self.name}: yes ({self.what})"
        return f"{self.name}: no ({self.what}) -> {self.fallback} [{self.cost}]"


@dataclass(frozen=True)
class KernelFeatures:
    """The features of one kernel and the C flags that select the sensor's code for them."""

    release: str
    helpers: int
    features: tuple[Feature, ...]
    cflags: tuple[str, ...]

    def missing(self) -> list[Feature]:
        return [f for f in self.features if not f.present]

    def summary(self) -> dict[str, object]:
        """For the ``started`` log line: every fallback in use, by feature name."""
        return {f.name: f.fallback for f in self.missing()}

    def lines(self) -> list[str]:
        return [f.line() for f in self.features]


def _helpers(btf: Btf) -> set[str]:
    return {
        name.removeprefix("BPF_FUNC_")
        for name in btf.enum_values("bpf_func_id")
        if name.startswith("BPF_FUNC_") and name != "BPF_FUNC_unspec"
    }


OPTIONAL = ("task_btf", "task_pt_regs", "exit_group_dead")


def detect(btf: Btf, release: str | None = None, disable: Iterable[str] = ()) -> KernelFeatures:
    """The sensor's view of the kernel whose BTF this is. Raises :class:`UnsupportedKernel`
    when a required helper is missing. ``disable``: optional features to treat as missing
    even if present, so that a fallback can be exercised (and a suspect helper avoided) on a
    kernel that has the feature."""
    release = release or platform.release()
    off = set(disable)
    unknown = off - set(OPTIONAL)
    if unknown:
        raise ValueError(f"unknown kernel features {sorted(unknown)} (optional: {OPTIONAL})")
    helpers = _helpers(btf)
    if not helpers:
        raise UnsupportedKernel(
            f"kernel {release}: its BTF has no enum bpf_func_id, so which BPF helpers it offers "
            "cannot be told (Sentinel needs a BTF kernel >= 5.8)"
        )
    lacking = [h for h in REQUIRED_HELPERS if h not in helpers]
    if lacking:
        raise UnsupportedKernel(
            f"kernel {release} lacks the BPF helpers {', '.join('bpf_' + h for h in lacking)}; "
            "the sensor needs BPF ring buffers (Linux >= 5.8)"
        )
    flags: list[str] = []
    feats: list[Feature] = []

    task_btf = "get_current_task_btf" in helpers and "task_btf" not in off
    feats.append(
        Feature(
            "task_btf",
            task_btf,
            "bpf_get_current_task_btf, Linux 5.11: the current task's fields by plain loads",
            "each field of the current task read with bpf_probe_read_kernel",
            "slower",
        )
    )
    if task_btf:
        flags.append("-DHAVE_TASK_BTF=1")

    # bpf_task_pt_regs takes a BTF task pointer: useful only with task_btf (5.15 > 5.11).
    pt_regs = task_btf and "task_pt_regs" in helpers and "task_pt_regs" not in off
    thread_size = X86_64_THREAD_SIZE * (2 if btf.has_struct("kasan_cache") else 1)
    feats.append(
        Feature(
            "task_pt_regs",
            pt_regs,
            "bpf_task_pt_regs, Linux 5.15: the saved user registers, i.e. syscall arguments",
            f"registers read at the top of the task's kernel stack (task->stack + {thread_size}"
            f" - sizeof(struct pt_regs)), as the kernel's task_pt_regs() does",
            "none",
        )
    )
    if pt_regs:
        flags.append("-DHAVE_TASK_PT_REGS=1")
    else:
        flags += [
            f"-DOFF_TASK_STACK={btf.offsetof('task_struct', 'stack')}",
            f"-DTHREAD_SIZE_VAL={thread_size}",
            f"-DPT_REGS_SIZE={btf.sizeof('pt_regs')}",
        ]

    # Since 6.16 sched_process_exit passes bool group_dead (its BTF prototype: ctx, task,
    # group_dead).
    group_dead = (
        btf.func_proto_params("btf_trace_sched_process_exit") == 3 and "exit_group_dead" not in off
    )
    feats.append(
        Feature(
            "exit_group_dead",
            group_dead,
            "sched_process_exit's group_dead argument, Linux 6.16: the last thread's exit",
            "a process's exit is reported when its thread-group leader exits (other threads "
            "may still run for a moment)",
            "coarser",
        )
    )
    if group_dead:
        flags.append("-DEXIT_HAS_GROUP_DEAD=1")
    return KernelFeatures(release, len(helpers), tuple(feats), tuple(flags))


__all__ = ["OPTIONAL", "Feature", "KernelFeatures", "UnsupportedKernel", "detect"]
