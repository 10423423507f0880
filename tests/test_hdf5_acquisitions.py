"""Hdf5Archiver(acquisitions=True) over real Zenoh: a camera's acquisition_started / acquisition_stopped open and
close one file per acquisition, with the configuration as attributes and the frame count checked.

The camera here is a HERO of our own with the three events of a herosdevices camera (reliable); the test with a
real herosdevices ``CameraDummy`` under BOSS is in tests/test_boss.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acquisition_rigs import (
    SHAPE,
    AcquiringCamera,
    acquisition_rig,
    configurations,
    counters,
    network_values,
    wait_for_acquisitions,
)
from conftest import Rig, RigFactory
from helpers import dead_letter_entries, wait_until
from heros_archiver import Hdf5Archiver
from heros_archiver.errors import ConfigurationError
from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks.containers import ItemKey, lossless_json
from heros_archiver.sinks.containers.hdf5 import JSON_ATTRIBUTES, OTHER_ATTRIBUTES, Hdf5Container
from heros_archiver.state.spool import Spool
from heros_archiver.testing import make_frame, wait_for_subscriber

pytestmark = pytest.mark.timeout(120)

DATASET = "entry/{{ source_name }}/data"


def rig(make_rig: RigFactory, file_template: str, **kwargs: Any) -> Rig:
    return acquisition_rig(make_rig, Hdf5Archiver, file_template=file_template, dataset_template=DATASET, **kwargs)


def read(path: Path) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Frames, configuration attributes and acquisition attributes of the ``cam`` stack in ``path``."""
    with h5py.File(path, "r") as handle:
        group = handle["entry/cam"]
        frames = group["data"][()] if "data" in group else np.empty((0, *SHAPE), np.uint16)
        return frames, dict(group["configuration"].attrs), dict(group["acquisition"].attrs)


def test_two_acquisitions_two_files_with_configuration_and_frame_counts(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, "{{ file_path }}/{{ source_name }}-{{ acquisition }}.h5")
    first = made.camera.acquire({"exposure_time": 0.5, "roi": {"width": 8, "height": 6}, "mode": "fast"}, 3)
    second = made.camera.acquire({"exposure_time": 2.0, "frame_count": 5}, 2, claimed=5)  # 3 frames short
    cam = wait_for_acquisitions(made, 2)

    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["cam-1.h5", "cam-2.h5"]
    frames, configuration, acquisition = read(tmp_path / "cam-1.h5")
    np.testing.assert_array_equal(frames, np.stack(first))
    assert configuration["exposure_time"] == 0.5 and configuration["mode"] == "fast"
    assert json.loads(configuration["roi"]) == {"width": 8, "height": 6}  # nested: JSON text
    assert list(configuration["json_attributes"]) == ["roi"]
    assert acquisition["number"] == 1 and acquisition["source"] == "cam" and acquisition["start_seen"]
    assert acquisition["stopped"] and acquisition["frames_expected"] == 3 and acquisition["frames_held"] == 3
    assert acquisition["frame_count"] == 3

    frames, configuration, acquisition = read(tmp_path / "cam-2.h5")
    np.testing.assert_array_equal(frames, np.stack(second))
    assert configuration["exposure_time"] == 2.0 and configuration["frame_count"] == 5
    assert acquisition["number"] == 2 and acquisition["frames_expected"] == 5 and acquisition["frames_held"] == 2

    # the shortfall is a gap of its own; frame restarting at 0 is neither a repeat nor a gap
    assert cam["acquisitions"] == 2 and cam["acquisition_gaps"] == 1 and cam["acquisition_missing"] == 3, cam
    assert cam["duplicates"] == 0 and cam["gaps"] == 0, cam
    # every event is an item: 5 frames and 4 markers, all archived
    assert cam["received"] == cam["archived"] == 9 and not dead_letter_entries(tmp_path), cam
    assert made.archiver.stats()["intake_buffer"] == 0  # direct: the markers stay in order with the frames


