"""How samples get from Zenoh's receive thread to the archiver: directly, or through a bounded buffer.

Direct (``intake_buffer=0``): Zenoh calls our function on its receive thread for every sample. Nothing
waits in between, so a full queue stops the receive thread at once and memory is bounded by the queue
(decision 0002). But that thread needs the GIL for every sample, and while a writer thread holds it the
thread waits up to the interpreter's switch interval (5 ms) per sample: a burst of small events backs
up into the sender, which drops best-effort events when its own queue is full.

Buffered (``intake_buffer=N``): Zenoh puts samples into a FIFO of N samples on the Rust side, which
never needs the GIL, and one thread of ours takes them out, as many as are there each time it holds the
GIL. Memory grows by at most N samples; a full FIFO blocks Zenoh's receive thread as a full queue does
(decision 0011).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zenoh

log = logging.getLogger("heros_archiver")

OnSample = Callable[[zenoh.Sample], None]


class BufferedIntake:
    """A subscription whose samples wait in a Zenoh FIFO of ``capacity`` samples for a thread of ours."""

    def __init__(self, session: zenoh.Session, selector: str, capacity: int, on_sample: OnSample, name: str) -> None:
        self.subscriber: Any = session.declare_subscriber(selector, zenoh.handlers.FifoChannel(capacity))
        self._thread = threading.Thread(
            target=self._run, args=(self.subscriber.handler, on_sample), name=name, daemon=True
        )
        self._thread.start()

    @staticmethod
    def _run(handler: Any, on_sample: OnSample) -> None:
        """Block for a sample without the GIL, then take every sample already there before letting go.

        ``recv`` raises once the subscription is undeclared and the FIFO is empty.
        """
        while True:
            try:
                sample = handler.recv()
                while sample is not None:
                    _hand_on(on_sample, sample)
                    sample = handler.try_recv()
            except zenoh.ZError:
                return

    @property
    def alive(self) -> bool:
        """True while the thread still hands samples on."""
        return self._thread.is_alive()

    def close(self, deadline: float | None = None) -> bool:
        """Undeclare, then wait until the samples still in the FIFO are handed on (or ``deadline``,
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


def _hand_on(on_sample: OnSample, sample: zenoh.Sample) -> None:
    """Call ``on_sample``; an exception (from a callback someone registered) must not end the intake."""
    try:
        on_sample(sample)
    except Exception:  # logged; the next sample is handed on as usual
        log.exception("event callback failed for a sample of %s", sample.key_expr)
