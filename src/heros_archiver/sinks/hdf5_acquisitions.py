"""One file per camera acquisition: the HDF5 sink of ``Hdf5Archiver(acquisitions=True)``.

A HEROS camera emits ``acquisition_started`` (its configuration) at ``arm()``, then its frames (``frame``
from 0 again), then ``acquisition_stopped`` (``{"frames": emitted, "frame_count": requested}``). The archiver
turns the two events into *markers*: items of the same lane as the frames (``Item.event`` says which), so
they are queued, spooled, retried and resumed exactly like frames and never overtake them. Every item of an
acquisition carries the same ``Item.context`` (``acquisition``, ``acquisition_start``, given on receipt), so
all of them render the same file path and reach the same writer, in arrival order.

Here, per rendered path: an item of another acquisition than the file written now ends that file (committed,
closed) and starts the next part (``name-1.h5``, ... when the template renders the same path again); the
start marker opens the file with the configuration as attributes and the ``acquisition`` group
(``containers.hdf5_acquisition``), and counts as archived at the next commit; the stop marker commits and
closes the file after recording how many frames it holds against how many the camera said it emitted, and
reports that check (``AcquisitionCheck``) for the counters. A shortfall is logged.

With ``locate``, a marker's location names what it became in the file (there are no raw bytes of it to
checksum: ``checksum`` None, ``index`` None, ``nbytes`` the item's own, as the queue counted it): the start
marker the stack's ``configuration`` group (its payload is that group's attributes), the stop marker the
stack's ``acquisition`` group (where its counts went: ``frames_expected``, ``frame_count``, ``frames_held``).
Frames are located as ``Hdf5Sink`` locates them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import PayloadError, StorageError
from ..observe.logs import log_fields
from ..observe.outcomes import Location
from ..pipeline.queueing import Item
from .base import AcquisitionCheck, Settled
from .containers.hdf5_acquisition import GROUP as ACQUISITION_GROUP
from .containers.hdf5_acquisition import OtherAcquisitionError
from .hdf5 import Hdf5Sink, Hdf5SinkSettings, _Open

log = logging.getLogger("heros_archiver")

START_EVENT = "acquisition_started"
STOP_EVENT = "acquisition_stopped"
#: The keys of ``Item.context`` (and of the templates' context) that say which acquisition an item is.
NUMBER_KEY = "acquisition"
START_KEY = "acquisition_start"
SEEN_KEY = "acquisition_start_seen"

Identity = tuple[str, int, str]
#: Acquisitions whose frames held are counted at once (per sink); the oldest of those never stopped go first.
MAX_TRACKED = 1024
#: The group beside a stack that holds the configuration of ``acquisition_started`` (``Hdf5Container``).
CONFIGURATION_GROUP = "configuration"


def identity_of(item: Item) -> Identity | None:
    """(source, number, start) of the acquisition ``item`` belongs to; None for an item without one."""
    context = item.context or {}
    number, start = context.get(NUMBER_KEY), context.get(START_KEY)
    if not isinstance(number, int) or not isinstance(start, str):
        return None
    return item.source, number, start


def _locate_marker(item: Item, opened: _Open, group: str) -> None:
    """Set a marker's location: the group beside the stack its payload became (see the module docstring)."""
    stack = opened.container.dataset_path.rpartition("/")[0]
    item.locations = (Location(opened.where, item.nbytes, None, f"{stack}/{group}"),)


