"""heros-archiver verify: archives written by real archivers over Zenoh, then damaged, and what verify finds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from conftest import Rig, RigFactory
from helpers import RawCamera, wait_for_items, wait_until
from heros_archiver import Hdf5Archiver, ParquetArchiver, TiffArchiver, ZarrAppendArchiver
from heros_archiver.errors import CatalogError
from heros_archiver.observe.catalog_journal import JournalWriter, encode_outcomes
from heros_archiver.observe.catalog_schema import journal_directory, open_read_only
from heros_archiver.observe.catalog_sqlite import SqliteCatalog
from heros_archiver.observe.outcomes import CHECKSUM_ALGORITHM, Archived, Location
from heros_archiver.observe.sequences import sequence_ranges
from heros_archiver.observe.verify import verify
from heros_archiver.storage.temporaries import PROCESS_TOKEN, TMP_PREFIX

pytestmark = pytest.mark.timeout(90)

CLI = [sys.executable, "-m", "heros_archiver.cli"]
#: The folder comes from the event, so that the root (derived from the template's fixed start) is tmp_path.
TEMPLATE = "{{ file_path }}/{{ run }}/{{ '%03d' % frame }}.npy"
RUN = {"run": "run"}


def _cataloged(root: Path) -> int:
    """Items in the catalog of ``root`` as a reader sees it now (0 before the archiver made it)."""
    try:
        connection = open_read_only(root)
    except CatalogError:
        return 0
    try:
        return int(connection.execute("SELECT count(*) FROM items").fetchone()[0])
    finally:
        connection.close()


def _wait_cataloged(rig: Rig, count: int) -> None:
    """Wait until ``count`` items are archived and in the catalog (its applier runs behind the writer)."""
    wait_for_items(rig.archiver, count)
    wait_until(lambda: _cataloged(rig.root) == count, what=f"{count} items in the catalog")


def _label(root: Path) -> str:
    """The archiver's name in the catalog (``<HERO name>:<event>``)."""
    connection = open_read_only(root)
    try:
        (label,) = connection.execute("SELECT DISTINCT archiver FROM items").fetchone()
    finally:
        connection.close()
    return str(label)


def _archive(make_rig: RigFactory, frames: Sequence[int] = range(10)) -> Path:
    """An archive of .npy frames written by a real ArrayArchiver; returns its root once every frame is cataloged."""
    rig = make_rig(TEMPLATE, sequence_key="frame")
    for start, count in _runs(frames):
        rig.camera.acquire(count, shape=(64, 48), dtype="uint16", start=start, extra_metadata=RUN)
    _wait_cataloged(rig, len(frames))
    return rig.root


def _runs(frames: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for frame in frames:
        if runs and runs[-1][0] + runs[-1][1] == frame:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((frame, 1))
    return runs


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "verify", *args], capture_output=True, text=True, timeout=60)


def _problem_lines(output: str) -> list[str]:
    kinds = ("missing ", "truncated ", "modified ", "unreadable ", "orphan ", "gap ", "repeat ")
    return [line for line in output.splitlines() if line.startswith(kinds)]


def test_a_clean_archive_exits_0(make_rig: RigFactory, tmp_path: Path) -> None:
    root = _archive(make_rig)
    result = _cli(str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _problem_lines(result.stdout) == [] and "all is well" in result.stdout
    report = json.loads(_cli(str(root), "--json").stdout)
    assert report["ok"] and report["checked"]["files"] == 10 and report["problems"] == []
    assert report["checked"]["bytes"] == sum(p.stat().st_size for p in (root / "run").iterdir())


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1)


def _modify(path: Path) -> None:
    with path.open("r+b") as file:  # the last byte: the frame's data, not the .npy header
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 1]))


def _extend(path: Path) -> None:
    with path.open("ab") as file:
        file.write(b"\0")


