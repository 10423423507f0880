"""TiffArchiver(stack=True, acquisitions=True) over real Zenoh: a camera's acquisition_started / acquisition_stopped
start and close one BigTIFF stack per acquisition, with the configuration in the first page's record and the
frame count checked, as Hdf5Archiver(acquisitions=True) does (tests/test_hdf5_acquisitions.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings

from acquisition_rigs import SHAPE, acquisition_rig, configurations, wait_for_acquisitions
from conftest import Rig, RigFactory
from helpers import dead_letter_entries, tiny_file_system, wait_until
from heros_archiver import TiffArchiver
from heros_archiver.errors import ConfigurationError
from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks.containers import lossless_json
from heros_archiver.sinks.containers.tiff import read_records
from heros_archiver.sinks.tiff_acquisitions import TiffAcquisitionSink
from heros_archiver.sinks.tiff_stack import TiffStackSettings
from heros_archiver.state.spool import Spool
from heros_archiver.testing import make_frame

pytestmark = pytest.mark.timeout(120)

PER_ACQUISITION = "{{ file_path }}/{{ source_name }}-{{ acquisition }}.tif"


def rig(make_rig: RigFactory, save_template: str, **kwargs: Any) -> Rig:
    return acquisition_rig(make_rig, TiffArchiver, save_template=save_template, stack=True, **kwargs)


def read(path: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The frames of the stack in ``path`` (tifffile) and the records of its pages."""
    return tifffile.imread(path), read_records(path)


def test_two_acquisitions_two_stacks_with_configuration_and_frame_counts(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, PER_ACQUISITION)
    first = made.camera.acquire({"exposure_time": 0.5, "roi": {"width": 8, "height": 6}, "mode": "fast"}, 3)
    second = made.camera.acquire({"exposure_time": 2.0, "frame_count": 5}, 2, claimed=5)  # 3 frames short
    cam = wait_for_acquisitions(made, 2)

    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["cam-1.tif", "cam-2.tif"]
    frames, records = read(tmp_path / "cam-1.tif")
    np.testing.assert_array_equal(frames, np.stack(first))
    acquisition = records[0]["acquisition"]
    assert acquisition["configuration"] == {"exposure_time": 0.5, "roi": {"width": 8, "height": 6}, "mode": "fast"}
    assert acquisition["number"] == 1 and acquisition["source"] == "cam" and acquisition["start_seen"]
    assert all("acquisition" not in record for record in records[1:])  # the first page only
    assert [r["metadata"]["frame"] for r in records] == [0, 1, 2]

    frames, records = read(tmp_path / "cam-2.tif")
    np.testing.assert_array_equal(frames, np.stack(second))
    assert records[0]["acquisition"]["configuration"] == {"exposure_time": 2.0, "frame_count": 5}
    assert records[0]["acquisition"]["number"] == 2

    # the shortfall is a gap of its own; frame restarting at 0 is neither a repeat nor a gap
    assert cam["acquisitions"] == 2 and cam["acquisition_gaps"] == 1 and cam["acquisition_missing"] == 3, cam
    assert cam["duplicates"] == 0 and cam["gaps"] == 0, cam
    # every event is an item: 5 frames and 4 markers, all archived
    assert cam["received"] == cam["archived"] == 9 and not dead_letter_entries(tmp_path), cam


