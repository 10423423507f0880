"""Replaying an Hdf5Archiver's dead letters: appended to their file and stack again, confined, never twice.

The entries are real: frames of the wrong shape sent over loopback Zenoh by a camera (or fed) to a real
Hdf5Archiver, which dead-letters them; the files are read back with h5py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import procs
from conftest import RigFactory
from helpers import dead_letter_entries, read_entry, wait_for_items
from heros_archiver import Hdf5Archiver
from heros_archiver.errors import ConfigurationError
from heros_archiver.observe.catalog_reader import CatalogReader
from heros_archiver.observe.verify import verify
from heros_archiver.sinks.containers.hdf5 import read_metadata
from heros_archiver.sinks.containers.hdf5_columns import read_archive_row
from heros_archiver.state.replay import replay
from heros_archiver.state.replay_hdf5 import Hdf5WriterSettings
from heros_archiver.testing import free_port, session_manager, unique_realm

pytestmark = pytest.mark.timeout(120)

SHAPE = (16, 24)
ODD = (8, 8)
FILE = "{{ file_path }}/run-{{ run }}.h5"
FIXED_DATASET = "{{ source_name }}-small/data"


def _frames(path: Path, dataset: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        frames = handle[dataset][()]
        group = handle[dataset.rsplit("/", 1)[0]]
        return frames, [read_metadata(group, i) for i in range(frames.shape[0])]


def _dead_letters(tmp_path: Path) -> Path:
    return tmp_path / ".heros-archiver" / "dead-letter"


def _fed_archiver(tmp_path: Path, **kwargs: Any) -> Hdf5Archiver:
    """An Hdf5Archiver on tmp_path with a Zenoh session of its own; items come in through ``feed``."""
    return Hdf5Archiver(
        kwargs.pop("file_template", FILE),
        object_selector="cam",
        event_name="acquisition_data",
        default_metadata={"file_path": str(tmp_path)},
        sequence_key="frame",
        realm=unique_realm("replay-hdf5"),
        session_manager=session_manager(listen_port=free_port()),
        **kwargs,
    )


def _one_odd_frame(tmp_path: Path) -> tuple[np.ndarray, Path]:
    """Frames 0-2 archived into run-1.h5, frame 3 (another shape) dead-lettered; returns it and its entry."""
    archiver = _fed_archiver(tmp_path)
    odd = procs.frame(3, ODD)
    for index in range(3):
        archiver.feed("cam", (procs.frame(index, SHAPE), {"frame": index, "run": 1}))
    archiver.feed("cam", (odd, {"frame": 3, "run": 1}))
    archiver.close()
    assert archiver.stats()["total"]["dead_lettered"] == 1
    [entry] = dead_letter_entries(tmp_path)
    return odd, entry


def test_a_frame_of_another_shape_is_replayed_into_a_corrected_dataset(make_rig: RigFactory, tmp_path: Path) -> None:
    made = make_rig(
        None, archiver_cls=Hdf5Archiver, file_template=FILE, dataset_template="cam/data", sequence_key="frame"
    )
    procs.send_frames(made.camera, [0, 1, 2], SHAPE, run=1)
    procs.send_frames(made.camera, [3], ODD, run=1)
    procs.send_frames(made.camera, [4, 5], SHAPE, run=1)
    total = wait_for_items(made.archiver, 6)
    assert total["archived"] == 5 and total["dead_lettered"] == 1, total
    made.archiver.close()
    path = tmp_path / "run-1.h5"
    [entry] = dead_letter_entries(tmp_path)
    info = read_entry(entry)
    writer = info["writer"]
    assert writer["kind"] == "hdf5" and writer["file_template"] == FILE and writer["dataset_template"] == "cam/data"
    before = _frames(path, "cam/data")[0]

    again = procs.run_cli(["replay", str(_dead_letters(tmp_path))])  # the same stack: the same mismatch
    assert again.returncode == 1 and "archived 0 of 1" in again.stdout and "(8, 8)" in again.stdout, again.stdout
    assert dead_letter_entries(tmp_path) == [entry]

    fixed = procs.run_cli(["replay", str(_dead_letters(tmp_path)), "--dataset-template", FIXED_DATASET])
    assert fixed.returncode == 0 and "archived 1 of 1" in fixed.stdout, fixed.stdout
    assert dead_letter_entries(tmp_path) == []
    frames, metadata = _frames(path, "cam-small/data")
    assert frames.shape == (1, *ODD)
    np.testing.assert_array_equal(frames[0], procs.frame(3, ODD))
    assert metadata[0]["frame"] == 3 and metadata[0]["run"] == 1, metadata
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        row = read_archive_row(handle["cam-small"], 0)
    assert row["source_name"] == "cam" and row["sequence"] == 3 and row["received"] == info["received"], row
    np.testing.assert_array_equal(_frames(path, "cam/data")[0], before)  # the run's stack is untouched

    # cataloged as the archiver that dead-lettered it: its sequence has no gap, and verify finds all well
    with CatalogReader(tmp_path) as reader:
        [replayed] = list(reader.items(where={"frame": 3}))
        archivers = {item.archiver for item in reader.items()}
    assert (replayed.member, replayed.idx, replayed.sequence) == ("cam-small/data", 0, 3), replayed
    assert replayed.path == "run-1.h5" and replayed.received == info["received"] and len(archivers) == 1, archivers
    report = verify(tmp_path)
    assert report.ok, report.problems


def test_an_entry_put_back_after_its_replay_is_not_appended_twice(tmp_path: Path) -> None:
    """A replay cut short after the commit and before the entry left the store: the next replay finds the
    frame's key in the file and counts it as archived without a second copy."""
    odd, entry = _one_odd_frame(tmp_path)
    kept = tmp_path / "kept-entry"
    shutil.copytree(entry, kept)

    [first] = replay(_dead_letters(tmp_path), dataset_template=FIXED_DATASET)
    assert first.ok and first.paths == [tmp_path / "run-1.h5"], first
    shutil.copytree(kept, entry)
    [second] = replay(_dead_letters(tmp_path), dataset_template=FIXED_DATASET)
    assert second.ok, second

    frames, _ = _frames(tmp_path / "run-1.h5", "cam-small/data")
    assert frames.shape[0] == 1
    np.testing.assert_array_equal(frames[0], odd)
    assert dead_letter_entries(tmp_path) == []


