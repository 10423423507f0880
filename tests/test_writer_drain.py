"""A writer stops only when the queue was closed *before* it found its lane empty.

Found by the sink contract's ``test_close_drains_what_is_queued`` (JSON, about one run in fifteen under load):
the batch writer took nothing (the lane was empty for a moment), waited for its helper's answer, and then
saw the queue closed and stopped, although the producer had queued more in between; ``close()`` then
dead-lettered them as "not written within drain_timeout" at once. Here the helper's answer is held back
(a real helper process, the answer waited for later) so that the same order of events happens every time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from heros_archiver import JsonArchiver
from heros_archiver.sinks.batching import Batch, BatchWriter
from heros_archiver.testing import free_port, session_manager, unique_realm
from heros_archiver.testing.contract import wait_until

pytestmark = pytest.mark.timeout(60)


class HeldAnswers(BatchWriter):
    """The real batch writer, whose first answer is collected only once ``release`` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.collecting = threading.Event()
        self.release = threading.Event()

    def collect(self, batch: Batch) -> Any:
        if not self.collecting.is_set():
            self.collecting.set()
            self.release.wait(30)
        return super().collect(batch)


class HeldJsonArchiver(JsonArchiver):
    held: HeldAnswers | None = None

    def _batch_writer_factory(self) -> Callable[[int], BatchWriter] | None:
        def make(lanes: int) -> BatchWriter:
            self.held = HeldAnswers(self._writer, lanes)
            return self.held

        return make


def test_items_queued_while_the_writer_waits_for_its_helper_are_written_before_close_returns(tmp_path: Path) -> None:
    archiver = HeldJsonArchiver(
        "{{ file_path }}/{{ '%04d' % frame }}.json",
        object_selector="cam",
        event_name="acquisition_data",
        default_metadata={"file_path": str(tmp_path)},
        realm=unique_realm("drain"),
        session_manager=session_manager(listen_port=free_port()),
    )
    held = archiver.held
    assert held is not None
    closing = threading.Thread(target=archiver.close)
    try:
        archiver.feed("cam", ({"value": 0}, {"frame": 0}))
        assert held.collecting.wait(30), "the writer never waited for its helper's answer"
        for index in range(1, 11):  # queued while the writer waits, its lane seen empty just before
            archiver.feed("cam", ({"value": index}, {"frame": index}))
        closing.start()
        wait_until(lambda: archiver._pipeline._queue.closed, "the queue to be closed")
    finally:
        held.release.set()
        if closing.ident is not None:
            closing.join(30)
        archiver.close()  # idempotent: returns at once after the thread's close, or closes after a failure

    total = archiver.stats()["total"]
    assert total["archived"] == 11 and total["dead_lettered"] == 0, total
    assert [json.loads((tmp_path / f"{i:04d}.json").read_text()) for i in range(11)] == [
        {"value": i} for i in range(11)
    ]
