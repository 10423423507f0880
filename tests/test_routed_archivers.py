"""What the three routed frame archivers (HDF5, TIFF stack, Zarr append) do alike, over real Zenoh: commit
points, a frame that does not fit, idle and least-recently-used files, rollover by size.

Each archiver's own file tests what is its own (layout, readers during the run, SIGKILL, full disk).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RigFactory
from helpers import dead_letter_entries, read_entry, wait_for_items, wait_until
from routed_kinds import HDF5, KINDS, SHAPE, TIFF, RoutedKind, send

pytestmark = pytest.mark.timeout(120)

ALL = pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
FILES = pytest.mark.parametrize("kind", [HDF5, TIFF], ids=[HDF5.name, TIFF.name])  # kinds that hold files open


@ALL
def test_frames_count_as_archived_only_once_committed(kind: RoutedKind, make_rig: RigFactory, tmp_path: Path) -> None:
    """flush_frames=10, no time or idle commit: 25 frames give two commits (20 archived), the drain the rest."""
    made = kind.rig(make_rig, flush_frames=10, **kind.count_commits_only)
    send(made.camera, range(25), run=1)
    wait_until(lambda: made.archiver.stats()["total"]["archived"] == 20, what="two commits")
    assert made.archiver.stats()["total"]["in_flight"] == 5
    assert kind.indices(kind.part(tmp_path, 1)) == list(range(20))
    made.archiver._teardown()
    assert made.archiver.stats()["total"]["archived"] == 25
    assert kind.indices(kind.part(tmp_path, 1)) == list(range(25))


@ALL
def test_a_frame_of_another_shape_is_dead_lettered_and_the_rest_are_written(
    kind: RoutedKind, make_rig: RigFactory, tmp_path: Path
) -> None:
    made = kind.rig(make_rig, flush_frames=4)
    send(made.camera, range(3), run=1)
    send(made.camera, [3], shape=(8, 8), run=1)
    send(made.camera, range(4, 9), run=1)
    total = wait_for_items(made.archiver, 9)
    assert total["archived"] == 8 and total["dead_lettered"] == 1
    assert kind.indices(kind.part(tmp_path, 1)) == [0, 1, 2, 4, 5, 6, 7, 8]
    [entry] = dead_letter_entries(tmp_path)
    error = read_entry(entry)["error"]
    assert "(8, 8)" in error and str(SHAPE) in error, error


@FILES
def test_an_idle_file_is_closed_and_reopened_when_frames_come_again(
    kind: RoutedKind, make_rig: RigFactory, tmp_path: Path
) -> None:
    assert kind.closed is not None
    closed = kind.closed
    made = kind.rig(make_rig, flush_seconds=0.05, idle_timeout=0.2)
    path = kind.part(tmp_path, 1)
    send(made.camera, range(3), run=1)
    wait_for_items(made.archiver, 3)
    wait_until(lambda: closed(path), what="the idle file closed")
    send(made.camera, range(3, 6), run=1)
    wait_for_items(made.archiver, 6)
    made.archiver._teardown()
    assert kind.indices(path) == list(range(6))


@FILES
def test_at_most_max_open_files_are_open_and_the_least_recently_used_is_closed(
    kind: RoutedKind, make_rig: RigFactory, tmp_path: Path
) -> None:
    made = kind.rig(make_rig, max_open_files=1, flush_frames=1000, flush_seconds=3600)
    for index in range(12):
        send(made.camera, [index], run=index % 3)  # three files in turn, one open at a time
    wait_until(lambda: made.archiver.stats()["total"]["archived"] >= 11, what="closed files committed")
    made.archiver._teardown()
    for run in range(3):
        assert kind.indices(kind.part(tmp_path, run)) == list(range(run, 12, 3))


@FILES
def test_max_bytes_rolls_over(kind: RoutedKind, make_rig: RigFactory, tmp_path: Path) -> None:
    frame_bytes = SHAPE[0] * SHAPE[1] * 2
    made = kind.rig(make_rig, flush_frames=2, max_bytes=3 * frame_bytes + 10)
    send(made.camera, range(7), run=1)
    wait_for_items(made.archiver, 7)
    made.archiver._teardown()
    parts = [kind.part(tmp_path, 1, number) for number in range(3)]
    assert [kind.indices(part) for part in parts] == [[0, 1, 2], [3, 4, 5], [6]]
