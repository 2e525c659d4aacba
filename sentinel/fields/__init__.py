"""The typed field registry (a leaf: it depends on no other Sentinel stage)."""

from sentinel.fields.registry import (
    EVENT_TYPES,
    FIELDS,
    Arg,
    FieldInfo,
    FieldType,
    Kind,
    lookup,
)

__all__ = ["EVENT_TYPES", "FIELDS", "Arg", "FieldInfo", "FieldType", "Kind", "lookup"]
