"""TiffArchiver over real Zenoh: TIFF files per frame, BigTIFF stacks Fiji and napari open, commits, rollover,
a reader during the run, SIGKILL of ``heros-archiver run`` and restart, a full disk.

Cameras and archivers talk over loopback Zenoh (conftest ``make_rig``, tests/procs.py for children); files
are read back with tifffile (what napari uses). Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import procs
from conftest import RigFactory
from helpers import dead_letter_entries, read_entry, tiny_file_system, wait_for_items, wait_until
from heros_archiver import ConfigurationError, TiffArchiver
from heros_archiver.sinks.containers.tiff import read_records
from heros_archiver.state.replay import replay
from heros_archiver.testing import free_port, session_manager, unique_realm
from routed_kinds import SHAPE, TIFF, send, tiff_indices, tiff_visible

pytestmark = pytest.mark.timeout(120)

STACK = TIFF.arguments["save_template"]
rig, indices, visible = TIFF.rig, tiff_indices, tiff_visible


# ------------------------------------------------------------------------------------------ one file per frame
def test_frames_as_tiff_files_read_back_bit_identical(make_rig: RigFactory, tmp_path: Path) -> None:
    made = make_rig("{{ file_path }}/{{ source_name }}/{{ '%04d' % frame }}.tif", archiver_cls=TiffArchiver)
    send(made.camera, range(10))
    send(made.camera, range(10, 12), shape=(3, 5, 7))  # any shape is one file (tifffile keeps the shape)
    total = wait_for_items(made.archiver, 12)
    assert total["archived"] == 12 and total["dead_lettered"] == 0, total
    for index in range(12):
        path = tmp_path / "cam" / f"{index:04d}.tif"
        back = tifffile.imread(path)
        expected = procs.frame(index, SHAPE if index < 10 else (3, 5, 7))
        assert back.dtype == expected.dtype and back.shape == expected.shape
        assert back.tobytes() == expected.tobytes()
    with tifffile.TiffFile(tmp_path / "cam" / "0000.tif") as handle:  # a plain grayscale page Fiji opens
        assert handle.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK and handle.pages[0].shape == SHAPE


def test_split_data_array_writes_one_tiff_per_index(make_rig: RigFactory, tmp_path: Path) -> None:
    made = make_rig(
        "{{ file_path }}/{{ frame }}-{{ _split_index }}.tif", archiver_cls=TiffArchiver, split_data_array=True
    )
    send(made.camera, [7], shape=(3, 4, 5))
    assert wait_for_items(made.archiver, 1)["archived"] == 1
    sent = procs.frame(7, (3, 4, 5))
    for index in range(3):
        back = tifffile.imread(tmp_path / f"7-{index}.tif")
        assert back.shape == (4, 5) and back.tobytes() == sent[index].tobytes()


def test_dead_letters_of_tiff_files_replay_as_tiff_files_and_those_of_a_stack_into_a_stack(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    files = make_rig("{{ file_path }}/files/{{ run }}/{{ frame }}.tif", archiver_cls=TiffArchiver)  # no "run" sent
    send(files.camera, [0, 1])
    wait_for_items(files.archiver, 2)
    files.archiver._teardown()
    dead_letters = tmp_path / "files" / ".heros-archiver" / "dead-letter"
    outcomes = replay(dead_letters, template="{{ file_path }}/files/fixed/{{ frame }}.tif")
    assert [o.ok for o in outcomes] == [True, True], outcomes
    for index in (0, 1):
        back = tifffile.imread(tmp_path / "files" / "fixed" / f"{index}.tif")
        assert back.tobytes() == procs.frame(index, SHAPE).tobytes()

    stacked = rig(make_rig, save_template="{{ file_path }}/stack/run.tif")
    send(stacked.camera, [0])
    send(stacked.camera, [1], shape=(4, 4))  # another shape: dead-lettered
    wait_for_items(stacked.archiver, 2)
    stacked.archiver._teardown()
    store = tmp_path / "stack" / ".heros-archiver" / "dead-letter"
    [outcome] = replay(store)  # into its stack again: the same mismatch, never a file of its own
    assert not outcome.ok and "(4, 4)" in outcome.error, outcome
    assert len(list(store.iterdir())) == 1 and indices(tmp_path / "stack" / "run.tif") == [0]
    [fixed] = replay(store, template="{{ file_path }}/stack/small.tif")
    assert fixed.ok and fixed.paths == [tmp_path / "stack" / "small.tif"], fixed
    assert indices(tmp_path / "stack" / "small.tif") == [1] and not list(store.iterdir())


def test_stack_only_arguments_without_stack_and_a_files_policy_with_it_are_refused() -> None:
    manager = session_manager(connect_port=free_port())
    common = {"object_selector": "cam", "event_name": "acquisition_data", "realm": unique_realm()}
    try:
        with pytest.raises(ConfigurationError, match="max_frames: expected only with stack=True"):
            TiffArchiver("/tmp/x/{{ frame }}.tif", max_frames=3, session_manager=manager, **common)
        with pytest.raises(ConfigurationError, match="on_exists"):
            TiffArchiver("/tmp/x/run.tif", stack=True, on_exists="overwrite", session_manager=manager, **common)
        with pytest.raises(ConfigurationError, match="split_data_array"):
            TiffArchiver("/tmp/x/run.tif", stack=True, split_data_array=True, session_manager=manager, **common)
    finally:
        manager.force_close()


# ------------------------------------------------------------------------------------------ stacks
def test_a_run_is_one_imagej_hyperstack_bit_identical_with_its_metadata(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig)
    send(made.camera, range(50), run=7, exposure=0.25)
    total = wait_for_items(made.archiver, 50)
    assert total["archived"] == 50 and total["dead_lettered"] == 0
    path = tmp_path / "run-7.tif"
    with tifffile.TiffFile(path) as handle:
        assert handle.is_imagej and handle.is_bigtiff
        assert handle.imagej_metadata["images"] == 50 and handle.imagej_metadata["hyperstack"] is True
        series = handle.series[0]
        assert series.shape == (50, *SHAPE) and series.axes == "TYX" and series.dtype == np.uint16
        data = series.asarray()
    assert data.tobytes() == np.stack([procs.frame(i, SHAPE) for i in range(50)]).tobytes()
    records = read_records(path)
    assert [r["metadata"]["frame"] for r in records] == list(range(50))
    assert all(r["metadata"]["exposure"] == 0.25 and r["source"] == "cam" for r in records)


def test_a_frame_that_is_not_a_page_is_dead_lettered_and_the_rest_are_written(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """Another shape is refused as by every routed archiver (test_routed_archivers); a 3-D frame is no page."""
    made = rig(make_rig, flush_frames=4)
    send(made.camera, range(3), run=1)
    send(made.camera, [3], shape=(2, 8, 8), run=1)
    send(made.camera, range(4, 6), run=1)
    total = wait_for_items(made.archiver, 6)
    assert total["archived"] == 5 and total["dead_lettered"] == 1
    assert indices(tmp_path / "run-1.tif") == [0, 1, 2, 4, 5]
    [error] = [read_entry(entry)["error"] for entry in dead_letter_entries(tmp_path)]
    assert "(2, 8, 8)" in error and "2-D" in error, error


def test_a_new_rendered_path_starts_a_new_stack_and_max_frames_rolls_over(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, flush_frames=2, max_frames=4)
    send(made.camera, range(6), run=1)
    send(made.camera, range(6, 9), run=2)
    send(made.camera, range(9, 14), run=1)
    wait_for_items(made.archiver, 14)
    made.archiver._teardown()
    assert indices(tmp_path / "run-1.tif") == [0, 1, 2, 3]
    assert indices(tmp_path / "run-1-1.tif") == [4, 5, 9, 10]
    assert indices(tmp_path / "run-1-2.tif") == [11, 12, 13]
    assert indices(tmp_path / "run-2.tif") == [6, 7, 8]
    for part in ("run-1.tif", "run-1-1.tif", "run-1-2.tif", "run-2.tif"):
        with tifffile.TiffFile(tmp_path / part) as handle:
            assert handle.is_imagej and handle.imagej_metadata["images"] == len(handle.pages)


def test_an_existing_file_is_kept_under_error_and_unique_writes_beside_it(make_rig: RigFactory, tmp_path: Path) -> None:
    (tmp_path / "run-1.tif").write_bytes(b"not yours")
    made = rig(make_rig)
    send(made.camera, range(2), run=1)
    assert wait_for_items(made.archiver, 2)["dead_lettered"] == 2
    beside = rig(make_rig, on_exists="unique")
    send(beside.camera, range(3), run=1)
    wait_for_items(beside.archiver, 3)
    beside.archiver._teardown()
    assert (tmp_path / "run-1.tif").read_bytes() == b"not yours"
    assert indices(tmp_path / "run-1-1.tif") == [0, 1, 2]


def test_a_stack_path_leaving_the_root_or_reaching_the_state_directory_is_dead_lettered(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    made = rig(make_rig, save_template="{{ file_path }}/{{ name }}.tif", default_metadata={"file_path": str(root)})
    send(made.camera, [0], name="../outside")
    send(made.camera, [1], name=".heros-archiver/spool/x")
    send(made.camera, [2], name="run")
    total = wait_for_items(made.archiver, 3)
    assert total["archived"] == 1 and total["dead_lettered"] == 2, total
    made.archiver._teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"]
    assert indices(root / "run.tif") == [2]
    errors = [read_entry(entry)["error"] for entry in dead_letter_entries(root)]
    assert any("outside" in e for e in errors) and any("reserved" in e for e in errors), errors


CHILD = Path(__file__).with_name("tiff_child.py")


def test_a_reader_in_another_process_sees_whole_commits_during_the_run(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, flush_frames=5, flush_seconds=3600)
    path = tmp_path / "run-1.tif"
    env = procs.child_env(0)
    with procs.child([sys.executable, str(CHILD), "watch", str(path), "20"], tmp_path / "watch.log", env) as reader:
        send(made.camera, range(10), run=1)
        wait_until(lambda: "@@ SEEN 10" in reader.output(), 60, "the reader to see 10 frames")
        # the archiver still runs, the file is open; it counts a commit just after the reader can see it
        wait_until(lambda: made.archiver.stats()["total"]["archived"] == 10, what="the ten committed frames counted")
        send(made.camera, range(10, 22), run=1)  # 20 committed now, 2 pending
        reader.proc.wait(60)
        output = reader.output()
    seen = [int(n) for n in re.findall(r"@@ SEEN (\d+)", output)]
    assert seen == sorted(seen) and all(n % 5 == 0 for n in seen), output  # whole commits, never less
    assert "@@ BAD" not in output, output
    expected = np.stack([procs.frame(i, SHAPE) for i in range(20)])
    assert f"@@ FRAMES {','.join(map(str, range(20)))}" in output, output
    assert f"@@ SHA {hashlib.sha256(expected.tobytes()).hexdigest()}" in output, output


def test_sigkill_of_run_mid_stack_keeps_committed_frames_and_a_restart_writes_each_frame_once(tmp_path: Path) -> None:
    """``heros-archiver run`` (a BOSS-style config) is SIGKILLed with frames pending; the stack opens in
    tifffile with every committed page; a restart with ``on_exists="append"`` gets the whole run again from
    the camera and writes only the missing frames: each frame exactly once, the ImageJ count right."""
    archive = tmp_path / "archive"
    path = archive / "run.tif"
    port, realm = free_port(), unique_realm()
    arguments = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(archive)},
        "save_template": "{{ file_path }}/run.tif",
        "stack": True,
        "on_exists": "append",
        "sequence_key": "frame",
        "flush_frames": 8,
        "flush_seconds": 3600,
    }
    config = procs.write_config(tmp_path / "config.json", arguments, classname="heros_archiver.TiffArchiver")
    with procs.camera(port, realm) as cam:
        with procs.run_archiver(config, realm, port, tmp_path / "run-1.log") as proc:
            procs.wait_for_archiver(cam, proc)
            send(cam, range(20))  # 16 committed, 4 pending
            wait_until(lambda: visible(path) == 16, 60, "two commits")
            proc.kill()
        with tifffile.TiffFile(path) as handle:  # the crashed stack opens as it is
            assert handle.is_imagej and handle.series[0].shape == (16, *SHAPE)
            assert (
                handle.series[0].asarray().tobytes() == np.stack([procs.frame(i, SHAPE) for i in range(16)]).tobytes()
            )

        with procs.run_archiver(config, realm, port, tmp_path / "run-2.log") as proc:
            procs.wait_for_archiver(cam, proc)
            send(cam, range(30))  # the camera sends the whole run again
            wait_until(lambda: visible(path) == 24, 60, "a commit of new frames")
            code, output = proc.terminate()
        assert code == 0, output
        total = procs.parse_stats_table(output)
        assert total["received"] == 30 and total["archived"] == 30 and total["dead_lettered"] == 0, output
    with tifffile.TiffFile(path) as handle:
        assert handle.is_imagej and handle.imagej_metadata["images"] == 30
        assert handle.series[0].shape == (30, *SHAPE)
        assert handle.series[0].asarray().tobytes() == np.stack([procs.frame(i, SHAPE) for i in range(30)]).tobytes()
    assert [r["sequence"] for r in read_records(path)] == list(range(30))


def test_a_commit_that_fails_on_a_full_disk_is_retried_in_the_same_stack_once_there_is_space(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """The disk fills mid-run: commits fail (the file keeps its committed pages; what the failed commit
    wrote is cut off at the reopen), space is freed during the retries: every frame is archived exactly once,
    in order, in the one stack."""
    shape = (64, 128)  # 16 KiB
    data = tmp_path / "data"
    with tiny_file_system(data, "4m"):
        filler = data / "filler"
        filler.write_bytes(b"\0" * (4 * 2**20 - 1600 * 2**10))
        made = rig(
            make_rig, save_template="{{ file_path }}/data/run.tif", root=str(tmp_path), flush_frames=4,
            max_retries=1000, retry_delay=0.02, retry_max_delay=0.05,
        )  # fmt: skip
        send(made.camera, range(120), shape=shape)
        wait_until(lambda: made.archiver.stats()["total"]["retried"] > 0, what="a failed commit")
        filler.unlink()
        total = wait_for_items(made.archiver, 120)
        made.archiver._teardown()
        assert total["archived"] == 120 and total["dead_lettered"] == 0, total
        assert sorted(p.name for p in data.iterdir()) == ["run.tif"]
        with tifffile.TiffFile(data / "run.tif") as handle:
            assert handle.is_imagej and handle.series[0].shape == (120, *shape)
            stack = handle.series[0].asarray()
        assert stack.tobytes() == np.stack([procs.frame(i, shape) for i in range(120)]).tobytes()
