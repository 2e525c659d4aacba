"""The condition language: lark grammar (``grammar/condition.lark``) -> AST -> text."""

from sentinel.language.parser import ConditionSyntaxError, parse, unescape
from sentinel.language.printer import to_text

__all__ = ["ConditionSyntaxError", "parse", "to_text", "unescape"]
