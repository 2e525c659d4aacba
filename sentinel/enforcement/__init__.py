"""Enforcement: ``action: deny`` rules decided in the kernel before the operation happens.

Deny rules compile exactly into a policy (:mod:`.deny`), the policy into BPF LSM map contents
(:mod:`.policy`, :mod:`.lsm_maps`), which :mod:`.lsm` loads and keeps current; :mod:`.probe`
tells whether this kernel can run BPF LSM at all, and :mod:`.runtime` wires it into ``run``.
It sits beside the detection path (kernel events -> engine -> alerts), not inside it.
"""
