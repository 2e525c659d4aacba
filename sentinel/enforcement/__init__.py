"""Enforcement: ``action: deny`` rules decided in the kernel before the operation happens.

Deny rules compile exactly into a policy (:mod:`.deny`), the policy into map contents
(:mod:`.policy`, :mod:`.lsm_maps`), which :mod:`.lsm` (BPF LSM hooks that deny) or, where BPF
LSM is missing, :mod:`.kill` (tracepoint programs that kill) loads and keeps current; the
numbers and structs shared with the BPF C are in :mod:`.abi`; :mod:`.probe` tells whether this
kernel can run BPF LSM at all, and :mod:`.runtime` wires it into ``run``.
It sits beside the detection path (kernel events -> engine -> alerts), not inside it.
"""