def test_a_template_without_the_acquisition_gets_a_new_part_per_acquisition(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """The same path for every acquisition: each gets a part of its own; one without a frame leaves no file."""
    made = rig(make_rig, "{{ file_path }}/run.tif")
    first = made.camera.acquire({"exposure_time": 1.0}, 2)
    made.camera.acquire({"exposure_time": 4.0}, 0)
    second = made.camera.acquire({"exposure_time": 3.0}, 3)
    cam = wait_for_acquisitions(made, 3)
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["run-1.tif", "run.tif"]
    for name, sent, exposure in (("run.tif", first, 1.0), ("run-1.tif", second, 3.0)):
        frames, records = read(tmp_path / name)
        np.testing.assert_array_equal(frames, np.stack(sent))
        assert records[0]["acquisition"]["configuration"] == {"exposure_time": exposure}, name
    assert cam["acquisitions"] == 3 and cam["acquisition_gaps"] == 0, cam


def test_an_acquisition_split_by_max_frames_is_checked_over_its_parts(make_rig: RigFactory, tmp_path: Path) -> None:
    """Rollover by max_frames inside an acquisition, and a stack closed as idle and reopened: the configuration
    goes with the first page of every part, the check counts the frames of all of them."""
    made = rig(make_rig, PER_ACQUISITION, max_frames=2, idle_timeout=0.05)
    made.camera.acquisition_started({"exposure_time": 5.0})
    frames = [make_frame(50 + i, SHAPE) for i in range(3)]
    made.camera.acquisition_data(frames[0], {"frame": 0})
    time.sleep(0.3)  # long enough for the stack to be closed as idle (or not: the outcome is the same)
    for i, frame in enumerate(frames[1:], start=1):
        made.camera.acquisition_data(frame, {"frame": i})
    made.camera.acquisition_stopped({"frames": 3, "frame_count": 3})
    cam = wait_for_acquisitions(made, 1)
    first, first_records = read(tmp_path / "cam-1.tif")
    rest, rest_records = read(tmp_path / "cam-1-1.tif")
    np.testing.assert_array_equal(np.concatenate([first, rest[np.newaxis]]), np.stack(frames))
    for records in (first_records, rest_records):
        assert records[0]["acquisition"]["configuration"] == {"exposure_time": 5.0}
        assert records[0]["acquisition"]["number"] == 1
    assert cam["acquisitions"] == 1 and cam["acquisition_gaps"] == 0, cam


def test_frames_without_a_start_are_archived_and_their_stop_checked(
    make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An archiver started mid-acquisition: the frames it gets go to the template's stack, the stop is checked."""
    made = rig(make_rig, PER_ACQUISITION)
    late = [make_frame(i, SHAPE) for i in range(2, 5)]
    for i, frame in enumerate(late, start=2):
        made.camera.acquisition_data(frame, {"frame": i})
    made.camera.acquisition_stopped({"frames": 5, "frame_count": 5})
    cam = wait_for_acquisitions(made, 1)
    frames, records = read(tmp_path / "cam-1.tif")
    np.testing.assert_array_equal(frames, np.stack(late))
    acquisition = records[0]["acquisition"]
    assert not acquisition["start_seen"] and "configuration" not in acquisition  # no start, no configuration
    assert cam["acquisition_gaps"] == 1 and cam["acquisition_missing"] == 2, cam
    assert "2 missing (the archiver did not see it start)" in caplog.text


def test_markers_keep_their_place_through_a_full_queue_and_the_spool(make_rig: RigFactory, tmp_path: Path) -> None:
    """A queue of two items, spilling: most items of three back-to-back acquisitions go through the spool; each
    acquisition still gets exactly its own frames, and its own configuration."""
    made = rig(make_rig, PER_ACQUISITION, overflow="spill", max_queue_items=2)
    sent = [made.camera.acquire({"exposure_time": float(n)}, frames) for n, frames in enumerate((4, 1, 3))]
    cam = wait_for_acquisitions(made, 3)
    assert made.archiver.stats()["queue"]["spilled_total"] > 0
    for n, frames in enumerate(sent, start=1):
        stored, records = read(tmp_path / f"cam-{n}.tif")
        np.testing.assert_array_equal(stored.reshape(-1, *SHAPE), np.stack(frames))
        assert records[0]["acquisition"]["configuration"] == {"exposure_time": n - 1.0}
    assert cam["acquisition_gaps"] == 0 and cam["archived"] == 8 + 6, cam


def test_markers_resumed_from_the_spool_after_a_restart(make_rig: RigFactory, tmp_path: Path) -> None:
    """Markers and frames an earlier run left in its spool come back in order, with their acquisition, and make
    the same stack a live run would."""
    spool = Spool(tmp_path / ".heros-archiver" / "spool", "acquisition_data")
    context = {"acquisition": 7, "acquisition_start": "20261201T000000.000Z", "acquisition_start_seen": True}
    frames = [make_frame(i, SHAPE) for i in range(3)]
    spool.put(Item("cam", {"exposure_time": 0.25}, {}, 64, event="acquisition_started", context=dict(context)))
    for i, frame in enumerate(frames):
        spool.put(Item("cam", frame, {"frame": i}, frame.nbytes, context=dict(context)))
    spool.put(Item("cam", {"frames": 3, "frame_count": 3}, {}, 64, event="acquisition_stopped", context=dict(context)))

    made = rig(make_rig, "{{ file_path }}/{{ acquisition_start }}-{{ acquisition }}.tif", overflow="spill")
    cam = wait_for_acquisitions(made, 1)
    stored, records = read(tmp_path / "20261201T000000.000Z-7.tif")
    np.testing.assert_array_equal(stored, np.stack(frames))
    assert records[0]["acquisition"]["configuration"] == {"exposure_time": 0.25}
    assert records[0]["acquisition"]["number"] == 7
    assert cam["archived"] == 5 and cam["acquisition_gaps"] == 0, cam


def test_acquisitions_on_a_full_disk_are_retried_into_their_own_stacks(make_rig: RigFactory, tmp_path: Path) -> None:
    """No room for a stack or a commit (a real full tmpfs) while two acquisitions arrive: their frames and markers
    are retried until there is space, then each acquisition is in its own stack, checked, nothing lost."""
    data = tmp_path / "data"
    with tiny_file_system(data, "2m"):
        filler = data / "filler"
        filler.write_bytes(b"\0" * (2 * 2**20 - 100 * 2**10))  # less free than a commit's margin
        made = rig(
            make_rig, "{{ file_path }}/data/{{ source_name }}-{{ acquisition }}.tif", root=str(tmp_path),
            max_retries=1000, retry_delay=0.02, retry_max_delay=0.05,
        )  # fmt: skip
        first = made.camera.acquire({"exposure_time": 1.0}, 3)
        second = made.camera.acquire({"exposure_time": 2.0}, 2)
        wait_until(lambda: made.archiver.stats()["total"]["retried"] > 0, 30, "a failed write")
        filler.unlink()
        cam = wait_for_acquisitions(made, 2)
        made.archiver._teardown()
        assert sorted(p.name for p in data.glob("*.tif")) == ["cam-1.tif", "cam-2.tif"]
        for name, sent, exposure in (("cam-1.tif", first, 1.0), ("cam-2.tif", second, 2.0)):
            frames, records = read(data / name)
            np.testing.assert_array_equal(frames, np.stack(sent))
            assert records[0]["acquisition"]["configuration"] == {"exposure_time": exposure}, name
        assert cam["acquisition_gaps"] == 0 and cam["archived"] == 9 and not dead_letter_entries(tmp_path), cam


def test_a_marker_that_cannot_be_kept_is_dead_lettered_with_its_event(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, PER_ACQUISITION)
    made.camera.acquisition_started("not a configuration")  # type: ignore[arg-type]
    wait_until(lambda: bool(dead_letter_entries(tmp_path)), 30, "the marker dead-lettered")
    entry = json.loads((dead_letter_entries(tmp_path)[0] / "entry.json").read_text())
    assert entry["event"] == "acquisition_started" and "expected a dict" in entry["error"], entry


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"stack": False}, "expected stack=True"),
        ({"save_template": "{{ file_path }}/{{ frame }}.tif"}, "it uses frame"),
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
        "save_template": "{{ file_path }}/run.tif",
        "stack": True,
        "acquisitions": True,
        **arguments,
    }
    with pytest.raises(ConfigurationError, match=message):
        TiffArchiver(**settings)


