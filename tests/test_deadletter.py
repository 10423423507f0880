"""The dead-letter store on its own: entries are self-describing and half-written ones are cleaned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

from heros_archiver.deadletter import DeadLetterStore
from heros_archiver.storage import PROCESS_TOKEN


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_entry_is_readable_with_plain_numpy_and_json(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl")
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    entry = store.put(
        source="cam",
        event="acquisition_data",
        payload=frame,
        metadata={"frame": np.int64(7)},
        error="StorageError: disk full",
        attempts=6,
        writer=None,
    )
    info = json.loads((entry / "entry.json").read_text())
    assert info["source"] == "cam" and info["attempts"] == 6 and info["metadata"] == {"frame": 7}
    assert info["error"] == "StorageError: disk full" and info["payload_file"] == "payload.npy"
    np.testing.assert_array_equal(np.load(entry / "payload.npy"), frame)
    assert store.load(entry).metadata == {"frame": 7} and len(store) == 1


def test_half_written_entries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl")
    store.directory.mkdir()
    stale = store.directory / f".tmp-{_dead_pid()}-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex}"
    live = store.directory / f".tmp-{os.getpid()}-{PROCESS_TOKEN}-{uuid.uuid4().hex}"
    for directory in (stale, live):
        directory.mkdir()
        (directory / "payload.npy").write_bytes(b"partial")
    assert store.remove_stale_temporaries() == 1
    assert not stale.exists() and live.exists()
    assert list(store.entries()) == []
