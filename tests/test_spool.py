"""overflow="spill": what the queue has no room for goes to the on-disk spool and is archived from there, in order."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import RigFactory
from fixtures_pkg.slow import SlowArrayArchiver
from procs import check_frame_file, entries, npy_files, send_frames, settled, wait_until

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
