"""One archiver, a wildcard selector, several cameras: each camera's frames land in its own folder.

Zenoh key expressions allow ``*`` only as a whole chunk; a wildcard inside a name is ``$*`` (``cam-$*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RigFactory
from helpers import archived_files, assert_npy_equal, wait_for_items
from heros_archiver import ArrayArchiver, ConfigurationError
from heros_archiver.testing import free_port, session_manager, unique_realm
from heros_archiver.transport.heros_compat import open_sessions

pytestmark = pytest.mark.timeout(60)


def test_wildcard_selector_archives_every_camera(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(
        "{{ file_path }}/{{ source_name }}/{{ '%03d' % frame }}.npy",
        cameras=("cam-1", "cam-2"),
        object_selector="cam-$*",
    )
    frames = {
        name: [np.full((2, 3), 10 * camera_index + i, dtype=np.int32) for i in range(4)]
        for camera_index, name in enumerate(rig.cameras, start=1)
    }
    for i in range(4):  # interleaved, as two free-running cameras would be
        for name, camera in rig.cameras.items():
            camera.acquisition_data(frames[name][i], {"frame": i})

    total = wait_for_items(rig.archiver, 8)

    assert total["archived"] == 8 and total["dead_lettered"] == 0, total
    assert archived_files(tmp_path) == [f"{n}/{i:03d}.npy" for n in ("cam-1", "cam-2") for i in range(4)]
    for name, sent in frames.items():
        for i, frame in enumerate(sent):
            assert_npy_equal(tmp_path / name / f"{i:03d}.npy", frame)
    sources = rig.archiver.stats()["sources"]
    assert set(sources) == {"cam-1", "cam-2"}
    for name in ("cam-1", "cam-2"):
        assert sources[name]["received"] == 4 and sources[name]["archived"] == 4, sources[name]


def test_selector_does_not_match_other_heroes(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(
        "{{ file_path }}/{{ source_name }}-{{ frame }}.npy",
        cameras=("cam-1", "scope"),
        object_selector="cam-$*",
        matched=("cam-1",),
    )
    rig.cameras["scope"].acquisition_data(np.zeros(2), {"frame": 0})  # nobody listens to scope: not an error
    rig.cameras["cam-1"].acquisition_data(np.ones(2), {"frame": 0})

    total = wait_for_items(rig.archiver, 1)

    assert total["received"] == 1 and total["archived"] == 1, total
    assert archived_files(tmp_path) == ["cam-1-0.npy"]
    assert set(rig.archiver.stats()["sources"]) == {"cam-1"}


def _construct_with_invalid_selector(tmp_path: Path, manager: Any) -> None:
    ArrayArchiver(
        "{{ file_path }}/{{ frame }}.npy",
        object_selector="cam-*",  # not a Zenoh key expression: '*' must be a whole chunk (cam-$* is valid)
        event_name="acquisition_data",
        default_metadata={"file_path": str(tmp_path)},
        realm=unique_realm(),
        session_manager=manager,
    )


def test_invalid_selector_is_a_configuration_error(tmp_path: Path) -> None:
    manager = session_manager(connect_port=free_port())
    try:
        with pytest.raises(ConfigurationError, match=r"cam-\*"):
            _construct_with_invalid_selector(tmp_path, manager)
    finally:
        manager.force_close()


def test_failed_construction_leaves_no_session_open(tmp_path: Path) -> None:
    manager = session_manager(connect_port=free_port())
    try:
        with pytest.raises(Exception):  # noqa: B017 - any error; what matters is what is left behind
            _construct_with_invalid_selector(tmp_path, manager)
        assert open_sessions(manager) == {}, "the Zenoh session of the failed archiver was left open"
        assert manager._referrers == [], "the session manager still references the failed archiver"
    finally:
        manager.force_close()


def test_registered_callbacks_see_every_event_with_its_sender(
    make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """heros' register_callback API: taps beside the archiver get (sender name, payload); one that raises
    is logged and neither stops the others nor the archiving."""
    rig = make_rig(
        "{{ file_path }}/{{ source_name }}-{{ frame }}.npy", cameras=("cam-1", "cam-2"), object_selector="cam-$*"
    )
    seen: list[tuple[str, int]] = []

    def tap(source_name: str, data: Any) -> None:
        seen.append((source_name, int(data[1]["frame"])))

    def broken(source_name: str, data: Any) -> None:
        raise RuntimeError("tap failed")

    rig.archiver.register_callback(broken)
    rig.archiver.register_callback(tap)
    for i in range(3):
        for camera in rig.cameras.values():
            camera.acquisition_data(np.zeros(2), {"frame": i})

    total = wait_for_items(rig.archiver, 6)

    assert total["archived"] == 6, total
    assert sorted(seen) == [(name, i) for name in ("cam-1", "cam-2") for i in range(3)]
    assert caplog.text.count("tap failed") == 6
