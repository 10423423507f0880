"""The writeback window: large files go to disk as written and leave the page cache once there."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import archived_files, assert_npy_equal, assert_refused_before_zenoh, wait_for_items, wait_until
from heros_archiver import ArrayArchiver
from heros_archiver.pipeline.queueing import Item
from heros_archiver.state.spool import Spool
from heros_archiver.storage import writeback
from heros_archiver.storage.atomic import write_atomic
from heros_archiver.storage.writeback import MIN_FILE_BYTES, WritebackWindow
from procs import entries

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(writeback._SYNC_FILE_RANGE is None, reason="sync_file_range is Linux-only"),
]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _files_open_under(folder: Path) -> list[str]:
    """Names of the files in ``folder`` this process holds open, matched by inode (an unnamed file that
    was linked later is open under its anonymous name)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/self/fd/{fd}")
            held.add((st.st_dev, st.st_ino))
    return sorted(p.name for p in folder.iterdir() if (p.stat().st_dev, p.stat().st_ino) in held)


def test_window_keeps_at_most_its_bytes_in_flight_and_closes_the_rest(tmp_path: Path) -> None:
    window = WritebackWindow(max_bytes=3 * MIN_FILE_BYTES)
    blob = os.urandom(MIN_FILE_BYTES)
    for i in range(6):
        fd = os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT)
        os.write(fd, blob)
        assert window.wants(len(blob))
        window.take(fd, len(blob), f"f{i}")
    # the oldest were written back, dropped from the cache and closed; the newest three are in flight
    assert _files_open_under(tmp_path) == ["f3", "f4", "f5"]
    window.close()
    assert _files_open_under(tmp_path) == []
    assert all((tmp_path / f"f{i}").read_bytes() == blob for i in range(6))
    assert window.errors == 0


def test_at_most_max_files_are_in_flight_whatever_the_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback, "MAX_FILES", 3)
    window = WritebackWindow(max_bytes=2**40)
    blob = os.urandom(MIN_FILE_BYTES)
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(blob)
        window.hand_over(str(tmp_path / f"f{i}"), len(blob), f"f{i}")
    assert _files_open_under(tmp_path) == ["f2", "f3", "f4"]
    window.hand_over(str(tmp_path / "missing"), len(blob), "missing")  # cannot be opened: skipped, no error
    assert _files_open_under(tmp_path) == ["f2", "f3", "f4"]
    window.close()
    assert _files_open_under(tmp_path) == []


def test_small_files_and_a_zero_window_are_left_to_the_caller() -> None:
    assert not WritebackWindow(max_bytes=2**30).wants(MIN_FILE_BYTES - 1)
    assert WritebackWindow(max_bytes=2**30).wants(MIN_FILE_BYTES)
    assert not WritebackWindow(max_bytes=0).wants(MIN_FILE_BYTES)


def test_write_atomic_hands_large_files_to_the_window(tmp_path: Path, publishing: str) -> None:
    window = WritebackWindow(max_bytes=64 * MIN_FILE_BYTES)
    big, small = os.urandom(2 * MIN_FILE_BYTES), b"x" * 100
    write_atomic(tmp_path / "big.bin", [big[:MIN_FILE_BYTES], big[MIN_FILE_BYTES:]], window=window)
    write_atomic(tmp_path / "small.bin", [small], window=window)
    assert _files_open_under(tmp_path) == ["big.bin"]  # only the large file is still in flight
    window.close()
    assert _files_open_under(tmp_path) == []
    assert (tmp_path / "big.bin").read_bytes() == big and (tmp_path / "small.bin").read_bytes() == small


def test_a_file_is_published_before_the_window_may_wait_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, publishing: str
) -> None:
    """Waiting for older files to reach the disk must not delay the new file's appearance."""
    window = WritebackWindow(max_bytes=64 * MIN_FILE_BYTES)
    visible_at_take: list[bool] = []
    real_take = window.take

    def take(fd: int, nbytes: int, path: str) -> None:
        visible_at_take.append(os.path.exists(path) and os.path.basename(path) == "big.bin")
        real_take(fd, nbytes, path)

    monkeypatch.setattr(window, "take", take)
    write_atomic(tmp_path / "big.bin", [os.urandom(MIN_FILE_BYTES)], window=window)
    window.close()
    assert visible_at_take == [True]


def test_a_device_error_on_writeback_is_counted_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The device cannot be made to fail here; the C call's EIO answer is substituted."""
    real = writeback._SYNC_FILE_RANGE
    assert real is not None
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", lambda fd, flags: errno.EIO if flags & 4 else real(fd, flags))
    window = WritebackWindow(max_bytes=MIN_FILE_BYTES)
    for i in range(2):
        fd = os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT)
        os.write(fd, os.urandom(MIN_FILE_BYTES))
        with caplog.at_level(logging.ERROR, logger="heros_archiver"):
            window.take(fd, MIN_FILE_BYTES, str(tmp_path / f"f{i}"))
    assert window.errors == 1
    assert f"{tmp_path / 'f0'}: the device reported an error" in caplog.text
    window.close()
    assert window.errors == 2


def test_a_file_system_without_sync_file_range_turns_the_window_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", lambda fd, flags: errno.EINVAL)
    window = WritebackWindow(max_bytes=2**30)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    window.take(fd, MIN_FILE_BYTES, "f")
    assert not window.enabled and not window.wants(MIN_FILE_BYTES)
    assert not _is_open(fd)  # closed at once: nothing is kept in flight