def test_a_template_without_the_acquisition_gets_a_new_part_per_acquisition(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    made = rig(make_rig, "{{ file_path }}/run.h5")
    first = made.camera.acquire({"exposure_time": 1.0}, 2)
    second = made.camera.acquire({"exposure_time": 3.0}, 3)
    empty = made.camera.acquire({"exposure_time": 4.0}, 0)
    cam = wait_for_acquisitions(made, 3)
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["run-1.h5", "run-2.h5", "run.h5"]
    for name, sent, exposure in (("run.h5", first, 1.0), ("run-1.h5", second, 3.0), ("run-2.h5", empty, 4.0)):
        frames, configuration, acquisition = read(tmp_path / name)
        assert frames.shape[0] == len(sent) == acquisition["frames_held"] == acquisition["frames_expected"], name
        if sent:
            np.testing.assert_array_equal(frames, np.stack(sent))
        assert configuration["exposure_time"] == exposure, name
    assert cam["acquisition_gaps"] == 0, cam


def test_an_acquisition_split_by_max_frames_is_checked_over_its_parts(make_rig: RigFactory, tmp_path: Path) -> None:
    """Rollover by max_frames inside an acquisition, and a file closed as idle and reopened: the configuration
    goes with every part, the check counts the frames of all of them."""
    made = rig(make_rig, FILE, max_frames=2, idle_timeout=0.05)
    made.camera.acquisition_started({"exposure_time": 5.0})
    frames = [make_frame(50 + i, SHAPE) for i in range(3)]
    made.camera.acquisition_data(frames[0], {"frame": 0})
    time.sleep(0.3)  # long enough for the file to be closed as idle (or not: the outcome is the same)
    for i, frame in enumerate(frames[1:], start=1):
        made.camera.acquisition_data(frame, {"frame": i})
    made.camera.acquisition_stopped({"frames": 3, "frame_count": 3})
    cam = wait_for_acquisitions(made, 1)
    first, configuration, acquisition = read(tmp_path / "cam-1.h5")
    rest, last_configuration, last = read(tmp_path / "cam-1-1.h5")
    np.testing.assert_array_equal(np.concatenate([first, rest]), np.stack(frames))
    assert configuration["exposure_time"] == last_configuration["exposure_time"] == 5.0
    assert not acquisition["stopped"] and last["stopped"] and last["number"] == acquisition["number"] == 1
    assert last["frames_held"] == 3 and last["frames_expected"] == 3, last
    assert cam["acquisition_gaps"] == 0, cam


def test_frames_without_a_start_are_archived_and_their_stop_checked(
    make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An archiver started mid-acquisition: the frames it gets go to the template's file, the stop is checked."""
    made = rig(make_rig, "{{ file_path }}/{{ source_name }}-{{ acquisition }}.h5")
    late = [make_frame(i, SHAPE) for i in range(2, 5)]
    for i, frame in enumerate(late, start=2):
        made.camera.acquisition_data(frame, {"frame": i})
    made.camera.acquisition_stopped({"frames": 5, "frame_count": 5})
    cam = wait_for_acquisitions(made, 1)
    frames, configuration, acquisition = read(tmp_path / "cam-1.h5")
    np.testing.assert_array_equal(frames, np.stack(late))
    assert set(configuration) == {"NX_class"}  # no start, no configuration
    assert not acquisition["start_seen"] and acquisition["frames_held"] == 3 and acquisition["frames_expected"] == 5
    assert cam["acquisition_gaps"] == 1 and cam["acquisition_missing"] == 2, cam
    assert "2 missing (the archiver did not see it start)" in caplog.text


def test_markers_keep_their_place_through_a_full_queue_and_the_spool(make_rig: RigFactory, tmp_path: Path) -> None:
    """A queue of two items, spilling: most items of three back-to-back acquisitions go through the spool; each
    acquisition still gets exactly its own frames (a marker that overtook a frame would move it to another file)."""
    made = rig(make_rig, "{{ file_path }}/{{ source_name }}-{{ acquisition }}.h5", overflow="spill", max_queue_items=2)
    sent = [made.camera.acquire({"exposure_time": float(n)}, frames) for n, frames in enumerate((4, 1, 3))]
    cam = wait_for_acquisitions(made, 3)
    assert made.archiver.stats()["queue"]["spilled_total"] > 0
    for n, frames in enumerate(sent, start=1):
        stored, configuration, acquisition = read(tmp_path / f"cam-{n}.h5")
        np.testing.assert_array_equal(stored, np.stack(frames))
        assert configuration["exposure_time"] == n - 1 and acquisition["frames_held"] == len(frames)
    assert cam["acquisition_gaps"] == 0 and cam["archived"] == 8 + 6, cam


def test_markers_resumed_from_the_spool_after_a_restart(make_rig: RigFactory, tmp_path: Path) -> None:
    """Markers and frames an earlier run left in its spool (start, frames, stop: as ``overflow`` spills them)
    come back in order, with their acquisition, and make the same file a live run would."""
    spool = Spool(tmp_path / ".heros-archiver" / "spool", "acquisition_data")
    context = {"acquisition": 7, "acquisition_start": "20261201T000000.000Z", "acquisition_start_seen": True}
    frames = [make_frame(i, SHAPE) for i in range(3)]
    marker = {"exposure_time": 0.25}
    spool.put(Item("cam", marker, {}, 64, event="acquisition_started", context=dict(context)))
    for i, frame in enumerate(frames):
        spool.put(Item("cam", frame, {"frame": i}, frame.nbytes, context=dict(context)))
    spool.put(Item("cam", {"frames": 3, "frame_count": 3}, {}, 64, event="acquisition_stopped", context=dict(context)))

    made = rig(make_rig, "{{ file_path }}/{{ acquisition_start }}-{{ acquisition }}.h5", overflow="spill")
    cam = wait_for_acquisitions(made, 1)
    path = tmp_path / "20261201T000000.000Z-7.h5"
    stored, configuration, acquisition = read(path)
    np.testing.assert_array_equal(stored, np.stack(frames))
    assert configuration["exposure_time"] == 0.25 and acquisition["frames_held"] == 3 and acquisition["stopped"]
    assert cam["archived"] == 5 and cam["acquisition_gaps"] == 0, cam
    assert len(spool.store) == 0 or not any(spool.store.entries())


def test_a_marker_that_cannot_be_kept_is_dead_lettered_with_its_event(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, "{{ file_path }}/{{ source_name }}-{{ acquisition }}.h5")
    made.camera.acquisition_started("not a configuration")  # type: ignore[arg-type]
    wait_until(lambda: bool(dead_letter_entries(tmp_path)), 30, "the marker dead-lettered")
    entry = json.loads((dead_letter_entries(tmp_path)[0] / "entry.json").read_text())
    assert entry["event"] == "acquisition_started" and "expected a dict" in entry["error"], entry
    assert entry["context"]["acquisition"] == 1


@pytest.mark.parametrize("acquisitions", [False, True])
def test_frames_committed_before_the_next_file_fails_to_open_are_counted(
    make_rig: RigFactory, tmp_path: Path, acquisitions: bool
) -> None:
    """The file written now is committed and closed (rollover by max_frames; or a new acquisition), then the
    next part cannot be opened (it exists, on_exists="error"): the frames committed count as archived all the
    same, and only what was for the next part is dead-lettered."""
    (tmp_path / "run-1.h5").write_bytes(b"not ours")
    made = make_rig(
        None,
        archiver_cls=Hdf5Archiver,
        camera_cls=AcquiringCamera,
        file_template="{{ file_path }}/run.h5",
        dataset_template=DATASET,
        flush_seconds=60,
        max_frames=None if acquisitions else 2,
        acquisitions=acquisitions,
    )
    if acquisitions:
        for name in ("acquisition_started", "acquisition_stopped"):
            wait_for_subscriber(made.camera, name)
        made.camera.acquisition_started({"exposure_time": 1.0})
    for i in range(2):
        made.camera.acquisition_data(make_frame(i, SHAPE), {"frame": i})
    if acquisitions:
        made.camera.acquisition_started({"exposure_time": 2.0})  # its stop never came: a new acquisition
    made.camera.acquisition_data(make_frame(2, SHAPE), {"frame": 2})

    def settled() -> bool:
        total = made.archiver.stats()["total"]
        return total["in_flight"] == 0 and total["dead_lettered"] >= 1

    wait_until(settled, 30, f"every item settled (stats: {made.archiver.stats()['total']})")
    total = made.archiver.stats()["total"]
    archived = 3 if acquisitions else 2  # the first start too
    assert total["archived"] == archived and total["dead_lettered"] == total["received"] - archived, total
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        assert handle["entry/cam/data"].shape[0] == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"file_template": "{{ file_path }}/{{ frame }}.h5"}, "it uses frame"),
        ({"dataset_template": "entry/{{ roi }}/data"}, "it uses roi"),
        ({"intake_buffer": 16}, "expected intake_buffer=0"),
        ({"overflow": "drop"}, "expected 'block' or 'spill'"),
        ({"acquisitions": "yes"}, "expected True or False"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path: Path, arguments: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(tmp_path)},
        "file_template": "{{ file_path }}/run.h5",
        "acquisitions": True,
        **arguments,
    }
    with pytest.raises(ConfigurationError, match=message):
        Hdf5Archiver(**settings)


