"""Which acquisition each received item belongs to, decided on receipt, in the order Zenoh delivered them.

``Hdf5Archiver(acquisitions=True)`` subscribes to ``acquisition_started`` and ``acquisition_stopped`` of its
cameras besides their frames. Here, per camera: a start opens a new acquisition (numbered 1, 2, ... since the
archiver started, and stamped with the time it arrived); frames belong to the open one; a stop closes it.
Frames that arrive while none is open (the archiver started mid-acquisition) open one without a start. The
acquisition goes with each item as its ``Item.context``, which the spool and the dead-letter store keep, so
an item resumed after a restart goes to the same file. The templates see the same keys; since a file is
chosen when its acquisition starts, they may use only those, ``source_name`` and the default metadata.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import jinja2
from jinja2 import meta

from ..errors import ConfigurationError
from ..sinks.hdf5_acquisitions import NUMBER_KEY, SEEN_KEY, START_KEY

#: What a template may use besides the default metadata, with ``acquisitions=True``.
CONTEXT_KEYS = ("source_name", NUMBER_KEY, START_KEY, SEEN_KEY)


def start_stamp(moment: float) -> str:
    """A receive time as a file-name-safe UTC text, to the millisecond: ``20261201T221803.123Z``."""
    whole = int(moment)
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(whole))}.{int((moment - whole) * 1000):03d}Z"


def check_templates(templates: Iterable[tuple[str, str]], default_metadata: dict[str, Any]) -> None:
    """Refuse a template that uses a key not known when an acquisition starts (a per-frame key)."""
    known = set(CONTEXT_KEYS) | set(map(str, default_metadata))
    environment = jinja2.Environment(autoescape=False)  # parsed only, never rendered
    for name, source in templates:
        try:
            used = meta.find_undeclared_variables(environment.parse(source))
        except jinja2.TemplateSyntaxError:
            continue  # PathTemplate reports it, with its line
        unknown = sorted(used - known)
        if unknown:
            raise ConfigurationError(
                f"{name} {source!r}: with acquisitions=True a file is chosen when its acquisition starts, so the "
                f"template may use only {', '.join(CONTEXT_KEYS)} and the keys of default_metadata; it uses "
                f"{', '.join(unknown)}"
            )


class AcquisitionTracker:
    """The open acquisition of each camera (thread-safe: cameras may arrive on different receive threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, dict[str, Any]] = {}
        self._numbers: dict[str, int] = {}

    def _begin(self, source: str, seen: bool) -> dict[str, Any]:
        number = self._numbers.get(source, 0) + 1
        self._numbers[source] = number
        context = {NUMBER_KEY: number, START_KEY: start_stamp(time.time()), SEEN_KEY: seen}
        self._open[source] = context
        return context

    def started(self, source: str) -> dict[str, Any]:
        """``source`` starts an acquisition (one still open is left as it is: its stop never came)."""
        with self._lock:
            return dict(self._begin(source, True))

    def frame(self, source: str) -> dict[str, Any]:
        """The acquisition a frame of ``source`` belongs to (opened without a start if none is open)."""
        with self._lock:
            context = self._open.get(source)
            return dict(context if context is not None else self._begin(source, False))

    def stopped(self, source: str) -> dict[str, Any] | None:
        """``source`` ended its acquisition: the one that was open, or None if none was."""
        with self._lock:
            context = self._open.pop(source, None)
            return dict(context) if context is not None else None
