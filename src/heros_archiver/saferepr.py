"""``repr`` and ``str`` for log lines and error messages that cannot fail and cannot grow without bound.

Error messages quote what arrived; what arrived may be hostile: a structure so deep that ``repr``
raises ``RecursionError``, a list of millions of items, an object whose ``__repr__`` raises. An error
path that raises in turn wedges whoever was handling the first error, so these never raise.
"""

from __future__ import annotations

import reprlib
from typing import Any

#: Longest text kept by default; a description is for reading, the value itself is kept elsewhere.
REPR_LIMIT = 200

_REPR = reprlib.Repr()
_REPR.maxlevel = 4  # nesting shown; deeper levels are "..." (no recursion into them, so no RecursionError)
_REPR.maxstring = _REPR.maxother = 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 12


def safe_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, or a description of why it has none (never raises)."""
    try:
        text = _REPR.repr(value)
    except Exception as exc:  # noqa: BLE001 - RecursionError, MemoryError, a broken __repr__: all described
        return f"<{type_name(value)}: repr failed with {type(exc).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def safe_str(value: Any, limit: int = 2000) -> str:
    """``str(value)`` (an exception's message) cut to ``limit`` characters, never raising."""
    try:
        text = str(value)
    except Exception as exc:  # noqa: BLE001 - a broken __str__ is described, not raised
        return f"<{type_name(value)}: str failed with {type(exc).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def type_name(value: Any) -> str:
    """The qualified name of ``value``'s type (``numpy.ma.MaskedArray``), for descriptions."""
    kind = type(value)
    module = getattr(kind, "__module__", "")
    name = getattr(kind, "__qualname__", kind.__name__)
    return name if module in ("builtins", "") else f"{module}.{name}"
