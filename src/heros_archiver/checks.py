"""Checks of constructor arguments, shared by the options of every stage: one wording for every refusal.

They sit at the top of the package because the archivers, the pipeline's options and the sinks' settings
all use them, and none of those should depend on another stage just to check an integer.
"""

from __future__ import annotations

from .errors import ConfigurationError


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigurationError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigurationError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def check_integer(name: str, value: object, expected: str, minimum: int, maximum: int | None = None) -> None:
    """Raise ConfigurationError unless ``value`` is an int (not a bool) from ``minimum`` to ``maximum``.

    ``expected`` words the range for the message, e.g. "a positive integer".
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise ConfigurationError(f"{name}: expected {expected}, got {value!r}")


def check_seconds(name: str, value: object, expected: str = "a non-negative number of seconds") -> None:
    """Raise ConfigurationError unless ``value`` is a number >= 0 (not a bool), saying what was ``expected``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError(f"{name}: expected {expected}, got {value!r}")
