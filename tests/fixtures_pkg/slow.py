"""Archivers with slow storage: ``_store`` sleeps ``store_delay`` seconds (the first call
``first_store_delay``), then writes as usual.

``classname: "fixtures_pkg.slow.SlowArrayArchiver"`` in a config run by ``heros-archiver run`` with
``PYTHONPATH`` including the tests directory; ``store_delay`` is taken from the arguments.
``SlowHdf5Archiver`` appends each frame ``store_delay`` seconds later (through ``testing.SlowSink``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from heros_archiver import ArrayArchiver, Hdf5Archiver
from heros_archiver.testing.faults import SlowSink


class SlowArrayArchiver(ArrayArchiver):
    """An ArrayArchiver whose storage takes ``store_delay`` seconds longer per item; records the call order."""

    def __init__(
        self,
        *args: Any,
        store_delay: float = 0.05,
        first_store_delay: float = 0.0,
        drain_log: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.store_delay = float(store_delay)
        self.drain_log = drain_log  # a file that gets "start NAME T" and "end NAME T" (monotonic) per drain
        self.first_store_delay = float(first_store_delay)  # a storage stall at the first item
        self.store_calls: list[tuple[str, Any]] = []
        self._calls_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        with self._calls_lock:
            self.store_calls.append((source_name, metadata.get("frame")))
            first = len(self.store_calls) == 1
        time.sleep(self.first_store_delay if first else self.store_delay)
        super()._store(source_name, payload, metadata)

    def _teardown(self) -> None:
        self._log_drain("start")
        super()._teardown()
        self._log_drain("end")

    def _log_drain(self, what: str) -> None:
        if self.drain_log is not None:
            with open(self.drain_log, "a") as log:
                log.write(f"{what} {self._selector} {time.monotonic()}\n")


class SlowHdf5Archiver(Hdf5Archiver):
    """An Hdf5Archiver whose every append takes ``store_delay`` seconds longer (a slow writer thread)."""

    def __init__(self, *args: Any, store_delay: float = 0.05, **kwargs: Any) -> None:
        super().__init__(*args, sink_wrapper=SlowSink(store_delay, calls=("append",)), **kwargs)