# ------------------------------------------------------------------------------------------ the container's part


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configurations, st.integers(0, 2))
def test_any_configuration_from_the_network_is_kept(
    tmp_path_factory: pytest.TempPathFactory, configuration: dict[str, Any], frames: int
) -> None:
    """Whatever a camera announces as its configuration is kept: each value as an attribute or as JSON text,
    with or without frames, and the end is recorded under SWMR."""
    path = tmp_path_factory.mktemp("acq") / "acq.h5"
    acquisition = {"source": "cam", "number": 1, "started": "20261201T000000.000Z", "start_seen": True}
    with Hdf5Container(path, "entry/cam/data", attributes=configuration, acquisition=acquisition) as container:
        for i in range(frames):
            frame = make_frame(i, SHAPE)
            container.append(ItemKey.of("cam", frame, {}, i), frame, {})
        container.commit()
        container.end_acquisition({"stopped": True, "frames_expected": 2, "frame_count": 2, "frames_held": frames})
    with h5py.File(path, "r") as handle:
        attributes = handle["entry/cam/configuration"].attrs
        encoded = set(attributes.get(JSON_ATTRIBUTES, []))
        others = json.loads(attributes.get(OTHER_ATTRIBUTES, "{}"))
        for name, value in configuration.items():
            if name in others:  # a name HDF5 cannot hold, or one of the group's own
                assert json.dumps(others[name]) == json.dumps(json.loads(lossless_json(value))), name
                continue
            stored = attributes[name]
            if name in encoded:
                assert stored == lossless_json(value).decode("ascii"), name
            elif isinstance(value, float) and value != value:
                assert np.isnan(stored)
            else:
                assert stored == value, name
        assert set(others) <= {n for n in configuration if n in ("", "NX_class", JSON_ATTRIBUTES) or "\0" in n}
        ended = handle["entry/cam/acquisition"].attrs
        assert ended["stopped"] and ended["frames_held"] == frames and ended["number"] == 1