# ------------------------------------------------------------------------------------------ the sink's part
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configurations)
def test_any_configuration_from_the_network_is_kept(
    tmp_path_factory: pytest.TempPathFactory, configuration: dict[str, Any]
) -> None:
    """Whatever a camera announces as its configuration is kept in the first page's record, as JSON holds it."""
    root = tmp_path_factory.mktemp("acq")
    stack_settings = TiffStackSettings(
        root=str(root), on_exists="error", fsync=False, flush_frames=100, flush_seconds=1.0, flush_bytes=1 << 20,
        max_frames=None, idle_timeout=60.0, sequence_key="frame", max_bytes=None, max_open_files=4, writeback_window=0,
    )  # fmt: skip
    sink = TiffAcquisitionSink(stack_settings)
    context = {"acquisition": 1, "acquisition_start": "20261201T000000.000Z", "acquisition_start_seen": True}
    route = str(root / "cam-1.tif")
    items = [Item("cam", configuration, {}, 64, event="acquisition_started", context=dict(context))]
    items += [Item("cam", make_frame(i, SHAPE), {"frame": i}, 96, context=dict(context)) for i in range(2)]
    items.append(Item("cam", {"frames": 2, "frame_count": 2}, {}, 64, event="acquisition_stopped", context=context))
    archived, checks = [], []
    for item in items:
        item.route = route
        settled = sink.append(item)
        archived += settled.archived
        checks += settled.checks
    assert archived == items and [(c.expected, c.held) for c in checks] == [(2, 2)]
    stored = read_records(route)[0]["acquisition"]["configuration"]
    assert json.dumps(stored) == json.dumps(json.loads(lossless_json(configuration)))
