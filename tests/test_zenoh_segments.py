"""The sweep of Zenoh's shared-memory files that processes a test killed leave in /dev/shm."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heros_archiver.testing import free_port
from heros_archiver.testing.servers import stop_process_group
from heros_archiver.testing.zenoh_segments import SHM_DIRECTORY, remove_stale_segments, zenoh_segments

_PEER = """
import json, sys, time, zenoh
from heros_archiver.testing import loopback_settings
config = zenoh.Config()
for key, value in loopback_settings(listen_port=int(sys.argv[1])).items():
    config.insert_json5(key, json.dumps(value))
config.insert_json5("transport/shared_memory/enabled", "true")
session = zenoh.open(config)
print("up", flush=True)
time.sleep(60)
"""


def _old_file(path: Path) -> Path:
    path.write_bytes(b"\0" * 32)
    then = time.time() - 10
    os.utime(path, (then, then))
    return path


def test_only_new_unheld_old_enough_files_are_removed(tmp_path: Path) -> None:
    before = _old_file(tmp_path / "1.zenoh")
    stale = _old_file(tmp_path / "2.zenoh")
    held = _old_file(tmp_path / "3.zenoh")
    young = tmp_path / "4.zenoh"
    young.write_bytes(b"")
    other = _old_file(tmp_path / "5.txt")
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a live Zenoh session holds its file
        removed = remove_stale_segments({before.name}, tmp_path)
    finally:
        os.close(fd)
    assert removed == [stale.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.zenoh", "3.zenoh", "4.zenoh", "5.txt"]
    assert other.exists()
    assert zenoh_segments(tmp_path) == {"1.zenoh", "3.zenoh", "4.zenoh"}


def test_a_missing_directory_has_no_segments(tmp_path: Path) -> None:
    assert zenoh_segments(tmp_path / "absent") == set()
    assert remove_stale_segments(set(), tmp_path / "absent") == []


@pytest.mark.skipif(not SHM_DIRECTORY.is_dir(), reason="no /dev/shm here")
def test_the_file_of_a_killed_zenoh_peer_is_removed_and_a_live_ones_kept() -> None:
    before = zenoh_segments()
    peer = subprocess.Popen(
        [sys.executable, "-c", _PEER, str(free_port())], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert peer.stdout is not None and peer.stdout.readline() == b"up\n"
        made = zenoh_segments() - before
        assert made, "the peer made no shared-memory file"
        assert remove_stale_segments(before, min_age=0.0) == []  # held while the peer lives
        assert made <= zenoh_segments()
        peer.kill()  # no atexit: the file stays behind
        peer.wait(10)
        assert made <= zenoh_segments()
        assert set(remove_stale_segments(before, min_age=0.0)) >= made
        assert not made & zenoh_segments()
    finally:
        stop_process_group(peer)


def test_files_held_only_by_this_process_are_stale_when_asked(tmp_path: Path) -> None:
    """At the end of a run this process may be the last holder (as a receiver of a dead sender's frames)."""
    mine = _old_file(tmp_path / "1.zenoh")
    fd = os.open(mine, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert remove_stale_segments(set(), tmp_path) == []  # held: kept by the sweep after each test
        assert remove_stale_segments(set(), tmp_path, own_locks_are_stale=True) == ["1.zenoh"]
    finally:
        os.close(fd)


def test_a_file_another_live_process_holds_is_kept_even_when_own_locks_are_stale(tmp_path: Path) -> None:
    theirs = _old_file(tmp_path / "2.zenoh")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(theirs)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert remove_stale_segments(set(), tmp_path, own_locks_are_stale=True) == []
        assert theirs.exists()
    finally:
        stop_process_group(holder)
    assert remove_stale_segments(set(), tmp_path, own_locks_are_stale=True) == ["2.zenoh"]


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(60)
"""
