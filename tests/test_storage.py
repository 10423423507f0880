"""Atomic, no-clobber writing; stale temporaries; on_exists end to end with the dead-letter store."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RigFactory
from helpers import (
    archived_files,
    assert_npy_equal,
    assert_refused_before_zenoh,
    dead_letter_entries,
    read_entry,
    wait_for_items,
)
from heros_archiver import StorageError, TargetExistsError
from heros_archiver.errors import ReplayError
from heros_archiver.state.deadletter import DeadLetterStore
from heros_archiver.storage import atomic as storage
from heros_archiver.storage.atomic import PROCESS_TOKEN, is_temporary, remove_stale_temporaries, write_atomic
from heros_archiver.storage.temporaries import RECORDS_DIR


def _writer(data: bytes) -> list[bytes | memoryview]:
    return [data]


def _temporary_name(pid: int, token: str | None = None) -> str:
    return f".~heros-archiver.{pid}.{token or uuid.uuid4().hex[:8]}.{uuid.uuid4().hex}.tmp"


def _all_files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _dead_pid() -> int:
    """The PID of a child process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    return child.pid


# ---------------------------------------------------------------------------------------------- write_atomic
needs_anonymous_files = pytest.mark.skipif(storage._LINK_ANONYMOUS is None, reason="no O_TMPFILE + /proc here")


def test_write_creates_parents_and_leaves_no_temporary(tmp_path: Path, publishing: str) -> None:
    target = tmp_path / "a" / "b" / "c.bin"
    assert write_atomic(target, _writer(b"hello")) == str(target)
    assert target.read_bytes() == b"hello"
    assert _all_files(tmp_path) == ["a/b/c.bin"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), OSError(errno.ENOSPC, "No space left on device")])
def test_failing_write_leaves_neither_file_nor_temporary(
    tmp_path: Path, error: Exception, monkeypatch: pytest.MonkeyPatch, publishing: str
) -> None:
    target = tmp_path / "out.npy"
    real_write = os.write
    seen_midway: list[str] = []

    def write(fd: int, data: Any) -> int:
        if real_write(fd, data) and len(data) == 100_000:
            return 100_000  # a partial file exists ...
        seen_midway.extend(p.name for p in tmp_path.iterdir())
        raise error  # ... when writing fails mid-way

    monkeypatch.setattr(storage.os, "write", write)
    expected = StorageError if isinstance(error, OSError) else RuntimeError
    with pytest.raises(expected):
        write_atomic(target, [b"x" * 100_000, b"y" * 10])
    monkeypatch.undo()
    if publishing == "anonymous":
        assert seen_midway == []  # the partial file had no name at all
    else:
        assert len(seen_midway) == 1 and is_temporary(seen_midway[0])
    assert list(tmp_path.iterdir()) == []


def test_storage_error_is_transient_and_names_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, publishing: str
) -> None:
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage.os, "write", write)
    with pytest.raises(StorageError) as info:
        write_atomic(tmp_path / "x.bin", [b"data"])
    monkeypatch.undo()
    assert info.value.permanent is False
    assert info.value.errno == errno.EIO
    assert "x.bin" in str(info.value)


def test_on_exists_error_keeps_the_first_file(tmp_path: Path, publishing: str) -> None:
    target = tmp_path / "same.bin"
    write_atomic(target, _writer(b"first"))
    with pytest.raises(TargetExistsError) as info:
        write_atomic(target, _writer(b"second"), on_exists="error")
    assert info.value.permanent is True
    assert target.read_bytes() == b"first"
    assert _all_files(tmp_path) == ["same.bin"]


def test_on_exists_overwrite_replaces(tmp_path: Path) -> None:
    target = tmp_path / "same.bin"
    write_atomic(target, _writer(b"first"))
    assert write_atomic(target, _writer(b"second"), on_exists="overwrite") == str(target)
    assert target.read_bytes() == b"second"
    assert _all_files(tmp_path) == ["same.bin"]


