"""Replaying the dead-letter store: fixed templates, dry runs, unreadable entries, and never a duplicate file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from heros_archiver.deadletter import DeadLetterStore
from heros_archiver.replay import replay
from heros_archiver.writer import WriterSettings
from procs import (
    check_frame_file,
    entries,
    frame,
    npy_files,
    read_entry,
    run_cli,
    send_frames,
    settled,
    tree_state,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

SHAPE = (4, 6)
TEMPLATE = "{{ file_path }}/{{ '%03d' % frame }}.npy"


def _store(root: Path) -> DeadLetterStore:
    return DeadLetterStore(root / ".heros-archiver" / "dead-letter")


def _put(store: DeadLetterStore, root: Path, index: int, on_exists: str = "error", template: str = TEMPLATE) -> Path:
    """A dead-letter entry as a FileArchiver with ``template`` under ``root`` would have written it."""
    settings = WriterSettings("npy", template, str(root), on_exists)  # type: ignore[arg-type]
    return store.put(
        source="cam",
        event="acquisition_data",
        payload=frame(index, SHAPE),
        metadata={"file_path": str(root), "frame": index},
        error="StorageError: [Errno 28] No space left on device",
        attempts=6,
        writer=settings.to_dict(),
    )


def test_entry_of_a_template_missing_a_key_replays_with_the_template_fixed(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    rig = make_rig("{{ file_path }}/{{ run }}/{{ '%03d' % frame }}.npy")  # the events carry no "run"
    send_frames(rig.camera, [0, 1, 2], SHAPE)
    wait_until(lambda: settled(rig.archiver.stats()) >= 3, what="three frames settled")
    rig.archiver._teardown()
    dead_letters = tmp_path / ".heros-archiver" / "dead-letter"
    dead = entries(dead_letters)
    assert len(dead) == 3 and rig.archiver.stats()["total"]["dead_lettered"] == 3
    assert all("TemplateRenderError" in read_entry(e)["error"] and "run" in read_entry(e)["error"] for e in dead)
    assert all(read_entry(e)["attempts"] == 1 for e in dead)  # not retried: it cannot succeed

    unchanged = run_cli(["replay", str(dead_letters)])
    assert unchanged.returncode == 1, unchanged.stdout
    assert "archived 0 of 3 item(s); 3 failed" in unchanged.stdout and "run" in unchanged.stdout
    assert entries(dead_letters) == dead and npy_files(tmp_path) == []

    fixed = run_cli(["replay", str(dead_letters), "--template", "{{ file_path }}/fixed/{{ '%03d' % frame }}.npy"])
    assert fixed.returncode == 0, fixed.stdout
    assert "archived 3 of 3 item(s); 0 failed" in fixed.stdout
    files = npy_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["fixed/000.npy", "fixed/001.npy", "fixed/002.npy"]
    assert [check_frame_file(p, SHAPE) for p in files] == [0, 1, 2]
    assert entries(dead_letters) == []


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for index in range(3):
        _put(store, tmp_path, index)
    before = tree_state(tmp_path)

    outcomes = replay(store.directory, dry_run=True)
    result = run_cli(["replay", str(store.directory), "--dry-run"])

    assert [o.ok for o in outcomes] == [True] * 3
    assert [o.paths for o in outcomes] == [[tmp_path / f"{i:03d}.npy"] for i in range(3)]
    assert result.returncode == 0, result.stdout
    assert "would archive 3 of 3 item(s); 0 failed" in result.stdout and "would write" in result.stdout
    assert tree_state(tmp_path) == before
    assert npy_files(tmp_path) == []


def test_unreadable_entries_are_reported_and_kept(tmp_path: Path) -> None:
    store = _store(tmp_path)
    good_before = _put(store, tmp_path, 0)
    corrupt = _put(store, tmp_path, 1)
    (corrupt / "item.pickle").write_bytes(b"garbage, not an array")  # the faithful copy, which replay reads
    unstorable = store.put(
        source="cam", event="acquisition_data", payload=object(), metadata={"frame": 2}, error="x", attempts=1
    )
    _put(store, tmp_path, 3)
    corrupt_bytes = (corrupt / "item.pickle").read_bytes()

    result = run_cli(["replay", str(store.directory)])

    assert result.returncode == 1, result.stdout
    assert "archived 2 of 4 item(s); 2 failed" in result.stdout
    assert "cannot read dead-letter entry" in result.stdout and "payload was not storable" in result.stdout
    assert entries(store.directory) == [corrupt, unstorable]  # kept, untouched
    assert (corrupt / "item.pickle").read_bytes() == corrupt_bytes
    assert not good_before.exists()
    assert [check_frame_file(p, SHAPE) for p in npy_files(tmp_path)] == [0, 3]


def test_existing_different_file_is_kept_and_the_entry_stays(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entry = _put(store, tmp_path, 4)
    other = np.zeros(SHAPE, dtype="uint16")
    np.save(tmp_path / "004.npy", other)

    [outcome] = replay(store.directory)

    assert not outcome.ok and "TargetExistsError" in outcome.error, outcome
    assert entries(store.directory) == [entry]
    np.testing.assert_array_equal(np.load(tmp_path / "004.npy"), other)


@pytest.mark.parametrize(
    "on_exists",
    [
        "error",
        "overwrite",
        "unique",
    ],
)
def test_replay_twice_never_duplicates_a_file(tmp_path: Path, on_exists: str) -> None:
    store = _store(tmp_path)
    for index in range(3):
        _put(store, tmp_path, index, on_exists)
    # a replay interrupted between writing a file and removing its entry: the entry is still there next time
    copies = tmp_path / "copies"
    shutil.copytree(store.directory, copies)

    first = run_cli(["replay", str(store.directory)])
    assert first.returncode == 0, first.stdout
    assert "archived 3 of 3 item(s)" in first.stdout
    after_first = tree_state(tmp_path)
    second = run_cli(["replay", str(store.directory)])
    assert second.returncode == 0 and "archived 0 of 0 item(s)" in second.stdout, second.stdout
    assert tree_state(tmp_path) == after_first

    shutil.rmtree(store.directory)
    shutil.copytree(copies, store.directory)
    shutil.rmtree(copies)
    outcomes = replay(store.directory)

    assert [o.ok for o in outcomes] == [True] * 3, outcomes
    files = npy_files(tmp_path)
    assert [p.name for p in files] == ["000.npy", "001.npy", "002.npy"]
    assert [check_frame_file(p, SHAPE) for p in files] == [0, 1, 2]
    assert entries(store.directory) == []
