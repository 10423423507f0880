"""Durability as documented (item 7 of issue 13): which files and directories a write fsyncs.

``os.fsync`` is wrapped by a recorder that calls the real one and notes which inode each descriptor was
(the issue allows recording the fsync calls); everything else is the real file system.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import dead_letter_entries, wait_for_items
from heros_archiver.pipeline.queueing import Item
from heros_archiver.state.deadletter import DeadLetterStore
from heros_archiver.state.spool import Spool
from heros_archiver.storage.atomic import PROCESS_TOKEN, write_atomic
from heros_archiver.storage.temporaries import RECORDS_DIR

Inode = tuple[int, int]


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Inode]]:
    """The (device, inode) of every descriptor fsynced while the test runs, in order."""
    calls: list[Inode] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        calls.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    yield calls


def _inodes(*paths: Path) -> set[Inode]:
    return {(info.st_dev, info.st_ino) for info in map(os.stat, paths)}


def _record(root: Path, publishing: str) -> set[Inode]:
    """A named temporary's directory is first recorded (durably when the write is fsynced), unnamed files not."""
    return _inodes(root / RECORDS_DIR / f"{os.getpid()}.{PROCESS_TOKEN}") if publishing == "named" else set()


def test_file_and_directory_fsyncs_every_directory_made_up_to_the_root(
    tmp_path: Path, fsynced: list[Inode], publishing: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    target = root / "a" / "b" / "c" / "x.bin"
    write_atomic(target, [b"data"], fsync="file+directory", root=str(root))
    a, b, c = root / "a", root / "a" / "b", root / "a" / "b" / "c"
    expected = _inodes(target, c, b, a, root) | _record(root, publishing)
    assert set(fsynced) == expected, "the file, its directory and every directory above with a new entry"

    fsynced.clear()
    write_atomic(c / "y.bin", [b"more"], fsync="file+directory", root=str(root))
    assert set(fsynced) == _inodes(c / "y.bin", c), "an existing directory (recorded already): only it is new"


def test_a_root_made_by_the_write_is_fsynced_in_its_parent(
    tmp_path: Path, fsynced: list[Inode], publishing: str
) -> None:
    root = tmp_path / "new" / "root"
    write_atomic(root / "x.bin", [b"data"], fsync="file+directory", root=str(root))
    assert set(fsynced) == _inodes(root / "x.bin", root, tmp_path / "new", tmp_path) | _record(root, publishing)


@pytest.mark.parametrize(("fsync", "expected"), [("none", 0), ("file", 1)])
def test_lighter_settings_fsync_less(tmp_path: Path, fsynced: list[Inode], fsync: str, expected: int) -> None:
    write_atomic(tmp_path / "a" / "x.bin", [b"data"], fsync=fsync, root=str(tmp_path))  # type: ignore[arg-type]
    assert len(fsynced) == expected
    if expected:
        assert set(fsynced) == _inodes(tmp_path / "a" / "x.bin")


def _entry_inodes(store: Path, entry: Path) -> set[Inode]:
    return _inodes(*entry.iterdir(), entry, store)


def test_dead_letter_and_spool_entries_are_fsynced_when_asked(tmp_path: Path, fsynced: list[Inode]) -> None:
    store = DeadLetterStore(tmp_path / "dead-letter", fsync=True)
    entry = store.put(source="cam", event="e", payload=np.arange(3), metadata={"k": 1}, error="x", attempts=1)
    assert set(fsynced) == _entry_inodes(store.directory, entry)

    fsynced.clear()
    DeadLetterStore(tmp_path / "quiet").put(
        source="cam", event="e", payload={"a": 1}, metadata={}, error="", attempts=1
    )
    assert fsynced == []

    fsynced.clear()
    spool = Spool(tmp_path / "spool", "e", fsync=True)
    spool.put(Item("cam", np.arange(4), {"frame": 1}, 32))
    [spooled] = spool.pending()
    assert set(fsynced) == _entry_inodes(spool.directory, spooled)


@pytest.mark.timeout(60)
def test_the_archivers_fsync_setting_reaches_its_dead_letters(
    make_rig: RigFactory, tmp_path: Path, fsynced: list[Inode]
) -> None:
    rig = make_rig("{{ file_path }}/same.npy", fsync="file")
    rig.camera.acquisition_data(np.arange(3), {"frame": 0})
    rig.camera.acquisition_data(np.arange(3) + 1, {"frame": 1})  # same name: dead-lettered
    total = wait_for_items(rig.archiver, 2)
    assert total["archived"] == 1 and total["dead_lettered"] == 1, total
    [entry] = dead_letter_entries(tmp_path)
    assert _entry_inodes(entry.parent, entry) <= set(fsynced)
    assert _inodes(tmp_path / "same.npy") <= set(fsynced)
