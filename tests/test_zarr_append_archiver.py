"""ZarrAppendArchiver over real Zenoh: frames appended to one sharded Zarr array, commit points, a reader
in another process, SIGKILL mid-shard and a restart, on_exists, mismatched frames.

Cameras and archivers talk over loopback Zenoh (conftest ``make_rig``, tests/procs.py for children); the
stores are read back with zarr. Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

import procs
from conftest import RigFactory
from helpers import wait_for_items, wait_until
from heros_archiver import ZarrAppendArchiver
from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks.base import ContainerSink, Settled
from heros_archiver.sinks.containers.zarr_append import read_archive_row, read_metadata
from heros_archiver.sinks.zarr_append import ZarrAppendSink
from heros_archiver.state.statedir import RECORDS_SUBDIR
from heros_archiver.storage.temporaries import TMP_PREFIX
from heros_archiver.testing import free_port, unique_realm
from routed_kinds import MEMBER, SHAPE, ZARR, send, zarr_indices, zarr_visible

pytestmark = pytest.mark.timeout(120)

STORE = ZARR.arguments["store_template"]
STORE2 = "{{ file_path }}/other-{{ run }}.zarr"
ARRAY = MEMBER
rig, indices, visible = ZARR.rig, zarr_indices, zarr_visible


def test_a_run_of_frames_is_one_array_bit_identical_with_its_metadata(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, frames_per_shard=8)
    send(made.camera, range(50), run=7, exposure=0.25)
    total = wait_for_items(made.archiver, 50)
    assert total["archived"] == 50 and total["dead_lettered"] == 0
    store = tmp_path / "run-7.zarr"
    frames = zarr.open_array(store, path=ARRAY, mode="r")
    assert frames.shape == (50, *SHAPE) and frames.dtype == np.uint16
    assert frames.shards == (8, *SHAPE) and frames.chunks == (1, *SHAPE)
    group = zarr.open_group(store, mode="r")["cam"]
    data = frames[...]
    for index in range(50):
        np.testing.assert_array_equal(data[index], procs.frame(index, SHAPE))
        metadata = read_metadata(group, index)
        assert metadata["frame"] == index and metadata["exposure"] == 0.25
        assert metadata["run"] == 7 and metadata["file_path"] == str(tmp_path)
        assert read_archive_row(group, index)["sequence"] == index
    assert list(group["archive/source_name"][...]) == ["cam"] * 50
    assert list(group["metadata/frame"][...]) == list(range(50))
    assert sorted(p.name for p in (store / "cam" / "data").iterdir()) == [f"c.{n}.0.0" for n in range(7)] + [
        "zarr.json"
    ]  # 50 frames in 7 shard objects of 8 frames


def test_an_existing_store_is_kept_under_on_exists_error(make_rig: RigFactory, tmp_path: Path) -> None:
    existing = tmp_path / "run-1.zarr"
    existing.mkdir()
    (existing / "zarr.json").write_text("not yours")
    made = rig(make_rig)
    send(made.camera, range(2), run=1)
    total = wait_for_items(made.archiver, 2)
    assert total["dead_lettered"] == 2 and total["archived"] == 0
    assert [p.name for p in existing.iterdir()] == ["zarr.json"]
    assert (existing / "zarr.json").read_text() == "not yours"


def test_on_exists_unique_writes_beside_an_existing_store_and_max_frames_rolls_over(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    (tmp_path / "run-1.zarr").mkdir()
    made = rig(make_rig, on_exists="unique", max_frames=2)
    send(made.camera, range(5), run=1)
    wait_for_items(made.archiver, 5)
    made.archiver._teardown()
    assert list((tmp_path / "run-1.zarr").iterdir()) == []
    assert [indices(tmp_path / f"run-1-{n}.zarr") for n in (1, 2, 3)] == [[0, 1], [2, 3], [4]]


def test_on_exists_append_continues_a_store_of_an_earlier_run(make_rig: RigFactory, tmp_path: Path) -> None:
    first = rig(make_rig, on_exists="append")
    send(first.camera, range(5), run=1)
    wait_for_items(first.archiver, 5)
    first.archiver._teardown()
    again = rig(make_rig, on_exists="append", frames_per_shard=4)  # the store keeps its own shard size
    send(again.camera, range(3, 9), run=1)  # 3 and 4 are already there: not written twice
    wait_for_items(again.archiver, 6)
    again.archiver._teardown()
    assert indices(tmp_path / "run-1.zarr") == list(range(9))


def test_two_sources_into_one_store_get_an_array_each(make_rig: RigFactory, tmp_path: Path) -> None:
    made = make_rig(
        None, archiver_cls=ZarrAppendArchiver, cameras=("cam-1", "cam-2"), object_selector="cam-$*", writers=2,
        store_template="{{ file_path }}/run.zarr", flush_frames=3,
    )  # fmt: skip
    for index in range(6):
        for camera in made.cameras.values():
            send(camera, [index])
    total = wait_for_items(made.archiver, 12)
    made.archiver._teardown()
    assert total["archived"] == 12 and total["dead_lettered"] == 0, total
    group = zarr.open_group(tmp_path / "run.zarr", mode="r")
    for name in ("cam-1", "cam-2"):
        assert [int(f.flat[0]) for f in group[f"{name}/data"][...]] == list(range(6))
        assert set(group[f"{name}/archive/source_name"][...]) == {name}


# ------------------------------------------------------------------------------------------ other processes
CHILD = Path(__file__).with_name("zarr_child.py")


def test_a_reader_in_another_process_sees_a_consistent_growing_array_during_the_run(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """Commits every 5 frames into shards of 8: most commits end inside a shard, which is written whole and
    replaced whole by the next; the reader never sees a torn frame, a changed frame or a failed read."""
    made = rig(make_rig, flush_frames=5, flush_seconds=3600, flush_idle=None, frames_per_shard=8)
    store = tmp_path / "run-1.zarr"
    log = tmp_path / "watch.log"
    with procs.child([sys.executable, str(CHILD), "watch", str(store), ARRAY, "20"], log, procs.child_env(0)) as reader:
        send(made.camera, range(10), run=1)
        wait_until(lambda: "@@ SEEN 10" in reader.output(), 60, "the reader to see 10 frames")
        assert made.archiver.stats()["total"]["archived"] == 10  # the archiver still runs
        send(made.camera, range(10, 22), run=1)  # 20 committed now, 2 pending
        reader.proc.wait(60)
        output = reader.output()
    assert "@@ BAD" not in output, output
    seen = [int(n) for n in re.findall(r"@@ SEEN (\d+)", output)]
    assert seen == sorted(seen) and all(n % 5 == 0 for n in seen), output  # whole commits, never less
    expected = np.stack([procs.frame(i, SHAPE) for i in range(20)])
    assert f"@@ FRAMES {','.join(map(str, range(20)))}" in output, output
    assert f"@@ SHA {hashlib.sha256(expected.tobytes()).hexdigest()}" in output, output


def test_sigkill_mid_shard_keeps_committed_frames_and_a_restart_writes_each_frame_once(tmp_path: Path) -> None:
    """``heros-archiver run`` (a BOSS-style config) commits every 6 frames into shards of 8 and is SIGKILLed
    with frames pending and shard 2 half full: zarr opens the store with exactly the 18 committed frames. A
    junk object where shard 3 goes (a half-written shard beyond the shape) is ignored and replaced, and a
    temporary of the killed run is removed at the restart's start. The restart gets the whole run again from
    the camera and writes only the missing frames: each frame exactly once."""
    archive = tmp_path / "archive"
    store = archive / "run.zarr"
    port, realm = free_port(), unique_realm()
    arguments = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(archive)},
        "store_template": "{{ file_path }}/run.zarr",
        "array_template": ARRAY,
        "on_exists": "append",
        "sequence_key": "frame",
        "flush_frames": 6,
        "flush_seconds": 3600,
        "flush_idle": None,
        "frames_per_shard": 8,
    }
    config = procs.write_config(tmp_path / "config.json", arguments, classname="heros_archiver.ZarrAppendArchiver")
    with procs.camera(port, realm) as cam:
        with procs.run_archiver(config, realm, port, tmp_path / "run-1.log") as proc:
            procs.wait_for_archiver(cam, proc)
            send(cam, range(20))  # 18 committed, 2 pending
            wait_until(lambda: visible(store) >= 18, 60, "three commits")
            proc.kill()
        frames = zarr.open_array(store, path=ARRAY, mode="r")[...]
        assert [int(f.flat[0]) for f in frames] == list(range(18))
        for index in range(18):
            np.testing.assert_array_equal(frames[index], procs.frame(index, SHAPE))
        group = zarr.open_group(store, mode="r")["cam"]
        assert [read_metadata(group, i)["frame"] for i in range(18)] == list(range(18))
        (store / "cam" / "data" / "c.3.0.0").write_bytes(b"\x00half a shard")
        [record] = (archive / RECORDS_SUBDIR).iterdir()  # <pid>.<token> of the killed run, naming its directories
        stray = store / "cam" / "data" / f"{TMP_PREFIX}.{record.name}.0.tmp"
        stray.write_bytes(b"a shard the killed run was writing")  # as its temporary would be left

        with procs.run_archiver(config, realm, port, tmp_path / "run-2.log") as proc:
            procs.wait_for_archiver(cam, proc)
            send(cam, range(30))  # the camera sends the whole run again
            wait_until(lambda: visible(store) >= 24, 60, "a commit of new frames")
            code, output = proc.terminate()
        assert code == 0, output
        total = procs.parse_stats_table(output)
        assert total["received"] == 30 and total["archived"] == 30 and total["dead_lettered"] == 0, output
    frames = zarr.open_array(store, path=ARRAY, mode="r")[...]
    assert [int(f.flat[0]) for f in frames] == list(range(30))
    for index in range(30):
        np.testing.assert_array_equal(frames[index], procs.frame(index, SHAPE))
    group = zarr.open_group(store, mode="r")["cam"]
    assert list(group["metadata/frame"][...]) == list(range(30))
    assert len(set(group["archive/item_key"][...])) == 30
    leftovers = [p for p in store.rglob("*") if p.is_file() and p.name != "zarr.json" and not p.name.startswith("c.")]
    assert leftovers == [], leftovers  # no temporaries of either run: the stray one was removed at the start
    assert "removed 1 stale temporary file" in output, output
    assert json.loads((store / "cam" / "data" / "zarr.json").read_text())["shape"][0] == 30


class _CountingSink(ZarrAppendSink):
    """The real Zarr sink, counting its commits; its first append waits until the test lets it go."""

    release = threading.Event()
    commits = 0

    def append(self, item: Item) -> Settled:
        _CountingSink.release.wait(60)
        return super().append(item)

    def commit(self) -> Settled:
        settled = super().commit()
        _CountingSink.commits += bool(settled.archived)
        return settled

    def close(self) -> Settled:
        settled = super().close()
        _CountingSink.commits += bool(settled.archived)
        return settled


class _CountingArchiver(ZarrAppendArchiver):
    def _container_sink_factory(self) -> Callable[[], ContainerSink]:
        real = super()._container_sink_factory()
        settings = real()._settings  # type: ignore[attr-defined]
        return lambda: _CountingSink(settings, self._array_of)


def test_at_drain_the_queued_frames_are_committed_together_not_one_commit_each(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """A commit rewrites the partial shard, so one commit per drained frame rewrote it once per frame: frames
    queued when the archiver closes are appended first and committed once."""
    _CountingSink.release.clear()
    _CountingSink.commits = 0
    made = make_rig(
        None, archiver_cls=_CountingArchiver, store_template=STORE, array_template=ARRAY,
        sequence_key="frame", flush_frames=1000, flush_seconds=3600,
    )  # fmt: skip
    send(made.camera, range(20), run=1)
    queue = made.archiver._pipeline._queue
    wait_until(lambda: queue.depth()[0] == 20, what="19 frames queued behind the first (which its writer holds)")
    closing = threading.Thread(target=made.archiver.close)
    closing.start()
    wait_until(lambda: queue.closed, what="the queue closed")
    _CountingSink.release.set()
    closing.join(60)
    assert made.archiver.stats()["total"]["archived"] == 20
    assert _CountingSink.commits == 1
    assert indices(tmp_path / "run-1.zarr") == list(range(20))


def test_a_producer_waiting_for_room_gets_whole_shards_so_each_shard_is_written_once(
    make_rig: RigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that ends inside a shard writes it now and again, longer, at the next commit. While a producer
    waits for room (a queue of 8 items, the writer slowed) the writer commits whole shards only, so every shard
    object is written once; every frame is archived once, in order (the last, partial shard at the drain)."""
    from heros_archiver.sinks.containers import zarr_append as container_module

    writes: list[str] = []
    real_write = container_module.ZarrAppendContainer._write

    def counted(self: container_module.ZarrAppendContainer, key: str, content: object) -> None:
        time.sleep(0.005)  # slower than the camera: the queue fills and the producer waits for room
        writes.append(key)
        real_write(self, key, content)  # type: ignore[arg-type]

    monkeypatch.setattr(container_module.ZarrAppendContainer, "_write", counted)
    made = make_rig(
        None, archiver_cls=ZarrAppendArchiver, store_template=STORE, array_template=ARRAY, sequence_key="frame",
        frames_per_shard=4, flush_frames=4, flush_seconds=3600, max_queue_items=8,
    )  # fmt: skip
    send(made.camera, range(42), run=1)
    wait_until(lambda: made.archiver.stats()["total"]["received"] == 42, what="42 frames received")
    made.archiver.close()  # the last two (half a shard) are committed at the drain
    shards = [key for key in writes if re.search(r"/c\.\d+\.", key) and key.startswith(ARRAY)]
    assert sorted(shards) == sorted(set(shards)) and len(shards) == 11, shards
    assert made.archiver.stats()["total"]["archived"] == 42
    assert indices(tmp_path / "run-1.zarr") == list(range(42))


def test_the_end_of_a_burst_is_committed_once_no_frame_arrives(make_rig: RigFactory, tmp_path: Path) -> None:
    """Neither flush_frames nor flush_seconds is reached: the idle commit (flush_idle, default 0.05 s) makes the
    burst archived and visible while the archiver runs, as HDF5's; with flush_idle=None the frames wait."""
    made = rig(make_rig, flush_frames=1000, flush_seconds=3600)
    send(made.camera, range(3), run=1)
    assert wait_for_items(made.archiver, 3, timeout=30)["archived"] == 3
    assert visible(tmp_path / "run-1.zarr") == 3
    waiting = rig(make_rig, flush_frames=1000, flush_seconds=3600, flush_idle=None, store_template=STORE2)
    send(waiting.camera, range(3), run=1)
    wait_until(lambda: waiting.archiver.stats()["total"]["received"] == 3, what="three frames received")
    time.sleep(0.3)
    assert waiting.archiver.stats()["total"]["archived"] == 0
