"""Replaying the dead letters of ZarrAppendArchiver, TiffArchiver(stack=True) and ParquetArchiver / DatasourceArchiver:
appended again to the container their template names, committed, never twice, under their root only.

The entries are real: events sent over loopback Zenoh by a camera or a datasource to the real archiver, which
dead-letters them (a template whose key the events lack, a full tmpfs); the containers are read back with
zarr, tifffile and pyarrow. Each kind's own cases (a full disk, acquisitions, a datasource's return sets) come
after the cases all three share; the full-disk case runs for the HDF5 archiver too (its other replay cases are in
test_replay_hdf5.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from heros import LocalDatasourceHERO

import procs
from acquisition_rigs import AcquiringCamera
from conftest import Rig, RigFactory
from helpers import RawCamera, dead_letter_entries, read_entry, tiny_file_system, wait_for_items
from heros_archiver import DatasourceArchiver, Hdf5Archiver, ParquetArchiver, TiffArchiver, ZarrAppendArchiver
from heros_archiver.sinks.containers.tiff import read_records
from heros_archiver.state.replay import replay
from heros_archiver.testing import ReliableSimulatedCamera, wait_for_subscriber

pytestmark = pytest.mark.timeout(120)

SHAPE = (16, 24)
#: A template of a key the events lack: every item is dead-lettered on receipt (TemplateRenderError).
UNRENDERABLE = "{{ file_path }}/run-{{ run }}"


def _dead_letters(root: Path) -> Path:
    return root / ".heros-archiver" / "dead-letter"


def _zarr_frames(store: Path) -> list[int]:
    array = zarr.open_array(store / "cam" / "data", mode="r")
    frames = np.asarray(array[...])
    for frame in frames:
        np.testing.assert_array_equal(frame, procs.frame(int(frame.flat[0]), SHAPE))
    return [int(frame.flat[0]) for frame in frames]


def _tiff_frames(path: Path) -> list[int]:
    frames = tifffile.imread(path)
    frames = frames.reshape(-1, *SHAPE)
    for frame in frames:
        np.testing.assert_array_equal(frame, procs.frame(int(frame.flat[0]), SHAPE))
    assert [r["metadata"]["frame"] for r in read_records(path)] == [int(f.flat[0]) for f in frames]
    return [int(frame.flat[0]) for frame in frames]


def _hdf5_frames(path: Path) -> list[int]:
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        committed = int(handle["cam/archive/committed_length"][0])
        frames = handle["cam/data"][:committed]
        assert list(handle["cam/metadata/frame"][:committed]) == [int(frame.flat[0]) for frame in frames]
    for frame in frames:
        np.testing.assert_array_equal(frame, procs.frame(int(frame.flat[0]), SHAPE))
    return [int(frame.flat[0]) for frame in frames]


def _parquet_rows(path: Path) -> list[int]:
    table = pq.read_table(path)
    assert {"source_name", "sequence", "received", "item_key", "n"} <= set(table.column_names), table.schema
    return [int(n) for n in table.column("n").to_pylist()]


@dataclass
class Kind:
    """One container archiver, how a test sends it an item, and how its container is read back."""

    name: str
    archiver_cls: type
    template_name: str
    suffix: str
    send: Callable[[Any, int], None]
    read: Callable[[Path], list[int]]
    camera_cls: type = ReliableSimulatedCamera
    kwargs: dict[str, Any] = field(default_factory=dict)

    def rig(self, make_rig: RigFactory, template: str, **kwargs: Any) -> Rig:
        return make_rig(
            None, archiver_cls=self.archiver_cls, camera_cls=self.camera_cls, sequence_key="frame",
            **{self.template_name: template + self.suffix, **self.kwargs, **kwargs},
        )  # fmt: skip


def _send_frame(camera: Any, index: int) -> None:
    procs.send_frames(camera, [index], SHAPE)


def _send_reading(camera: Any, index: int) -> None:
    camera.acquisition_data({"n": index, "frame": index})


KINDS = [
    Kind("zarr-append", ZarrAppendArchiver, "store_template", ".zarr", _send_frame, _zarr_frames),
    Kind("tiff-stack", TiffArchiver, "save_template", ".tif", _send_frame, _tiff_frames, kwargs={"stack": True}),
    Kind("parquet", ParquetArchiver, "file_template", ".parquet", _send_reading, _parquet_rows, RawCamera),
]
#: The HDF5 archiver's replay has tests of its own (test_replay_hdf5.py); here only its full disk.
HDF5 = Kind("hdf5", Hdf5Archiver, "file_template", ".h5", _send_frame, _hdf5_frames)


def _unrenderable_entries(make_rig: RigFactory, kind: Kind, count: int = 3) -> list[Path]:
    """``count`` items sent over Zenoh to an archiver whose template needs ``run``: all dead-lettered."""
    made = kind.rig(make_rig, UNRENDERABLE)
    for index in range(count):
        kind.send(made.camera, index)
    total = wait_for_items(made.archiver, count)
    made.archiver.close()
    assert total["dead_lettered"] == count, total
    entries = dead_letter_entries(made.root)
    assert all("TemplateRenderError" in read_entry(entry)["error"] for entry in entries)
    assert read_entry(entries[0])["writer"]["kind"] == kind.name
    return entries


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------ what all kinds share
def test_items_whose_template_cannot_render_are_replayed_with_it_corrected(
    make_rig: RigFactory, tmp_path: Path, kind: Kind
) -> None:
    _unrenderable_entries(make_rig, kind)
    again = procs.run_cli(["replay", str(_dead_letters(tmp_path))])  # the recorded template fails again
    assert again.returncode == 1 and "archived 0 of 3" in again.stdout and "run" in again.stdout, again.stdout
    assert len(dead_letter_entries(tmp_path)) == 3

    fixed = procs.run_cli(["replay", str(_dead_letters(tmp_path)), "--template", "{{ file_path }}/fixed" + kind.suffix])
    assert fixed.returncode == 0 and "archived 3 of 3" in fixed.stdout, fixed.stdout
    assert dead_letter_entries(tmp_path) == []
    assert kind.read(tmp_path / f"fixed{kind.suffix}") == [0, 1, 2]


def test_a_replay_run_twice_duplicates_nothing(make_rig: RigFactory, tmp_path: Path, kind: Kind) -> None:
    """The entries put back after their replay (as a replay cut short after its commit leaves them): the
    second run finds every item's key in the container and counts it as archived without a second copy."""
    entries = _unrenderable_entries(make_rig, kind)
    kept = tmp_path / "kept"
    for entry in entries:
        shutil.copytree(entry, kept / entry.name)
    template = "{{ file_path }}/fixed" + kind.suffix
    first = replay(_dead_letters(tmp_path), template=template)
    assert [o.ok for o in first] == [True] * 3 and first[0].paths == [tmp_path / f"fixed{kind.suffix}"], first
    for entry in entries:
        shutil.copytree(kept / entry.name, entry)
    second = replay(_dead_letters(tmp_path), template=template)
    assert [o.ok for o in second] == [True] * 3, second
    assert dead_letter_entries(tmp_path) == []
    assert kind.read(tmp_path / f"fixed{kind.suffix}") == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("fixed")] == [f"fixed{kind.suffix}"]