def test_on_exists_unique_adds_a_suffix_before_the_extension(tmp_path: Path, publishing: str) -> None:
    target = tmp_path / "img.npy"
    written = [Path(write_atomic(target, _writer(str(i).encode()), on_exists="unique")) for i in range(4)]
    assert [p.name for p in written] == ["img.npy", "img-1.npy", "img-2.npy", "img-3.npy"]
    assert [p.read_bytes() for p in written] == [b"0", b"1", b"2", b"3"]
    assert _all_files(tmp_path) == ["img-1.npy", "img-2.npy", "img-3.npy", "img.npy"]


@pytest.mark.parametrize("fsync", ["file", "file+directory"])
def test_fsync_modes_write_the_same_bytes(tmp_path: Path, fsync: str, publishing: str) -> None:
    target = tmp_path / "durable.bin"
    write_atomic(target, _writer(b"durable"), fsync=fsync)  # type: ignore[arg-type]
    assert target.read_bytes() == b"durable"


@needs_anonymous_files
@pytest.mark.parametrize("answer", [errno.EOPNOTSUPP, errno.EISDIR])
def test_a_file_system_without_unnamed_files_gets_a_named_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: int
) -> None:
    """Older kernels answer O_TMPFILE with EISDIR, file systems without it with EOPNOTSUPP."""
    real_open = os.open
    refused: list[str] = []

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:  # opened as "." in the directory's handle
            refused.append(os.readlink(f"/proc/self/fd/{kwargs['dir_fd']}"))
            raise OSError(answer, os.strerror(answer), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(storage.os, "open", open_)
    monkeypatch.setattr(storage, "_no_anonymous_files", set())
    for name in ("first.bin", "second.bin"):
        write_atomic(tmp_path / name, _writer(name.encode()))
    assert refused == [str(tmp_path)]  # asked once per directory, then remembered
    assert _all_files(tmp_path) == ["first.bin", "second.bin"]
    assert (tmp_path / "second.bin").read_bytes() == b"second.bin"


@needs_anonymous_files
def test_where_the_direct_link_is_refused_the_link_through_proc_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel before 6.10 without CAP_DAC_READ_SEARCH answers ENOENT to linkat(AT_EMPTY_PATH); that
    cannot happen here (root, Linux 6.18), so the C function refuses that form and passes the rest on."""
    libc_linkat = storage._libc_function(
        "linkat", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    )
    calls: list[bytes] = []

    def linkat(olddirfd: int, oldpath: bytes, newdirfd: int, newpath: bytes, flags: int) -> int:
        calls.append(oldpath)
        if flags & storage._AT_EMPTY_PATH:
            ctypes.set_errno(errno.ENOENT)
            return -1
        return int(libc_linkat(olddirfd, oldpath, newdirfd, newpath, flags))

    monkeypatch.setattr(storage, "_LINK_ANONYMOUS", storage._load_link_anonymous(linkat))
    for name in ("first.json", "second.json"):
        write_atomic(tmp_path / name, _writer(name.encode()))
    with pytest.raises(TargetExistsError):
        write_atomic(tmp_path / "first.json", _writer(b"again"))
    assert [path.startswith(b"/proc/self/fd/") for path in calls] == [False, True, True, True]
    assert _all_files(tmp_path) == ["first.json", "second.json"]
    assert (tmp_path / "first.json").read_bytes() == b"first.json"


_KILLED_MIDWAY = """
import os, sys, time
from heros_archiver.storage import atomic as storage
real_write = os.write
def write(fd, data):
    n = real_write(fd, data)
    if len(data) == 100_000:  # the frame's first buffer (not the record of a named temporary's directory)
        print("midway", flush=True)
        time.sleep(60)
    return n
storage.os.write = write
if sys.argv[2] == "named":
    storage._LINK_ANONYMOUS = None
storage.write_atomic(sys.argv[1] + "/sub/frame.npy", [b"x" * 100_000, b"y" * 10], root=sys.argv[1])
"""


def _kill_mid_write(root: Path, publishing: str) -> None:
    """A child process writes ``root/sub/frame.npy`` and is killed (SIGKILL) in the middle of it."""
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MIDWAY, str(root), publishing], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "midway\n"
    finally:
        child.kill()
        child.wait(timeout=30)


@pytest.mark.timeout(60)
def test_a_process_killed_mid_write_leaves_no_file(tmp_path: Path, publishing: str) -> None:
    """SIGKILL mid-write: an unnamed file vanishes with the process; a named temporary stays for the next start,
    which finds it from the dead process's record and removes it (and the record)."""
    _kill_mid_write(tmp_path, publishing)
    left = [p.name for p in (tmp_path / "sub").iterdir()]
    if publishing == "anonymous":
        assert left == []
        assert not (tmp_path / ".heros-archiver").exists()  # unnamed files need no record
    else:
        assert len(left) == 1 and is_temporary(left[0])
        assert remove_stale_temporaries(tmp_path) == 1
        assert list((tmp_path / "sub").iterdir()) == []
        assert list((tmp_path / RECORDS_DIR).iterdir()) == []


# ---------------------------------------------------------------------------------------------- stale temporaries
def _plant(root: Path, relative: str, pid: int, token: str, record: bool = True) -> Path:
    """A temporary of ``pid``/``token`` in ``root/relative``, recorded as that process would have (or not)."""
    path = root / relative / _temporary_name(pid, token)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    if record:
        (root / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
        with open(root / RECORDS_DIR / f"{pid}.{token}", "a") as fh:
            fh.write(json.dumps(relative) + "\n")
    return path


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_pid = _dead_pid()
        dead = _plant(tmp_path, "deep/dir", dead_pid, "0000dead")
        dead_top = _plant(tmp_path, "", dead_pid, "0000dead")
        alive = _plant(tmp_path, "deep", live.pid, "0000live")
        mine = _plant(tmp_path, "", os.getpid(), PROCESS_TOKEN)
        earlier_me = _plant(tmp_path, "", os.getpid(), "0badc0de")  # an earlier process with our PID
        lookalike = tmp_path / ".~heros-archiver.notapid.tmp"
        data = tmp_path / "deep" / "frame.npy"
        for path in (lookalike, data):
            path.write_bytes(b"data")
        with open(tmp_path / RECORDS_DIR / f"{dead_pid}.0000dead", "a") as fh:
            fh.write('"../../outside"\n"gone"\n"cut sho')  # edited, removed, and a line a crash cut short

        assert remove_stale_temporaries(tmp_path) == 3

        assert not dead.exists() and not dead_top.exists() and not earlier_me.exists()
        assert alive.exists() and mine.exists() and lookalike.exists() and data.exists()
        records = sorted(p.name for p in (tmp_path / RECORDS_DIR).iterdir())
        assert records == sorted([f"{live.pid}.0000live", f"{os.getpid()}.{PROCESS_TOKEN}"])
    finally:
        live.kill()
        live.wait(timeout=30)


def test_remove_stale_temporaries_of_missing_root(tmp_path: Path) -> None:
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_the_scan_at_start_reads_only_the_recorded_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up cost must not grow with the archive (item 8 of issue 13): the directories listed are the
    records' and the one they name, not the 50 directories of archived files. (Recorded, not faked:
    every listing goes to the real function.)"""
    for index in range(50):
        (tmp_path / f"run-{index:02d}").mkdir()
        (tmp_path / f"run-{index:02d}" / "frame.npy").write_bytes(b"data")
    stale = _plant(tmp_path, "run-07", _dead_pid(), "0000dead")
    listed: list[str] = []
    for name in ("listdir", "scandir"):
        real = getattr(os, name)

        def recorder(path: Any = ".", real: Any = real) -> Any:
            listed.append(os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else os.fspath(path))
            return real(path)

        monkeypatch.setattr(os, name, recorder)

    removed = remove_stale_temporaries(tmp_path)
    monkeypatch.undo()

    assert removed == 1 and not stale.exists()
    assert sorted(listed) == sorted([str(tmp_path / RECORDS_DIR), str(tmp_path / "run-07")])


@pytest.mark.timeout(60)
def test_archiver_removes_stale_temporaries_at_start(make_rig: RigFactory, tmp_path: Path) -> None:
    """A writer killed while it wrote a named temporary: the next archiver's start removes that temporary."""
    _kill_mid_write(tmp_path, "named")
    [stale] = (tmp_path / "sub").iterdir()
    make_rig("{{ file_path }}/{{ frame }}.npy")
    assert not stale.exists()


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.timeout(60)
def test_collision_keeps_first_and_dead_letters_second(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig("{{ file_path }}/same.npy")
    assert rig.archiver.on_exists == "error"
    first = np.arange(10, dtype=np.float64)
    second = -np.arange(10, dtype=np.float64)
    rig.camera.acquisition_data(first, {"frame": 0})
    rig.camera.acquisition_data(second, {"frame": 1})

    total = wait_for_items(rig.archiver, 2)

    assert total["archived"] == 1 and total["dead_lettered"] == 1, total
    assert archived_files(tmp_path) == ["same.npy"]
    assert_npy_equal(tmp_path / "same.npy", first)
    entries = dead_letter_entries(tmp_path)
    assert len(entries) == 1
    [entry] = entries
    assert sorted(p.name for p in entry.iterdir()) == ["entry.json", "item.pickle", "payload.npy"]
    info = read_entry(entry)
    assert info["source"] == "cam" and info["event"] == "acquisition_data"
    assert "TargetExistsError" in info["error"] and "same.npy" in info["error"]
    assert info["metadata"] == {"file_path": str(tmp_path), "frame": 1}
    assert info["attempts"] == 1  # permanent: not retried
    assert_npy_equal(entry / "payload.npy", second)
    assert not any(is_temporary(p.name) for p in tmp_path.rglob("*"))


@pytest.mark.timeout(60)
def test_collision_with_unique_keeps_both(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig("{{ file_path }}/same.npy", on_exists="unique")
    frames = [np.full(4, i, dtype=np.uint8) for i in range(3)]
    for i, frame in enumerate(frames):
        rig.camera.acquisition_data(frame, {"frame": i})

    total = wait_for_items(rig.archiver, 3)

    assert total["archived"] == 3 and total["dead_lettered"] == 0, total
    assert_npy_equal(tmp_path / "same.npy", frames[0])
    assert_npy_equal(tmp_path / "same-1.npy", frames[1])
    assert_npy_equal(tmp_path / "same-2.npy", frames[2])


@pytest.mark.parametrize(("name", "value"), [("on_exists", "replace"), ("fsync", "always")])
def test_bad_storage_choices_are_configuration_errors(tmp_path: Path, name: str, value: str) -> None:
    assert_refused_before_zenoh(tmp_path, name, **{name: value})


@pytest.mark.parametrize("payload_file", ["../../outside.json", "ABSOLUTE"])
def test_dead_letter_entry_cannot_point_outside_itself(tmp_path: Path, payload_file: str) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text('{"secret": 1}')
    store = DeadLetterStore(tmp_path / "store")
    entry = store.put(source="cam", event="acquisition_data", payload={"a": 1}, metadata={}, error="x", attempts=1)
    info = json.loads((entry / "entry.json").read_text())
    info["payload_file"] = str(outside) if payload_file == "ABSOLUTE" else payload_file
    del info["format"]  # an entry of format 1, read from its payload_file (later ones read their faithful copy)
    (entry / "entry.json").write_text(json.dumps(info))
    with pytest.raises(ReplayError):
        store.load(entry)