@pytest.mark.parametrize(
    ("damage", "line"),
    [
        (_truncate, "truncated run/003.npy: expected 6272 bytes, found 6271 bytes"),
        (_modify, "modified run/003.npy: expected xxh3-128:"),
        (_extend, "modified run/003.npy: expected 6272 bytes, found 6273 bytes"),
        (Path.unlink, "missing run/003.npy: expected a file of 6272 bytes, found no file"),
    ],
    ids=["truncated", "modified", "longer", "deleted"],
)
def test_a_damaged_file_is_found_and_exits_1(make_rig: RigFactory, tmp_path: Path, damage: Any, line: str) -> None:
    root = _archive(make_rig)
    damage(root / "run" / "003.npy")
    result = _cli(str(root))
    assert result.returncode == 1, result.stdout + result.stderr
    (found,) = _problem_lines(result.stdout)
    assert found.startswith(line), found
    report = json.loads(_cli(str(root), "--json").stdout)
    (problem,) = report["problems"]
    assert problem["path"] == "run/003.npy" and problem["kind"] == line.split()[0]


def test_a_modified_file_shows_both_checksums(make_rig: RigFactory, tmp_path: Path) -> None:
    root = _archive(make_rig)
    path = root / "run" / "007.npy"
    before = f"xxh3-128:{xxhash.xxh3_128_hexdigest(path.read_bytes())}"
    _modify(path)
    after = f"xxh3-128:{xxhash.xxh3_128_hexdigest(path.read_bytes())}"
    report = verify(root)
    (problem,) = report.problems
    assert (problem.kind, problem.expected, problem.found) == ("modified", before, after)


