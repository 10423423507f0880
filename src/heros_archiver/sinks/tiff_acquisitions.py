"""One stack per camera acquisition: the sink of ``TiffArchiver(stack=True, acquisitions=True)``.

The markers and contexts are those of ``sinks.hdf5_acquisitions`` (given by ``archivers.acquisitions``): every
item of an acquisition renders the same stack path and reaches the same writer, in arrival order. Here, per
rendered path: an item of another acquisition than the stack written now ends that stack (committed, closed)
and starts the next part (``name-1.tif``, ... when the template renders the same path again); the start
marker's configuration goes into the record of the stack's first page (``acquisition``: source, number,
start, whether the start was seen, configuration), since TIFF pages once linked are never rewritten; the stop
marker commits and closes the stack and reports how many frames it holds against how many the camera said it
emitted (``AcquisitionCheck``). A shortfall is logged.

Unlike HDF5, no file is made at the start (a TIFF without a page is not a TIFF): the start marker counts as
archived when it arrives, and its configuration is kept in memory until the first frame; an acquisition
without a frame leaves no file. So a crash between the start and the first commit of a frame loses the
configuration (the frames resumed from the spool are written without it).

With ``locate``, frames are located as ``TiffStackSink`` locates them; the markers are archived with no
location (``Item.locations == ()``), because none of them is in a file when it counts as archived: the start
marker's configuration waits in memory for the first page's record (which no location could name yet: the
stack may not exist, and an acquisition without frames never makes one), and the stop marker writes nothing
(linked pages are never rewritten; its counts go to the counters). The configuration is found, once written,
in the record of page 0 of the acquisition's first stack (``containers.tiff.read_records``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import PayloadError
from ..observe.logs import log_fields
from ..pipeline.queueing import Item
from .base import AcquisitionCheck, Settled
from .hdf5_acquisitions import MAX_TRACKED, SEEN_KEY, START_EVENT, STOP_EVENT, Identity, frame_count, identity_of
from .tiff_stack import TiffStackSettings, TiffStackSink, _Open

log = logging.getLogger("heros_archiver")


class TiffAcquisitionSink(TiffStackSink):
    """``TiffStackSink`` with the acquisition markers; see the module docstring."""

    def __init__(self, settings: TiffStackSettings) -> None:
        super().__init__(settings)
        #: per route, the acquisition its stack (part) written now belongs to
        self._current: dict[str, Identity] = {}
        #: routes where the current acquisition opened a stack (its end moves the series on)
        self._written: set[str] = set()
        #: per acquisition (until its stop), its frames committed over all its parts, and what its first pages keep
        self._held: dict[Identity, int] = {}
        self._first: dict[Identity, dict[str, Any]] = {}

    def append(self, item: Item) -> Settled:
        acquisition = identity_of(item)
        if acquisition is None:  # an item the archiver gave no acquisition: as without the option
            return super().append(item)
        route = item.lane_key
        settled = Settled()
        if self._current.get(route, acquisition) != acquisition:
            settled.add(self._end_part(route))
        if route not in self._current:
            self._begin(route, item, acquisition)
        if item.event == START_EVENT:
            return settled.add(self._start(route, item))
        if item.event == STOP_EVENT:
            return settled.add(self._stop(route, item, acquisition))
        appended = super().append(item)
        if any(done is item for done in appended.archived):  # resumed, committed before a crash
            self._count(item)
        return settled.add(appended)

    def _begin(self, route: str, item: Item, acquisition: Identity) -> None:
        self._current[route] = acquisition
        if acquisition not in self._held:
            source, number, start = acquisition
            seen = bool((item.context or {}).get(SEEN_KEY))
            self._first[acquisition] = {"source": source, "number": number, "started": start, "start_seen": seen}
            self._held[acquisition] = 0
        while len(self._held) > MAX_TRACKED:  # acquisitions whose stop never came
            oldest = next(iter(self._held))
            del self._held[oldest]
            self._first.pop(oldest, None)

    # ------------------------------------------------------------------ markers
    def _start(self, route: str, item: Item) -> Settled:
        """Keep the configuration for the first page; the marker is archived now (nothing to write yet)."""
        if not isinstance(item.payload, Mapping):
            raise PayloadError(
                f"{START_EVENT} from {item.source!r}: expected the configuration as a dict, "
                f"got {type(item.payload).__name__}"
            )
        self._first[self._current[route]]["configuration"] = dict(item.payload)
        return Settled(archived=[item])

    def _stop(self, route: str, item: Item, acquisition: Identity) -> Settled:
        """Commit and close the stack, check frames held against frames emitted; the next acquisition gets a
        new part."""
        payload = item.payload if isinstance(item.payload, Mapping) else {}
        opened = self._open.get(route)
        series = self._series.get(route)
        path = str(opened.container.path if opened is not None else (series and series.current) or route)
        settled = self._end_part(route)
        if settled.failed:  # the stack is set back: the marker is appended again after its frames
            settled.failed[-1].items.append(item)
            return settled
        held = self._held.pop(acquisition, 0)
        self._first.pop(acquisition, None)
        expected = frame_count(payload, "frames")
        if expected is None:
            log.warning(
                "%s: %s without a count of the frames emitted (payload %.200r); %s holds %d frame(s), not checked",
                item.source, STOP_EVENT, payload, path, held,
                extra=log_fields(item.source, item.event, path, "no count of the frames emitted"),
            )  # fmt: skip
        elif held != expected:
            seen = bool((item.context or {}).get(SEEN_KEY))
            log.warning(
                "%s: acquisition %d ended with %d frame(s) emitted, but %s holds %d%s%s",
                item.source, acquisition[1], expected, path, held,
                f": {expected - held} missing" if held < expected else "",
                "" if seen or held > expected else " (the archiver did not see it start)",
                extra=log_fields(item.source, item.event, path, f"{expected} frame(s) emitted, {held} held"),
            )  # fmt: skip
        settled.archived.append(item)
        settled.checks.append(AcquisitionCheck(item.source, path, expected, held))
        return settled

    def _end_part(self, route: str) -> Settled:
        """Commit and close the stack of ``route`` (if the acquisition wrote one); the next item starts the next
        part (after a failed commit its frames, appended again, make the acquisition current again)."""
        settled = self._roll_over(route) if route in self._written else Settled()
        self._written.discard(route)
        self._current.pop(route, None)
        return settled

    def _count(self, item: Item) -> None:
        acquisition = identity_of(item)
        if item.event is None and acquisition is not None and acquisition in self._held:
            self._held[acquisition] += 1

    # ------------------------------------------------------------------ hooks of TiffStackSink
    def _first_page(self, route: str) -> Mapping[str, Any] | None:
        acquisition = self._current.get(route)
        return None if acquisition is None else self._first.get(acquisition)

    def _opened(self, route: str) -> _Open:
        opened = super()._opened(route)
        if route in self._current:
            self._written.add(route)
        return opened

    def _committed(self, opened: _Open) -> Settled:
        for item in opened.waiting:
            self._count(item)
        return super()._committed(opened)
