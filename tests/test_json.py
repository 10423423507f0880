"""JsonArchiver: merge_metadata, numpy/datetime values, plain dict payloads."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RigFactory
from helpers import RawCamera, archived_files, dead_letter_entries, read_entry, wait_for_items
from heros_archiver import JsonArchiver

pytestmark = pytest.mark.timeout(60)

TEMPLATE = "{{ file_path }}/{{ name }}.json"


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.parametrize("merge", [False, True], ids=["plain", "merge_metadata"])
def test_metadata_only_with_merge(make_rig: RigFactory, tmp_path: Path, merge: bool) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, merge_metadata=merge)
    payload = {"temperature": 21.5, "counts": [1, 2, 3], "label": "ok", "nested": {"a": None}}
    rig.camera.acquisition_data(payload, {"name": "reading", "operator": "ada"})

    total = wait_for_items(rig.archiver, 1)

    assert total["archived"] == 1, total
    written = _load(tmp_path / "reading.json")
    if merge:
        metadata = {"file_path": str(tmp_path), "name": "reading", "operator": "ada"}
        assert written == {**payload, "metadata": metadata}
    else:
        assert written == payload
        assert "metadata" not in written


def test_payload_dict_is_not_mutated(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, merge_metadata=True)
    payload = {"x": 1, "y": [1, 2]}
    metadata = {"name": "direct"}
    before_payload, before_metadata = copy.deepcopy(payload), copy.deepcopy(metadata)

    rig.archiver.feed("cam", (payload, metadata))
    wait_for_items(rig.archiver, 1)

    assert payload == before_payload and "metadata" not in payload
    assert metadata == before_metadata
    assert _load(tmp_path / "direct.json") == {**payload, "metadata": {"file_path": str(tmp_path), "name": "direct"}}


def test_numpy_and_datetime_values(make_rig: RigFactory, tmp_path: Path) -> None:
    """Fed directly (heros' CBOR cannot carry np.float32/np.bool_ scalars), so every encoding path is exercised."""
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver)
    matrix = np.arange(6, dtype=np.int64).reshape(2, 3)
    payload = {
        "f32": np.float32(1.5),
        "f64": np.float64(-2.25),
        "i64": np.int64(2**40),
        "u8": np.uint8(255),
        "matrix": matrix,
        "transposed": matrix.T,  # not C-contiguous
        "float_image": np.array([[0.5, 1.0], [2.0, 4.0]], dtype=np.float32),
        "flag": np.bool_(True),
        "bools": np.array([True, False]),
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "naive": dt.datetime(2026, 1, 2, 3, 4, 5, 600000),
        "day": dt.date(2026, 1, 2),
        "z": 1 + 2j,
    }
    rig.archiver.feed("cam", (payload, {"name": "numpy"}))

    total = wait_for_items(rig.archiver, 1)

    assert total["archived"] == 1, total
    assert _load(tmp_path / "numpy.json") == {
        "f32": 1.5,
        "f64": -2.25,
        "i64": 2**40,
        "u8": 255,
        "matrix": [[0, 1, 2], [3, 4, 5]],
        "transposed": [[0, 3], [1, 4], [2, 5]],
        "float_image": [[0.5, 1.0], [2.0, 4.0]],
        "flag": True,
        "bools": [True, False],
        "when": "2026-01-02T03:04:05+00:00",
        "naive": "2026-01-02T03:04:05.600000",
        "day": "2026-01-02",
        "z": {"real": 1.0, "imag": 2.0},
    }


def test_numpy_values_over_zenoh(make_rig: RigFactory, tmp_path: Path) -> None:
    """The values heros' CBOR does carry (int64, arrays, aware datetimes) arrive and are encoded."""
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver)
    payload = {
        "i64": np.int64(-(2**40)),
        "image": np.array([[1.25, 2.5], [3.75, 5.0]], dtype=np.float32),
        "mask": np.array([[True], [False]]),
        "when": dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
    }
    rig.camera.acquisition_data(payload, {"name": "remote"})

    total = wait_for_items(rig.archiver, 1)

    assert total["archived"] == 1, total
    assert _load(tmp_path / "remote.json") == {
        "i64": -(2**40),
        "image": [[1.25, 2.5], [3.75, 5.0]],
        "mask": [[True], [False]],
        "when": "2026-05-06T07:08:09+00:00",
    }


def test_plain_dict_payload_is_data_and_metadata(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera)
    payload = {"name": "plain", "value": 3, "unit": "V"}
    rig.camera.acquisition_data(payload)

    total = wait_for_items(rig.archiver, 1)

    assert total["archived"] == 1 and total["dead_lettered"] == 0, total
    assert archived_files(tmp_path) == ["plain.json"]
    assert _load(tmp_path / "plain.json") == payload


def test_non_dict_data_is_dead_lettered(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver)
    rig.camera.acquisition_data([1, 2, 3], {"name": "list"})
    rig.camera.acquisition_data({"ok": True}, {"name": "good"})

    total = wait_for_items(rig.archiver, 2)

    assert total["archived"] == 1 and total["dead_lettered"] == 1, total
    assert archived_files(tmp_path) == ["good.json"]
    [entry] = dead_letter_entries(tmp_path)
    info = read_entry(entry)
    assert "expected a dict" in info["error"]
    assert json.loads((entry / info["payload_file"]).read_text()) == [1, 2, 3]


def test_integers_beyond_64_bits_over_zenoh(make_rig: RigFactory, tmp_path: Path) -> None:
    """CBOR carries integers of any size, and JSON has no limit: such an event is archived, not refused."""
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver)
    rig.camera.acquisition_data({"counter": 2**70, "parts": [-(2**65), 1]}, {"name": "big"})

    total = wait_for_items(rig.archiver, 1)

    assert total["archived"] == 1 and total["dead_lettered"] == 0, total
    assert _load(tmp_path / "big.json") == {"counter": 2**70, "parts": [-(2**65), 1]}


def test_keys_written_alike_are_dead_lettered_over_zenoh(make_rig: RigFactory, tmp_path: Path) -> None:
    """CBOR carries integer keys and heros decodes them as such: ``1`` and ``"1"`` would be one JSON name."""
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera)
    rig.camera.acquisition_data({"name": "clash", 1: "integer key", "1": "text key"})
    rig.camera.acquisition_data({"name": "fine", 2: "integer key", "3": "text key"})

    total = wait_for_items(rig.archiver, 2)

    assert total["archived"] == 1 and total["dead_lettered"] == 1, total
    assert archived_files(tmp_path) == ["fine.json"]
    assert _load(tmp_path / "fine.json") == {"name": "fine", "2": "integer key", "3": "text key"}
    [entry] = dead_letter_entries(tmp_path)
    assert "both written as '1'" in read_entry(entry)["error"]


def test_merge_metadata_never_replaces_a_payload_key_named_metadata(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, merge_metadata=True)
    rig.camera.acquisition_data({"metadata": {"gain": 2}, "value": 1}, {"name": "own-metadata"})
    rig.camera.acquisition_data({"value": 2}, {"name": "plain"})

    total = wait_for_items(rig.archiver, 2)

    assert total["archived"] == 1 and total["dead_lettered"] == 1, total
    assert archived_files(tmp_path) == ["plain.json"]
    [entry] = dead_letter_entries(tmp_path)
    assert "has that key itself" in read_entry(entry)["error"]