def test_an_extra_file_is_an_orphan_and_the_state_directory_and_temporaries_are_not(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    root = _archive(make_rig)
    (root / "run" / "notes.txt").write_text("not archived")
    (root / "run" / "sub").mkdir()
    (root / "run" / "sub" / "stray.npy").write_bytes(b"x")
    (root / "run" / f"{TMP_PREFIX}.{os.getpid()}.{PROCESS_TOKEN}.1.tmp").write_bytes(b"half")
    (root / ".heros-archiver" / "anything").write_bytes(b"ours")
    result = _cli(str(root))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _problem_lines(result.stdout) == [
        "orphan run/notes.txt: expected a cataloged file, found a file no entry names",
        "orphan run/sub/stray.npy: expected a cataloged file, found a file no entry names",
    ]
    assert _cli(str(root), "--no-orphans").returncode == 0


def test_a_file_journaled_but_not_yet_applied_is_no_orphan(tmp_path: Path) -> None:
    """An applier behind its archiver (a busy machine): the file is in a live journal, not yet in the catalog."""
    SqliteCatalog.for_writing(tmp_path).close()
    journaled, stray = tmp_path / "run" / "000.npy", tmp_path / "run" / "stray.npy"
    journaled.parent.mkdir()
    for path in (journaled, stray):
        np.save(path, np.arange(6, dtype=np.uint16))
    content = journaled.read_bytes()
    located = Location(str(journaled), len(content), f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_128_hexdigest(content)}")
    journal = JournalWriter(journal_directory(tmp_path), {"archiver": "cam-archiver:acquisition_data"})
    try:
        journal.append(encode_outcomes([Archived("cam", "acquisition_data", 0, {}, 1.0, len(content), (located,))]))
        report = verify(tmp_path, settle=0)
    finally:
        journal.close()
    assert [(p.kind, p.path) for p in report.problems] == [("orphan", "run/stray.npy")]


def test_gaps_in_a_sequence_are_reported_as_ranges(make_rig: RigFactory, tmp_path: Path) -> None:
    root = _archive(make_rig, [0, 1, 2, 3, 4, 6, 9, 10])
    result = _cli(str(root))
    assert result.returncode == 1, result.stdout + result.stderr
    stream = f"cam acquisition_data (archiver {_label(root)})"
    assert _problem_lines(result.stdout) == [
        f"gap {stream}: expected sequence 5, found none cataloged (1 missing between 0 and 10)",
        f"gap {stream}: expected sequence 7-8, found none cataloged (2 missing between 0 and 10)",
    ]
    gaps = json.loads(_cli(str(root), "--json").stdout)["problems"]
    assert [(g["kind"], g["source"], g["event"], g["first"], g["last"]) for g in gaps] == [
        ("gap", "cam", "acquisition_data", 5, 5),
        ("gap", "cam", "acquisition_data", 7, 8),
    ]


def test_no_catalog_exits_2_and_says_where_it_looked(tmp_path: Path) -> None:
    result = _cli(str(tmp_path))
    assert result.returncode == 2
    assert f"no catalog at {tmp_path / '.heros-archiver' / 'catalog.sqlite'}" in " ".join(result.stderr.split())
    with pytest.raises(CatalogError, match="no catalog at"):
        verify(tmp_path)


def test_verify_while_the_archiver_writes_reports_nothing(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(TEMPLATE, sequence_key="frame")
    sender = threading.Thread(
        target=rig.camera.acquire, args=(900,), kwargs={"shape": (64, 48), "rate": 300.0, "extra_metadata": RUN}
    )
    sender.start()
    reports = []
    try:
        while sender.is_alive():
            reports.append(verify(tmp_path))
    finally:
        sender.join()
    _wait_cataloged(rig, 900)
    reports.append(verify(tmp_path))
    assert len(reports) >= 2 and all(r.problems == [] for r in reports), [r.problems for r in reports if r.problems]
    assert reports[-1].files == 900


@given(st.dictionaries(st.integers(-(2**40), 2**40), st.integers(1, 3), max_size=60))
def test_sequence_ranges_cover_exactly_the_values_not_held(held: dict[int, int]) -> None:
    ranges = sequence_ranges(sorted(held.items()))
    if not held:
        assert ranges is None
        return
    assert ranges is not None and (ranges.first, ranges.last) == (min(held), max(held))
    values = sorted(held)
    assert list(ranges.gaps) == [(a + 1, b - 1) for a, b in pairwise(values) if b > a + 1]
    assert ranges.missing == ranges.last - ranges.first + 1 - len(held) and ranges.values == len(held)
    assert [v for first, last in ranges.repeats for v in range(first, last + 1)] == sorted(
        v for v, items in held.items() if items > 1
    )
    assert all(b[0] > a[1] + 1 for a, b in pairwise(ranges.repeats))


def test_sequence_ranges_are_gaps_and_repeats() -> None:
    ranges = sequence_ranges([(0, 1), (1, 2), (2, 2), (3, 1), (6, 1), (7, 3), (10, 1)])
    assert ranges is not None
    assert (ranges.first, ranges.last, ranges.values, ranges.missing) == (0, 10, 7, 4)
    assert ranges.gaps == ((4, 5), (8, 9)) and ranges.repeats == ((1, 2), (7, 7))
    assert sequence_ranges([]) is None


CONTAINERS = {
    "hdf5": (Hdf5Archiver, {"file_template": "{{ file_path }}/run.h5"}, "run.h5", "cam/data"),
    "zarr_append": (ZarrAppendArchiver, {"store_template": "{{ file_path }}/run.zarr"}, "run.zarr", "cam/data"),
    "tiff_stack": (TiffArchiver, {"save_template": "{{ file_path }}/run.tif", "stack": True}, "run.tif", "pages"),
}


def _container_archive(make_rig: RigFactory, root: Path, kind: str, frames: int = 6) -> Rig:
    """A container archive of ``frames`` frames of 16 x 8 uint16 written by a real archiver over Zenoh."""
    archiver_cls, kwargs, _, _ = CONTAINERS[kind]
    rig = make_rig(None, archiver_cls=archiver_cls, sequence_key="frame", **kwargs)
    rig.camera.acquire(frames, shape=(16, 8), dtype="uint16")
    _wait_cataloged(rig, frames)
    return rig


@pytest.mark.parametrize("kind", CONTAINERS)
def test_a_clean_container_archive_exits_0(make_rig: RigFactory, tmp_path: Path, kind: str) -> None:
    rig = _container_archive(make_rig, tmp_path, kind)
    live = verify(tmp_path)  # while the archiver still has the container open
    rig.archiver.close()
    result = _cli(str(tmp_path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert live.problems == [] and report["problems"] == []
    assert (report["checked"]["containers"], report["checked"]["items"]) == (1, 6)
    assert report["checked"]["bytes"] == 6 * 16 * 8 * 2 and report["checked"]["unchecked"] == 0


def test_a_damaged_hdf5_frame_a_shortened_stack_and_a_deleted_file_are_found(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    rig = _container_archive(make_rig, tmp_path, "hdf5")
    rig.archiver.close()
    with h5py.File(tmp_path / "run.h5", "r+") as handle:
        handle["cam/data"][3, 0, 0] ^= 1  # one bit of frame 3
        handle["cam/archive/committed_length"][0] = 5  # frame 5 is past the end now
    result = _cli(str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = _problem_lines(result.stdout)
    assert [line.split(":")[0] for line in lines] == ["truncated run.h5[cam/data@5]", "modified run.h5[cam/data@3]"]
    assert "the stack holds 5" in lines[0]

    (tmp_path / "run.h5").unlink()
    report = verify(tmp_path)
    assert [(p.kind, p.where) for p in report.problems] == [("missing", f"run.h5[cam/data@{n}]") for n in range(6)]


def test_parquet_rows_are_pending_until_their_file_is_published_then_checked(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    rig = make_rig(
        None,
        archiver_cls=ParquetArchiver,
        camera_cls=RawCamera,
        sequence_key="frame",
        file_template="{{ file_path }}/readings.parquet",
    )
    for frame in range(5):
        rig.camera.acquisition_data(({"t": frame * 0.5}, {"frame": frame}))
    _wait_cataloged(rig, 5)
    live = verify(tmp_path)
    assert (live.problems, live.pending, live.containers) == ([], 5, 0)
    rig.archiver.close()
    published = verify(tmp_path)
    assert (published.problems, published.pending, published.items, published.unchecked) == ([], 0, 5, 5)


def test_repeated_sequence_values_are_notes_not_problems(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig("{{ file_path }}/{{ take }}/{{ frame }}.npy", sequence_key="frame")
    for take in (1, 2):  # a camera that counts from 0 again at every take
        rig.camera.acquire(3, shape=(8, 8), extra_metadata={"take": take})
    rig.camera.acquire(1, shape=(8, 8), start=3, extra_metadata={"take": 2})
    _wait_cataloged(rig, 7)
    result = _cli(str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _problem_lines(result.stdout) == [
        f"repeat cam acquisition_data (archiver {_label(tmp_path)}): expected sequence 0-2 once, "
        "found it more than once"
    ]


def test_a_gap_of_dead_lettered_items_says_so(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(TEMPLATE, sequence_key="frame")
    rig.camera.acquire(5, shape=(8, 8), extra_metadata=RUN)
    rig.camera.acquire(1, shape=(8, 8), start=5)  # no 'run': the template cannot render, the frame is dead-lettered
    rig.camera.acquire(4, shape=(8, 8), start=6, extra_metadata=RUN)
    wait_for_items(rig.archiver, 10)
    wait_until(lambda: _cataloged(tmp_path) == 9, what="9 items in the catalog")
    rig.archiver.close()  # the failure is in the catalog too
    result = _cli(str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _problem_lines(result.stdout) == [
        f"gap cam acquisition_data (archiver {_label(tmp_path)}): expected sequence 5, "
        "found none cataloged (1 missing between 0 and 9; 1 dead-lettered)"
    ]
