"""The archiver of the contract's crash test, in a process of its own, to be killed with SIGKILL.

``python -m heros_archiver.testing.crash_child SPEC`` (SPEC: JSON, written by
``SinkContract.test_committed_items_survive_sigkill_once``): makes the archiver ``archiver``
(``module:qualname``) with ``kwargs``, ``overflow="spill"`` and a queue of two items, and a sink wrapper that
lets the sink archive ``commit_after`` items (a container commits after that many) and then hangs the next
write for good. It feeds the first ``commit_after + 1`` items of the pickle ``items`` (more, one at a time,
while the storage does not hang yet), and once it hangs (``@@ STALLED n``, n: items archived, all of them
committed) the rest (``@@ FED``): with the writer hung, the queue is full after ``QUEUE_ITEMS`` of them and
every later one is spilled to the spool. Then it waits to be killed: whatever it had committed must survive,
whatever waits in its spool is resumed by the next start, and only the item in the hung write and those in
the queue are in its memory alone.
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink, FileSink, Settled, Sink
from . import session_manager
from .faults import SinkWrapper

#: The child's queue bound (items): what may be lost with its memory at the kill, besides the hung write.
QUEUE_ITEMS = 2


class StallAfterCommits(SinkWrapper):
    """Archives ``count`` items (containers commit after that many), then hangs every later write."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.archived = 0
        self._hang = threading.Event()
        #: set once the storage hangs
        self.stalled = threading.Event()

    def __call__(self, inner: Sink) -> Sink:
        wrapped = super().__call__(inner)
        if isinstance(wrapped, ContainerSink):
            wrapped.flush_frames = self.count  # the commit point comes after ``count`` appends
        return wrapped

    def _stall_if_done(self) -> None:
        with self._lock:
            done = self.archived >= self.count
            first = done and not self._hang.is_set()
            if first:
                self._hang.set()
        if first:
            print(f"@@ STALLED {self.archived}", flush=True)
            self.stalled.set()
        if done:
            threading.Event().wait()  # storage that never answers again

    def _count(self, settled: Settled) -> Settled:
        with self._lock:
            self.archived += len(settled.archived)
        return settled

    def store(self, inner: FileSink, item: Item) -> None:
        self._stall_if_done()
        inner.store(item)
        with self._lock:
            self.archived += 1

    def append(self, inner: ContainerSink, item: Item) -> Settled:
        self._stall_if_done()
        return self._count(inner.append(item))

    def commit(self, inner: ContainerSink, call: Any) -> Settled:
        return self._count(call())


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    module, _, name = spec["archiver"].partition(":")
    cls: Any = importlib.import_module(module)
    for part in name.split("."):
        cls = getattr(cls, part)
    items = pickle.loads(Path(spec["items"]).read_bytes())  # written by the test that started this process
    stall = StallAfterCommits(spec["commit_after"])
    archiver = cls(
        object_selector="contract-sender",
        event_name="acquisition_data",
        default_metadata=spec["default_metadata"],
        retry_delay=0.01,
        realm=spec["realm"],
        session_manager=session_manager(listen_port=spec["listen_port"]),
        overflow="spill",
        max_queue_items=QUEUE_ITEMS,
        sink_wrapper=stall,
        **spec["kwargs"],
    )
    queue = list(items)
    for _ in range(spec["commit_after"] + 1):
        archiver.feed(*_as_event(queue.pop(0)))
    while not stall.stalled.wait(0.05) and queue:  # a commit on time, not by count, may need more writes
        archiver.feed(*_as_event(queue.pop(0)))
    for entry in queue:
        archiver.feed(*_as_event(entry))
    print("@@ FED", flush=True)
    threading.Event().wait()  # until SIGKILL


def _as_event(entry: tuple[str, Any, dict[str, Any]]) -> tuple[str, tuple[Any, dict[str, Any]]]:
    source, payload, metadata = entry
    return source, (payload, metadata)


if __name__ == "__main__":
    main(sys.argv[1:])
