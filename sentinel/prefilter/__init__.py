"""The in-kernel prefilter: drop, before they cost a ring-buffer slot, events no rule can match.

One package from rule to map bytes (as Tetragon keeps its selectors in ``pkg/selectors``):
:mod:`.plan` abstracts each rule into a necessary condition over kernel dimensions (DNF),
:mod:`.tables` encodes the plans as map contents and :mod:`.model` evaluates those contents
exactly as ``bpf/prefilter/filter.h`` does, and :mod:`.maps` writes them into the loaded maps.
"""
