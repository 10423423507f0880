"""Rejected items are dead-lettered by a thread of the archiver, never on Zenoh's receive thread.

A flood of garbage (bad payloads) from one sender must not hold up the good frames of another: the
dead-letter store's disk work happens on the ``heros-archiver-rejects`` thread, behind a bounded backlog;
what does not fit in the backlog is counted as lost (``lost_reject_backlog``) and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RigFactory
from helpers import RawCamera, archived_files, assert_npy_equal, wait_for_items, wait_until
from heros_archiver.pipeline import core as pipeline

pytestmark = pytest.mark.timeout(90)

GOOD = np.arange(64, dtype=np.uint16).reshape(8, 8)


def _record_dead_letter_threads(archiver: Any, monkeypatch: pytest.MonkeyPatch, delay: float) -> list[str]:
    """Make the dead-letter store slow (``delay`` s per entry, as a busy disk) and record which thread writes."""
    store = archiver._pipeline.dead_letters
    real_write = store.write
    threads: list[str] = []

    def write(**kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        time.sleep(delay)
        return real_write(**kwargs)

    monkeypatch.setattr(store, "write", write)
    return threads


def test_a_garbage_flood_is_dead_lettered_off_the_receive_thread(
    make_rig: RigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "REJECT_MAX_ITEMS", 50, raising=False)  # small, so that the flood overflows it
    rig = make_rig(
        "{{ file_path }}/{{ source_name }}/{{ frame }}.npy",
        camera_cls=RawCamera,
        cameras=("cam-good", "cam-junk"),
        object_selector="cam-$*",
    )
    threads = _record_dead_letter_threads(rig.archiver, monkeypatch, delay=0.01)
    good, junk = rig.cameras["cam-good"], rig.cameras["cam-junk"]
    frames, garbage_per_frame = 30, 10
    for index in range(frames):
        good.acquisition_data((GOOD + index, {"frame": index}))
        for _ in range(garbage_per_frame):
            junk.acquisition_data(5)  # no (data, metadata) pair: rejected on arrival
    garbage = frames * garbage_per_frame

    wait_for_items(rig.archiver, frames + garbage)
    assert threads and set(threads) == {"heros-archiver-rejects"}, set(threads)
    sources = rig.archiver.stats()["sources"]
    assert sources["cam-good"]["received"] == sources["cam-good"]["archived"] == frames, sources["cam-good"]
    assert archived_files(tmp_path) == sorted(f"cam-good/{i}.npy" for i in range(frames))
    for index in range(frames):
        assert_npy_equal(tmp_path / "cam-good" / f"{index}.npy", GOOD + index)
    bad = sources["cam-junk"]
    assert bad["received"] == garbage and bad["archived"] == 0, bad
    assert bad["dead_lettered"] + bad["dropped"] == garbage and bad["dropped"] == bad["lost_reject_backlog"], bad


def test_a_full_reject_backlog_counts_and_logs_the_rest_as_lost(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="heros_archiver")
    monkeypatch.setattr(pipeline, "REJECT_MAX_ITEMS", 5, raising=False)
    rig = make_rig()
    archiver: Any = rig.archiver
    store = archiver._pipeline.dead_letters
    real_write, gate = store.write, threading.Event()
    monkeypatch.setattr(store, "write", lambda **kwargs: gate.wait(30) and real_write(**kwargs))

    archiver.feed("cam", "garbage 0")
    wait_until(lambda: archiver.stats()["queue"]["rejected_waiting"] == 0, what="the rejects thread to take one")
    for index in range(1, 10):
        archiver.feed("cam", f"garbage {index}")  # on the caller's thread: must not wait for the gated store
    stats = archiver.stats()
    assert stats["queue"]["rejected_waiting"] == 5, stats["queue"]
    assert stats["total"]["dropped"] == stats["total"]["lost_reject_backlog"] == 4, stats["total"]
    lost = [r.getMessage() for r in caplog.records if "LOST item" in r.getMessage()]
    assert lost and "PayloadError" in lost[0] and "rejected items already wait" in lost[0], lost
    gate.set()
    total = wait_for_items(archiver, 10)
    assert total["dead_lettered"] == 6 and total["dropped"] == 4, total
