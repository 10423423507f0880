"""Hdf5Archiver over real Zenoh: frames into one file, commit points, mismatches, rollover, SWMR, SIGKILL.

Cameras and archivers talk over loopback Zenoh (conftest ``make_rig``, tests/procs.py for children); the
files are read back with h5py. Nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

import procs
from conftest import Rig, RigFactory
from helpers import dead_letter_entries, read_entry, wait_for_items, wait_until
from heros_archiver import Hdf5Archiver
from heros_archiver.containers.hdf5 import read_metadata

SHAPE = (16, 24)
FILE = "{{ file_path }}/run-{{ run }}.h5"
DATASET = "cam/data"


def rig(make_rig: RigFactory, **kwargs: object) -> Rig:
    """A camera ``cam`` and an Hdf5Archiver of its frames into ``run-<run>.h5`` under tmp_path."""
    kwargs.setdefault("file_template", FILE)
    kwargs.setdefault("dataset_template", DATASET)
    kwargs.setdefault("sequence_key", "frame")
    made = make_rig(None, archiver_cls=Hdf5Archiver, **kwargs)
    assert isinstance(made.archiver, Hdf5Archiver)
    return made


def send(cam: object, indices: range | list[int], shape: tuple[int, ...] = SHAPE, **metadata: object) -> None:
    procs.send_frames(cam, list(indices), shape, **metadata)


def stack(path: Path) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Frames and per-frame metadata of the ``cam/data`` stack in ``path`` (a SWMR read: works on any file)."""
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        frames = handle[DATASET][()]
        group = handle["cam"]
        return frames, [read_metadata(group, i) for i in range(frames.shape[0])]


def indices(path: Path) -> list[int]:
    """The frame numbers (first element of each frame) of the stack in ``path``, in order."""
    frames, _ = stack(path)
    return [int(f.flat[0]) for f in frames]


def test_a_run_of_frames_is_one_file_bit_identical_with_its_metadata(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig)
    send(made.camera, range(50), run=7, exposure=0.25)
    total = wait_for_items(made.archiver, 50)
    assert total["archived"] == 50 and total["dead_lettered"] == 0
    frames, metadata = stack(tmp_path / "run-7.h5")
    assert frames.shape == (50, *SHAPE) and frames.dtype == np.uint16
    for index in range(50):
        np.testing.assert_array_equal(frames[index], procs.frame(index, SHAPE))
        assert metadata[index]["frame"] == index and metadata[index]["exposure"] == 0.25
        assert metadata[index]["run"] == 7 and metadata[index]["file_path"] == str(tmp_path)
    with h5py.File(tmp_path / "run-7.h5", "r", libver="latest", swmr=True) as handle:
        assert handle["cam"].attrs["NX_class"] == "NXdata"
        assert list(handle["cam/archive/source_name"].asstr()[()]) == ["cam"] * 50


def test_frames_count_as_archived_only_once_committed(make_rig: RigFactory, tmp_path: Path) -> None:
    """flush_frames=10, flush_seconds long: 25 frames give two commits (20 archived), the drain the rest."""
    made = rig(make_rig, flush_frames=10, flush_seconds=3600)
    send(made.camera, range(25), run=1)
    wait_until(lambda: made.archiver.stats()["total"]["archived"] == 20, what="two commits")
    assert made.archiver.stats()["total"]["in_flight"] == 5
    assert indices(tmp_path / "run-1.h5") == list(range(20))
    made.archiver._teardown()
    assert made.archiver.stats()["total"]["archived"] == 25
    assert indices(tmp_path / "run-1.h5") == list(range(25))


def test_flush_seconds_commits_while_no_frame_arrives(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, flush_frames=1000, flush_seconds=0.2)
    send(made.camera, range(3), run=1)
    wait_for_items(made.archiver, 3)
    assert indices(tmp_path / "run-1.h5") == [0, 1, 2]


def test_a_frame_of_another_shape_is_dead_lettered_and_the_rest_are_written(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    made = rig(make_rig, flush_frames=4)
    send(made.camera, range(3), run=1)
    send(made.camera, [3], shape=(8, 8), run=1)
    send(made.camera, range(4, 9), run=1)
    total = wait_for_items(made.archiver, 9)
    assert total["archived"] == 8 and total["dead_lettered"] == 1
    assert indices(tmp_path / "run-1.h5") == [0, 1, 2, 4, 5, 6, 7, 8]
    [entry] = dead_letter_entries(tmp_path)
    error = read_entry(entry)["error"]
    assert "(8, 8)" in error and str(SHAPE) in error, error


def test_a_new_rendered_path_starts_a_new_file(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, flush_frames=3)
    send(made.camera, range(4), run=1)
    send(made.camera, range(4, 9), run=2)
    send(made.camera, range(9, 11), run=1)
    wait_for_items(made.archiver, 11)
    made.archiver._teardown()
    assert indices(tmp_path / "run-1.h5") == [0, 1, 2, 3, 9, 10]
    assert indices(tmp_path / "run-2.h5") == [4, 5, 6, 7, 8]


def test_max_frames_rolls_over_to_numbered_parts(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, flush_frames=2, max_frames=4)
    send(made.camera, range(10), run=1)
    total = wait_for_items(made.archiver, 10)
    assert total["archived"] == 10
    made.archiver._teardown()
    assert indices(tmp_path / "run-1.h5") == [0, 1, 2, 3]
    assert indices(tmp_path / "run-1-1.h5") == [4, 5, 6, 7]
    assert indices(tmp_path / "run-1-2.h5") == [8, 9]


def test_a_template_that_cannot_render_is_dead_lettered_on_receipt(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig)
    send(made.camera, [0], run=1)
    procs.send_frames(made.camera, [1], SHAPE)  # no "run": the file template cannot render
    send(made.camera, [2], run=1)
    total = wait_for_items(made.archiver, 3)
    assert total["archived"] == 2 and total["dead_lettered"] == 1
    assert indices(tmp_path / "run-1.h5") == [0, 2]
    assert "run" in read_entry(dead_letter_entries(tmp_path)[0])["error"]


def test_an_existing_file_is_kept_under_on_exists_error(make_rig: RigFactory, tmp_path: Path) -> None:
    (tmp_path / "run-1.h5").write_bytes(b"not yours")
    made = rig(make_rig)
    send(made.camera, range(2), run=1)
    total = wait_for_items(made.archiver, 2)
    assert total["dead_lettered"] == 2
    assert (tmp_path / "run-1.h5").read_bytes() == b"not yours"
