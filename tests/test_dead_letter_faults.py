"""Dead-lettering never wedges the writer (issue 13, item 12): only storage errors are retried.

An item that failed for its own reasons is often odd in other ways too: a metadata key JSON cannot
carry (CBOR carries tuples, bytes and ints as keys, and heros decodes them so), a masked array, a
structure so deep that ``repr`` raises. Writing its dead-letter entry must not fail for those reasons,
and never be retried as if storage were at fault: the writer goes on with the next item at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RigFactory
from helpers import RawCamera, dead_letter_entries, read_entry, wait_for_items
from heros_archiver import ArrayArchiver
from heros_archiver.errors import PayloadError
from heros_archiver.pipeline.accounting import Accounting
from heros_archiver.pipeline.core import Pipeline
from heros_archiver.pipeline.options import PipelineOptions
from heros_archiver.pipeline.queueing import Item
from heros_archiver.state.deadletter import DeadLetterStore
from heros_archiver.state.spool import Spool
from procs import check_frame_file, frame, npy_files, wait_until

pytestmark = pytest.mark.timeout(60)

SHAPE = (4, 6)
TEMPLATE = "{{ file_path }}/{{ '%03d' % frame }}.npy"


def test_a_bad_payload_with_keys_json_cannot_carry_over_zenoh_leaves_the_writer_going(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=ArrayArchiver, camera_cls=RawCamera)
    odd = {(1, 2): "roi", b"raw": 1, 3: "int key", None: "none key", "frame": 0}
    rig.camera.acquisition_data(("not an array", odd))  # a PayloadError for ArrayArchiver: dead-lettered
    rig.camera.acquisition_data((frame(1, SHAPE), {"frame": 1}))

    total = wait_for_items(rig.archiver, 2, timeout=20)

    assert total["dead_lettered"] == 1 and total["archived"] == 1 and total["dropped"] == 0, total
    assert [check_frame_file(p, SHAPE) for p in npy_files(tmp_path)] == [1]
    [entry] = dead_letter_entries(tmp_path)
    info = read_entry(entry)
    assert info["metadata"]["frame"] == 0 and "PayloadError" in info["error"]
    assert {k["key"] for k in info["metadata_other_keys"]} == {"(1, 2)", "b'raw'", "3", "None"}
    letter = DeadLetterStore(entry.parent).load(entry)
    assert letter.payload == "not an array" and letter.metadata == {"file_path": str(tmp_path), **odd}


def _deep(levels: int) -> dict[str, Any]:
    """A dict nested ``levels`` deep: ``repr`` and pickle raise RecursionError on it."""
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


BAD_ITEMS = {
    "masked-array": (np.ma.masked_array(np.arange(6.0), mask=[0, 1, 0, 0, 1, 0]), {}),
    "broadcast-view": (np.broadcast_to(np.arange(6, dtype=np.uint16), (1000, 6)), {}),
    "deep-metadata": (np.zeros(3), {"nested": _deep(100_000)}),
    "deep-payload": (_deep(100_000), {}),
    "payload-with-odd-keys": ({(1, 2): "roi", b"raw": 1, 3: [4.5]}, {}),
}


@pytest.mark.parametrize("name", list(BAD_ITEMS))
def test_an_odd_item_is_dead_lettered_at_once_and_the_next_is_archived(
    make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """The bad item lacks ``frame`` (a render error: dead-lettered, not retried); the next one is archived."""
    rig = make_rig(TEMPLATE, retry_delay=0.01, max_retries=0)
    payload, metadata = BAD_ITEMS[name]
    with caplog.at_level(logging.ERROR, logger="heros_archiver"):
        rig.archiver.feed("cam", (payload, metadata))
        rig.archiver.feed("cam", (frame(1, SHAPE), {"frame": 1}))
        total = wait_for_items(rig.archiver, 2, timeout=20)

    assert total["archived"] == 1 and total["dead_lettered"] + total["dropped"] == 1, total
    assert [check_frame_file(p, SHAPE) for p in npy_files(tmp_path)] == [1]
    [entry] = dead_letter_entries(tmp_path)
    if name.startswith("deep"):  # pickle cannot copy it either: kept as a description, counted and logged as lost
        assert total["dropped"] == 1 and "LOST" in caplog.text, total
        assert read_entry(entry)["lost"] and "RecursionError" in read_entry(entry)["lost"]
    else:
        assert total["dead_lettered"] == 1, total
        kept = DeadLetterStore(entry.parent).load(entry).payload
        assert type(kept) is type(payload)
        if isinstance(payload, np.ndarray):
            assert np.array_equal(kept, payload) and kept.dtype == payload.dtype
            assert np.array_equal(np.ma.getmaskarray(kept), np.ma.getmaskarray(payload))
        else:
            assert kept == payload


def test_an_entry_that_cannot_be_written_for_any_reason_but_storage_is_not_retried(tmp_path: Path) -> None:
    """The general rule behind the cases above: whatever a non-storage error in writing an entry is (here
    writer settings JSON cannot carry), it is not retried with backoff: one description attempt, then the
    item is counted as lost and the writer goes on."""
    written: list[int] = []

    def store(item: Item) -> None:
        if item.metadata["frame"] == 0:
            raise PayloadError("bad payload")
        written.append(item.metadata["frame"])

    accounting = Accounting("acquisition_data")
    pipeline = Pipeline(
        "acquisition_data",
        store,
        PipelineOptions(retry_delay=60.0),  # a retry would hold the writer for a minute
        accounting,
        DeadLetterStore(tmp_path / "dl"),
        Spool(tmp_path / "spool", "acquisition_data"),
        max_retries=lambda: 5,
        writer_settings=lambda: {"settings": object()},
    )
    try:
        for index in range(2):
            accounting.received("cam", {})
            pipeline.submit(Item("cam", np.zeros(2), {"frame": index}, 100))
        wait_until(lambda: written == [1], timeout=10, what="the next item written")
    finally:
        pipeline.stop()
    total = accounting.snapshot()["total"]
    assert total["archived"] == 1 and total["dropped"] == 1 and total["dead_lettered"] == 0, total
