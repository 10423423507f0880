"""The catalog of an archive root (decision 0031): every archived file and failure in SQLite, read while it is
written, and in agreement with the files after a SIGKILL and a restart."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog_kills import kill_and_restart, package_process
from conftest import RigFactory
from helpers import DEADLINE, wait_for_items, wait_until
from heros_archiver import ArrayArchiver, Hdf5Archiver, JsonArchiver
from heros_archiver.errors import CatalogError
from heros_archiver.observe import catalog, catalog_journal, catalog_recovery
from heros_archiver.observe.catalog import CatalogListener
from heros_archiver.observe.catalog_apply import apply_journal
from heros_archiver.observe.catalog_journal import JournalWriter, encode_intents, encode_outcomes
from heros_archiver.observe.catalog_names import JournalName, process_start
from heros_archiver.observe.catalog_reader import CatalogItem, CatalogReader
from heros_archiver.observe.catalog_schema import catalog_path, journal_directory, open_for_writing
from heros_archiver.observe.catalog_sqlite import SqliteCatalog
from heros_archiver.observe.outcomes import Archived, DeadLettered, Dropped, Location
from heros_archiver.observe.readers import ContainerReader
from heros_archiver.observe.verify import verify
from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.hdf5 import Hdf5Container
from heros_archiver.sinks.containers.tiff import TiffStackContainer
from heros_archiver.sinks.containers.zarr_append import ZarrAppendContainer
from heros_archiver.sinks.zarr_arrays import ZarrArrayWriter
from heros_archiver.testing.faults import SlowSink

pytestmark = pytest.mark.timeout(120)

NPY = "{{ file_path }}/{{ '%03d' % frame }}.npy"


def file_checksum(path: Path) -> str:
    return f"xxh3-128:{xxhash.xxh3_128_hexdigest(path.read_bytes())}"


def archive_files(root: Path) -> set[str]:
    """Every file under ``root`` outside the archiver's own folder, relative to it."""
    found = set()
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".heros-archiver"]
        found.update(str(Path(folder, name).relative_to(root)) for name in names)
    return found


def catalog_items(root: Path) -> list[CatalogItem]:
    with CatalogReader(root) as reader:
        return list(reader.items())


def catalog_count(root: Path) -> int:
    if not catalog_path(root).exists():
        return 0
    with CatalogReader(root) as reader:
        return reader.count()


def assert_files_and_catalog_agree(root: Path) -> list[CatalogItem]:
    """No file under the root missing from the catalog, no entry without its file, every checksum right."""
    items = catalog_items(root)
    paths = [item.path for item in items]
    assert len(paths) == len(set(paths)), "a location cataloged twice"
    assert archive_files(root) == set(paths)
    for item in items:
        file = root / item.path
        assert item.nbytes == file.stat().st_size, item
        assert item.checksum == file_checksum(file), item
    return items


# ------------------------------------------------------------------------------------------------ over Zenoh
def test_every_npy_file_is_in_the_catalog_with_its_location_and_checksum(make_rig: RigFactory) -> None:
    rig = make_rig(NPY, sequence_key="frame")
    sent = rig.camera.acquire(20, shape=(32, 32), dtype="uint16")
    wait_for_items(rig.archiver, sent)
    wait_until(lambda: catalog_count(rig.root) == sent, what="the catalog has every item while the archiver runs")
    items = assert_files_and_catalog_agree(rig.root)
    assert [item.sequence for item in items] == list(range(sent))
    for item in items:
        assert item.path == f"{item.sequence:03d}.npy" and item.member is None and item.idx is None
        assert item.count == 1 and item.source == "cam" and item.event == "acquisition_data"
        assert item.archiver == "ArrayArchiver:acquisition_data"
        assert item.metadata["frame"] == item.sequence and item.metadata["file_path"] == str(rig.root)
        assert item.received <= item.committed
    status = rig.archiver.stats()["catalog"]
    assert status["path"] == str(catalog_path(rig.root)) and status["applier_running"]
    rig.archiver.close()
    assert not os.listdir(journal_directory(rig.root)), "a clean stop leaves no journal"
    assert len(catalog_items(rig.root)) == sent


def test_every_hdf5_frame_is_in_the_catalog_with_its_index_and_checksum(make_rig: RigFactory) -> None:
    rig = make_rig(None, archiver_cls=Hdf5Archiver, file_template="{{ file_path }}/run.h5", sequence_key="frame")
    sent = rig.camera.acquire(20, shape=(16, 24), dtype="uint16")
    wait_for_items(rig.archiver, sent)
    rig.archiver.close()
    items = assert_container_and_catalog_agree(rig.root)
    assert [(item.path, item.member, item.idx, item.count) for item in items] == [
        ("run.h5", "cam/data", index, 1) for index in range(sent)
    ]
    with h5py.File(rig.root / "run.h5", "r") as handle:
        for item in items:
            frame = np.ascontiguousarray(handle["cam/data"][item.idx])
            assert item.checksum == f"xxh3-128:{xxhash.xxh3_128_hexdigest(frame.tobytes())}"
            assert item.nbytes == frame.nbytes and item.sequence == item.idx