def test_a_dry_run_names_the_container_and_changes_nothing(make_rig: RigFactory, tmp_path: Path, kind: Kind) -> None:
    entries = _unrenderable_entries(make_rig, kind)
    outcomes = replay(_dead_letters(tmp_path), template="{{ file_path }}/fixed" + kind.suffix, dry_run=True)
    assert [o.paths for o in outcomes] == [[tmp_path / f"fixed{kind.suffix}"]] * 3, outcomes
    assert dead_letter_entries(tmp_path) == entries
    assert not (tmp_path / f"fixed{kind.suffix}").exists()
    assert not (tmp_path / ".heros-archiver" / "parquet-journal").exists() or not any(
        (tmp_path / ".heros-archiver" / "parquet-journal").iterdir()
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("root", "/elsewhere", "recorded archive root '/elsewhere'"),
        ("root", "relative", "recorded archive root 'relative'"),
        ("kind", "tiff", "kind 'tiff'"),
        ("fsync", "always", "fsync: expected one of none, file"),
        ("max_frames", True, "expected int or null"),
        ("extra", 1, "unknown ['extra']"),
    ],
)
def test_an_edited_entry_is_refused_and_stays(
    make_rig: RigFactory, tmp_path: Path, kind: Kind, field: str, value: Any, message: str
) -> None:
    [entry] = _unrenderable_entries(make_rig, kind, count=1)
    info = read_entry(entry)
    if field == "max_frames" and kind.name == "parquet":
        field = "max_rows"
    info["writer"][field] = value
    (entry / "entry.json").write_text(json.dumps(info))
    [outcome] = replay(_dead_letters(tmp_path), template="{{ file_path }}/fixed" + kind.suffix)
    assert not outcome.ok and message in outcome.error, outcome.error
    assert dead_letter_entries(tmp_path) == [entry]
    assert not (tmp_path / f"fixed{kind.suffix}").exists()


