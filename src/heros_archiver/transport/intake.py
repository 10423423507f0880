"""How samples get from Zenoh's receive thread to the archiver: directly, or through a bounded buffer.

Direct (``intake_buffer=0``): Zenoh calls our function on its receive thread for every sample. Nothing
waits in between, so a full queue stops the receive thread at once and memory is bounded by the queue
(decision 0002). But that thread needs the GIL for every sample, and while a writer thread holds it the
thread waits up to the interpreter's switch interval (5 ms) per sample: a burst of small events backs
up into the sender, which drops best-effort events when its own queue is full.

Buffered (``intake_buffer=N``): Zenoh puts samples into a small FIFO on the Rust side, which never needs
the GIL. A drain thread of ours takes out as many as are there each time it holds the GIL and keeps only
their bytes, up to N samples' worth and at most ``max_bytes`` (one sample more), for a handler thread that
decodes them and hands them on. A sample held by Zenoh keeps the whole receive batch it came in alive (up to
64 KiB for a 200-byte reading, decision 0043), its bytes alone do not; so the FIFO stays small and what waits
is bytes. Zenoh's FIFO counts samples, not bytes: ``fifo_samples`` camera frames of 8 MiB are that many
times 8 MiB, so archivers of frames ask for a FIFO of a few samples (decision 0044). A full buffer stops the
drain, a full FIFO then blocks Zenoh's receive thread as a full queue does (decision 0011).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zenoh

log = logging.getLogger("heros_archiver")

#: What the handler thread gets per sample: its key expression and its payload's bytes.
OnRaw = Callable[[Any, bytes], None]

#: Samples Zenoh holds in front of the drain thread at most (each may keep a 64 KiB receive batch alive),
#: unless the archiver asks for fewer (frames: ``fifo_samples``).
FIFO_SAMPLES = 256
#: ... what archivers of camera frames ask for: Zenoh's FIFO counts samples, not bytes (decision 0044).
FRAME_FIFO_SAMPLES = 4
#: Bytes that wait for the handler thread at most (and one sample more), however many samples they are.
WAITING_BYTES = 8 << 20

#: Samples handed on between two reports of room to the drain thread.
_ROOM_EVERY = 64


class BufferedIntake:
    """A subscription whose samples wait, as bytes, for a thread of ours (at most ``capacity`` of them, and
    ``max_bytes`` and one sample more)."""

    def __init__(
        self,
        session: zenoh.Session,
        selector: str,
        capacity: int,
        on_raw: OnRaw,
        name: str,
        *,
        max_bytes: int = WAITING_BYTES,
        fifo_samples: int = FIFO_SAMPLES,
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.subscriber: Any = session.declare_subscriber(
            selector, zenoh.handlers.FifoChannel(max(1, min(capacity, fifo_samples)))
        )
        self._waiting: deque[list[tuple[Any, bytes]] | None] = deque()
        self._count = 0  # samples in ``_waiting``, and of ``_current`` from ``_handed`` on
        self._bytes = 0  # their payloads' bytes
        #: the batch the handler thread hands on now, and how many of its samples it counted off so far
        self._current: list[tuple[Any, bytes]] = []
        self._handed = 0
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._not_empty = threading.Condition(self._lock)
        self._drain = threading.Thread(
            target=self._drain_fifo, args=(self.subscriber.handler,), name=f"{name}-drain", daemon=True
        )
        self._thread = threading.Thread(target=self._hand_on_all, args=(on_raw,), name=name, daemon=True)
        self._drain.start()
        self._thread.start()

    def _drain_fifo(self, handler: Any) -> None:
        """Block for a sample without the GIL, then take every sample already there (up to the room left).

        ``recv`` raises once the subscription is undeclared and the FIFO is empty.
        """
        try:
            while True:
                sample = handler.recv()
                with self._lock:
                    while self._count >= self.capacity or self._bytes >= self.max_bytes:
                        self._not_full.wait()
                    room, byte_room = self.capacity - self._count, self.max_bytes - self._bytes
                raw = sample.payload.to_bytes()
                batch, nbytes = [(sample.key_expr, raw)], len(raw)
                while len(batch) < room and nbytes < byte_room:
                    sample = handler.try_recv()
                    if sample is None:
                        break
                    raw = sample.payload.to_bytes()
                    batch.append((sample.key_expr, raw))
                    nbytes += len(raw)
                del sample, raw
                with self._lock:
                    self._waiting.append(batch)
                    self._count += len(batch)
                    self._bytes += nbytes
                    self._not_empty.notify()
        except zenoh.ZError:
            pass
        finally:
            with self._lock:
                self._waiting.append(None)  # after the last sample
                self._not_empty.notify()

    def _hand_on_all(self, on_raw: OnRaw) -> None:
        """Decode and queue (``on_raw``) what the drain thread took, in the order it came, until its end."""
        while True:
            with self._lock:
                while not self._waiting:
                    self._not_empty.wait()
                batch = self._waiting.popleft()
                self._current, self._handed = batch or [], 0
            if batch is None:
                return
            for start in range(0, len(batch), _ROOM_EVERY):
                part = batch[start : start + _ROOM_EVERY]
                nbytes = 0
                for key_expr, raw in part:
                    nbytes += len(raw)
                    _hand_on(on_raw, key_expr, raw)
                del raw
                with self._lock:  # room for the drain as the batch goes, not only at its end
                    self._count -= len(part)
                    self._bytes -= nbytes
                    self._handed = start + len(part)
                    self._not_full.notify()
            with self._lock:
                self._current, self._handed = [], 0

    @property
    def waiting(self) -> int:
        """Samples taken out of Zenoh's FIFO and not yet handed on (at most ``capacity``)."""
        return self._count

    @property
    def waiting_bytes(self) -> int:
        """Their payloads' bytes (at most ``max_bytes`` and one sample more)."""
        return self._bytes

    def waiting_by_key(self) -> dict[str, tuple[int, int]]:
        """``waiting`` and ``waiting_bytes`` per key expression (a sender's), counted when asked: a walk of at
        most ``capacity`` samples under the lock, so that the receive path pays nothing for the status per source."""
        counts: dict[str, list[int]] = {}
        with self._lock:
            batches = [self._current[self._handed :], *(batch for batch in self._waiting if batch is not None)]
            for batch in batches:
                for key_expr, raw in batch:
                    count = counts.get(key := str(key_expr))
                    if count is None:
                        counts[key] = [1, len(raw)]
                    else:
                        count[0] += 1
                        count[1] += len(raw)
        return {key: (samples, nbytes) for key, (samples, nbytes) in counts.items()}

    @property
    def alive(self) -> bool:
        """True while the thread still hands samples on."""
        return self._thread.is_alive()

    def close(self, deadline: float | None = None) -> bool:
        """Undeclare, then wait until the samples still waiting are handed on (or ``deadline``,
        ``time.monotonic()``, passes). True when the thread has finished."""
        try:
            self.subscriber.undeclare()
        except Exception as exc:  # noqa: BLE001 - the session may already be closed
            log.debug("undeclaring the subscription failed: %s", exc)
        self.join(deadline)
        return not self.alive

    def join(self, deadline: float | None = None) -> None:
        """Wait for the thread until ``deadline`` (``time.monotonic()``; None: without limit)."""
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _hand_on(on_raw: OnRaw, key_expr: Any, raw: bytes) -> None:
    """Call ``on_raw``; an exception (from a callback someone registered) must not end the intake."""
    try:
        on_raw(key_expr, raw)
    except Exception:  # logged; the next sample is handed on as usual
        log.exception("event callback failed for a sample of %s", key_expr)
