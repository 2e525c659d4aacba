"""Sentinel: a runtime security engine for Linux.

Data flows one way through the subpackages, each a stage:

    loader (YAML -> pydantic models) -> language (lark -> AST) -> compiler (AST -> kernel plan
    + Python predicate) -> kernel (bcc programs, maps, ring buffer) -> enrichment (process table,
    containers) -> engine (match) -> alerts -> outputs

``fields`` is the typed field registry that several stages consult; it depends on nothing.
"""

__version__ = "0.1.0"
