"""overflow="spill": what the queue has no room for goes to the on-disk spool and is archived from there, in order."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import RigFactory
from fixtures_pkg.slow import SlowArrayArchiver
from heros_archiver.pipeline.queueing import Item
from heros_archiver.state.spool import Damaged, Spool
from procs import check_frame_file, entries, frame, npy_files, send_frames, settled, wait_until
from test_deadletter import DAMAGE, _damage

pytestmark = pytest.mark.timeout(60)

SHAPE = (8, 16)
COUNT = 40


def test_spilled_frames_are_archived_in_arrival_order(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(archiver_cls=SlowArrayArchiver, store_delay=0.03, overflow="spill", max_queue_items=2)
    archiver: Any = rig.archiver
    peak_spooled = 0
    watching = threading.Event()

    def watch() -> None:
        nonlocal peak_spooled
        while not watching.is_set():
            peak_spooled = max(peak_spooled, archiver.stats()["queue"]["spooled"])
            watching.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        send_frames(rig.camera, list(range(COUNT)), SHAPE)
        wait_until(lambda: settled(archiver.stats()) >= COUNT, what="every frame settled")
    finally:
        watching.set()
        watcher.join(10)

    stats = archiver.stats()
    assert peak_spooled > 0, "the queue of 2 items never overflowed into the spool"
    assert stats["total"]["received"] == stats["total"]["archived"] == COUNT, stats["total"]
    assert stats["total"]["dead_lettered"] == 0 and stats["total"]["dropped"] == 0, stats["total"]
    assert stats["queue"]["spooled"] == 0 and stats["queue"]["items"] == 0, stats["queue"]
    assert archiver.store_calls == [("cam", i) for i in range(COUNT)]  # written in arrival order
    assert [check_frame_file(p, SHAPE) for p in npy_files(tmp_path)] == list(range(COUNT))
    assert entries(Path(stats["spool_dir"])) == []


def _spool_frames(directory: Path, count: int) -> list[Path]:
    """Entries as an earlier run that stopped with a backlog left them: frames 0..count-1 from ``cam``."""
    spool = Spool(directory, "acquisition_data")
    for index in range(count):
        spool.put(Item("cam", frame(index, SHAPE), {"file_path": str(directory.parents[1]), "frame": index}, 200))
    return spool.pending()


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_entry_is_moved_aside_and_the_ones_after_it_are_read(tmp_path: Path, how: str) -> None:
    directory = tmp_path / ".heros-archiver" / "spool"
    first, damaged, last = _spool_frames(directory, 3)
    _damage(damaged, how)
    spool = Spool(directory, "acquisition_data")  # the next start

    taken = [spool.take(timeout=1) for _ in range(3)]

    assert isinstance(taken[0], Item) and taken[0].spool_entry == first
    assert isinstance(taken[2], Item) and taken[2].spool_entry == last and taken[2].metadata["frame"] == 2
    moved = taken[1]
    assert isinstance(moved, Damaged) and moved.entry == damaged and moved.source is None, moved
    assert moved.moved_to == spool.quarantine / damaged.name and not damaged.exists()
    assert "ReplayError" in (moved.moved_to / "error.txt").read_text()
    for item in (taken[0], taken[2]):
        assert isinstance(item, Item)
        spool.done(item)
    assert Spool(directory, "acquisition_data").pending() == []  # not tried again at the next start


@pytest.mark.parametrize("how", ["missing-field", "list-as-entry"])
def test_a_damaged_oldest_entry_stops_nothing_at_start(make_rig: RigFactory, tmp_path: Path, how: str) -> None:
    """Item 13: the damaged entry was the oldest, so it came first at every start and killed the spool reader."""
    spool = tmp_path / ".heros-archiver" / "spool"
    oldest, *_ = _spool_frames(spool, 3)
    _damage(oldest, how)

    rig = make_rig(overflow="spill")
    wait_until(lambda: len(npy_files(tmp_path)) == 2, what="the two readable spooled frames archived")
    send_frames(rig.camera, [3], SHAPE)  # and what arrives afterwards too
    wait_until(lambda: len(npy_files(tmp_path)) == 3, what="a new frame archived")

    stats = rig.archiver.stats()
    assert [check_frame_file(p, SHAPE) for p in npy_files(tmp_path)] == [1, 2, 3]
    assert stats["queue"]["quarantined"] == 1 and stats["queue"]["spooled"] == 0, stats["queue"]
    assert entries(spool) == [spool / "quarantine"] and (spool / "quarantine" / oldest.name / "error.txt").is_file()
    wait_until(rig.archiver.is_queue_drained, what="the queue drained")
    rig.archiver._teardown()

    again = make_rig(overflow="spill")  # moved aside: not read (nor counted) again at the next start
    assert again.archiver.stats()["queue"]["quarantined"] == 0 and again.archiver.stats()["queue"]["spooled"] == 0


def test_an_entry_damaged_while_it_waits_is_counted_and_leaves_nothing_in_flight(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """Item 4: an entry of this run that cannot be read back ends counted as quarantined, not in flight."""
    rig = make_rig(
        archiver_cls=SlowArrayArchiver, store_delay=1.0, first_store_delay=1.0, overflow="spill", max_queue_items=1
    )
    archiver: Any = rig.archiver
    for index in range(4):  # one being written, one queued, two in the spool (one of them maybe read already)
        archiver.feed("cam", (frame(index, SHAPE), {"frame": index}))
    pending = archiver._pipeline.spool.pending()
    assert pending, "the spool should hold the last frame"
    _damage(pending[-1], "empty-copy")  # the newest: read back only once the first frame is written (1 s)

    wait_until(lambda: settled(archiver.stats()) + archiver.stats()["total"]["quarantined"] >= 4, what="all settled")
    wait_until(archiver.is_queue_drained, what="nothing in flight")
    total = archiver.stats()["total"]
    assert total["archived"] == 3 and total["quarantined"] == 1 and total["in_flight"] == 0, total
    assert archiver.stats()["sources"]["cam"]["quarantined"] == 1
    assert [check_frame_file(p, SHAPE) for p in npy_files(tmp_path)] == [0, 1, 2]
