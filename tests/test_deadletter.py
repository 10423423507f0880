"""The dead-letter store on its own: entries are self-describing and half-written ones are cleaned."""

from __future__ import annotations

import datetime
import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from heros_archiver.errors import ReplayError
from heros_archiver.state.deadletter import DeadLetterStore
from heros_archiver.storage.atomic import PROCESS_TOKEN


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


def test_one_value_json_cannot_carry_leaves_the_others_as_they_are(tmp_path: Path) -> None:
    """Item 2: a value JSON cannot carry is described on its own; replay reads the faithful copy."""
    store = DeadLetterStore(tmp_path / "dl")
    when = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
    metadata = {"frame": 7, "file_path": "/data/run", "probe": _Opaque(), (1, 2): "roi", b"raw": 3, 4: "four"}
    metadata["when"] = when
    entry = store.put(source="cam", event="e", payload=np.float32(2.5), metadata=metadata, error="x", attempts=1)

    info = json.loads((entry / "entry.json").read_text())
    assert info["metadata"]["frame"] == 7 and info["metadata"]["file_path"] == "/data/run"
    assert info["metadata"]["when"] == "2026-12-01T12:00:00+00:00"
    assert info["metadata"]["probe"]["unencodable"].endswith("_Opaque") and "repr" in info["metadata"]["probe"]
    assert [(k["key"], k["key_type"], k["value"]) for k in info["metadata_other_keys"]] == [
        ("(1, 2)", "tuple", "roi"),
        ("b'raw'", "bytes", 3),
        ("4", "int", "four"),
    ]
    assert info["lost"] != ""  # _Opaque has no faithful copy: the entry is a description


def test_the_faithful_copy_gives_back_what_arrived(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl")
    when = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
    metadata = {"frame": np.int64(7), (1, 2): "roi", b"raw": {3, 4}, 4: (when, None)}
    entry = store.put(source="cam", event="e", payload=np.float32(2.5), metadata=metadata, error="x", attempts=1)
    letter = store.load(entry)
    assert type(letter.payload) is np.float32 and letter.payload == np.float32(2.5)
    assert letter.metadata == metadata and type(letter.metadata["frame"]) is np.int64
    assert json.loads((entry / "payload.json").read_text()) == 2.5  # readable copy beside it


class _Opaque:
    """An application's own type: no JSON form, no faithful copy."""

    def __repr__(self) -> str:
        return "Opaque()"


def _damage(entry: Path, how: str) -> None:
    """Damage a dead-letter or spool entry the way a power cut, a careless colleague or an attacker would."""
    info = json.loads((entry / "entry.json").read_text())
    if how == "list-as-entry":
        (entry / "entry.json").write_text("[]")
    elif how == "garbage-entry":
        (entry / "entry.json").write_bytes(b"\x00\xffnot json")
    elif how == "empty-entry":
        (entry / "entry.json").write_bytes(b"")
    elif how == "missing-field":
        del info["source"]
        (entry / "entry.json").write_text(json.dumps(info))
    elif how == "wrong-type":
        info["attempts"] = "six"
        (entry / "entry.json").write_text(json.dumps(info))
    elif how == "bad-spans":
        info["faithful"]["buffers"] = [[0, 10**12]]
        (entry / "entry.json").write_text(json.dumps(info))
    elif how == "unknown-format":
        info["format"] = 99
        (entry / "entry.json").write_text(json.dumps(info))
    elif how == "empty-copy":  # what a power cut leaves of a file never flushed
        (entry / "item.pickle").write_bytes(b"")
    elif how == "truncated-copy":
        data = (entry / "item.pickle").read_bytes()
        (entry / "item.pickle").write_bytes(data[: len(data) // 2])
    elif how == "garbage-copy":
        (entry / "item.pickle").write_bytes(bytes(range(256)) * 4)
    elif how == "missing-copy":
        (entry / "item.pickle").unlink()
    elif how == "not-an-item":
        planted = pickle.dumps([1, 2, 3])
        (entry / "item.pickle").write_bytes(planted)
        info["faithful"] = {"pickle": [0, len(planted)], "buffers": []}
        (entry / "entry.json").write_text(json.dumps(info))
    else:
        raise AssertionError(how)


DAMAGE = [
    "list-as-entry",
    "garbage-entry",
    "empty-entry",
    "missing-field",
    "wrong-type",
    "bad-spans",
    "unknown-format",
    "empty-copy",
    "truncated-copy",
    "garbage-copy",
    "missing-copy",
    "not-an-item",
]


@pytest.mark.parametrize("how", DAMAGE)
def test_load_raises_replay_error_and_nothing_else_for_a_damaged_entry(tmp_path: Path, how: str) -> None:
    """What replay and the spool rely on: any malformed entry is a ReplayError naming the entry."""
    store = DeadLetterStore(tmp_path / "dl")
    entry = store.put(
        source="cam", event="e", payload=np.arange(6, dtype=">i4"), metadata={"frame": 1}, error="x", attempts=1
    )
    _damage(entry, how)
    with pytest.raises(ReplayError, match=str(entry)):
        store.load(entry)


def test_load_reads_entries_of_format_1(tmp_path: Path) -> None:
    """Dead letters written before the faithful copy still replay (from their readable files)."""
    entry = tmp_path / "dl" / "20260101T000000-1-00000000-cam"
    entry.mkdir(parents=True)
    np.save(entry / "payload.npy", np.arange(3, dtype=np.uint16))
    info = {"source": "cam", "event": "e", "metadata": {"frame": 1}, "error": "x", "attempts": 2, "time": 1.0}
    (entry / "entry.json").write_text(json.dumps({**info, "payload_file": "payload.npy", "writer": None}))
    letter = DeadLetterStore(tmp_path / "dl").load(entry)
    assert letter.metadata == {"frame": 1} and letter.attempts == 2
    np.testing.assert_array_equal(letter.payload, np.arange(3, dtype=np.uint16))
