"""User subclasses that implement only ``_store``: retries, dead letters, draining at teardown, overflow."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RigFactory
from helpers import DEAD_LETTER_DIR, read_entry, wait_for_items
from heros_archiver import HERODataArchiver, PayloadError

pytestmark = pytest.mark.timeout(60)


class RecordingArchiver(HERODataArchiver):
    """Implements only ``_store`` (as a user of the reference API would); records and optionally fails."""

    fail_first = 0  # this many calls raise OSError
    fail_always = False
    delay = 0.0
    error: type[Exception] = OSError

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        calls = self.__dict__.setdefault("calls", [])
        calls.append((source_name, payload, metadata))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_always or len(calls) <= self.fail_first:
            raise self.error(f"simulated failure of call {len(calls)}")
        self.__dict__.setdefault("stored", []).append((source_name, payload, dict(metadata)))


def _subclass(**attributes: Any) -> type[RecordingArchiver]:
    return type("UserArchiver", (RecordingArchiver,), attributes)


def test_transient_failures_are_retried(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(None, archiver_cls=_subclass(fail_first=2), retry_delay=0.01, dead_letter_dir=str(tmp_path / "dl"))
    frame = np.arange(6, dtype=np.uint16)
    rig.camera.acquisition_data(frame, {"frame": 9})

    total = wait_for_items(rig.archiver, 1)

    assert total["archived"] == 1 and total["retried"] == 2 and total["dead_lettered"] == 0, total
    archiver: Any = rig.archiver
    assert len(archiver.calls) == 3
    [(source, payload, metadata)] = archiver.stored
    assert source == "cam"
    np.testing.assert_array_equal(payload, frame)
    assert metadata == {"file_path": str(tmp_path), "frame": 9}
    assert not (tmp_path / "dl").exists()


def test_persistent_failure_is_dead_lettered_after_max_retries(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(
        None,
        archiver_cls=_subclass(fail_always=True),
        max_retries=1,
        retry_delay=0.01,
        dead_letter_dir=str(tmp_path / "dl"),
    )
    frame = np.full((2, 2), 7, dtype=np.int64)
    rig.camera.acquisition_data(frame, {"frame": 1})

    total = wait_for_items(rig.archiver, 1)

    assert total["dead_lettered"] == 1 and total["archived"] == 0 and total["retried"] == 1, total
    assert len(rig.archiver.calls) == 2  # type: ignore[attr-defined]
    [entry] = sorted((tmp_path / "dl").iterdir())
    info = read_entry(entry)
    assert info["attempts"] == 2
    assert "OSError" in info["error"] and "simulated failure of call 2" in info["error"]
    assert info["metadata"] == {"file_path": str(tmp_path), "frame": 1}
    np.testing.assert_array_equal(np.load(entry / "payload.npy"), frame)


def test_permanent_error_is_not_retried_and_default_dead_letter_dir_is_cwd(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    rig = make_rig(None, archiver_cls=_subclass(fail_always=True, error=PayloadError), retry_delay=0.01)
    rig.camera.acquisition_data(np.zeros(1), {"frame": 0})

    total = wait_for_items(rig.archiver, 1)

    assert total["dead_lettered"] == 1 and total["retried"] == 0, total
    [entry] = sorted((tmp_path / DEAD_LETTER_DIR).iterdir())  # conftest made tmp_path the working directory
    assert read_entry(entry)["attempts"] == 1


def test_teardown_drains_the_backlog(make_rig: RigFactory) -> None:
    rig = make_rig(None, archiver_cls=_subclass(delay=0.05))
    for i in range(40):
        rig.archiver.feed("cam", (i, {"frame": i}))
    assert rig.archiver.stats()["total"]["in_flight"] > 0

    rig.archiver._teardown()

    total = rig.archiver.stats()["total"]
    assert total["received"] == 40 and total["archived"] == 40 and total["dead_lettered"] == 0, total
    assert total["in_flight"] == 0 and rig.archiver.is_queue_drained()
    assert [payload for _, payload, _ in rig.archiver.stored] == list(range(40))  # type: ignore[attr-defined]


def test_teardown_dead_letters_what_misses_the_drain_timeout(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(None, archiver_cls=_subclass(delay=0.05), drain_timeout=0.3, dead_letter_dir=str(tmp_path / "dl"))
    for i in range(40):
        rig.archiver.feed("cam", (i, {"frame": i}))

    rig.archiver._teardown()

    total = rig.archiver.stats()["total"]
    assert total["archived"] + total["dead_lettered"] == 40 and total["in_flight"] == 0, total
    assert 0 < total["archived"] < 40 and total["dropped"] == 0, total
    stored = [payload for _, payload, _ in rig.archiver.stored]  # type: ignore[attr-defined]
    assert stored == list(range(len(stored)))
    entries = sorted((tmp_path / "dl").iterdir())
    assert len(entries) == total["dead_lettered"]
    kept = sorted(read_entry(e)["metadata"]["frame"] for e in entries)
    assert kept == list(range(len(stored), 40)), "every item is either stored or dead-lettered, none twice"
    assert all("drain_timeout" in read_entry(e)["error"] for e in entries)


def test_feed_after_teardown_is_dead_lettered(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(None, archiver_cls=_subclass(), dead_letter_dir=str(tmp_path / "dl"))
    rig.archiver._teardown()
    rig.archiver.feed("cam", (1, {"frame": 1}))
    total = rig.archiver.stats()["total"]
    assert total["received"] == 1 and total["dead_lettered"] == 1, total
    assert "stopping" in read_entry(next((tmp_path / "dl").iterdir()))["error"]


def test_overflow_drop_counts_what_it_drops(make_rig: RigFactory) -> None:
    gate = threading.Event()

    class Blocked(RecordingArchiver):
        def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
            gate.wait(30)
            super()._store(source_name, payload, metadata)

    rig = make_rig(None, archiver_cls=Blocked, overflow="drop", max_queue_items=2)
    try:
        for i in range(10):
            rig.archiver.feed("cam", (i, {"frame": i}))
    finally:
        gate.set()
    total = wait_for_items(rig.archiver, 10)

    assert total["received"] == 10 and total["dropped"] > 0, total
    assert total["archived"] + total["dropped"] == 10 and total["dead_lettered"] == 0, total
    stored = [payload for _, payload, _ in rig.archiver.stored]  # type: ignore[attr-defined]
    assert stored == sorted(stored) and len(stored) == total["archived"]
