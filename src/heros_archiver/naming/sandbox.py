"""The Jinja2 environment path templates run in: sandboxed, immutable, strict, and bounded in size.

Templates come from the trusted config, but the values they work on arrive over the network. Jinja2's
sandbox keeps a template away from Python's internals; it does not stop a value from making the render
enormous: ``'x' * n``, ``'%0*d' % (n, frame)``, ``frame | center(n)``, ``'{:>{}}'.format(a, n)``, ``10 ** n``
or ``s.replace('', t)`` with ``n`` or ``s`` from the metadata would allocate gigabytes or run for minutes on
the writer thread. Every operation that can multiply the size of its inputs is checked *before* it runs
against ``MAX_RENDERED_CHARS``, more than any file system takes in one path (Linux: 4096 bytes), so no
template that can produce a usable path is refused. What is refused raises ``SecurityError`` here and
becomes the item's TemplateRenderError in ``naming``.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Sequence
from functools import update_wrapper
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError

#: No intermediate value of a render may grow beyond this many characters (or items, or digits).
MAX_RENDERED_CHARS = 4096
#: ``a ** b`` of integers may have at most this many bits (4096 decimal digits).
_MAX_POWER_BITS = 13_607

#: printf-style conversion: flags, width (or ``*``), precision (or ``*``), length modifier, type.
_PRINTF_SPEC = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?([diouxXeEfFgGcrsab%])")
#: str.format spec: fill/align, sign, ``z``, ``#``, ``0``, width, grouping, precision.
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?(\d*)[,_]?(?:\.(\d*))?")
#: ``str`` methods whose integer arguments set the width of their result.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _refuse(what: str, size: int) -> SecurityError:
    return SecurityError(
        f"{what} would make a value of {size} characters; a path template may make at most {MAX_RENDERED_CHARS}"
    )


def _check_width(what: str, width: Any) -> None:
    if isinstance(width, int) and width > MAX_RENDERED_CHARS:
        raise _refuse(what, width)


def _check_printf(template: str | bytes, arguments: Any) -> None:
    """Refuse ``template % arguments`` if a width or precision (literal or ``*``) exceeds the bound."""
    widest, stars = _printf_plan(template)
    if widest > MAX_RENDERED_CHARS:
        raise _refuse(f"the conversion in {template[:40]!r}", widest)
    if stars:
        values = arguments if isinstance(arguments, tuple) else (arguments,)
        for position in stars:
            _check_width("a '*' width or precision", values[position] if position < len(values) else None)


@functools.lru_cache(maxsize=256)
def _printf_plan(template: str | bytes) -> tuple[int, tuple[int, ...]]:
    """(widest literal width or precision, positions of the arguments that ``*`` takes) of a %-format.

    Cached: a template's format strings are nearly always constants, and this runs for every ``%``.
    """
    text = template.decode("latin-1") if isinstance(template, bytes) else template
    widest, stars, position = 0, [], 0
    for match in _PRINTF_SPEC.finditer(text):
        if match.group(4) == "%":
            continue
        for number in (match.group(2), match.group(3)):
            if number == "*":
                stars.append(position)
                position += 1
            elif number:
                widest = max(widest, int(number))
        position += 1
    return widest, tuple(stars)


def _check_repetition(left: Any, right: Any) -> None:
    """Refuse ``left * right`` when it repeats a sequence beyond the bound."""
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, (str, bytes, list, tuple)) and isinstance(count, int):
            size = len(sequence) * count
            if size > MAX_RENDERED_CHARS:
                raise _refuse("repeating a sequence", size)


def _check_power(base: Any, exponent: Any) -> None:
    """Refuse ``base ** exponent`` of integers beyond ``_MAX_POWER_BITS`` (CPU and memory both grow with it)."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        bits = base.bit_length() * exponent
        if bits > _MAX_POWER_BITS:
            raise _refuse("an integer power", bits * 3 // 10)


def _check_replace(text: str, old: Any, new: Any, count: Any = -1) -> None:
    """Refuse ``text.replace(old, new)`` whose result would exceed the bound (``old=''`` inserts everywhere)."""
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    if len(new) <= len(old):
        return
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    size = len(text) + hits * (len(new) - len(old))
    if size > MAX_RENDERED_CHARS:
        raise _refuse("replace()", size)


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(separator, str) and isinstance(items, Sequence):
        size = len(separator) * max(0, len(items) - 1)
        if size > MAX_RENDERED_CHARS:
            raise _refuse("join()", size)


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` in the sandbox, with every field's width and precision bounded."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        match = _FORMAT_SPEC.match(format_spec)
        if match:
            for number in match.groups():
                if number:
                    _check_width(f"the format spec {format_spec!r}", int(number))
        return super().format_field(value, format_spec)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with ``StrictUndefined``, plus size bounds on what can multiply a value's size."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
        self.filters = {**self.filters, **_bounded_filters(self.filters)}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repetition(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, (str, bytes)):
            _check_printf(left, right)
        return self.binop_table[operator](left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call a template makes; ``str`` methods that set a result's width or can multiply its size are
        checked first. (Prefixed names, as in Jinja's: the call's own keyword arguments may be ``self``.)"""
        if isinstance(__obj, types.BuiltinMethodType) and isinstance(__obj.__self__, str):
            name = __obj.__name__
            if name in _WIDTH_METHODS:
                for width in (*args, *kwargs.values()):
                    _check_width(f"str.{name}()", width)
            elif name == "replace":
                _check_replace(__obj.__self__, *args, **kwargs)
            elif name == "join" and args:
                _check_join(__obj.__self__, args[0])
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's sandboxed ``str.format`` / ``format_map``, with the bounded formatter."""
        if (
            not isinstance(value, (types.MethodType, types.BuiltinMethodType))
            or value.__name__ not in ("format", "format_map")
            or not isinstance(value.__self__, str)
        ):
            return None
        template: str = value.__self__
        formatter = _BoundedFormatter(self)
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one positional argument")
                return formatter.vformat(template, (), args[0])
            return formatter.vformat(template, args, kwargs)

        return update_wrapper(wrapper, value)


def _bounded_filters(filters: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """The built-in filters that can make a value larger than their input, each checked before it runs."""

    def bounded(name: str, check: Callable[..., None]) -> Callable[..., Any]:
        """``filters[name]`` calling ``check(value, *arguments, **keywords)`` first (as the filter sees them,
        without the context or environment that Jinja passes to some filters before the value)."""
        original = filters[name]
        skip = 0 if getattr(original, "jinja_pass_arg", None) is None else 1

        def checked(*args: Any, **kwargs: Any) -> Any:
            check(*args[skip:], **kwargs)
            return original(*args, **kwargs)

        return update_wrapper(checked, original)  # keeps jinja_pass_arg: Jinja passes the same arguments

    def width(name: str, keyword: str) -> Callable[..., Any]:
        def check(value: Any, *args: Any, **kwargs: Any) -> None:
            _check_width(f"the filter {name}", args[0] if args else kwargs.get(keyword))

        return bounded(name, check)

    def check_format(value: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(value, str):
            _check_printf(value, kwargs or args)

    def check_replace(value: Any, old: Any = "", new: Any = "", count: Any = None) -> None:
        _check_replace(str(value), old, new, -1 if count is None else count)

    def check_join(value: Any, d: Any = "", attribute: Any = None) -> None:
        _check_join(d, value if isinstance(value, Sequence) else ())

    return {
        "center": width("center", "width"),
        "indent": width("indent", "width"),
        "wordwrap": width("wordwrap", "width"),
        "batch": width("batch", "linecount"),
        "slice": width("slice", "slices"),
        "format": bounded("format", check_format),
        "replace": bounded("replace", check_replace),
        "join": bounded("join", check_join),
    }
