"""Config sections: dataclasses that check themselves when constructed.

Each field is documented by a string literal right after it (an attribute docstring: the
command's ``--help`` shows it). The config loader (:mod:`customgpt.train.config`) converts
the types and adds the section path and where a bad value was set to a :class:`FieldError`.
This module sits in the core so that both ``data/`` and ``train/`` can define sections.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

from customgpt.errors import ConfigError


class FieldError(ConfigError):
    """A bad value for one field; the loader prefixes the section path to ``key``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


_hints = functools.cache(typing.get_type_hints)


def unwrap_optional(tp: Any) -> tuple[bool, Any]:
    """(True, X) for ``X | None``, else (False, tp)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, tp


@dataclasses.dataclass
class Section:
    """Base class of config dataclasses. On construction every float field must be finite and
    a ``Literal`` field one of its choices; then :meth:`validate` runs the subclass's own checks.
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            for i, v in enumerate(values):
                if isinstance(v, float) and not math.isfinite(v):
                    key = f.name if values is not value else f"{f.name}[{i}]"
                    raise FieldError(key, f"must be a finite number, got {v!r}")
            optional, tp = unwrap_optional(hints[f.name])
            choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None
            if choices is not None and value not in choices and not (optional and value is None):
                raise FieldError(f.name, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Range and cross-field checks; raise :class:`FieldError` (key, reason)."""


def to_dict(obj: Any) -> Any:
    """A section as plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


__all__ = ["FieldError", "Section", "to_dict", "unwrap_optional"]
