"""Say when the archiver's Zenoh session loses a router and when it is back (decision 0038).

Behind a router, what cameras publish while the archiver has no path to them is lost upstream without a word
from Zenoh; the archiver counts it afterwards, as gaps of ``sequence_key``. This makes the cause visible when
it happens: one WARNING when a router link of the session closes (naming the router and what follows), one
INFO when a router link opens again. Links to peers are logged at DEBUG only (every loopback test has them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import zenoh

from ..observe.logs import log_fields

log = logging.getLogger("heros_archiver")


class RouterWatch:
    """Logs the router links of ``session`` coming and going, for the archiver described by ``source`` and
    ``event`` (the log fields of ``observe.logs``), until :meth:`close`.

    The events come through a small Zenoh channel that a daemon thread of ours reads a few times a second, not
    through a Python callback: with a callback listener declared, eclipse-zenoh 1.9.0 hung the interpreter at
    exit (undeclared or not in an ``atexit`` handler), which would break the drain at exit (decision 0016).
    """

    #: how often the thread looks for events (seconds): a log line may come this much late
    POLL = 0.25

    def __init__(self, session: zenoh.Session, source: str, event: str) -> None:
        self._source = source
        self._event = event
        self._listener: Any = None
        self._stop = threading.Event()
        declare = getattr(session.info, "declare_transport_events_listener", None)
        if declare is None:  # an eclipse-zenoh without transport events: nothing to say, nothing lost
            log.debug("this eclipse-zenoh has no transport events: router links are not logged")
            return
        self._listener = declare(zenoh.handlers.FifoChannel(64))
        self._thread = threading.Thread(
            target=self._run, args=(self._listener.handler,), name="heros-archiver-router-watch", daemon=True
        )
        self._thread.start()

    def _run(self, handler: Any) -> None:
        while not self._stop.is_set():
            try:
                event = handler.try_recv()
            except Exception:  # noqa: BLE001 - the channel is closed with the session: nothing more will come
                return
            if event is None:
                self._stop.wait(self.POLL)
            else:
                self._log(event)

    def _log(self, event: Any) -> None:
        transport = event.transport
        opened = event.kind == zenoh.SampleKind.PUT
        if transport.whatami != zenoh.WhatAmI.ROUTER:
            log.debug("Zenoh %s %s %s", transport.whatami, transport.zid, "connected" if opened else "left")
        elif opened:
            log.info(
                "%s (event %s): connected to Zenoh router %s",
                self._source, self._event, transport.zid, extra=log_fields(self._source, self._event),
            )  # fmt: skip
        else:
            log.warning(
                "%s (event %s): lost Zenoh router %s; until a router is back, what is published is lost upstream "
                "(counted as gaps of sequence_key when it is back)",
                self._source, self._event, transport.zid,
                extra=log_fields(self._source, self._event, error=f"lost Zenoh router {transport.zid}"),
            )  # fmt: skip

    def close(self) -> None:
        """Stop the thread and the listener (idempotent; the session may be closed already)."""
        self._stop.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            self._thread.join(2 * self.POLL + 1.0)
            with contextlib.suppress(Exception):
                listener.undeclare()