def test_a_dry_run_writes_nothing_and_names_the_file(tmp_path: Path) -> None:
    _, entry = _one_odd_frame(tmp_path)
    path = tmp_path / "run-1.h5"
    size = path.stat().st_size
    [outcome] = replay(_dead_letters(tmp_path), dry_run=True, dataset_template=FIXED_DATASET)
    assert outcome.ok and outcome.paths == [path], outcome
    assert dead_letter_entries(tmp_path) == [entry] and path.stat().st_size == size
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        assert "cam-small" not in handle


def test_a_corrected_file_template_makes_a_new_file_under_the_root_only(tmp_path: Path) -> None:
    odd, entry = _one_odd_frame(tmp_path)
    [outside] = replay(_dead_letters(tmp_path), template="{{ file_path }}/../escaped.h5")
    assert not outside.ok and "PathConfinementError" in outside.error, outside
    assert not (tmp_path.parent / "escaped.h5").exists() and dead_letter_entries(tmp_path) == [entry]

    [inside] = replay(_dead_letters(tmp_path), template="{{ file_path }}/odd/run-{{ run }}.h5")
    assert inside.ok and inside.paths == [tmp_path / "odd" / "run-1.h5"], inside
    frames, _ = _frames(tmp_path / "odd" / "run-1.h5", "cam/data")  # the recorded dataset_template
    np.testing.assert_array_equal(frames, odd[np.newaxis])


def test_frames_whose_file_template_cannot_render_are_replayed_with_it_fixed(tmp_path: Path) -> None:
    """Dead-lettered on receipt (the events carry no ``run``); replayed into one file, in the order they came."""
    archiver = _fed_archiver(tmp_path)
    sent = [procs.frame(index, SHAPE) for index in range(3)]
    for index, frame in enumerate(sent):
        archiver.feed("cam", (frame, {"frame": index}))
    archiver.close()
    assert archiver.stats()["total"]["dead_lettered"] == 3
    assert all("TemplateRenderError" in read_entry(e)["error"] for e in dead_letter_entries(tmp_path))

    outcomes = replay(_dead_letters(tmp_path), template="{{ file_path }}/fixed.h5")
    assert [o.ok for o in outcomes] == [True] * 3, outcomes
    frames, metadata = _frames(tmp_path / "fixed.h5", "cam/data")  # the recorded dataset_template
    np.testing.assert_array_equal(frames, np.stack(sent))
    assert [m["frame"] for m in metadata] == [0, 1, 2]
    assert dead_letter_entries(tmp_path) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("root", "/elsewhere", "recorded archive root '/elsewhere'"),
        ("kind", "tiff", "kind 'tiff'"),
        ("kind", "zarr", "zarr writer settings: expected exactly the fields"),
        ("fsync", "yes", "field 'fsync': expected bool"),
        ("max_frames", True, "field 'max_frames': expected int or null"),
        ("compression", "rot13", "expected one of"),
        ("extra", 1, "unknown ['extra']"),
    ],
)
def test_an_edited_entry_is_refused_and_stays(tmp_path: Path, field: str, value: Any, message: str) -> None:
    _, entry = _one_odd_frame(tmp_path)
    info = json.loads((entry / "entry.json").read_text())
    info["writer"][field] = value
    (entry / "entry.json").write_text(json.dumps(info))
    [outcome] = replay(_dead_letters(tmp_path), dataset_template=FIXED_DATASET)
    assert not outcome.ok and message in outcome.error, outcome.error
    assert dead_letter_entries(tmp_path) == [entry]
    with h5py.File(tmp_path / "run-1.h5", "r", libver="latest", swmr=True) as handle:
        assert "cam-small" not in handle


def test_writer_settings_round_trip_and_refuse_a_missing_field() -> None:
    settings = Hdf5WriterSettings("hdf5", FILE, "cam/data", "/data", "none", None, "append", False, 10, None, "frame")
    assert Hdf5WriterSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    partial = settings.to_dict()
    del partial["sequence_key"]
    with pytest.raises(ConfigurationError, match=r"missing \['sequence_key'\]"):
        Hdf5WriterSettings.from_dict(partial)
