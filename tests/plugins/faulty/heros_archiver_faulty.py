"""Registrations that must be refused with a clear message (tests/test_plugins.py): one fault each."""

from __future__ import annotations

from heros_archiver.extras import require_extra

#: not callable: no format can be made of it
NUMBER = 3


class Unprepared:
    """Callable, but what it makes has no ``prepare``; and no archiver class either."""


class NeedsAnExtra:
    """A format whose library is missing: its constructor asks for it, as a format of ours would."""

    def __init__(self) -> None:
        require_extra("tiff", "heros_archiver_faulty_no_such_module")
