"""Zenoh's shared memory is used only where it keeps every message (decision 0003)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import zenoh

from conftest import RigFactory
from helpers import assert_npy_equal, wait_for_items, wait_until
from heros_archiver.testing import make_frame, session_manager, unique_realm
from heros_archiver.transport import heros_compat
from heros_archiver.transport.sharedmemory import (
    configure_shared_memory,
    installed_zenoh_version,
    shared_memory_is_safe,
)


@pytest.mark.parametrize(
    ("version", "safe"),
    [
        ("1.9.0", False),
        ("1.10.0", False),
        ("1.10.1", False),
        ("1.10.2", True),
        ("1.10.10", True),
        ("1.11.0rc1", True),
        ("2.0", True),
        ("0.11.0", False),
        ("", False),
        ("unknown", False),
    ],
)
def test_which_zenoh_releases_keep_shared_memory_messages(version: str, safe: bool) -> None:
    assert shared_memory_is_safe(version) is safe


#: Frames each transport test sends: Zenoh sets up its shared-memory provider on first use and sends the
#: first large messages over the link meanwhile, so one frame would not tell.
FRAMES = 10


def _transport_of_frames(make_rig: RigFactory, tmp_path: Path, **kwargs: Any) -> tuple[list[bool], dict[str, Any]]:
    """Send FRAMES frames of 2 MiB to an archiver; return, per frame, whether it reached the archiver's
    session through shared memory (seen by a second subscriber on that session), and the archiver's stats."""
    rig = make_rig(shared_memory=True, **kwargs)  # Zenoh's default, as a lab's configuration has it
    through_shared_memory: list[bool] = []
    key = f"@object/{rig.realm}/cam/acquisition_data"  # where heros publishes the camera's event
    tap = heros_compat.session(rig.archiver).declare_subscriber(
        key, zenoh.handlers.Callback(lambda s: through_shared_memory.append(s.payload.as_shm() is not None))
    )
    try:
        frames = [make_frame(i) for i in range(FRAMES)]
        for i, frame in enumerate(frames):
            rig.camera.acquisition_data(frame, {"frame": i})
            time.sleep(0.02)
        wait_for_items(rig.archiver, FRAMES)
        wait_until(lambda: len(through_shared_memory) == FRAMES, what=f"{FRAMES} frames at the tap")
        for i, frame in enumerate(frames):
            assert_npy_equal(tmp_path / f"{i:03d}.npy", frame)
    finally:
        tap.undeclare()
    return through_shared_memory, rig.archiver.stats()


@pytest.mark.skipif(
    shared_memory_is_safe(installed_zenoh_version()),
    reason=f"this Zenoh ({installed_zenoh_version()}) keeps shared-memory messages, so the default uses it",
)
def test_by_default_frames_cross_tcp_with_a_zenoh_that_drops_shared_memory_messages(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    transport, stats = _transport_of_frames(make_rig, tmp_path)
    assert not any(transport)
    assert stats["zenoh_shared_memory"] is False
    assert stats["total"]["archived"] == FRAMES


@pytest.mark.skipif(
    not shared_memory_is_safe(installed_zenoh_version()),
    reason=f"this Zenoh ({installed_zenoh_version()}) drops shared-memory messages, so the default avoids it",
)
def test_by_default_frames_use_shared_memory_with_a_zenoh_that_keeps_its_messages(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    transport, stats = _transport_of_frames(make_rig, tmp_path)
    assert all(transport[transport.index(True) :]), transport
    assert stats["zenoh_shared_memory"] is True


def test_shared_memory_when_asked(make_rig: RigFactory, tmp_path: Path) -> None:
    transport, stats = _transport_of_frames(make_rig, tmp_path, zenoh_shared_memory=True)
    first = transport.index(True)  # raises if no frame came through shared memory
    assert all(transport[first:]), transport
    assert stats["zenoh_shared_memory"] is True


def test_no_shared_memory_when_refused(make_rig: RigFactory, tmp_path: Path) -> None:
    transport, stats = _transport_of_frames(make_rig, tmp_path, zenoh_shared_memory=False)
    assert not any(transport)
    assert stats["zenoh_shared_memory"] is False


@pytest.mark.parametrize("asked", [True, False])
def test_the_option_sets_the_transport_whatever_the_configuration_says(asked: bool) -> None:
    """``zenoh_shared_memory=True`` turns shared memory on where the configuration has it off, and False off."""
    manager = session_manager(shared_memory=not asked)
    configure_shared_memory(manager, unique_realm(), asked)
    assert manager._config_dict["transport/shared_memory/enabled"] is asked
