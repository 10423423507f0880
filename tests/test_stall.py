"""A storage stall longer than Zenoh lets a sender wait loses nothing under the default ``overflow="block"``.

A reliable sender whose messages cannot leave waits at most ``congestion_control/block/wait_before_close``
(5 s by default), then Zenoh closes the link and the waiting messages are lost, silently on both sides
(measured with benchmarks/shm_stall.py). So a full queue holds Zenoh's receive thread for at most
``block_limit`` seconds; after that, items go to the on-disk spool until the queue has room again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import RigFactory
from fixtures_pkg.slow import SlowArrayArchiver
from helpers import assert_refused_before_zenoh
from procs import check_frame_file, npy_files, send_frames, settled, wait_until

pytestmark = pytest.mark.timeout(90)

SHAPE = (1024, 1024)  # 2 MiB frames: enough to fill the link's buffers, so that the sender has to wait
COUNT = 24
STALL = 7.0  # seconds: longer than Zenoh's 5 s wait_before_close


def test_a_storage_stall_longer_than_zenoh_waits_loses_no_frame(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(archiver_cls=SlowArrayArchiver, store_delay=0.0, first_store_delay=STALL, max_queue_items=2)
    archiver: Any = rig.archiver
    send_frames(rig.camera, list(range(COUNT)), SHAPE)
    wait_until(lambda: settled(archiver.stats()) >= COUNT, timeout=60, what="every frame settled")
    stats = archiver.stats()
    assert stats["total"]["archived"] == COUNT, stats["total"]
    assert sorted(check_frame_file(path, SHAPE) for path in npy_files(tmp_path)) == list(range(COUNT))
    assert stats["queue"]["spilled_total"] > 0, "the stall must have sent frames through the spool"


@pytest.mark.parametrize("bad", [-1, "2", True, [2]])
def test_block_limit_is_checked(tmp_path: Path, bad: object) -> None:
    expected = "block_limit: expected None or a non-negative number of seconds"
    assert_refused_before_zenoh(tmp_path, expected, block_limit=bad)
