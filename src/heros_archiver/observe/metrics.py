"""Prometheus metrics of the archivers of a process, read from their status at scrape time (``--metrics-port``).

A custom collector, not counters updated per item: each scrape calls every archiver's ``status()`` once and
turns it into metric families, so archiving pays nothing for the endpoint, and the figures are the same
ones ``heros-archiver status`` shows. Counters, and the items in flight and in the intake, are labelled by
archiver, event and source; the other gauges (queue, oldest item, disk, listeners) by archiver and event.
``prometheus-client`` is the extra ``[metrics]``, imported when the endpoint starts. Decision 0033.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConfigurationError
from ..extras import require_extra
from ..saferepr import safe_str

__all__ = ["COUNTERS", "GAUGES", "SOURCE_GAUGES", "MetricsServer", "StatusCollector", "archiver_label", "serve_metrics"]

log = logging.getLogger("heros_archiver")

PREFIX = "heros_archiver_"
#: Per source: (metric name without prefix and ``_total``, the status counter, help).
COUNTERS = (
    ("items_received", "received", "Items received."),
    ("items_archived", "archived", "Items archived (committed to storage)."),
    ("items_dead_lettered", "dead_lettered", "Items kept in the dead-letter store instead of archived."),
    ("items_dropped", "dropped", "Items dropped (an overflow='drop' policy, or lost)."),
    ("items_quarantined", "quarantined", "Spooled items whose entry could not be read back."),
    ("items_retried", "retried", "Retries of failed writes (an item retried twice counts twice)."),
    ("bytes_archived", "bytes", "Payload and metadata bytes of the archived items."),
    ("gaps", "gaps", "Gaps in the sequence numbers (sequence_key)."),
    ("missing", "missing", "Sequence numbers that never arrived."),
)
#: Per source, gauges: (metric name without prefix, the status field, help).
SOURCE_GAUGES = (
    ("items_in_flight", "in_flight", "Items received and not yet settled (queued, being written, awaiting a commit)."),
    ("source_intake_waiting", "intake_waiting", "Samples of the source in a buffered intake (not yet received)."),
)
#: Per archiver: (metric name without prefix, how to read it from a status, help).
GAUGES: tuple[tuple[str, Callable[[dict[str, Any]], float | None], str], ...] = (
    ("queue_items", lambda s: s["queue"]["items"], "Items queued or held by a container writer."),
    ("queue_bytes", lambda s: s["queue"]["bytes"], "Bytes queued or held by a container writer."),
    ("queue_max_items", lambda s: s["queue"]["max_items"], "The queue's bound in items."),
    ("queue_max_bytes", lambda s: s["queue"]["max_bytes"], "The queue's bound in bytes."),
    (
        "oldest_item_age_seconds",
        lambda s: s["queue"]["oldest_age"] or 0.0,
        "Seconds the oldest waiting item has waited (0: none waits).",
    ),
    ("spooled_items", lambda s: s["queue"]["spooled"], "Items waiting in the spool on disk."),
    (
        "intake_waiting",
        lambda s: s["queue"]["intake_waiting"],
        "Samples a buffered intake took from Zenoh that wait, as bytes, in front of the queue.",
    ),
    (
        "intake_waiting_bytes",
        lambda s: s["queue"]["intake_waiting_bytes"],
        "Their payloads' bytes (at most 8 MiB and one sample more).",
    ),
    ("disk_free_bytes", lambda s: None if s["disk"] is None else s["disk"]["free_bytes"], "Free bytes of the disk."),
    ("uptime_seconds", lambda s: s["uptime"], "Seconds since the archiver was made."),
    ("paused", lambda s: None if s["paused"] is None else float(s["paused"]), "1 while the archiver is paused."),
)
#: Per listener of an archiver: (metric name without prefix, the hub's count, kind, help).
LISTENER_METRICS = (
    ("listener_queued", "queued", "gauge", "Outcomes waiting for the listener."),
    ("listener_lagged", "lagged", "counter", "Outcomes not handed to the listener because it fell behind."),
    ("listener_failed", "failed", "counter", "Outcomes on which the listener failed."),
)


def archiver_label(status: dict[str, Any]) -> str:
    """The ``archiver`` label of a status: the HERO's name, or its class's name when it is none."""
    identity = status["archiver"]
    return str(identity.get("name") or str(identity.get("class", "archiver")).rpartition(".")[2])


class StatusCollector:
    """A prometheus_client collector of the statuses ``statuses`` (each archiver's ``status`` method) return,
    read once per scrape; an archiver whose status fails is left out of that scrape (and logged)."""

    def __init__(self, statuses: Sequence[Callable[[], dict[str, Any]]]) -> None:
        require_extra("metrics", "prometheus_client")
        self._core = importlib.import_module("prometheus_client.core")
        self._statuses = list(statuses)

    def collect(self) -> Iterator[Any]:
        core = self._core
        source_labels, archiver_labels = ["archiver", "event", "source"], ["archiver", "event"]
        counters = {
            name: core.CounterMetricFamily(PREFIX + name, text, labels=source_labels) for name, _, text in COUNTERS
        }
        gauges = {name: core.GaugeMetricFamily(PREFIX + name, text, labels=archiver_labels) for name, _, text in GAUGES}
        source_gauges = {
            name: core.GaugeMetricFamily(PREFIX + name, text, labels=source_labels) for name, _, text in SOURCE_GAUGES
        }
        listener_families = {
            name: (core.GaugeMetricFamily if kind == "gauge" else core.CounterMetricFamily)(
                PREFIX + name, text, labels=[*archiver_labels, "listener"]
            )
            for name, _, kind, text in LISTENER_METRICS
        }
        for status in self._read():
            labels = [archiver_label(status), str(status["archiver"].get("event", ""))]
            for source, values in status["sources"].items():
                for name, key, _ in COUNTERS:
                    counters[name].add_metric([*labels, source], values[key])
                for name, key, _ in SOURCE_GAUGES:
                    source_gauges[name].add_metric([*labels, source], values[key])
            for name, read, _ in GAUGES:
                value = read(status)
                if value is not None:
                    gauges[name].add_metric(labels, value)
            for listener, counts in status["listeners"].items():
                for name, key, _, _ in LISTENER_METRICS:
                    listener_families[name].add_metric([*labels, listener], counts[key])
        yield from counters.values()
        yield from gauges.values()
        yield from source_gauges.values()
        yield from listener_families.values()

    def _read(self) -> list[dict[str, Any]]:
        statuses = []
        for status in self._statuses:
            try:
                statuses.append(status())
            except Exception as exc:  # noqa: BLE001 - one archiver's failure must not empty the others' metrics
                log.error("metrics: reading a status failed: %s: %s", type(exc).__name__, safe_str(exc))
        return statuses


class MetricsServer:
    """The HTTP endpoint serving ``/metrics``; ``close`` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) it listens on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve_metrics(
    statuses: Sequence[Callable[[], dict[str, Any]]], port: int, address: str = "127.0.0.1"
) -> MetricsServer:
    """Serve the metrics of ``statuses`` (each archiver's ``status``) on ``http://address:port/metrics``, on a
    thread of its own. Raises ConfigurationError when prometheus-client is missing or the port cannot be had."""
    prometheus = require_extra("metrics", "prometheus_client")
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(statuses))
    try:
        server, thread = prometheus.start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"--metrics-port: expected to serve metrics on {address}:{port}, but it cannot be bound ({exc})"
        ) from exc
    return MetricsServer(server, thread)