def test_json_files_written_by_the_helper_process_are_cataloged(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/{{ frame }}.json", archiver_cls=JsonArchiver, matched=(), sequence_key="frame")
    assert rig.archiver.stats()["helper_processes"], "the helper's path is what this test is about"
    for frame in range(60):
        rig.archiver.feed("cam", ({"t": frame * 0.5}, {"frame": frame}))
    wait_for_items(rig.archiver, 60)
    rig.archiver.close()
    items = assert_files_and_catalog_agree(rig.root)
    assert sorted(item.sequence for item in items if item.sequence is not None) == list(range(60))
    assert all(item.archiver == "JsonArchiver:acquisition_data" for item in items)


def test_a_split_array_is_one_row_per_file(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/{{ frame }}-{{ _split_index }}.npy", split_data_array=True, matched=())
    rig.archiver.feed("cam", (np.arange(12, dtype=np.int32).reshape(3, 4), {"frame": 5}))
    wait_for_items(rig.archiver, 1)
    rig.archiver.close()
    items = assert_files_and_catalog_agree(rig.root)
    assert sorted(item.path for item in items) == ["5-0.npy", "5-1.npy", "5-2.npy"]


def test_dead_lettered_and_dropped_items_are_failures(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/{{ frame }}.npy", matched=(), sequence_key="frame")
    rig.archiver.feed("cam", ("not an array", {"frame": 1}))
    rig.archiver.feed("cam", (np.zeros(3), {"frame": 2}))
    wait_for_items(rig.archiver, 2)
    rig.archiver.close()
    with CatalogReader(rig.root) as reader:
        (failure,) = reader.failures()
        (item,) = reader.items()
    assert failure.kind == "dead_lettered" and failure.sequence == 1 and "PayloadError" in failure.error
    assert failure.entry is not None and failure.entry.startswith(".heros-archiver/dead-letter/")
    assert (rig.root / failure.entry).is_dir() and failure.metadata == {"frame": 1, "file_path": str(rig.root)}
    assert item.path == "2.npy"

    dropping = make_rig(
        "{{ file_path }}/drop/{{ frame }}.npy",
        matched=(),
        overflow="drop",
        max_queue_items=1,
        sink_wrapper=SlowSink(0.2),
        sequence_key="frame",
    )
    for frame in range(6):
        dropping.archiver.feed("cam", (np.zeros(3), {"frame": frame}))
    wait_for_items(dropping.archiver, 6)
    dropped = dropping.archiver.stats()["total"]["dropped"]
    dropping.archiver.close()
    with CatalogReader(dropping.archiver.root) as reader:  # the template's root: tmp_path/drop
        failures = [f for f in reader.failures() if f.kind == "dropped"]
    assert dropped and len(failures) == dropped and all("overflow='drop'" in f.error for f in failures)


def test_a_reader_in_another_process_sees_rows_while_items_keep_coming(make_rig: RigFactory) -> None:
    rig = make_rig(NPY, matched=())
    count = "from heros_archiver.observe.catalog_reader import CatalogReader; print(CatalogReader(sys.argv[1]).count())"
    for batch in range(3):
        for frame in range(batch * 10, batch * 10 + 10):
            rig.archiver.feed("cam", (np.full(4, frame), {"frame": frame}))
        wait_until(lambda n=batch: catalog_count(rig.root) == 10 * (n + 1), what="the catalog to have the batch")
        result = subprocess.run(
            [sys.executable, "-c", f"import sys; {count}", str(rig.root)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert int(result.stdout) == 10 * (batch + 1)
        assert rig.archiver.stats()["total"]["received"] == 10 * (batch + 1)


def test_intent_records_the_journal_refuses_are_counted_and_logged_once(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(NPY, matched=())
    listener = rig.archiver._catalog
    assert listener is not None
    listener._journal.close()  # as a journal on a full disk: every write refused
    listener.intend([("cam", "acquisition_data", 1, 0.0, f"{rig.root}/1.npy", {})])
    listener.intend([("cam", "acquisition_data", n, 0.0, f"{rig.root}/{n}.npy", {}) for n in (2, 3)])
    assert listener.status()["intents_lost"] == 3
    lines = [r.getMessage() for r in caplog.records if "intent record" in r.getMessage()]
    assert len(lines) == 1 and "1 intent record(s) not written" in lines[0] and "closed" in lines[0]


def test_the_intents_of_items_waiting_in_the_lane_are_journaled_together(make_rig: RigFactory) -> None:
    """A writer with items waiting plans them ahead (decision 0045): one intent record write for many files,
    each file's intent before the file; an item that cannot be planned is dead-lettered as before."""
    rig = make_rig(NPY, matched=(), sequence_key="frame")
    listener = rig.archiver._catalog
    assert listener is not None
    calls: list[list[str]] = []
    intend = listener.intend

    def counting(intents: Any) -> None:
        paths = [intent[4] for intent in intents]  # (source, event, sequence, received, path, metadata)
        assert not any(Path(path).exists() for path in paths)  # journaled before its file is made
        calls.append(paths)
        intend(intents)

    listener.intend = counting  # type: ignore[method-assign]
    for frame in range(200):  # fed faster than written (a file takes longer than a feed): they gather in the lane
        rig.archiver.feed("cam", (np.full(4, frame), {"frame": frame} if frame != 7 else {"other": 1}))
    wait_for_items(rig.archiver, 200)
    rig.archiver.close()
    expected = [n for n in range(200) if n != 7]
    assert sorted(path for paths in calls for path in paths) == [f"{rig.root}/{n:03d}.npy" for n in expected]
    assert len(calls) < 100, [len(paths) for paths in calls]
    with CatalogReader(rig.root) as reader:
        assert sorted(item.sequence for item in reader.items()) == expected
        (failure,) = reader.failures()
    assert failure.kind == "dead_lettered" and "frame" in failure.error


def test_catalog_false_keeps_none(make_rig: RigFactory) -> None:
    rig = make_rig(NPY, matched=(), catalog=False)
    rig.archiver.feed("cam", (np.zeros(3), {"frame": 1}))
    wait_for_items(rig.archiver, 1)
    assert rig.archiver.stats()["catalog"] is None
    rig.archiver.close()
    assert not catalog_path(rig.root).exists()


def test_two_archivers_share_one_root_and_its_catalog(make_rig: RigFactory, tmp_path: Path) -> None:
    first = make_rig("{{ file_path }}/a/{{ frame }}.npy", matched=(), root=str(tmp_path))
    second = make_rig(
        "{{ file_path }}/b/{{ frame }}.json",
        archiver_cls=JsonArchiver,
        matched=(),
        event_name="readings",
        root=str(tmp_path),
    )
    for frame in range(20):
        first.archiver.feed("cam", (np.full(3, frame), {"frame": frame}))
        second.archiver.feed("sensor", ({"v": frame}, {"frame": frame}))
    wait_for_items(first.archiver, 20)
    wait_for_items(second.archiver, 20)
    assert len(os.listdir(journal_directory(first.root))) == 2, "one journal per archiver"
    first.archiver.close()
    second.archiver.close()
    items = assert_files_and_catalog_agree(first.root)
    assert {item.archiver for item in items} == {"ArrayArchiver:acquisition_data", "JsonArchiver:readings"}
    assert not os.listdir(journal_directory(first.root))


def test_a_file_where_the_catalog_belongs_fails_the_start_clearly(tmp_path: Path) -> None:
    catalog_path(tmp_path).parent.mkdir(parents=True)
    catalog_path(tmp_path).write_bytes(b"this is no SQLite file" * 100)
    with pytest.raises(CatalogError, match=r"catalog\.sqlite.*catalog=False"):
        ArrayArchiver(
            object_selector="cam", event_name="acquisition_data", save_template=f"{tmp_path}/{{{{ frame }}}}.npy"
        )


# ------------------------------------------------------------------------------------------------ SIGKILL
@pytest.mark.parametrize("kind", ["npy", "npy-big", "json", "hdf5", "tiff-stack", "zarr", "parquet"])
def test_after_sigkill_and_restart_the_catalog_and_the_files_agree(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "archive"
    least = 20 if kind == "npy-big" else 300  # items cataloged before the kill (20 MiB of 1 MiB frames)
    kill_and_restart(tmp_path, kind, lambda out: "@@ ARCHIVED" in out and catalog_count(root) >= least, DEADLINE)
    agree = {
        "hdf5": assert_container_and_catalog_agree,
        "tiff-stack": assert_container_and_catalog_agree,
        "zarr": assert_arrays_and_catalog_agree,
        "parquet": assert_rows_and_catalog_agree,
    }
    items = agree.get(kind, assert_files_and_catalog_agree)(root)
    assert len(items) >= least
    # files and arrays were journaled as intents before they were made, frames and rows are read back: every
    # item has its sequence value, so that a run going on after the restart shows no false gap
    assert [item for item in items if item.sequence is None] == []
    assert verify(root).problems == []
    assert not os.listdir(journal_directory(root)), "the killed run's journal was applied and removed"


@pytest.mark.parametrize("kind", ["npy", "npy-big", "json", "zarr"])
def test_files_made_but_not_journaled_before_a_kill_are_adopted_with_their_intents(tmp_path: Path, kind: str) -> None:
    """The moment between making files and journaling their commit line, held open: 20 items archived, the
    commit lines of the last 10 never written, then SIGKILL. The restart adopts those 10 files (arrays) with the
    source, sequence value, receive time and metadata of the intent records journaled before they were made."""
    root = tmp_path / "archive"
    _archive_unjournaled(tmp_path, kind, 10)
    items = sorted(catalog_items(root), key=lambda item: item.sequence if item.sequence is not None else -1)
    assert [item.sequence for item in items] == list(range(20))
    adopted = items[10:]
    assert all(item.source == "cam" and item.event == "acquisition_data" for item in adopted)
    # the receive time of its intent, not the file's time (a file's mtime is the kernel's coarse clock: ms early)
    assert all(items[9].received <= item.received <= item.committed + 0.05 for item in adopted)
    # no commit line for the adopted ones: their metadata is their intent record's, the same as a commit line's
    assert all(item.metadata == {"frame": item.sequence, "run": "crash", "file_path": str(root)} for item in items)
    assert verify(root).problems == []


def test_files_renamed_by_on_exists_unique_before_a_kill_are_adopted_with_their_own_items_intents(
    tmp_path: Path,
) -> None:
    """Every item is planned as ``x.npy`` and written as ``x.npy``, ``x-1.npy``, ... (``on_exists="unique"``); the
    last 10 are never journaled. Each adopted file gets the intent of the item it holds: the intents of one
    planned name go to its files in the order of their names."""
    root = tmp_path / "archive"
    _archive_unjournaled(tmp_path, "npy-unique", 10)
    items = {item.path: item for item in catalog_items(root)}
    assert sorted(items) == sorted(["x.npy", *(f"x-{n}.npy" for n in range(1, 20))])
    for path, item in items.items():
        frame = int(np.load(root / path).flat[0])
        assert path == ("x.npy" if frame == 0 else f"x-{frame}.npy")
        assert item.sequence == frame and item.source == "cam", item
        assert item.metadata == {"frame": frame, "run": "crash", "file_path": str(root)}, item
    assert verify(root).problems == []


def test_unique_names_are_matched_with_the_intents_of_the_name_they_were_planned_as() -> None:
    assert catalog_recovery._planned("a/b/x-12.npy") == ("a/b/x.npy", 12)
    assert catalog_recovery._planned("x-1") == ("x", 1)
    assert catalog_recovery._planned("a/x.npy") == ("a/x.npy", 0)
    assert catalog_recovery._planned("a/x-0.npy") == ("a/x-0.npy", 0)  # unique_names starts at -1
    assert catalog_recovery._planned("a/run.tar-1.gz") == ("a/run.tar.gz", 1)  # unique_names: before the last "."
    assert catalog_recovery._planned("a/run-1.tar.gz") == ("a/run-1.tar.gz", 0)


@pytest.mark.parametrize("kind", ["hdf5", "tiff-stack", "zarr-append", "parquet"])
def test_a_container_first_committed_just_before_a_kill_is_found_by_its_intent(tmp_path: Path, kind: str) -> None:
    """No commit line journaled at all (the child drops every one): the container's only trace in the journal is
    the intent record of its first commit, and the restart reads all 20 items back from it."""
    root = tmp_path / "archive"
    _archive_unjournaled(tmp_path, kind, 0)
    items = sorted(catalog_items(root), key=lambda item: item.idx or 0)
    assert [item.sequence for item in items] == list(range(20))
    containers = {"hdf5": "run.h5", "tiff-stack": "run.tif", "zarr-append": "run.zarr", "parquet": "run.parquet"}
    assert {item.path for item in items} == {containers[kind]}
    assert all(item.source == "cam" and item.event == "acquisition_data" for item in items)
    assert verify(root).problems == []


def test_a_killed_parquet_archivers_rows_are_cataloged_when_another_kind_starts_first(tmp_path: Path) -> None:
    """The ParquetArchiver killed with its file still a journal (commit lines of 10 of its 20 readings dropped), and
    a JsonArchiver the first to start on the root: its catalog's recovery rebuilds the file and reads the 10 back."""
    root = tmp_path / "archive"
    _archive_unjournaled(tmp_path, "parquet", 10, restart="json")
    items = sorted(catalog_items(root), key=lambda item: item.idx or 0)
    assert [item.sequence for item in items] == list(range(20))
    assert {item.path for item in items} == {"run.parquet"} and (root / "run.parquet").is_file()
    assert verify(root).problems == []


def _archive_unjournaled(tmp_path: Path, kind: str, journaled: int, restart: str | None = None) -> None:
    """Run ``catalog_child.py`` with ``HEROS_TEST_UNJOURNALED=journaled`` until its items are archived, SIGKILL it
    and start the same archiver (or the kind ``restart``) again on the root (its catalog's recovery runs), which
    then stops."""
    kill_and_restart(
        tmp_path, kind, lambda out: "@@ DONE" in out, DEADLINE, restart=restart, HEROS_TEST_UNJOURNALED=str(journaled)
    )


def assert_arrays_and_catalog_agree(root: Path) -> list[CatalogItem]:
    """Every array a ZarrArchiver published under the root is in the catalog (as its store and key), once, and
    every cataloged array reads back with the checksum the catalog says."""
    items = catalog_items(root)
    published = {
        (str(document.parents[2].relative_to(root)), f"cam/{document.parent.name}")
        for document in root.glob("*/cam/*/zarr.json")
    }
    assert {(item.path, item.member) for item in items} == published
    assert len(items) == len(published), "an array cataloged twice"
    with ContainerReader(root) as reader:
        for item in items:
            reading = reader.read(item.path, item.member)
            assert (reading.checksum, reading.nbytes) == (item.checksum, item.nbytes), item
    return items


def assert_container_and_catalog_agree(root: Path) -> list[CatalogItem]:
    """Every file under the root is in the catalog, every frame committed to a stack is cataloged (one committed
    in the moment before the kill and not journaled was read back from the stack at the restart), and every
    cataloged frame is in its file, committed, with the checksum the catalog says."""
    items = catalog_items(root)
    assert archive_files(root) == {item.path for item in items}
    assert len({(item.path, item.member, item.idx) for item in items}) == len(items)
    with ContainerReader(root) as reader:
        for item in items:
            reading = reader.read(item.path, item.member, item.idx, item.count)
            assert reading.checksum == item.checksum and reading.nbytes == item.nbytes, item
        for path, member in {(item.path, item.member) for item in items if item.member is not None}:
            indices = sorted(item.idx for item in items if (item.path, item.member) == (path, member))
            assert indices == list(range(reader.committed(path, member))), (path, member)
    return items


def assert_rows_and_catalog_agree(root: Path) -> list[CatalogItem]:
    """The Parquet file the restart rebuilt from the killed run's journal is the only file; every item of its rows
    is cataloged once, at its rows (rows journaled in the moment before the kill and not in the catalog's journal
    were read back from the file), and every cataloged item reads back as its rows, of its source and sequence
    value."""
    import pyarrow.parquet as pq

    items = catalog_items(root)
    assert archive_files(root) == {"run.parquet"} == {item.path for item in items}
    keys = pq.read_table(root / "run.parquet", columns=["item_key"]).column("item_key").to_pylist()
    with ContainerReader(root) as reader:
        spans = reader.spans("run.parquet", "rows", 0)
        assert sorted((item.idx, item.count) for item in items) == spans
        assert sum(count for _, count in spans) == len(keys)
        for item in items:
            reading = reader.read(item.path, item.member, item.idx, item.count)
            assert reading.row is not None, item
            assert (reading.row["source_name"], reading.row["sequence"]) == (item.source, item.sequence), item
            assert abs(reading.row["received"].timestamp() - item.received) < 1e-5, item
    return items


def test_an_applier_process_that_dies_is_started_again(make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "CHECK_INTERVAL", 0.0)
    rig = make_rig(NPY, matched=())
    first = rig.archiver.stats()["catalog"]["applier_pid"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not package_process(first), what="the applier to die")
    for frame in range(5):
        rig.archiver.feed("cam", (np.full(3, frame), {"frame": frame}))
        wait_for_items(rig.archiver, frame + 1)
    status = rig.archiver.stats()["catalog"]
    assert status["applier_restarts"] == 1 and status["applier_pid"] != first and status["applier_running"]
    wait_until(lambda: catalog_count(rig.root) == 5, what="the new applier to catch up")
    applier = status["applier_pid"]
    rig.archiver.close()
    assert not package_process(applier), "close stops the applier"


def test_the_applier_runs_at_the_lowest_priority_from_its_start(make_rig: RigFactory) -> None:
    """Set by the archiver as soon as the process exists, not only by the applier once its imports are done."""
    rig = make_rig(NPY, matched=())
    applier = rig.archiver.stats()["catalog"]["applier_pid"]
    assert os.getpriority(os.PRIO_PROCESS, applier) == max(catalog.NICE, os.getpriority(os.PRIO_PROCESS, 0))


def _dead_journal(root: Path, lines: bytes, adopt: str | dict[str, Any] | None = ".npy") -> Path:
    """A journal as a killed run leaves it: its process (this PID with another start time) is gone. ``adopt``:
    the suffix of its files (as journals before ``zarr_arrays`` have it), or the header's ``adopt`` itself."""
    directory = journal_directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / JournalName(os.getpid(), 1, 99, 1).text
    header: dict[str, Any] = {"archiver": "Killed:acquisition_data", "event": "acquisition_data", "adopt": None}
    if adopt is not None:
        header["adopt"] = {"suffix": adopt} if isinstance(adopt, str) else adopt
    path.write_bytes(catalog_journal.encode_header({**header, "created": 0.0}) + lines)
    return path


def test_a_killed_runs_unjournaled_files_are_adopted_and_its_journal_applied(tmp_path: Path) -> None:
    journaled = tmp_path / "run" / "000.npy"
    journaled.parent.mkdir()
    journaled.write_bytes(b"journaled")
    location = Location(str(journaled), 9, file_checksum(journaled))
    outcome = Archived("cam", "acquisition_data", 0, {"frame": 0}, 1.0, 9, (location,), committed=2.0)
    journal = _dead_journal(tmp_path, encode_outcomes([outcome]) + b'["a", "cam", "acq')  # torn by the kill
    (tmp_path / "run" / "001.npy").write_bytes(b"linked, not journaled")  # the kill window
    (tmp_path / "run" / "notes.txt").write_bytes(b"not the archiver's kind of file")
    (tmp_path / ".heros-archiver" / "dead-letter").mkdir(parents=True)
    (tmp_path / ".heros-archiver" / "dead-letter" / "x.npy").write_bytes(b"its own folder")

    listener = CatalogListener(tmp_path, "acquisition_data", lambda: "Next")
    listener.close()
    assert not journal.exists()
    by_path = {item.path: item for item in catalog_items(tmp_path)}
    assert set(by_path) == {"run/000.npy", "run/001.npy"}
    assert (
        by_path["run/000.npy"].metadata == {"frame": 0} and by_path["run/000.npy"].archiver == "Killed:acquisition_data"
    )
    adopted = by_path["run/001.npy"]
    assert adopted.metadata == {} and adopted.source == "cam" and adopted.sequence is None
    assert adopted.checksum == file_checksum(tmp_path / "run" / "001.npy") and adopted.nbytes == 21


def test_a_killed_zarr_archivers_published_arrays_are_adopted_with_their_key(tmp_path: Path) -> None:
    """A ZarrArchiver publishes an array (a directory) and journals it a moment later: the kill window."""
    writer = ZarrArrayWriter("{{ file_path }}/run.zarr", "cam/{{ '%03d' % frame }}", str(tmp_path))
    frames = [np.arange(24, dtype="<u2").reshape(4, 6) + i for i in range(3)]
    located = [writer.write_located("cam", frame, {"file_path": str(tmp_path), "frame": i}) for i, frame in
               enumerate(frames)]  # fmt: skip
    writer.close()
    outcome = Archived("cam", "acquisition_data", 0, {"frame": 0}, 1.0, 48, located[0], committed=2.0)
    _dead_journal(tmp_path, encode_outcomes([outcome]), adopt={"suffix": None, "zarr_arrays": True})

    CatalogListener(tmp_path, "acquisition_data", lambda: "Next").close()

    items = {(item.path, item.member): item for item in catalog_items(tmp_path)}
    assert set(items) == {("run.zarr", "cam/000"), ("run.zarr", "cam/001"), ("run.zarr", "cam/002")}
    for (location,) in located[1:]:
        adopted = items[("run.zarr", location.member)]
        assert (adopted.checksum, adopted.nbytes, adopted.idx) == (location.checksum, location.nbytes, None)
        assert adopted.metadata == {} and adopted.source == "cam" and adopted.archiver == "Killed:acquisition_data"
    assert items[("run.zarr", "cam/000")].metadata == {"frame": 0}  # journaled: as the journal says
    assert verify(tmp_path).ok


@pytest.mark.parametrize("kind", ["hdf5", "zarr-append", "tiff-stack"])
def test_a_killed_runs_frames_committed_but_not_journaled_are_adopted_from_the_container(
    tmp_path: Path, kind: str
) -> None:
    """A commit made, the kill before its journal line: the container holds frames the catalog does not name."""
    member = "pages" if kind == "tiff-stack" else "cam/data"
    if kind == "hdf5":
        path = tmp_path / "run.h5"
        container: Any = Hdf5Container(path, member)
    elif kind == "zarr-append":
        path = tmp_path / "run.zarr"
        container = ZarrAppendContainer(path, member, root=tmp_path)
    else:
        path = tmp_path / "run.tif"
        container = TiffStackContainer(path, root=str(tmp_path))
    for index in range(10):
        key, frame = ItemKey("cam", index, f"{index:032x}"), np.full((4, 6), index, dtype="<u2")
        container.append(key, frame, {"frame": index, "run": 7}, received=50.0 + index)
        if index in (4, 9):
            container.commit()  # two commits; the second is never journaled
    container.close()
    with ContainerReader(tmp_path) as reader:
        readings = [reader.read(str(path), member, index) for index in range(10)]
    journaled = [
        Archived("cam", "acquisition_data", i, {"frame": i, "run": 7}, 50.0 + i, 48,
                 (Location(str(path), r.nbytes or 0, r.checksum, member, i),), committed=60.0)
        for i, r in enumerate(readings[:5])
    ]  # fmt: skip
    _dead_journal(tmp_path, encode_outcomes(journaled), adopt={"frames": True})

    CatalogListener(tmp_path, "acquisition_data", lambda: "Next").close()

    items = sorted(catalog_items(tmp_path), key=lambda item: item.idx or 0)
    assert [item.idx for item in items] == list(range(10))
    for item, reading in zip(items[5:], readings[5:], strict=True):
        assert (item.path, item.member, item.archiver) == (path.name, member, "Killed:acquisition_data")
        assert (item.checksum, item.nbytes) == (reading.checksum, reading.nbytes)
        assert (item.source, item.sequence, item.received) == ("cam", item.idx, 50.0 + (item.idx or 0))
        assert item.metadata == {"frame": item.idx, "run": 7}
    assert verify(tmp_path).ok


def test_a_killed_container_runs_files_are_not_adopted(tmp_path: Path) -> None:
    _dead_journal(tmp_path, b"", adopt=None)
    (tmp_path / "run.h5").write_bytes(b"a container")
    CatalogListener(tmp_path, "acquisition_data", lambda: "Next").close()
    assert catalog_items(tmp_path) == []


def test_the_journal_of_a_live_process_is_left_to_it(tmp_path: Path) -> None:
    directory = journal_directory(tmp_path)
    directory.mkdir(parents=True)
    live = directory / JournalName(os.getpid(), process_start(os.getpid()), 98, 1).text
    live.write_bytes(catalog_journal.encode_header({"archiver": "Live:e"}))
    CatalogListener(tmp_path, "acquisition_data", lambda: "Next").close()
    assert live.exists()


# ------------------------------------------------------------------------------------------------ the journal
def _outcomes(count: int, root: Path, start: int = 0) -> list[Any]:
    return [
        Archived("cam", "ev", n, {"n": n}, 1.0, 1, (Location(str(root / f"{n}.npy"), 1, "xxh3-128:00"),), committed=2.0)
        for n in range(start, start + count)
    ] + [DeadLettered("cam", "ev", None, {}, 1.0, 1, str(root / "entry"), "Error: no")]


def test_applying_a_journal_twice_or_from_two_threads_at_once_applies_each_line_once(tmp_path: Path) -> None:
    connection = SqliteCatalog.for_writing(tmp_path)
    writer = JournalWriter(journal_directory(tmp_path), {"archiver": "A:ev"})
    path = writer.directory / writer.name
    writer.append(encode_outcomes(_outcomes(500, tmp_path)))

    def apply() -> None:
        own = SqliteCatalog.for_writing(tmp_path)
        try:
            apply_journal(own, path, str(tmp_path), step_bytes=2000)
        finally:
            own.close()

    threads = [threading.Thread(target=apply) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    applied = apply_journal(connection, path, str(tmp_path))
    assert applied is not None and applied.complete
    connection.execute("DELETE FROM journal_applied")  # as if the offset were lost: the items are upserted
    apply_journal(connection, path, str(tmp_path))
    with CatalogReader(tmp_path) as reader:
        assert reader.count() == 500 and [i.sequence for i in reader.items()] == list(range(500))
        assert len(list(reader.failures())) == 2  # once from the threads, once more without the offset
    writer.close()
    connection.close()


def test_a_long_journal_goes_on_in_new_segments_and_applied_ones_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_journal, "SEGMENT_BYTES", 4096)
    listener = CatalogListener(tmp_path, "ev", lambda: "A")
    for start in range(0, 600, 20):
        listener.handle(_outcomes(20, tmp_path, start)[:-1])
    wait_until(lambda: len(os.listdir(journal_directory(tmp_path))) <= 2, what="applied segments removed")
    listener.close()
    assert not os.listdir(journal_directory(tmp_path))
    with CatalogReader(tmp_path) as reader:
        assert [item.sequence for item in reader.items()] == list(range(600))


def test_the_schema_is_the_one_readers_rely_on(tmp_path: Path) -> None:
    open_for_writing(tmp_path).close()
    connection = sqlite3.connect(catalog_path(tmp_path))
    columns = {
        table: [row[1] for row in connection.execute(f"PRAGMA table_info({table})")] for table in ("items", "failures")
    }
    assert columns["items"] == ["id", "archiver", "source", "event", "sequence", "path", "member", "idx", "count",
                                "nbytes", "checksum", "metadata", "received", "committed"]  # fmt: skip
    assert columns["failures"] == ["id", "archiver", "source", "event", "sequence", "kind", "entry", "error",
                                   "metadata", "received", "time"]  # fmt: skip
    assert connection.execute("PRAGMA user_version").fetchone() == (1,)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    indexes = {row[1] for row in connection.execute("PRAGMA index_list(items)")}
    assert {"items_location", "items_source", "items_received"} <= indexes
    connection.close()


# ------------------------------------------------------------------------------------------------ hostile metadata
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=8)
    | st.sampled_from([np.int64(-3), np.float32(1.5), np.uint8(7), np.bool_(True), np.float64("nan")])
)
_keys = st.text(max_size=10) | st.integers() | st.none() | st.tuples(st.integers(), st.integers()) | st.floats()
_metadata = st.dictionaries(
    _keys, st.recursive(_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4))
)


@pytest.fixture(scope="module")
def shared_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


_numbers = iter(range(10**9))


@pytest.mark.timeout(300)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=_metadata, error=st.text(max_size=30))
def test_metadata_of_any_shape_never_breaks_the_journal_or_the_catalog(
    shared_root: Path, metadata: dict[Any, Any], error: str
) -> None:
    number = next(_numbers)
    root = shared_root
    outcomes = [
        Archived("cam", "ev", number, metadata, 1.0, 1, (Location(str(root / f"{number}.npy"), 1, None),)),
        DeadLettered("cam", "ev", 2**80, metadata, 1.0, 1, f"/elsewhere/{number}", error),
        Dropped("cam\udcff", "ev", None, metadata, 1.0, 1, error),
    ]
    connection = SqliteCatalog.for_writing(root)
    try:
        writer = JournalWriter(journal_directory(root), {})
        writer.append(encode_outcomes(outcomes))
        writer.close()
        applied = apply_journal(connection, writer.directory / writer.name, str(root))
    finally:
        connection.close()
    assert applied is not None and applied.complete and applied.state.skipped == 0
    with CatalogReader(root) as reader:
        (item,) = [i for i in reader.items() if i.path == f"{number}.npy"]
        failures = list(reader.failures())
    assert isinstance(item.metadata, dict) and item.sequence == number
    assert any(f.entry == f"/elsewhere/{number}" and f.sequence is None for f in failures)
    assert any(f.kind == "dropped" and f.source.startswith("cam") and f.error == error for f in failures)
    if _plain_json(metadata):
        assert item.metadata == metadata


@pytest.mark.timeout(300)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=_metadata)
def test_intent_records_keep_metadata_of_any_shape_for_an_adoption(shared_root: Path, metadata: dict[Any, Any]) -> None:
    """What a killed run's file is adopted with: its intent record's metadata, JSON text whatever it held."""
    number = next(_numbers)
    segment = shared_root / f"intents-{number}"
    segment.write_bytes(encode_intents([("cam", "ev", number, 1.5, str(shared_root / f"{number}.npy"), metadata)]))
    found = catalog_recovery._intents((segment,), str(shared_root))
    ((source, event, sequence, received, text),) = found.files[f"{number}.npy"]
    assert (source, event, sequence, received) == ("cam", "ev", number, 1.5)
    assert isinstance(json.loads(text), dict)
    if _plain_json(metadata):
        assert json.loads(text) == metadata


def test_an_intent_record_of_an_earlier_version_is_adopted_with_empty_metadata(tmp_path: Path) -> None:
    segment = tmp_path / "old"
    segment.write_bytes(b'[["i","cam","ev",3,1.5,2.0,"' + str(tmp_path).encode() + b'/3.npy"]]\n')
    assert catalog_recovery._intents((segment,), str(tmp_path)).files["3.npy"] == [("cam", "ev", 3, 1.5, "{}")]


def _plain_json(value: Any) -> bool:
    """JSON's own types only: text keys, finite floats, integers of 64 bits, text without lone surrogates."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(k) and _plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, bool) or value is None:
        return True
    return isinstance(value, int) and -(2**63) <= value < 2**63


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"flag": True}, [0]),
        ({"flag": False}, [1]),
        ({"none": None}, [0]),
        ({"shape": [2, 3]}, [0]),
        ({"shape": [3, 2]}, [1]),
        ({"nested": {"a": 1}}, [0]),
        ({"x": 1}, [0, 1]),
        ({"x": 1.0}, [0, 1]),
        ({"x": "1"}, []),
        ({"key with.dots": "v"}, [1]),
        ({"flag": True, "x": 1}, [0]),
    ],
)
def test_where_matches_metadata_values_of_every_json_type(
    tmp_path: Path, where: dict[str, Any], expected: list[int]
) -> None:
    metadata = [
        {"flag": True, "none": None, "shape": [2, 3], "nested": {"a": 1}, "x": 1},
        {"flag": False, "none": 0, "shape": [3, 2], "nested": {"a": 2}, "x": 1, "key with.dots": "v"},
    ]
    connection = SqliteCatalog.for_writing(tmp_path)
    writer = JournalWriter(journal_directory(tmp_path), {})
    writer.append(
        encode_outcomes(
            [Archived("cam", "ev", n, m, 1.0, 1, (Location(f"{n}", 1, None),)) for n, m in enumerate(metadata)]
        )
    )
    writer.close()
    apply_journal(connection, writer.directory / writer.name, str(tmp_path))
    connection.close()
    with CatalogReader(tmp_path) as reader:
        assert [item.sequence for item in reader.items(where=where)] == expected
        assert reader.count(where=where) == len(expected)