def frame_count(payload: Mapping[str, Any], key: str) -> int | None:
    """``payload[key]`` if it is a count (an int >= 0), else None."""
    value = payload.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Hdf5AcquisitionSink(Hdf5Sink):
    """``Hdf5Sink`` with the acquisition markers; see the module docstring."""

    def __init__(self, settings: Hdf5SinkSettings, dataset_of: Callable[[Item], str]) -> None:
        super().__init__(settings, dataset_of)
        #: per route, the acquisition its file (part) written now belongs to, and its attributes
        self._current: dict[str, Identity] = {}
        self._configuration: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, bool] = {}
        #: per open file path, the acquisition it holds; per acquisition (until its stop), frames committed per
        #: file path: an acquisition's parts may be interleaved with another's when a commit at its end failed
        self._holds: dict[str, Identity] = {}
        self._held: dict[Identity, dict[str, int]] = {}

    def _append(self, item: Item, settled: Settled) -> Settled:
        acquisition = identity_of(item)
        if acquisition is None:  # an item the archiver gave no acquisition: as without the option
            return super()._append(item, settled)
        route = item.lane_key
        if self._current.get(route, acquisition) != acquisition:
            settled.add(self._end_part(route))
        if route not in self._current:
            self._current[route] = acquisition
            self._seen[route] = bool((item.context or {}).get(SEEN_KEY))
            self._held.setdefault(acquisition, {})
            while len(self._held) > MAX_TRACKED:  # acquisitions whose stop never came
                del self._held[next(iter(self._held))]
        if item.event == START_EVENT:
            return settled.add(self._start(route, item))
        if item.event == STOP_EVENT:
            return settled.add(self._stop(route, item, acquisition))
        return super()._append(item, settled)

    # ------------------------------------------------------------------ markers
    def _start(self, route: str, item: Item) -> Settled:
        """Open the acquisition's file with its configuration; the marker is archived at the next commit."""
        if not isinstance(item.payload, Mapping):
            raise PayloadError(
                f"{START_EVENT} from {item.source!r}: expected the configuration as a dict, "
                f"got {type(item.payload).__name__}"
            )
        self._configuration[route] = dict(item.payload)
        opened = self._open.get(route)
        if opened is None:
            opened = self._opened(route, self._dataset_of(item))
        if self.locate:
            _locate_marker(item, opened, CONFIGURATION_GROUP)
        opened.waiting.append(item)
        if opened.first_pending is None:
            opened.first_pending = time.monotonic()
        return Settled()

    def _stop(self, route: str, item: Item, acquisition: Identity) -> Settled:
        """Commit, record frames held against frames emitted, close; the next acquisition gets a new part."""
        payload = item.payload if isinstance(item.payload, Mapping) else {}
        opened = self._open.get(route)
        if opened is None:
            opened = self._opened(route, self._dataset_of(item))
        settled = self._commit(route)
        if settled.failed:  # the file is set back or abandoned: the marker is appended again after its frames
            settled.failed[-1].items.append(item)
            return settled
        held = sum(self._held.get(acquisition, {}).values())
        expected, requested = frame_count(payload, "frames"), frame_count(payload, "frame_count")
        end = {
            "stopped": True,
            "frames_expected": -1 if expected is None else expected,
            "frame_count": -1 if requested is None else requested,
            "frames_held": held,
        }
        try:
            opened.container.end_acquisition(end)
        except StorageError as exc:
            failed = self._abandon(route, exc)
            failed.failed[0].items.append(item)
            return settled.add(failed)
        path, seen = str(opened.path), self._seen.get(route, True)
        settled.add(self._end_part(route))
        self._held.pop(acquisition, None)
        if expected is None:
            log.warning(
                "%s: %s without a count of the frames emitted (payload %.200r); %s holds %d frame(s), not checked",
                item.source, STOP_EVENT, payload, path, held,
                extra=log_fields(item.source, item.event, path, "no count of the frames emitted"),
            )  # fmt: skip
        elif held < expected:
            log.warning(
                "%s: acquisition %d ended with %d frame(s) emitted, but %s holds %d: %d missing%s",
                item.source, acquisition[1], expected, path, held, expected - held,
                "" if seen else " (the archiver did not see it start)",
                extra=log_fields(item.source, item.event, path, f"{expected} frame(s) emitted, {held} held"),
            )  # fmt: skip
        elif held > expected:
            log.warning(
                "%s: acquisition %d ended with %d frame(s) emitted, but %s holds %d",
                item.source, acquisition[1], expected, path, held,
                extra=log_fields(item.source, item.event, path, f"{expected} frame(s) emitted, {held} held"),
            )  # fmt: skip
        if self.locate:
            _locate_marker(item, opened, ACQUISITION_GROUP)
        settled.archived.append(item)
        settled.checks.append(AcquisitionCheck(item.source, path, expected, held))
        return settled

    def _end_part(self, route: str) -> Settled:
        """Commit and close the file of ``route``; the next item of it starts the next part."""
        settled = self._roll_over(route) if route in self._series else Settled()
        previous = self._current.pop(route, None)
        self._configuration.pop(route, None)
        self._seen.pop(route, None)
        if previous is not None and not settled.failed:
            self._holds = {path: held for path, held in self._holds.items() if held != previous}
        return settled

    # ------------------------------------------------------------------ hooks of Hdf5Sink
    def _container_options(self, route: str) -> dict[str, Any]:
        acquisition = self._current.get(route)
        if acquisition is None:
            return {}
        source, number, start = acquisition
        return {
            "attributes": self._configuration.get(route, {}),
            "acquisition": {"source": source, "number": number, "started": start, "start_seen": self._seen[route]},
        }

    def _opened(self, route: str, dataset: str) -> _Open:
        """Open the current part of ``route``; a file there of another acquisition is passed over."""
        while True:
            try:
                opened = super()._opened(route, dataset)
            except OtherAcquisitionError as exc:
                log.info("%s; writing the next part", exc)
                self._series[route].advance()
                continue
            acquisition = self._current.get(route)
            if acquisition is not None:
                self._holds[str(opened.path)] = acquisition
            return opened

    def _committed(self, opened: _Open) -> Settled:
        acquisition = self._holds.get(str(opened.path))
        if acquisition is not None and acquisition in self._held:
            self._held[acquisition][str(opened.path)] = opened.container.committed_length
        return super()._committed(opened)