def test_archiver_streams_large_frames_through_the_window(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/{{ '%03d' % frame }}.npy", writeback_window=4 * MIN_FILE_BYTES)
    frames = [np.full((512, 1024), i, dtype=np.uint16) for i in range(12)]  # 1 MiB each
    for i, frame in enumerate(frames):
        rig.camera.acquisition_data(frame, {"frame": i})
    total = wait_for_items(rig.archiver, len(frames))
    assert total["archived"] == len(frames), total
    assert rig.archiver.stats()["writeback_errors"] == 0
    rig.archiver._teardown()
    assert archived_files(rig.root) == [f"{i:03d}.npy" for i in range(12)]
    for i, frame in enumerate(frames):
        assert_npy_equal(rig.root / f"{i:03d}.npy", frame)
    assert _files_open_under(rig.root) == []  # teardown finished every file still in flight


@pytest.mark.parametrize("bad", [-1, 1.5, True, "32M"])
def test_writeback_window_is_checked(tmp_path: Path, bad: object) -> None:
    assert_refused_before_zenoh(tmp_path, "writeback_window: expected a number of bytes >= 0", writeback_window=bad)


class FaultyWindow(WritebackWindow):
    """A window whose device answers EIO for the files named in ``fail`` (once each), and waits for ``gate``
    before answering for ``held``. A real device error needs dm-error or a failing loop device, which this
    machine lacks (no device-mapper), so the device's answer is substituted at the window's own seam."""

    def __init__(self, max_bytes: int, fail: set[str], held: str | None = None) -> None:
        super().__init__(max_bytes)
        self.fail = set(fail)
        self.held = held
        self.entered = threading.Event()
        self.gate = threading.Event()

    def _wait_on_device(self, fd: int, path: str) -> int:
        name = os.path.basename(path)
        if name == self.held:
            self.entered.set()
            self.gate.wait(30)
        error = super()._wait_on_device(fd, path)
        if name in self.fail:
            self.fail.discard(name)
            return errno.EIO
        return error


def _faulty_archiver(window: FaultyWindow) -> type[ArrayArchiver]:
    class FaultyWindowArchiver(ArrayArchiver):
        def _setup_storage(self) -> None:
            super()._setup_storage()
            self._writer.window = window

    return FaultyWindowArchiver


FRAMES_1MIB = [np.full((512, 1024), i, dtype=np.uint16) for i in range(8)]


def test_a_writeback_error_makes_that_item_written_again(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    window = FaultyWindow(2 * MIN_FILE_BYTES, fail={"003.npy"})
    rig = make_rig(archiver_cls=_faulty_archiver(window), retry_delay=0.01)
    with caplog.at_level(logging.ERROR, logger="heros_archiver"):
        for i, frame in enumerate(FRAMES_1MIB):
            rig.camera.acquisition_data(frame, {"frame": i})
        total = wait_for_items(rig.archiver, len(FRAMES_1MIB))
    assert total["archived"] == len(FRAMES_1MIB) and total["dead_lettered"] == 0, total
    assert total["retried"] == 1, total  # the item whose file failed, and only it
    assert rig.archiver.stats()["writeback_errors"] == 1
    assert "003.npy: the device reported an error while writing this file back" in caplog.text
    assert "removed, its item is written again" in caplog.text
    assert archived_files(rig.root) == [f"{i:03d}.npy" for i in range(len(FRAMES_1MIB))]
    for i, frame in enumerate(FRAMES_1MIB):
        assert_npy_equal(rig.root / f"{i:03d}.npy", frame)


def test_an_item_counts_as_archived_only_once_its_file_is_on_the_device(make_rig: RigFactory) -> None:
    window = FaultyWindow(64 * MIN_FILE_BYTES, fail=set(), held="000.npy")
    rig = make_rig(archiver_cls=_faulty_archiver(window), overflow="spill")
    rig.camera.acquisition_data(FRAMES_1MIB[0], {"frame": 0})
    assert window.entered.wait(30), "the idle writer never pushed its file to the device"
    assert (rig.root / "000.npy").exists()  # written and published ...
    stats = rig.archiver.stats()
    assert stats["total"]["archived"] == 0 and stats["total"]["in_flight"] == 1, stats["total"]  # ... not archived
    window.gate.set()
    total = wait_for_items(rig.archiver, 1)
    assert total["archived"] == 1, total


def test_a_spooled_item_leaves_the_spool_only_once_its_file_is_on_the_device(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    spool_dir = tmp_path / ".heros-archiver" / "spool"
    Spool(spool_dir, "acquisition_data").put(
        Item("cam", FRAMES_1MIB[0], {"file_path": str(tmp_path), "frame": 0}, FRAMES_1MIB[0].nbytes)
    )  # left by an earlier run: resumed at start
    window = FaultyWindow(64 * MIN_FILE_BYTES, fail=set(), held="000.npy")
    rig = make_rig(archiver_cls=_faulty_archiver(window))
    assert window.entered.wait(30), "the idle writer never pushed its file to the device"
    assert (tmp_path / "000.npy").exists()
    assert len(entries(spool_dir)) == 1  # the spool still holds it ...
    assert rig.archiver.stats()["total"]["archived"] == 0  # ... and it is not archived yet
    window.gate.set()
    wait_for_items(rig.archiver, 1)
    wait_until(lambda: entries(spool_dir) == [], what="the spool entry removed")
    assert_npy_equal(tmp_path / "000.npy", FRAMES_1MIB[0])