def test_a_corrected_template_outside_the_root_is_refused(make_rig: RigFactory, tmp_path: Path, kind: Kind) -> None:
    [entry] = _unrenderable_entries(make_rig, kind, count=1)
    [outside] = replay(_dead_letters(tmp_path), template="{{ file_path }}/../escaped" + kind.suffix)
    assert not outside.ok and "PathConfinementError" in outside.error, outside
    assert not (tmp_path.parent / f"escaped{kind.suffix}").exists() and dead_letter_entries(tmp_path) == [entry]


# ------------------------------------------------------------------------------------------ a full disk
def _fill(directory: Path, leave: int = 0) -> Path:
    """A file that takes all but ``leave`` bytes of the file system of ``directory``."""
    stats = os.statvfs(directory)
    filler = directory / "filler"
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - leave))
    return filler


@pytest.mark.parametrize(("which", "leave"), [("zarr-append", 0), ("tiff-stack", 64 << 10), ("hdf5", 0)])
def test_frames_dead_lettered_on_a_full_disk_are_replayed_into_their_container(
    make_rig: RigFactory, tmp_path: Path, which: str, leave: int
) -> None:
    """Frames 0-2 committed; the container's file system (a tmpfs; the dead-letter store elsewhere) fills, and
    frames 3-5 are dead-lettered after their retry; once there is room again replay appends them to the same
    container, after the frames it held, in the order they came."""
    kind = next(k for k in [*KINDS, HDF5] if k.name == which)
    data = tmp_path / "data"
    with tiny_file_system(data, "2m"):
        made = kind.rig(
            make_rig, "{{ file_path }}/data/run", root=str(tmp_path), flush_frames=1, max_retries=1,
            retry_delay=0.01, retry_max_delay=0.02,
        )  # fmt: skip
        for index in range(3):
            kind.send(made.camera, index)
        wait_for_items(made.archiver, 3)
        filler = _fill(data, leave)  # no room for a shard (Zarr), less than a commit's margin (TIFF)
        for index in range(3, 6):
            kind.send(made.camera, index)
        total = wait_for_items(made.archiver, 6)
        made.archiver.close()
        assert total["archived"] == 3 and total["dead_lettered"] == 3, total
        container = data / f"run{kind.suffix}"
        assert kind.read(container) == [0, 1, 2]

        full = replay(_dead_letters(tmp_path))  # still no room: the entries stay
        assert [o.ok for o in full] == [False] * 3 and len(dead_letter_entries(tmp_path)) == 3, full
        filler.unlink()
        done = procs.run_cli(["replay", str(_dead_letters(tmp_path))])
        assert done.returncode == 0 and "archived 3 of 3" in done.stdout, done.stdout
        assert dead_letter_entries(tmp_path) == []
        assert kind.read(container) == [0, 1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------------ TIFF acquisitions
def test_acquisitions_dead_lettered_on_a_full_disk_are_replayed_into_their_own_stacks(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """One template for every acquisition (the archiver makes run.tif, run-1.tif, ...). Acquisition 1 commits
    two frames, then the disk fills: its third frame and both of acquisition 2 are dead-lettered.
    Replay appends acquisition 1's frame to run.tif (its first page names acquisition 1) and gives
    acquisition 2 the next part, whose first page records it."""
    data = tmp_path / "data"
    with tiny_file_system(data, "2m"):
        made = make_rig(
            "{{ file_path }}/data/run.tif", archiver_cls=TiffArchiver, camera_cls=AcquiringCamera, stack=True,
            acquisitions=True, sequence_key="frame", root=str(tmp_path), flush_frames=1, max_retries=1,
            retry_delay=0.01, retry_max_delay=0.02,
        )  # fmt: skip
        for name in ("acquisition_started", "acquisition_stopped"):
            wait_for_subscriber(made.camera, name)
        camera = made.camera
        frames = [procs.frame(100 + index, (6, 8)) for index in range(5)]
        camera.acquisition_started({"exposure_time": 1.0})
        for index in range(2):
            camera.acquisition_data(frames[index], {"frame": index})
        wait_for_items(made.archiver, 3)
        filler = _fill(data, leave=64 << 10)
        camera.acquisition_data(frames[2], {"frame": 2})
        camera.acquisition_stopped({"frames": 3, "frame_count": 3})
        camera.acquisition_started({"exposure_time": 2.0})
        for index in range(2):
            camera.acquisition_data(frames[3 + index], {"frame": index})
        camera.acquisition_stopped({"frames": 2, "frame_count": 2})
        wait_for_items(made.archiver, 9)
        made.archiver.close()
        dead = [read_entry(entry) for entry in dead_letter_entries(tmp_path)]
        assert [d["event"] for d in dead] == ["acquisition_data"] * 3  # the stops found nothing to commit
        np.testing.assert_array_equal(tifffile.imread(data / "run.tif"), np.stack(frames[:2]))

        filler.unlink()
        outcomes = replay(_dead_letters(tmp_path))
        assert all(o.ok for o in outcomes) and dead_letter_entries(tmp_path) == [], outcomes
        np.testing.assert_array_equal(tifffile.imread(data / "run.tif"), np.stack(frames[:3]))
        np.testing.assert_array_equal(tifffile.imread(data / "run-1.tif"), np.stack(frames[3:]))
        first, second = read_records(data / "run.tif"), read_records(data / "run-1.tif")
        assert first[0]["acquisition"]["number"] == 1 and first[0]["acquisition"]["configuration"] == {
            "exposure_time": 1.0
        }
        assert "acquisition" not in first[2]  # appended: the first page keeps the acquisition's record
        assert second[0]["acquisition"]["number"] == 2 and second[0]["acquisition"]["source"] == "cam"
        assert [r["metadata"]["frame"] for r in second] == [0, 1]
        assert sorted(p.name for p in data.glob("*.tif")) == ["run-1.tif", "run.tif"]


def test_acquisitions_refused_whole_are_replayed_with_their_markers_into_a_corrected_template(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """A template that renders outside the root: both acquisitions, markers and frames, are dead-lettered on
    receipt. Replay with a corrected template (one path for both) gives each acquisition a stack of its own,
    the start marker's configuration in its first page; the stop markers write nothing and leave too."""
    made = make_rig(
        "{{ file_path }}/{{ sub }}/run.tif", archiver_cls=TiffArchiver, camera_cls=AcquiringCamera, stack=True,
        acquisitions=True, sequence_key="frame", default_metadata={"file_path": str(tmp_path), "sub": "../out"},
    )  # fmt: skip
    for name in ("acquisition_started", "acquisition_stopped"):
        wait_for_subscriber(made.camera, name)
    first = made.camera.acquire({"exposure_time": 1.0}, 2)
    second = made.camera.acquire({"exposure_time": 3.0, "roi": [0, 0, 8, 6]}, 3)
    total = wait_for_items(made.archiver, 9)
    made.archiver.close()
    assert total["dead_lettered"] == 9, total
    events = [read_entry(entry)["event"] for entry in dead_letter_entries(tmp_path)]
    assert events.count("acquisition_started") == 2 and events.count("acquisition_stopped") == 2, events

    dry = replay(_dead_letters(tmp_path), template="{{ file_path }}/fixed.tif", dry_run=True)
    assert [o.paths for o in dry] == [[tmp_path / "fixed.tif"]] * 4 + [[tmp_path / "fixed-1.tif"]] * 5, dry
    assert not list(tmp_path.glob("*.tif")) and len(dead_letter_entries(tmp_path)) == 9
    outcomes = replay(_dead_letters(tmp_path), template="{{ file_path }}/fixed.tif")
    assert all(o.ok for o in outcomes) and dead_letter_entries(tmp_path) == [], outcomes
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["fixed-1.tif", "fixed.tif"]
    for name, sent, configuration in (
        ("fixed.tif", first, {"exposure_time": 1.0}),
        ("fixed-1.tif", second, {"exposure_time": 3.0, "roi": [0, 0, 8, 6]}),
    ):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / name), np.stack(sent))
        assert read_records(tmp_path / name)[0]["acquisition"]["configuration"] == configuration, name
    assert not (tmp_path.parent / "out").exists()


#: A replay whose process ends (without closing anything) when it would remove its first entry: its rows are
#: journaled, the entry is still there, no Parquet file was published.
_KILLED_REPLAY = """
import os, sys
from heros_archiver.state.deadletter import DeadLetterStore
from heros_archiver.state.replay import replay
DeadLetterStore.remove = lambda self, entry: os._exit(3)
replay(sys.argv[1], template=sys.argv[2])
"""


def test_a_parquet_replay_killed_after_its_first_commit_is_finished_once_by_the_next(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """The next replay rebuilds the dead replay's journal into the file first, so the first entry's reading is
    found by its key (archived, no second row) and the others go into the next part: every row once."""
    entries = _unrenderable_entries(make_rig, KINDS[2])
    template = "{{ file_path }}/fixed.parquet"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_REPLAY, str(_dead_letters(tmp_path)), template], timeout=60, check=False
    )
    assert killed.returncode == 3 and dead_letter_entries(tmp_path) == entries
    assert not (tmp_path / "fixed.parquet").exists()
    assert len(list((tmp_path / ".heros-archiver" / "parquet-journal").glob("*.arrows"))) == 1

    outcomes = replay(_dead_letters(tmp_path), template=template)
    assert [o.ok for o in outcomes] == [True] * 3 and dead_letter_entries(tmp_path) == [], outcomes
    assert [o.paths for o in outcomes] == [[tmp_path / "fixed.parquet"]] + [[tmp_path / "fixed-1.parquet"]] * 2
    assert _parquet_rows(tmp_path / "fixed.parquet") == [0]
    assert _parquet_rows(tmp_path / "fixed-1.parquet") == [1, 2]
    assert not list((tmp_path / ".heros-archiver" / "parquet-journal").glob("*.arrows"))


