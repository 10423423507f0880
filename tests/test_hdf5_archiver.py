"""Hdf5Archiver over real Zenoh: frames into one file, commit points, mismatches, rollover, SWMR, SIGKILL.

Cameras and archivers talk over loopback Zenoh (conftest ``make_rig``, tests/procs.py for children); the
files are read back with h5py. Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import procs
from conftest import RigFactory
from helpers import dead_letter_entries, read_entry, tiny_file_system, wait_for_items, wait_until
from heros_archiver import Hdf5Archiver
from heros_archiver.cli.config import build_archivers, load_config
from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.hdf5 import Hdf5Container
from heros_archiver.state.spool import Spool
from heros_archiver.testing import free_port, loopback_config_json, unique_realm, wait_for_subscriber
from routed_kinds import HDF5, MEMBER, SHAPE, hdf5_indices, hdf5_stack, hdf5_visible, send

pytestmark = pytest.mark.timeout(120)

FILE = HDF5.arguments["file_template"]
DATASET = MEMBER
rig, indices, stack, visible = HDF5.rig, hdf5_indices, hdf5_stack, hdf5_visible


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


def test_flush_seconds_commits_while_no_frame_arrives(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, flush_frames=1000, flush_seconds=0.2)
    send(made.camera, range(3), run=1)
    wait_for_items(made.archiver, 3)
    assert indices(tmp_path / "run-1.h5") == [0, 1, 2]


def test_the_end_of_a_burst_is_committed_once_no_frame_arrives(make_rig: RigFactory, tmp_path: Path) -> None:
    """Neither flush_frames nor flush_seconds is reached: the idle commit (flush_idle, default 0.05 s) makes
    the burst archived and visible while the archiver runs, not at the drain."""
    made = rig(make_rig, flush_frames=1000, flush_seconds=3600)
    send(made.camera, range(3), run=1)
    total = wait_for_items(made.archiver, 3, timeout=30)
    assert total["archived"] == 3
    assert visible(tmp_path / "run-1.h5") == 3


def test_pending_frames_count_against_the_queue_bounds(make_rig: RigFactory, tmp_path: Path) -> None:
    """Frames appended and waiting for their commit are held in memory: the queue counts them (stats and
    bounds) until the commit, so what the archiver holds stays within max_queue_bytes."""
    made = rig(make_rig, flush_frames=1000, flush_seconds=3600, flush_idle=None)
    send(made.camera, range(5), run=1)
    wait_until(lambda: made.archiver.stats()["queue"]["items"] == 5, what="five frames held for their commit")
    queue = made.archiver.stats()["queue"]
    assert queue["bytes"] >= 5 * SHAPE[0] * SHAPE[1] * 2, queue
    assert made.archiver.stats()["total"]["archived"] == 0
    made.archiver._teardown()
    assert made.archiver.stats()["queue"]["items"] == 0
    assert indices(tmp_path / "run-1.h5") == list(range(5))


def test_equal_frames_without_a_sequence_value_are_two_frames(make_rig: RigFactory, tmp_path: Path) -> None:
    """Two frames with the same pixels and metadata and no sequence value are two items (told apart by their
    receive times), not one item arriving twice."""
    made = rig(make_rig, sequence_key=None)
    send(made.camera, [5, 5, 5], run=1)
    total = wait_for_items(made.archiver, 3)
    assert total["archived"] == 3
    made.archiver._teardown()
    assert indices(tmp_path / "run-1.h5") == [5, 5, 5]
    with h5py.File(tmp_path / "run-1.h5", "r") as handle:
        received = handle["cam/archive/received"][()]
    assert len(set(received.tolist())) == 3 and list(received) == sorted(received)


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


# ------------------------------------------------------------------------------------------ other processes
CHILD = Path(__file__).with_name("hdf5_child.py")


def watcher(path: Path, stop: int, log: Path) -> procs.Child:
    """A SWMR reader of ``path`` in another process (tests/hdf5_child.py watch); the caller kills it."""
    env = procs.child_env(0)
    return procs.Child([sys.executable, str(CHILD), "watch", str(path), DATASET, str(stop)], log, env)


def test_a_swmr_reader_in_another_process_sees_committed_frames_during_the_run(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    made = rig(make_rig, flush_frames=5, flush_seconds=3600, flush_idle=None)  # commits of 5 frames, no others
    path = tmp_path / "run-1.h5"
    reader = watcher(path, 20, tmp_path / "watch.log")
    try:
        send(made.camera, range(10), run=1)
        wait_until(lambda: "@@ SEEN 10" in reader.output(), 60, "the reader to see 10 frames")
        assert made.archiver.stats()["total"]["archived"] == 10  # the archiver still runs, the file is open
        send(made.camera, range(10, 22), run=1)  # 20 committed now, 2 pending
        reader.proc.wait(60)
        output = reader.output()
    finally:
        reader.kill()
    seen = [int(n) for n in re.findall(r"@@ SEEN (\d+)", output)]
    assert seen == sorted(seen) and all(n % 5 == 0 for n in seen), output  # whole commits, never less
    expected = np.stack([procs.frame(i, SHAPE) for i in range(20)])
    assert f"@@ FRAMES {','.join(map(str, range(20)))}" in output, output
    assert f"@@ SHA {hashlib.sha256(expected.tobytes()).hexdigest()}" in output, output


def test_sigkill_mid_run_keeps_committed_frames_and_a_restart_adds_no_duplicates(tmp_path: Path) -> None:
    """The archiver (``heros-archiver run``, a BOSS-style config) is SIGKILLed with frames pending; the file
    opens in h5py with every committed frame intact; a restart with ``on_exists="append"`` gets every frame
    again from the camera and writes only the missing ones: each frame exactly once in the end."""
    archive = tmp_path / "archive"
    path = archive / "run.h5"
    port, realm = free_port(), unique_realm()
    arguments = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(archive)},
        "file_template": "{{ file_path }}/run.h5",
        "dataset_template": DATASET,
        "on_exists": "append",
        "sequence_key": "frame",
        "flush_frames": 8,
        "flush_seconds": 3600,
        "flush_idle": None,  # the 4 frames after the second commit stay pending until the kill
    }
    config = procs.write_config(tmp_path / "config.json", arguments, classname="heros_archiver.Hdf5Archiver")
    with procs.camera(port, realm) as cam:
        with procs.run_archiver(config, realm, port, tmp_path / "run-1.log") as proc:
            procs.wait_for_archiver(cam, proc)
            send(cam, range(20))  # 16 committed, 4 pending
            wait_until(lambda: visible(path) == 16, 60, "two commits")
            proc.kill()
        frames, metadata = stack(path)  # a SWMR read opens the crashed file as it is
        assert [int(f.flat[0]) for f in frames] == list(range(16))
        for index in range(16):
            np.testing.assert_array_equal(frames[index], procs.frame(index, SHAPE))
            assert metadata[index]["frame"] == index
        with pytest.raises(OSError, match="already open for write"):
            h5py.File(path, "r")  # the mark a killed writer leaves; the restart clears it

        with procs.run_archiver(config, realm, port, tmp_path / "run-2.log") as proc:
            procs.wait_for_archiver(cam, proc)
            send(cam, range(30))  # the camera sends the whole run again
            wait_until(lambda: visible(path) == 24, 60, "a commit of new frames")
            code, output = proc.terminate()
        assert code == 0, output
        total = procs.parse_stats_table(output)
        assert total["received"] == 30 and total["archived"] == 30 and total["dead_lettered"] == 0, output
    with h5py.File(path, "r") as handle:  # closed cleanly: any reader opens it
        assert [int(f.flat[0]) for f in handle[DATASET][()]] == list(range(30))
        assert handle["cam/archive/committed_length"][0] == 30


def test_a_boss_config_builds_an_hdf5_archiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port, realm = free_port(), unique_realm()
    arguments = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(tmp_path / "archive")},
        "file_template": "{{ file_path }}/{{ source_name }}.h5",
        "compression": "bitshuffle-lz4",
        "flush_seconds": 0.1,
    }
    config = procs.write_config(tmp_path / "config.json", arguments, classname="heros_archiver.Hdf5Archiver")
    with procs.camera(port, realm) as cam:
        monkeypatch.setenv("HEROS_ZENOH_CONFIG", loopback_config_json(connect_port=port))
        [archiver] = build_archivers(load_config(config), realm)
        try:
            assert isinstance(archiver, Hdf5Archiver) and archiver.sink_options.compression == "bitshuffle-lz4"
            wait_for_subscriber(cam)
            send(cam, range(5))
            wait_for_items(archiver, 5)
        finally:
            archiver.close()
    with h5py.File(tmp_path / "archive" / "cam.h5", "r") as handle:
        assert handle["cam/data"].compression is not None or handle["cam/data"]._filters
        assert [int(f.flat[0]) for f in handle["cam/data"][()]] == list(range(5))


def test_resumed_spool_items_already_committed_count_as_archived_and_the_rest_leave_the_spool_at_commit(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """An earlier run left frames 0-9 in its spool and had committed 0-4 (killed before it removed their
    entries). The restart de-duplicates 0-4 by their keys (archived at once, their entries removed) and keeps
    the entries of 5-9 until the commit that makes them archived."""
    spool_dir = tmp_path / ".heros-archiver" / "spool"
    spool = Spool(spool_dir, "acquisition_data")
    items = [
        Item("cam", procs.frame(i, SHAPE), {"file_path": str(tmp_path), "frame": i, "run": 1}, 200) for i in range(10)
    ]
    for item in items:
        spool.put(item)
    with Hdf5Container(tmp_path / "run-1.h5", DATASET) as container:
        for item in items[:5]:
            key = ItemKey.of("cam", item.payload, item.metadata, item.metadata["frame"])
            container.append(key, item.payload, item.metadata)

    made = rig(make_rig, on_exists="append", flush_frames=1000, flush_seconds=3600, flush_idle=None)
    wait_until(lambda: made.archiver.stats()["total"]["archived"] == 5, what="the five committed ones")
    assert len(procs.entries(spool_dir)) == 5  # the other five wait for their commit
    made.archiver._teardown()
    assert made.archiver.stats()["total"]["archived"] == 10 and procs.entries(spool_dir) == []
    assert indices(tmp_path / "run-1.h5") == list(range(10))


def test_a_full_disk_mid_file_leaves_a_readable_file_and_dead_letters_the_rest(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """The file's file system (a 2 MiB tmpfs; the dead-letter store elsewhere) fills during the run: the
    failed commits are retried, then their frames dead-lettered; the file opens in h5py and holds the frames
    committed, intact and in order; every frame is either in the file or in the dead-letter store, once."""
    shape = (64, 128)  # 16 KiB
    data = tmp_path / "data"
    with tiny_file_system(data, "2m"):
        made = rig(
            make_rig, file_template="{{ file_path }}/data/run.h5", root=str(tmp_path), flush_frames=2,
            max_retries=1, retry_delay=0.01, retry_max_delay=0.02,
        )  # fmt: skip
        send(made.camera, range(160), shape=shape)
        wait_for_items(made.archiver, 160)
        made.archiver._teardown()
        total = made.archiver.stats()["total"]
        with h5py.File(data / "run.h5", "r", libver="latest", swmr=True) as handle:  # opens as it was left
            committed = int(handle["cam/archive/committed_length"][0])
            frames = handle[DATASET][:committed]  # rows beyond the marker: the commit that failed
        kept = [int(f.flat[0]) for f in frames]
        # in arrival order, each once; not always a prefix: after the disk filled, a last commit smaller than
        # the failed ones (the odd frame at the drain) may still fit (CI: frames 0-81 and 159)
        assert 0 < committed < 160 and kept[0] == 0 and kept == sorted(set(kept)), kept
        for frame, index in zip(frames, kept, strict=True):
            np.testing.assert_array_equal(frame, procs.frame(index, shape))
        assert total["archived"] == committed and total["dead_lettered"] == 160 - committed, total
        dead = sorted(read_entry(e)["metadata"]["frame"] for e in dead_letter_entries(tmp_path))
        assert dead == sorted(set(range(160)) - set(kept)), "every frame in the file or dead-lettered, once"
        errors = {read_entry(e)["error"] for e in dead_letter_entries(tmp_path)}
        assert all("No space left on device" in error or "cannot create" in error for error in errors), errors


def test_on_exists_unique_writes_beside_an_existing_file(make_rig: RigFactory, tmp_path: Path) -> None:
    (tmp_path / "run-1.h5").write_bytes(b"not yours")
    made = rig(make_rig, on_exists="unique", max_frames=2)
    send(made.camera, range(5), run=1)
    wait_for_items(made.archiver, 5)
    made.archiver._teardown()
    assert (tmp_path / "run-1.h5").read_bytes() == b"not yours"
    assert [indices(tmp_path / f"run-1-{n}.h5") for n in (1, 2, 3)] == [[0, 1], [2, 3], [4]]


def test_two_sources_into_one_file_get_a_stack_each(make_rig: RigFactory, tmp_path: Path) -> None:
    """One file per run, one stack per camera: interleaved frames switch the open stack (close, reopen)."""
    made = make_rig(
        None, archiver_cls=Hdf5Archiver, cameras=("cam-1", "cam-2"), object_selector="cam-$*",
        file_template="{{ file_path }}/run.h5", dataset_template="{{ source_name }}/data", flush_frames=3,
    )  # fmt: skip
    for index in range(6):
        for camera in made.cameras.values():
            send(camera, [index])
    wait_for_items(made.archiver, 12)
    made.archiver._teardown()
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        for name in ("cam-1", "cam-2"):
            assert [int(f.flat[0]) for f in handle[f"{name}/data"][()]] == list(range(6))
            assert set(handle[f"{name}/archive/source_name"].asstr()[()]) == {name}


def test_a_commit_that_fails_while_the_disk_is_full_is_retried_and_succeeds_once_there_is_space(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """The disk fills (a filler file leaves ~1.6 MiB of a 4 MiB tmpfs), commits fail, space is freed during
    the retries: every frame is archived, exactly once, and the file holds them all in order."""
    shape = (64, 128)
    data = tmp_path / "data"
    with tiny_file_system(data, "4m"):
        filler = data / "filler"
        filler.write_bytes(b"\0" * (4 * 2**20 - 1600 * 2**10))
        made = rig(
            make_rig, file_template="{{ file_path }}/data/run.h5", root=str(tmp_path), flush_frames=2,
            max_retries=1000, retry_delay=0.02, retry_max_delay=0.05,
        )  # fmt: skip
        send(made.camera, range(120), shape=shape)
        wait_until(lambda: made.archiver.stats()["total"]["retried"] > 0, what="a failed commit")
        filler.unlink()
        total = wait_for_items(made.archiver, 120)
        made.archiver._teardown()
        assert total["archived"] == 120 and total["dead_lettered"] == 0, total
        kept = []
        for part in [data / "run.h5", *sorted(data.glob("run-*.h5"))]:
            with h5py.File(part, "r", libver="latest", swmr=True) as handle:
                committed = int(handle["cam/archive/committed_length"][0])
                frames = handle[DATASET][:committed]
            kept += [int(f.flat[0]) for f in frames]
            for frame in frames:
                np.testing.assert_array_equal(frame, procs.frame(int(frame.flat[0]), shape))
        assert kept == list(range(120))


def test_with_two_writers_the_frames_of_one_file_still_have_one_writer(make_rig: RigFactory, tmp_path: Path) -> None:
    """cam-1 and cam-4 fall in different lanes by source (crc32 % 2: 0 and 1); routed by their file they share
    one writer, so neither finds the file locked by the other and both stacks are complete and in order."""
    made = make_rig(
        None, archiver_cls=Hdf5Archiver, cameras=("cam-1", "cam-4"), object_selector="cam-$*", writers=2,
        file_template="{{ file_path }}/run.h5", dataset_template="{{ source_name }}/data", flush_frames=2,
        max_retries=0,
    )  # fmt: skip
    lanes = {made.archiver._pipeline._queue.lane_of(name) for name in made.cameras}
    assert lanes == {0, 1}
    for index in range(6):
        for camera in made.cameras.values():
            send(camera, [index])
    total = wait_for_items(made.archiver, 12)
    made.archiver._teardown()
    assert total["archived"] == 12 and total["dead_lettered"] == 0, total
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        for name in made.cameras:
            assert [int(f.flat[0]) for f in handle[f"{name}/data"][()]] == list(range(6))


def test_a_file_another_writer_holds_is_retried_until_it_is_free(make_rig: RigFactory, tmp_path: Path) -> None:
    """ContainerBusyError (another writer has the file open) is transient: retried with backoff, then written."""
    holder = Hdf5Container(tmp_path / "run-1.h5", DATASET)
    try:
        made = rig(make_rig, on_exists="append", max_retries=1000, retry_delay=0.02, retry_max_delay=0.05)
        send(made.camera, range(3), run=1)
        wait_until(lambda: made.archiver.stats()["total"]["retried"] > 0, what="the file found busy")
        assert made.archiver.stats()["total"]["archived"] == 0
    finally:
        holder.close()
    total = wait_for_items(made.archiver, 3)
    assert total["archived"] == 3 and total["dead_lettered"] == 0, total
    made.archiver._teardown()
    assert indices(tmp_path / "run-1.h5") == [0, 1, 2]


def test_a_spooled_item_whose_file_template_cannot_render_is_dead_lettered_and_leaves_the_spool(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    spool_dir = tmp_path / ".heros-archiver" / "spool"
    spool = Spool(spool_dir, "acquisition_data")
    spool.put(Item("cam", procs.frame(0, SHAPE), {"file_path": str(tmp_path), "frame": 0}, 200))  # no "run"
    spool.put(Item("cam", procs.frame(1, SHAPE), {"file_path": str(tmp_path), "frame": 1, "run": 1}, 200))
    made = rig(make_rig)
    total = wait_for_items(made.archiver, 2)
    assert total["archived"] == 1 and total["dead_lettered"] == 1, total
    assert procs.entries(spool_dir) == []
    assert "run" in read_entry(dead_letter_entries(tmp_path)[0])["error"]
    made.archiver._teardown()
    assert indices(tmp_path / "run-1.h5") == [1]
