"""Which acquisition each received item belongs to, decided on receipt, in the order Zenoh delivered them.

``Hdf5Archiver(acquisitions=True)`` and ``TiffArchiver(stack=True, acquisitions=True)`` subscribe to
``acquisition_started`` and ``acquisition_stopped`` of their cameras besides their frames
(``AcquisitionMarkers``). Here, per camera: a start opens a new acquisition (numbered 1, 2, ... since the
archiver started, and stamped with the time it arrived); frames belong to the open one; a stop closes it.
Frames that arrive while none is open (the archiver started mid-acquisition) open one without a start. The
acquisition goes with each item as its ``Item.context``, which the spool and the dead-letter store keep, so
an item resumed after a restart goes to the same file. The templates see the same keys; since a file is
chosen when its acquisition starts, they may use only those, ``source_name`` and the default metadata.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2 import meta

from ..errors import ArchiverError, ConfigurationError, PayloadError
from ..observe.logs import log_fields
from ..pipeline.payload import item_nbytes
from ..pipeline.queueing import Item
from ..sinks.hdf5_acquisitions import NUMBER_KEY, SEEN_KEY, START_EVENT, START_KEY, STOP_EVENT, frame_count
from .options import STACK_INTAKE_BUFFER

if TYPE_CHECKING:
    from .base import HERODataArchiver

    _Base = HERODataArchiver
else:
    _Base = object

log = logging.getLogger("heros_archiver")

#: What a template may use besides the default metadata, with ``acquisitions=True``.
CONTEXT_KEYS = ("source_name", NUMBER_KEY, START_KEY, SEEN_KEY)


def default_stack_intake(kwargs: dict[str, Any], acquisitions: bool) -> None:
    """Fill in the ``intake_buffer`` of an archiver that appends frames to stacks (HDF5, TIFF), unless given:
    buffered, since an append costs so little that trading the GIL with Zenoh's receive thread per frame was
    most of the work; direct with ``acquisitions``, whose markers only direct callbacks keep in order."""
    if kwargs.get("intake_buffer") is None:
        kwargs["intake_buffer"] = 0 if acquisitions else STACK_INTAKE_BUFFER


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


def recorded_defaults(default_metadata: dict[str, Any]) -> dict[str, Any]:
    """The default metadata as a dead letter's writer settings keep it for replay (the templates of an
    acquisition's items see it, not the items' metadata): text keys with text, number, boolean or null values;
    anything else cannot be kept in ``entry.json`` and is left out (a template using it then fails to render at
    replay, naming the key, and the entry stays until a corrected template is given)."""
    return {
        key: value
        for key, value in default_metadata.items()
        if isinstance(key, str) and (value is None or type(value) in (str, int, float, bool))
    }


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


class AcquisitionMarkers(_Base):
    """What an archiver with ``acquisitions=True`` does with the two events, shared by ``Hdf5Archiver`` and
    ``TiffArchiver(stack=True)``: both events become marker items in their acquisition's lane, each frame is
    given its acquisition on receipt, and the templates see the acquisition instead of the frame's metadata.
    The archiver's sink (``Hdf5AcquisitionSink``, ``TiffAcquisitionSink``) does the rest."""

    _tracker: AcquisitionTracker

    def _subscribe_markers(self) -> None:
        """Subscribe to both events (the archiver is closed if that fails)."""
        try:
            for event_name in (START_EVENT, STOP_EVENT):
                self._subscribe_event(event_name, self._marker_feed(event_name))
        except BaseException:
            self.close()
            raise

    def _give_acquisition(self, item: Item) -> None:
        """A frame received now (not read back from the spool, which kept its context) is given the
        acquisition it belongs to."""
        if item.spool_entry is None and item.context is None and item.event is None:
            item.context = self._tracker.frame(item.source)

    def _acquisition_context(self, item: Item) -> dict[str, Any]:
        """What the templates see: the item's metadata, or, for an item of an acquisition, what is known when
        it starts (the default metadata and the acquisition), so that all its items render the same path."""
        if item.context is not None:
            return {**self.metadata, **item.context, "source_name": item.source}
        return {**item.metadata, "source_name": item.source}

    def _route(self, item: Item) -> None:
        """Give ``item`` its route (the archiver's own: its rendered and confined file path)."""
        raise NotImplementedError

    def _marker_feed(self, event_name: str) -> Callable[[str, Any], None]:
        """The callback of ``acquisition_started`` / ``acquisition_stopped``: the event becomes a marker item
        in the lane of its acquisition's frames (see ``sinks.hdf5_acquisitions``). Never raises."""

        def feed_marker(source_name: str, data: Any) -> None:
            item = Item(source_name, data, {}, item_nbytes(data, {}), event=event_name)
            if event_name == START_EVENT:
                self._accounting.restart_sequence(source_name)  # the camera's frame counter starts again
                item.context = self._tracker.started(source_name)
            else:
                item.context = self._tracker.stopped(source_name)
                if item.context is None:
                    self._stop_without_acquisition(source_name, data)
                    return
            self._accounting.received(source_name, {})
            if not isinstance(data, dict):
                problem = PayloadError(f"{event_name} from {source_name!r}: expected a dict, got {type(data).__name__}")
                self._pipeline.reject(item, problem)
                return
            try:
                self._route(item)
            except ArchiverError as exc:
                self._pipeline.reject(item, exc)
                return
            self._pipeline.submit(item)

        return feed_marker

    def _stop_without_acquisition(self, source_name: str, data: Any) -> None:
        """A stop of an acquisition of which nothing arrived (no start, no frame): nothing to write; counted
        (its frames as missing) and logged."""
        expected = frame_count(data, "frames") if isinstance(data, dict) else None
        self._accounting.acquisition_checked(source_name, expected, 0)
        log.warning(
            "%s: %s (%.200r) for an acquisition of which neither its start nor a frame arrived; nothing written",
            source_name,
            STOP_EVENT,
            data,
            extra=log_fields(source_name, STOP_EVENT, error="an acquisition's stop without its start or a frame"),
        )
