"""A full disk under the archive and its spool never holds Zenoh's receive thread past ``block_limit``.

The archive root, its spool and its dead-letter store share one small tmpfs (the default layout). Once it
is full the writer cannot write and the spool cannot take what the queue has no room for: items are then
lost, counted and logged, instead of holding the receive thread until Zenoh closes the reliable sender's
link (which loses what waited, silently). Decision 0015.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RigFactory
from helpers import tiny_file_system
from procs import check_frame_file, npy_files, send_frames, settled, wait_until

pytestmark = pytest.mark.timeout(120)

SHAPE = (256, 256)  # 128 KiB of uint16: three fit on the 512 KiB disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (needs root; skips otherwise), unmounted at the end, also on failure."""
    disk = tmp_path / "disk"
    with tiny_file_system(disk, "512k"):
        yield disk


def test_a_full_disk_loses_counted_items_and_keeps_the_sender_connected(
    make_rig: RigFactory, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="heros_archiver")
    rig = make_rig(
        default_metadata={"file_path": str(small_disk)},
        max_queue_items=2,
        block_limit=0.5,
        max_retries=1,
        retry_delay=0.05,
        retry_max_delay=0.2,
    )
    archiver = rig.archiver
    assert Path(archiver.stats()["spool_dir"]).is_relative_to(small_disk)  # the spool is on the full disk too

    first = list(range(20))
    send_frames(rig.camera, first, SHAPE)
    # the receive thread goes on receiving: every frame arrives, those that find no room anywhere are lost
    wait_until(lambda: archiver.stats()["total"]["received"] == len(first), timeout=30, what="every frame received")
    stats = archiver.stats()
    assert stats["total"]["lost_spool_full"] > 0, stats["total"]
    assert stats["queue"]["spool_failing"], stats["queue"]

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    later = list(range(20, 30))
    send_frames(rig.camera, later, SHAPE)
    wait_until(lambda: settled(archiver.stats()) == len(first) + len(later), what="every frame settled")

    total = archiver.stats()["total"]
    assert total["received"] == len(first) + len(later), total  # reliable, and the link never closed
    assert total["received"] == total["archived"] + total["dead_lettered"] + total["dropped"], total
    assert total["dropped"] == total["lost_spool_full"] > 0, total
    assert archiver.stats()["sources"]["cam"]["lost_spool_full"] == total["lost_spool_full"]
    files = {check_frame_file(path, SHAPE): path for path in npy_files(small_disk)}
    assert set(later) <= set(files), sorted(files)  # after the space came back, everything is archived
    assert len(files) == total["archived"]
    lost_lines = [r.getMessage() for r in caplog.records if "LOST item" in r.getMessage()]
    assert lost_lines and lost_lines[0].startswith("cam (event acquisition_data): LOST item"), lost_lines
    assert any("give spool_dir a file system other than the archive's" in r.getMessage() for r in caplog.records)