# ------------------------------------------------------------------------------------------ a datasource
def test_a_datasources_return_sets_are_replayed_as_a_row_per_value(make_rig: RigFactory, tmp_path: Path) -> None:
    """A DatasourceArchiver's entry holds the whole DatasourceReturnSet that arrived (a list of value dicts);
    replay makes a row per value with the datasource columns' types, as the archiver does, once."""
    made = make_rig(
        None, archiver_cls=DatasourceArchiver, camera_cls=LocalDatasourceHERO, event_name="observable_data",
        file_template="{{ file_path }}/sensors-{{ run }}.parquet",
    )  # fmt: skip
    for n in range(3):
        made.camera.observable_data({"T1": (20.0 + n, "degC"), "T2": (30 + n, "degC")})
    total = wait_for_items(made.archiver, 3)
    made.archiver.close()
    assert total["dead_lettered"] == 3, total
    entries = dead_letter_entries(tmp_path)
    info = read_entry(entries[0])
    assert info["writer"]["kind"] == "parquet" and info["writer"]["rows"] == "datasource", info["writer"]
    payload = json.loads((entries[0] / "payload.json").read_text())
    assert [value["id"] for value in payload] == ["T1", "T2"], payload  # the whole return set, not a row
    for entry in entries:
        shutil.copytree(entry, tmp_path / "kept" / entry.name)

    template = "{{ file_path }}/sensors/{{ date }}.parquet"
    outcomes = replay(_dead_letters(tmp_path), template=template)
    assert [o.ok for o in outcomes] == [True] * 3 and dead_letter_entries(tmp_path) == [], outcomes
    [path] = outcomes[0].paths
    assert path.parent == tmp_path / "sensors" and path.suffix == ".parquet"
    for entry in entries:  # put back: the second run finds each return set's rows by the item's key
        shutil.copytree(tmp_path / "kept" / entry.name, entry)
    assert all(o.ok and o.paths == [path] for o in replay(_dead_letters(tmp_path), template=template))
    assert list((tmp_path / "sensors").glob("*.parquet")) == [path]

    table = pq.read_table(path)
    assert table.column("id").to_pylist() == ["T1", "T2"] * 3
    assert table.column("raw_value").to_pylist() == [v for n in range(3) for v in (20.0 + n, 30.0 + n)]
    assert table.schema.field("raw_value").type == pa.float64() and table.schema.field("inbound").type == pa.int64()
    assert table.column("received").to_pylist()[0].timestamp() == pytest.approx(info["received"])
    assert set(table.column("source_name").to_pylist()) == {"cam"}
