"""Wrong payloads over Zenoh are dead-lettered with a clear error, and the next good event is archived."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RigFactory
from helpers import RawCamera, archived_files, assert_npy_equal, dead_letter_entries, read_entry, wait_for_items

pytestmark = pytest.mark.timeout(60)

GOOD = np.arange(8, dtype=np.uint16).reshape(2, 4)

BAD_PAYLOADS: dict[str, tuple[Any, list[str]]] = {
    "int": (5, ["expected a payload (data, metadata dict)", "int", "5"]),
    "string": ("not a frame", ["expected a payload (data, metadata dict)", "str", "not a frame"]),
    "none": (None, ["expected a payload (data, metadata dict)", "NoneType"]),
    "dict to ArrayArchiver": ({"frame": 3, "value": 1.5}, ["expected a numpy array", "dict"]),
    "metadata is a list": ([GOOD, [1, 2]], ["expected a payload (data, metadata dict)", "metadata of type list"]),
    "metadata is a string": ((GOOD, "frame=1"), ["metadata of type str"]),
    "three elements": ((GOOD, {"frame": 1}, "extra"), ["length 3"]),
    "string data": (("abc", {"frame": 4}), ["expected a numpy array", "str"]),
}


@pytest.mark.parametrize(("bad", "expected"), BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_bad_payload_is_dead_lettered_and_next_is_archived(
    make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: Any, expected: list[str]
) -> None:
    caplog.set_level(logging.INFO, logger="heros_archiver")
    rig = make_rig("{{ file_path }}/{{ frame }}.npy", camera_cls=RawCamera)
    rig.camera.acquisition_data(bad)
    rig.camera.acquisition_data((GOOD, {"frame": 0}))

    total = wait_for_items(rig.archiver, 2)

    assert total["received"] == 2, total
    assert total["dead_lettered"] == 1 and total["archived"] == 1, total
    assert rig.archiver.stats()["sources"]["cam"]["dead_lettered"] == 1
    assert archived_files(tmp_path) == ["0.npy"]
    assert_npy_equal(tmp_path / "0.npy", GOOD)

    [entry] = dead_letter_entries(tmp_path)
    info = read_entry(entry)
    assert info["source"] == "cam" and info["event"] == "acquisition_data"
    assert "PayloadError" in info["error"]
    for fragment in expected:
        assert fragment in info["error"], f"{fragment!r} not in {info['error']!r}"
    if bad is None or isinstance(bad, (int, str, dict)):  # the bad payload is kept, readable with plain json
        assert info["payload_file"] == "payload.json"
        assert json.loads((entry / "payload.json").read_text()) == bad

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "heros_archiver"]
    assert errors, "a dead-lettered item must be logged as an error"
    message = errors[0].getMessage()
    assert message.startswith("cam ") and "acquisition_data" in message and "PayloadError" in message
