"""``LISTEN record_changed``: the identifiers of changed records, in batches, to a callback (a HERO's event).

The schema's triggers notify every change of a record or its tags, by any writer (this archiver, another one,
``tag_ids`` from a script), with the identifier as payload; PostgreSQL folds repeats within a transaction.
A thread of its own waits for notifications, gathers what arrives within ``linger`` seconds, de-duplicated in
order, and hands it on. When the connection is lost it reconnects with backoff; what was notified meanwhile
is not seen (NOTIFY is not queued for absent listeners), which it logs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..errors import StorageError
from .postgres_db import connect, load_psycopg, redact_url

__all__ = ["ChangeListener"]

log = logging.getLogger("heros_archiver")

CHANNEL = "record_changed"


class ChangeListener:
    """Calls ``deliver(identifiers)`` for the changes notified on ``CHANNEL`` until ``stop()``."""

    def __init__(self, db_url: str, deliver: Callable[[list[str]], None], linger: float = 0.05) -> None:
        self._url = db_url
        self._deliver = deliver
        self._linger = linger
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heros-archiver-record-changed", daemon=True)
        self._thread.start()

    def wait_listening(self, timeout: float) -> bool:
        """Whether the listener has its ``LISTEN`` in place (within ``timeout`` seconds)."""
        return self._listening.wait(timeout)

    def _run(self) -> None:
        psycopg = load_psycopg()
        delay = 0.2
        while not self._stop.is_set():
            connection = None
            try:
                connection = connect(self._url, "record_changed")
                connection.execute(f"LISTEN {CHANNEL}")
                self._listening.set()
                delay = 0.2
                self._listen(connection)
            except (StorageError, psycopg.Error) as exc:
                if self._listening.is_set():
                    log.warning(
                        "record_changed: lost the connection to %s (changes until it is back are not sent): %s",
                        redact_url(self._url),
                        exc,
                    )
                self._listening.clear()
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if connection is not None:
                    connection.close()

    def _listen(self, connection: object) -> None:
        while not self._stop.is_set():
            batch: dict[str, None] = {}
            for notify in connection.notifies(timeout=0.5, stop_after=1):  # type: ignore[attr-defined]
                batch[notify.payload] = None
            if not batch:
                continue
            for notify in connection.notifies(timeout=self._linger):  # type: ignore[attr-defined]
                batch[notify.payload] = None
            try:
                self._deliver(list(batch))
            except Exception as exc:  # noqa: BLE001 - a failing receiver must not end the listening
                log.warning("record_changed: sending %d identifier(s) failed: %s", len(batch), exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
