"""The ``acquisition`` group of a stack: which acquisition of a camera its frames are, and how it ended.

A HEROS camera announces an acquisition (``acquisition_started``, at ``arm()``) and its end
(``acquisition_stopped``, with the frames it emitted). ``Hdf5Archiver(acquisitions=True)`` writes each
acquisition into a file of its own; beside the stack's ``configuration`` group (the configuration the camera
announced) its ``acquisition`` group says::

    /entry/cam/acquisition   @NX_class = "NXcollection"
        @source           the camera (HERO name)
        @number           the archiver's count of that camera's acquisitions (1, 2, ...; restarts with it)
        @started          when the archiver received the start, UTC (``20261201T221803.123Z``)
        @start_seen       False when the archiver never received the start (it started mid-acquisition)
        @stopped          True once the end was received and checked
        @frames_expected  frames the camera said it emitted (-1: not stopped yet, or it did not say)
        @frame_count      frames the camera was asked for (-1: not stopped yet, or it did not say)
        @frames_held      frames archived of the acquisition, in this file and its earlier parts (-1 until stopped)

The end is written into the acquisition's last file (with ``max_frames`` or ``max_bytes`` it may have
several parts). All of them are created with the group, before SWMR starts (SWMR forbids creating
attributes later), so the end only changes values in place. ``source``, ``number`` and ``started``
identify the acquisition: a reopened file of another acquisition is not appended to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import TargetExistsError

GROUP = "acquisition"
#: The attributes that tell acquisitions apart.
IDENTITY = ("source", "number", "started")
#: Written when the acquisition ends; -1 / False until then.
END_PLACEHOLDERS: dict[str, Any] = {
    "stopped": False,
    "frames_expected": np.int64(-1),
    "frame_count": np.int64(-1),
    "frames_held": np.int64(-1),
}


class OtherAcquisitionError(TargetExistsError):
    """The file there holds another acquisition (or frames of none): the caller moves on to another file."""


def identity(attributes: Mapping[str, Any]) -> tuple[str, ...]:
    """The identity of an acquisition from its attributes (as text: HDF5 gives numbers back as numpy)."""
    return tuple(str(attributes.get(name)) for name in IDENTITY)


def check_same(parent: Any, acquisition: Mapping[str, Any], where: str) -> None:
    """Raise OtherAcquisitionError unless the stack group ``parent`` holds frames of ``acquisition``."""
    stored = dict(parent[GROUP].attrs) if GROUP in parent else None
    if stored is None or identity(stored) != identity(acquisition):
        found = "frames of no acquisition" if stored is None else f"acquisition {identity(stored)}"
        raise OtherAcquisitionError(f"{where} holds {found}; expected acquisition {identity(acquisition)}")


def write_group(parent: Any, acquisition: Mapping[str, Any]) -> None:
    """Create the ``acquisition`` group of ``parent`` with every attribute (outside SWMR); kept if there."""
    if GROUP in parent:
        return
    group = parent.create_group(GROUP)
    group.attrs["NX_class"] = "NXcollection"
    for name, value in {**END_PLACEHOLDERS, **acquisition}.items():
        group.attrs[name] = _attribute(value)


def write_end(parent: Any, end: Mapping[str, Any]) -> None:
    """Set the end attributes of ``parent``'s acquisition group in place (allowed under SWMR: no new ones)."""
    group = parent[GROUP]
    for name, value in end.items():
        group.attrs.modify(name, _attribute(value))


def _attribute(value: Any) -> Any:
    """Integers as int64 (their placeholders' type, so a change in place keeps it), the rest as they are."""
    if isinstance(value, int) and not isinstance(value, bool):
        return np.int64(value)
    return value
