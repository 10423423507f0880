"""The camera and rig of the acquisition tests (HDF5 and TIFF stacks with ``acquisitions=True``): a HERO with
the three events of a herosdevices camera, an archiver of its acquisitions, and what arrives from the network as
a configuration."""

from __future__ import annotations

from typing import Any

import numpy as np
from heros import LocalHERO, event
from heros.event import reliable
from hypothesis import strategies as st

from conftest import Rig, RigFactory
from helpers import wait_until
from heros_archiver.archivers.base import HERODataArchiver
from heros_archiver.testing import make_frame, wait_for_subscriber

SHAPE = (6, 8)


class AcquiringCamera(LocalHERO):
    """The three events of a herosdevices acquisition device, each reliable."""

    @reliable
    @event
    def acquisition_data(self, frame: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """A frame."""
        return frame, metadata

    @reliable
    @event
    def acquisition_started(self, configuration: dict[str, Any]) -> dict[str, Any]:
        """``arm()``: the active configuration."""
        return configuration

    @reliable
    @event
    def acquisition_stopped(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The end: ``{"frames": emitted, "frame_count": requested}``."""
        return metadata

    def acquire(self, configuration: dict[str, Any], frames: int, claimed: int | None = None) -> list[np.ndarray]:
        """One acquisition as herosdevices runs it: start, ``frames`` frames numbered from 0, stop (saying
        ``claimed`` frames were emitted, ``frames`` unless given)."""
        self.acquisition_started(configuration)
        sent = []
        for i in range(frames):
            self.sent = getattr(self, "sent", 0) + 1
            frame = make_frame(self.sent, SHAPE)  # unlike any other frame of the test
            self.acquisition_data(frame, {"frame": i, "exposure": 0.5})
            sent.append(frame)
        self.acquisition_stopped({"frames": frames if claimed is None else claimed, "frame_count": frames})
        return sent


def acquisition_rig(make_rig: RigFactory, archiver_cls: type[HERODataArchiver], **kwargs: Any) -> Rig:
    """An ``AcquiringCamera`` ``cam`` and an archiver of its acquisitions (``acquisitions=True``, frames numbered
    by ``frame``, commits every 0.1 s) that has subscribed to all three events."""
    made = make_rig(
        None,
        archiver_cls=archiver_cls,
        camera_cls=AcquiringCamera,
        acquisitions=True,
        sequence_key="frame",
        flush_seconds=0.1,
        **kwargs,
    )
    for name in ("acquisition_started", "acquisition_stopped"):
        wait_for_subscriber(made.camera, name)
    return made


def counters(made: Rig) -> dict[str, Any]:
    return dict(made.archiver.stats()["sources"].get("cam", {}))


def wait_for_acquisitions(made: Rig, count: int) -> dict[str, Any]:
    """Wait until ``count`` acquisitions were checked and nothing is in flight; return the camera's counters."""

    def done() -> bool:
        stats = made.archiver.stats()
        return counters(made).get("acquisitions", 0) >= count and stats["total"]["in_flight"] == 0

    wait_until(done, 30, f"{count} acquisitions checked (stats: {made.archiver.stats()['total']})")
    return counters(made)


network_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
        st.binary(max_size=8),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip

configurations = st.dictionaries(st.text(max_size=12), network_values, max_size=6)
