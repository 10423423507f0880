"""HERODataArchiver: subscribe to a HERO event and hand every payload to ``_store``, losing nothing silently.

The path of one event: Zenoh delivers a sample on its receive thread, straight into our subscriber
callback (no 256-sample buffer in front of it, see docs/decisions/0002); heros deserialises it and calls
``feed``; ``feed`` merges the metadata and puts the item on a queue bounded in items and bytes. Writer
threads call ``_store``, retry transient failures with exponential backoff and jitter, and move items
that still fail to the dead-letter store. At shutdown intake stops, the queue is drained within
``drain_timeout``, and whatever is left goes to the dead-letter store.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

import zenoh
from heros import EventObserver
from heros.zenoh import ZenohSessionManager
from heros.zenoh import session_manager as heros_session_manager

from .accounting import Accounting
from .deadletter import DeadLetterStore
from .errors import ArchiverError, ConfigurationError
from .payload import estimate_nbytes, split_event
from .queueing import Item, LaneQueue
from .storage import check_choice

log = logging.getLogger("heros_archiver")

OVERFLOW_CHOICES: tuple[str, ...] = ("block", "drop")
DEFAULT_MAX_QUEUE_BYTES = 256 * 2**20
DEFAULT_MAX_QUEUE_ITEMS = 10_000
DEAD_LETTER_SUBDIR = Path(".heros-archiver") / "dead-letter"


class HERODataArchiver(EventObserver):
    """Archive the payloads of ``event_name`` from the HEROs matching ``object_selector``.

    Subclasses implement ``_store(source_name, payload, metadata)``. Arguments after ``max_retries``
    are keyword-only extensions of the reference API; the rest (``realm``, ``session_manager``)
    go to ``heros.EventObserver``.

    Args:
        object_selector: Zenoh selector of the HEROs to observe (a name, or a wildcard like ``cam-*``).
        event_name: the event to archive, e.g. ``acquisition_data``.
        default_metadata: merged under each payload's metadata (the payload's keys win).
        max_retries: retries of a failed store before the item goes to the dead-letter store.
        max_queue_bytes: bound of the queue in payload bytes (default 256 MiB).
        max_queue_items: bound of the queue in items (default 10,000).
        overflow: what a full queue does: ``block`` (default; back-pressure to the sender) or ``drop``
            (counted and logged).
        writers: number of writer threads; the items of one source are written by one writer, in order.
        drain_timeout: seconds ``_teardown`` waits for the queue to drain before dead-lettering the rest.
        retry_delay: first retry delay in seconds; doubles per attempt, with jitter.
        retry_max_delay: upper bound of one retry delay in seconds.
        sequence_key: metadata key holding a running number (e.g. ``frame``); gaps and repeats per
            source are counted and logged.
        dead_letter_dir: where failed items are kept (default: ``.heros-archiver/dead-letter`` under
            the archive root, or the working directory for archivers without one).
        zenoh_shared_memory: allow Zenoh's shared-memory transport for the archiver's session. Off by
            default: with it on, Zenoh drops messages silently when the receiver pushes back
            (eclipse-zenoh/zenoh#2628), see docs/decisions/0003.
    """

    metadata: dict[str, Any]
    max_retries: int

    def __init__(
        self,
        object_selector: str,
        event_name: str,
        default_metadata: dict[str, Any] | None = None,
        max_retries: int = 5,
        *args: Any,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_queue_items: int = DEFAULT_MAX_QUEUE_ITEMS,
        overflow: str = "block",
        writers: int = 1,
        drain_timeout: float = 30.0,
        retry_delay: float = 0.5,
        retry_max_delay: float = 10.0,
        sequence_key: str | None = None,
        dead_letter_dir: str | None = None,
        zenoh_shared_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        if default_metadata is not None and not isinstance(default_metadata, dict):
            raise ConfigurationError(f"default_metadata: expected a dict, got {type(default_metadata).__name__}")
        check_choice("overflow", overflow, OVERFLOW_CHOICES)
        for name, value in (
            ("max_queue_bytes", max_queue_bytes),
            ("max_queue_items", max_queue_items),
            ("writers", writers),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name}: expected a positive integer, got {value!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries: expected a non-negative integer, got {max_retries!r}")
        self.metadata = dict(default_metadata or {})
        self.max_retries = int(max_retries)
        self.overflow = overflow
        self.drain_timeout = float(drain_timeout)
        self._retry_delay = float(retry_delay)
        self._retry_max_delay = float(retry_max_delay)
        self._event = event_name
        self._selector = object_selector
        self._accounting = Accounting(event_name, sequence_key)
        self._queue = LaneQueue(writers, max_queue_items, max_queue_bytes)
        self._abort = threading.Event()
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._drop_logged = 0

        self._setup_storage()
        self._dead_letters = DeadLetterStore(dead_letter_dir or self._default_dead_letter_dir())
        self._writers = [
            threading.Thread(target=self._write_loop, args=(lane,), name=f"heros-archiver-writer-{lane}", daemon=True)
            for lane in range(writers)
        ]
        for thread in self._writers:
            thread.start()
        if not zenoh_shared_memory:
            _disable_shared_memory(kwargs.get("session_manager"), kwargs.get("realm", args[0] if args else "heros"))
        try:
            EventObserver.__init__(self, object_selector, event_name, *args, **kwargs)
        except BaseException:
            self._stop()
            raise
        log.info(
            "archiving event %r of %r (queue %d items / %d MiB, overflow=%s, %d writer(s), dead letters in %s)",
            event_name,
            object_selector,
            max_queue_items,
            max_queue_bytes // 2**20,
            overflow,
            writers,
            self._dead_letters.directory,
        )

    # ------------------------------------------------------------------ hooks for subclasses
    def _setup_storage(self) -> None:
        """Prepare and check the storage side before any event can arrive (subclasses compile templates here)."""

    def _default_dead_letter_dir(self) -> Path:
        """Where failed items go unless ``dead_letter_dir`` is given."""
        return Path.cwd() / DEAD_LETTER_SUBDIR

    def _writer_settings(self) -> dict[str, Any] | None:
        """How this archiver names and writes items, recorded with dead letters so they can be replayed.

        None for archivers whose ``_store`` is their own (their dead letters are re-driven by their code).
        """
        return None

    @abstractmethod
    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Store one payload. Must be implemented by subclasses.

        Args:
            source_name: name of the HERO that sent the event.
            payload: the data part of the event.
            metadata: the default metadata merged with the event's metadata (a fresh dict).
        """

    # ------------------------------------------------------------------ intake
    def _subscribe_selector(self, selector: str, callback: Any, *args: Any, **kwargs: Any) -> Any:
        """Subscribe with a direct callback on Zenoh's receive thread.

        heros gives Zenoh a plain function, in front of which zenoh-python buffers up to 256 samples
        (about 1 GiB of camera frames) before back-pressure can reach the sender. A direct callback
        (``indirect=False``) lets a full queue slow the sender instead.
        """

        def on_sample(sample: zenoh.Sample) -> None:
            try:
                data = self._deserialize(sample.payload.to_bytes())
            except Exception as exc:  # noqa: BLE001 - one undecodable sample must not stop the subscription
                log.error("%s (event %s): payload could not be decoded: %s", sample.key_expr, self._event, exc)
                return
            callback(sample.key_expr, data)

        # EventObserver registers callbacks only after subscribing; an event arriving in between would
        # reach no callback and vanish, so ``feed`` is registered before the subscription exists.
        self.register_callback(self.feed)
        sub = self._session.declare_subscriber(selector, zenoh.handlers.Callback(on_sample, indirect=False))
        self._subscriptions.append(sub)
        return sub

    def feed(self, source_name: str, data: Any, retry_count: int = 0) -> None:
        """Event callback: take ``(payload, metadata)`` from ``source_name`` and queue it. Never raises.

        Args:
            source_name: name of the HERO that sent the event.
            data: the event payload, ``(data, metadata_dict)`` (or a plain dict, used as both).
            retry_count: attempts already made for this item.
        """
        try:
            payload, event_metadata = split_event(data)
        except ArchiverError as exc:
            self._accounting.received(source_name, {})
            self._dead_letter(Item(source_name, data, {}, 0, attempts=retry_count), exc)
            return
        metadata = {**self.metadata, **event_metadata}
        self._accounting.received(source_name, metadata)
        item = Item(source_name, payload, metadata, estimate_nbytes(payload), attempts=retry_count)
        if self.overflow == "drop":
            if not self._queue.put(item, block=False):
                self._drop(item)
            return
        if not self._queue.put(item, block=True):  # only fails when the archiver is stopping
            self._dead_letter(item, ArchiverError("arrived while the archiver was stopping"))

    def _drop(self, item: Item) -> None:
        if self._queue.closed:
            self._dead_letter(item, ArchiverError("arrived while the archiver was stopping"))
            return
        self._accounting.add(item.source, "dropped")
        self._drop_logged += 1
        if self._drop_logged == 1 or self._drop_logged % 100 == 0:
            items, nbytes = self._queue.depth()
            log.warning(
                "%s (event %s): queue full (%d items, %d bytes), overflow='drop': item dropped (%d dropped so far)",
                item.source,
                self._event,
                items,
                nbytes,
                self._drop_logged,
            )

    # ------------------------------------------------------------------ writing
    def _write_loop(self, lane: int) -> None:
        while not self._abort.is_set():
            item = self._queue.get(lane, timeout=0.2)
            if item is None:
                if self._queue.closed:
                    return
                continue
            self._process(item)

    def _process(self, item: Item) -> None:
        while True:
            item.attempts += 1
            try:
                self._store(item.source, item.payload, item.metadata)
            except Exception as exc:  # noqa: BLE001 - every failure is retried or dead-lettered, never raised
                permanent = isinstance(exc, ArchiverError) and exc.permanent
                if permanent or item.attempts > self.max_retries:
                    self._dead_letter(item, exc, persist=True)
                    return
                delay = self._backoff(item.attempts)
                self._accounting.add(item.source, "retried")
                log.warning(
                    "%s (event %s): store failed (attempt %d of %d), retrying in %.2f s: %s",
                    item.source,
                    self._event,
                    item.attempts,
                    self.max_retries + 1,
                    delay,
                    exc,
                )
                if self._abort.wait(delay):
                    self._dead_letter(item, exc)
                    return
                continue
            self._accounting.add(item.source, "archived")
            self._accounting.add(item.source, "bytes", item.nbytes)
            return

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half the delay fixed, half random."""
        delay = min(self._retry_max_delay, self._retry_delay * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def _dead_letter(self, item: Item, error: BaseException, persist: bool = False) -> None:
        """Keep ``item`` in the dead-letter store; with ``persist``, retry that store until it works or we abort.

        Writers persist (holding back their queue, and so the sender, while storage is broken); the
        receive path does not, and the item is then counted as dropped and logged as LOST.
        """
        message = f"{type(error).__name__}: {error}"
        attempt = 0
        while True:
            attempt += 1
            try:
                entry = self._dead_letters.put(
                    source=item.source,
                    event=self._event,
                    payload=item.payload,
                    metadata=item.metadata,
                    error=message,
                    attempts=item.attempts,
                    writer=self._writer_settings(),
                )
            except Exception as exc:  # noqa: BLE001 - retried, or reported as a loss
                if persist and attempt == 1:
                    log.error(
                        "%s (event %s): the dead-letter store %s cannot be written (%s); retrying, queue held back",
                        item.source,
                        self._event,
                        self._dead_letters.directory,
                        exc,
                    )
                if persist and not self._abort.wait(self._backoff(attempt)):
                    continue
                self._accounting.add(item.source, "dropped")
                log.error(
                    "%s (event %s): LOST item after %d attempt(s): %s; the dead-letter store %s failed too: %s",
                    item.source,
                    self._event,
                    item.attempts,
                    message,
                    self._dead_letters.directory,
                    exc,
                )
                return
            self._accounting.add(item.source, "dead_lettered")
            log.error(
                "%s (event %s): %s; kept in the dead-letter store as %s after %d attempt(s)",
                item.source,
                self._event,
                message,
                entry,
                item.attempts,
            )
            return

    # ------------------------------------------------------------------ status and shutdown
    def stats(self) -> dict[str, Any]:
        """Counters per source and in total, and the queue's fill (a remote capability under BOSS)."""
        items, nbytes = self._queue.depth()
        snapshot = self._accounting.snapshot()
        total = snapshot["total"]
        snapshot["total"]["in_flight"] = (
            total["received"] - total["archived"] - total["dead_lettered"] - total["dropped"]
        )
        snapshot["queue"] = {
            "items": items,
            "bytes": nbytes,
            "max_items": self._queue._max_items,
            "max_bytes": self._queue._max_bytes,
        }
        snapshot["event"] = self._event
        snapshot["object_selector"] = self._selector
        snapshot["dead_letter_dir"] = str(self._dead_letters.directory)
        return snapshot

    def is_queue_drained(self) -> bool:
        """True when every received item has been archived, dead-lettered or dropped."""
        return self.stats()["total"]["in_flight"] == 0

    def _stop(self, *_boss: Any) -> None:
        """Stop intake, drain the queue within ``drain_timeout``, dead-letter what is left. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._queue.close()
        subscription = getattr(self, "_subscription", None)
        if subscription is not None:
            try:
                subscription.undeclare()
            except Exception as exc:  # noqa: BLE001 - the session may already be closed
                log.debug("undeclaring the subscription failed: %s", exc)
            if subscription in getattr(self, "_subscriptions", []):
                self._subscriptions.remove(subscription)
        deadline = time.monotonic() + self.drain_timeout
        for thread in self._writers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._writers):
            log.warning(
                "event %s: queue not drained within drain_timeout=%.1f s; dead-lettering the rest",
                self._event,
                self.drain_timeout,
            )
            self._abort.set()
            for thread in self._writers:
                thread.join()
        for item in self._queue.drain():
            self._dead_letter(
                item, ArchiverError(f"not written within drain_timeout={self.drain_timeout} s at shutdown")
            )

    def _teardown(self) -> None:
        """Called by BOSS at shutdown: drain, then log the final figures."""
        self._stop()
        total = self.stats()["total"]
        log.info(
            "event %s: received %d, archived %d, retried %d, dead-lettered %d, dropped %d, "
            "gaps %d (%d missing), %d bytes",
            self._event,
            total["received"],
            total["archived"],
            total["retried"],
            total["dead_lettered"],
            total["dropped"],
            total["gaps"],
            total["missing"],
            total["bytes"],
        )

    def _destroy_hero(self) -> None:
        """Drain before the Zenoh session goes away, so that nothing queued is discarded."""
        self._stop()
        super()._destroy_hero()


def _disable_shared_memory(manager: ZenohSessionManager | None, realm: str) -> None:
    """Turn Zenoh's shared-memory transport off for the session this archiver is about to open.

    heros shares one session per realm and process; when it is already open (another HERO in this
    process opened it) its configuration cannot change any more, which is worth a warning.
    """
    manager = manager or heros_session_manager
    if realm in getattr(manager, "_sessions", {}):
        log.warning(
            "the Zenoh session of realm %r is already open, so its shared-memory transport stays as configured; "
            "with it on, Zenoh may drop events silently when the archiver pushes back (eclipse-zenoh/zenoh#2628)",
            realm,
        )
        return
    manager.update_config({"transport/shared_memory/enabled": False})