_RIGS: dict[int, Rig] = {}
FILE = "{{ file_path }}/{{ source_name }}-{{ acquisition }}.h5"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(network_values, network_values)
def test_any_start_and_stop_payload_from_the_network_is_handled(
    make_rig: RigFactory, tmp_path_factory: pytest.TempPathFactory, started: Any, stopped: Any
) -> None:
    """Whatever a camera sends as its start and stop (over Zenoh), the archiver goes on: the frame between
    them is archived, a marker that is no dict is dead-lettered, every item settles, a stop (a dict) is checked."""
    made = _RIGS.get(id(make_rig))  # one rig for every example of this test
    if made is None:
        directory = tmp_path_factory.mktemp("markers")
        made = _RIGS[id(make_rig)] = rig(make_rig, FILE, default_metadata={"file_path": str(directory)})
    before = counters(made)
    made.camera.acquisition_started(started)
    made.camera.acquisition_data(make_frame(0, SHAPE), {"frame": 0})
    made.camera.acquisition_stopped(stopped)
    wait_until(
        lambda: (
            counters(made).get("received", 0) == before.get("received", 0) + 3
            and made.archiver.stats()["total"]["in_flight"] == 0
        ),
        30,
        f"three items settled ({counters(made)})",
    )
    cam = counters(made)
    assert cam["archived"] - before.get("archived", 0) == 1 + isinstance(started, dict) + isinstance(stopped, dict), cam
    assert cam["acquisitions"] - before.get("acquisitions", 0) == isinstance(stopped, dict), cam
