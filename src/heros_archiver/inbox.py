"""Raw samples between Zenoh's receive thread and the archiver, decoded on a thread of our own.

Zenoh runs a direct callback on the thread that reads the link. Whatever that callback does per
sample (decoding, bookkeeping, queueing: ~20 us for a small event here, much of it waiting for the
GIL) is time in which the link is not read, and a best-effort sender bursting faster than that fills
its transmit queue and drops. So the callback only copies the sample out and queues it here; a
decoder thread does the rest, in arrival order. The inbox is bounded in bytes and items and blocks
when full, so back-pressure still reaches the sender (decision 0008).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from threading import Thread

from .queueing import Item, LaneQueue

log = logging.getLogger("heros_archiver")

#: Per-sample bookkeeping on top of the payload bytes, for the byte bound.
_SAMPLE_OVERHEAD = 200


class Inbox:
    """Bounded FIFO of ``(key expression, raw bytes)`` handed to ``handle`` on a decoder thread.

    Args:
        handle: called with each sample's key expression and bytes, in arrival order; must not raise.
        max_items: bound on queued samples.
        max_bytes: bound on queued bytes (a larger single sample is admitted when the inbox is empty).
        name: the decoder thread's name.
    """

    def __init__(self, handle: Callable[[str, bytes], None], max_items: int, max_bytes: int, name: str) -> None:
        self._handle = handle
        self._queue = LaneQueue(1, max_items, max_bytes)
        self._thread = Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, key: str, raw: bytes) -> None:
        """Queue one sample (Zenoh's thread); blocks while the inbox is full.

        A sample that comes after ``close`` (a callback already running when the subscription was
        undeclared) is handled on the calling thread, so it is not lost.
        """
        if not self._queue.put(Item(key, raw, {}, len(raw) + _SAMPLE_OVERHEAD), block=True):
            self._handle(key, raw)

    def depth(self) -> tuple[int, int]:
        """Samples and bytes waiting to be decoded."""
        return self._queue.depth()

    def close(self, timeout: float | None = None) -> bool:
        """Accept no more samples and let the decoder hand over the queued ones; True once it has."""
        self._queue.close()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get(0, timeout=0.5)
            if item is None:
                if self._queue.closed:
                    return
                continue
            try:
                self._handle(item.source, item.payload)
            except Exception:
                log.exception("%s: handling a received sample failed", item.source)
