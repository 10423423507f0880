"""Replaying a ZarrArchiver's dead letters: each payload becomes its array again, confined, under its root only.

The entries are real: frames sent over loopback Zenoh by a camera (or fed) to a real ZarrArchiver, which
dead-letters them (an array already at the key under ``on_exists="error"``, a store template that cannot
render); the stores are read back with ``zarr.open_group``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import procs
from conftest import RigFactory
from helpers import dead_letter_entries, read_entry, wait_for_items
from heros_archiver import ZarrArchiver
from heros_archiver.errors import ConfigurationError, TargetExistsError
from heros_archiver.state.replay import replay
from heros_archiver.state.replay_zarr import ZarrWriterSettings
from heros_archiver.testing import free_port, session_manager, unique_realm

pytestmark = pytest.mark.timeout(120)

SHAPE = (16, 24)
STORE = "{{ file_path }}/run-{{ run }}.zarr"
KEY = "{{ source_name }}/{{ '%04d' % frame }}"
AGAIN = "{{ source_name }}/again-{{ '%04d' % frame }}"


def _dead_letters(tmp_path: Path) -> Path:
    return tmp_path / ".heros-archiver" / "dead-letter"


def _array(store: Path, key: str) -> np.ndarray:
    node = zarr.open_group(store, mode="r")[key]
    assert isinstance(node, zarr.Array)
    return np.asarray(node[...])


def _fed_archiver(tmp_path: Path, **kwargs: Any) -> ZarrArchiver:
    """A ZarrArchiver on tmp_path with a Zenoh session of its own; items come in through ``feed``."""
    return ZarrArchiver(
        kwargs.pop("store_template", STORE),
        kwargs.pop("array_path_template", KEY),
        object_selector="cam",
        event_name="acquisition_data",
        default_metadata={"file_path": str(tmp_path)},
        realm=unique_realm("replay-zarr"),
        session_manager=session_manager(listen_port=free_port()),
        **kwargs,
    )


def _one_taken_key(tmp_path: Path) -> tuple[np.ndarray, Path]:
    """Frames 0-1 archived into run-1.zarr, then another frame 0 dead-lettered (its key is taken)."""
    archiver = _fed_archiver(tmp_path)
    for index in range(2):
        archiver.feed("cam", (procs.frame(index, SHAPE), {"frame": index, "run": 1}))
    other = procs.frame(99, SHAPE)
    archiver.feed("cam", (other, {"frame": 0, "run": 1}))
    archiver.close()
    assert archiver.stats()["total"]["dead_lettered"] == 1
    [entry] = dead_letter_entries(tmp_path)
    return other, entry


def test_an_array_whose_key_was_taken_is_replayed_under_a_corrected_array_template(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    first = make_rig(None, archiver_cls=ZarrArchiver, store_template=STORE, array_path_template=KEY)
    procs.send_frames(first.camera, [0, 1], SHAPE, run=1)
    wait_for_items(first.archiver, 2)
    again = make_rig(None, archiver_cls=ZarrArchiver, store_template=STORE, array_path_template=KEY)
    sent = procs.frame(99, SHAPE)
    again.camera.acquisition_data(sent, {"frame": 0, "run": 1})  # the key of frame 0, other content
    total = wait_for_items(again.archiver, 1)
    assert total["dead_lettered"] == 1, total
    again.archiver.close()
    [entry] = dead_letter_entries(tmp_path)
    writer = read_entry(entry)["writer"]
    assert writer == {
        "kind": "zarr", "store_template": STORE, "array_path_template": KEY, "root": str(tmp_path),
        "on_exists": "error", "fsync": "none", "compression": "zstd", "compression_level": 0, "chunks": "auto",
    }  # fmt: skip
    store = tmp_path / "run-1.zarr"

    same = procs.run_cli(["replay", str(_dead_letters(tmp_path))])  # the same key: kept again
    assert same.returncode == 1 and "archived 0 of 1" in same.stdout and "on_exists='error'" in same.stdout, same.stdout
    assert dead_letter_entries(tmp_path) == [entry]

    fixed = procs.run_cli(["replay", str(_dead_letters(tmp_path)), "--array-template", AGAIN])
    assert fixed.returncode == 0 and "archived 1 of 1" in fixed.stdout, fixed.stdout
    assert dead_letter_entries(tmp_path) == []
    np.testing.assert_array_equal(_array(store, "cam/again-0000"), sent)
    assert _array(store, "cam/again-0000").dtype == sent.dtype
    np.testing.assert_array_equal(_array(store, "cam/0000"), procs.frame(0, SHAPE))  # the run's array is kept


def test_an_entry_put_back_after_its_replay_counts_as_written(tmp_path: Path) -> None:
    """A replay cut short after the array's rename, before the entry left the store: the identical array at
    the key counts as written (no error under on_exists="error", no second copy)."""
    sent, entry = _one_taken_key(tmp_path)
    kept = tmp_path / "kept-entry"
    shutil.copytree(entry, kept)
    [first] = replay(_dead_letters(tmp_path), array_template=AGAIN)
    assert first.ok and first.paths == [tmp_path / "run-1.zarr" / "cam" / "again-0000"], first
    shutil.copytree(kept, entry)
    [second] = replay(_dead_letters(tmp_path), array_template=AGAIN)
    assert second.ok and second.paths == first.paths, second
    group = zarr.open_group(tmp_path / "run-1.zarr" / "cam", mode="r")
    assert sorted(group.array_keys()) == ["0000", "0001", "again-0000"]
    np.testing.assert_array_equal(_array(tmp_path / "run-1.zarr", "cam/again-0000"), sent)
    assert dead_letter_entries(tmp_path) == []


def test_the_recorded_on_exists_decides_as_in_the_archiver(tmp_path: Path) -> None:
    """An entry of an archiver with ``on_exists="unique"`` (edited, as an operator may) gets ``0000-1``."""
    sent, entry = _one_taken_key(tmp_path)
    info = read_entry(entry)
    info["writer"]["on_exists"] = "unique"
    (entry / "entry.json").write_text(json.dumps(info))
    [outcome] = replay(_dead_letters(tmp_path))
    assert outcome.ok and outcome.paths == [tmp_path / "run-1.zarr" / "cam" / "0000-1"], outcome
    np.testing.assert_array_equal(_array(tmp_path / "run-1.zarr", "cam/0000-1"), sent)
    np.testing.assert_array_equal(_array(tmp_path / "run-1.zarr", "cam/0000"), procs.frame(0, SHAPE))


def test_a_dry_run_writes_nothing_and_names_the_array(tmp_path: Path) -> None:
    _, entry = _one_taken_key(tmp_path)
    [outcome] = replay(_dead_letters(tmp_path), dry_run=True, array_template=AGAIN)
    assert outcome.ok and outcome.paths == [tmp_path / "run-1.zarr" / "cam" / "again-0000"], outcome
    assert dead_letter_entries(tmp_path) == [entry]
    assert not (tmp_path / "run-1.zarr" / "cam" / "again-0000").exists()
    dry = procs.run_cli(["replay", str(_dead_letters(tmp_path)), "--dry-run", "--array-template", AGAIN])
    assert dry.returncode == 0 and "would archive 1 of 1" in dry.stdout and "again-0000" in dry.stdout, dry.stdout
    assert dead_letter_entries(tmp_path) == [entry]


def test_frames_whose_store_template_cannot_render_are_replayed_with_it_fixed(tmp_path: Path) -> None:
    """Dead-lettered because the events carry no ``run``; replayed with a corrected store template, confined."""
    archiver = _fed_archiver(tmp_path)
    sent = [procs.frame(index, SHAPE, "float32") for index in range(3)]
    for index, frame in enumerate(sent):
        archiver.feed("cam", (frame, {"frame": index}))
    archiver.close()
    assert archiver.stats()["total"]["dead_lettered"] == 3
    assert all("TemplateRenderError" in read_entry(e)["error"] for e in dead_letter_entries(tmp_path))

    outside = replay(_dead_letters(tmp_path), template="{{ file_path }}/../escaped.zarr")
    assert not any(o.ok for o in outside) and all("PathConfinementError" in o.error for o in outside), outside
    assert not (tmp_path.parent / "escaped.zarr").exists() and len(dead_letter_entries(tmp_path)) == 3

    outcomes = replay(_dead_letters(tmp_path), template="{{ file_path }}/fixed.zarr")
    assert [o.ok for o in outcomes] == [True] * 3, outcomes
    for index, frame in enumerate(sent):
        np.testing.assert_array_equal(_array(tmp_path / "fixed.zarr", f"cam/{index:04d}"), frame)
    assert dead_letter_entries(tmp_path) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("root", "/elsewhere", "recorded archive root '/elsewhere'"),
        ("root", "relative", "recorded archive root 'relative'"),
        ("kind", "tiff", "kind 'tiff'"),
        ("compression_level", True, "field 'compression_level': expected int"),
        ("fsync", False, "field 'fsync': expected str"),
        ("compression", "rot13", "compression: expected one of"),
        ("on_exists", "append", "on_exists"),
        ("chunks", "tiny", "chunks: expected one of"),
        ("extra", 1, "unknown ['extra']"),
    ],
)
def test_an_edited_entry_is_refused_and_stays(tmp_path: Path, field: str, value: Any, message: str) -> None:
    _, entry = _one_taken_key(tmp_path)
    info = read_entry(entry)
    info["writer"][field] = value
    (entry / "entry.json").write_text(json.dumps(info))
    [outcome] = replay(_dead_letters(tmp_path), array_template=AGAIN)
    assert not outcome.ok and message in outcome.error, outcome.error
    assert dead_letter_entries(tmp_path) == [entry]
    assert not (tmp_path / "run-1.zarr" / "cam" / "again-0000").exists()


def test_an_entry_of_another_root_is_refused_on_the_command_line(tmp_path: Path) -> None:
    _, entry = _one_taken_key(tmp_path)
    info = read_entry(entry)
    info["writer"]["root"] = str(tmp_path.parent)
    (entry / "entry.json").write_text(json.dumps(info))
    result = procs.run_cli(["replay", str(_dead_letters(tmp_path)), "--array-template", AGAIN])
    assert result.returncode == 1 and "recorded archive root" in result.stdout and "refused" in result.stdout, result
    assert dead_letter_entries(tmp_path) == [entry]


def test_writer_settings_round_trip_and_refuse_a_missing_field() -> None:
    settings = ZarrWriterSettings("zarr", STORE, KEY, "/data", "unique", "file", "none", 3, "array")
    assert ZarrWriterSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    partial = settings.to_dict()
    del partial["chunks"]
    with pytest.raises(ConfigurationError, match=r"missing \['chunks'\]"):
        ZarrWriterSettings.from_dict(partial)
    with pytest.raises(ConfigurationError, match="expected a JSON object"):
        ZarrWriterSettings.from_dict([1])


class _OwnStore(ZarrArchiver):
    """A subclass that writes its items itself (the reference API's hook), here by refusing them all."""

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        raise TargetExistsError(f"{source_name}: refused by the subclass")


def test_the_entries_of_a_subclass_with_its_own_store_record_no_settings(tmp_path: Path) -> None:
    """Replay cannot know how such a subclass writes: its entries say so instead of being written as ours."""
    archiver = _OwnStore(
        STORE, KEY, object_selector="cam", event_name="acquisition_data", default_metadata={"file_path": str(tmp_path)},
        realm=unique_realm("replay-zarr"), session_manager=session_manager(listen_port=free_port()),
    )  # fmt: skip
    archiver.feed("cam", (procs.frame(0, SHAPE), {"frame": 0, "run": 1}))
    archiver.close()
    [entry] = dead_letter_entries(tmp_path)
    assert read_entry(entry)["writer"] is None
    [outcome] = replay(_dead_letters(tmp_path))
    assert not outcome.ok and "its own _store" in outcome.error, outcome
    assert not (tmp_path / "run-1.zarr").exists()
