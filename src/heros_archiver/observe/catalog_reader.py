"""Reading the catalog of an archive root, also while archivers write it: ``ls``, ``export``, ``verify``.

``CatalogReader(root)`` opens ``<root>/.heros-archiver/catalog.sqlite`` read-only and yields its rows as frozen
dataclasses, metadata parsed, in commit order (the row id). Each iteration reads one snapshot of the catalog
(SQLite's WAL): rows committed while it runs appear in the next one.

Filters: ``source`` (the HERO that sent it), ``since`` (received at or after: a unix time, a ``datetime``, an ISO
8601 text or a duration back from now such as ``10m``, ``2h``, ``1d``: ``parse_since``) and ``where`` (top-level
metadata keys and the values they must hold: ``{"run": 7}`` matches the number 7, not the text ``"7"``; a list or
an object matches one written alike).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .catalog_schema import catalog_path, open_read_only

__all__ = ["FAILURE_COLUMNS", "ITEM_COLUMNS", "CatalogFailure", "CatalogItem", "CatalogReader", "Since", "parse_since"]

#: What ``since`` may be given as.
Since = float | int | datetime | str | None

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The columns of ``items`` and ``failures``, in the schema's order.
ITEM_COLUMNS = ("id", "archiver", "source", "event", "sequence", "path", "member", "idx", "count", "nbytes", "checksum",
                "metadata", "received", "committed")  # fmt: skip
FAILURE_COLUMNS = ("id", "archiver", "source", "event", "sequence", "kind", "entry", "error", "metadata", "received",
                   "time")  # fmt: skip
_COLUMNS = {"items": ITEM_COLUMNS, "failures": FAILURE_COLUMNS}
_FETCH = 1000


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One row of ``items``: an archived item (or, for a split array, one of its files)."""

    id: int
    #: who wrote it: ``<HERO name or class name>:<event>``
    archiver: str
    source: str
    event: str
    sequence: int | None
    #: the file or container, relative to the root, ``/`` separators
    path: str
    #: the dataset / array inside the container (``rows`` for Parquet); None: a file of its own
    member: str | None
    #: first index along axis 0 of ``member`` (None for a file)
    idx: int | None
    count: int
    nbytes: int
    checksum: str | None
    metadata: dict[str, Any]
    received: float
    committed: float

    @property
    def location(self) -> str:
        """``path``, or ``path[member@idx]`` (``path[member@idx:end]`` for more than one index)."""
        if self.member is None:
            return self.path
        span = f"{self.idx}" if self.count == 1 else f"{self.idx}:{(self.idx or 0) + self.count}"
        return f"{self.path}[{self.member}@{span}]"

    def file(self, root: str | os.PathLike[str]) -> Path:
        """The file (or container) under ``root``."""
        return Path(root, self.path)


@dataclass(frozen=True, slots=True)
class CatalogFailure:
    """One row of ``failures``: an item dead-lettered or dropped."""

    id: int
    archiver: str
    source: str
    event: str
    sequence: int | None
    #: ``dead_lettered`` or ``dropped``
    kind: str
    #: the dead-letter entry (relative to the root when under it); None for a dropped item
    entry: str | None
    #: the error, or why it was dropped
    error: str
    metadata: dict[str, Any]
    received: float
    #: when it failed
    time: float


def parse_since(value: Since, now: float | None = None) -> float | None:
    """A unix time from ``since``: a number (a unix time), a ``datetime`` (naive: local time), ISO 8601 text
    (``2026-03-01``, ``2026-03-01T12:00:00+01:00``) or a duration back from ``now`` (``90s``, ``10m``, ``2h``,
    ``1d``, ``1w``). Raises ValueError naming what it expected."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"since: expected a time or a duration, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    match = _DURATION.match(value)
    if match:
        return (time.time() if now is None else now) - float(match.group(1)) * _SECONDS[match.group(2).lower()]
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"since: expected an ISO 8601 time (2026-03-01T12:00) or a duration (10m, 2h, 1d), got {value!r}"
        ) from None


def _parse_metadata(text: str) -> dict[str, Any]:
    """The metadata column as a dict (the standard library keeps integers of any size exact)."""
    value = json.loads(text)
    return value if isinstance(value, dict) else {"_metadata": value}


def _metadata_match(key: str, value: Any) -> tuple[str, list[Any]]:
    """SQL (over the row's ``metadata``) true when its top-level ``key`` holds ``value``, and its parameters.

    ``json_each`` rather than a JSON path: a key may hold any character, which a path would have to quote."""
    condition = "SELECT 1 FROM json_each(metadata) AS m WHERE m.key = ? AND "
    if value is None:
        return f"EXISTS ({condition}m.type = 'null')", [key]
    if isinstance(value, bool):
        return f"EXISTS ({condition}m.type = ?)", [key, "true" if value else "false"]
    if isinstance(value, (int, float)):
        return f"EXISTS ({condition}m.type IN ('integer', 'real') AND m.value = ?)", [key, value]
    if isinstance(value, str):
        return f"EXISTS ({condition}m.type = 'text' AND m.value = ?)", [key, value]
    return f"EXISTS ({condition}m.type IN ('array', 'object') AND m.value = json(?))", [key, json.dumps(value)]


def _conditions(source: str | None, since: Since, where: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    parameters: list[Any] = []
    if source is not None:
        clauses.append("source = ?")
        parameters.append(source)
    start = parse_since(since)
    if start is not None:
        clauses.append("received >= ?")
        parameters.append(start)
    for key, value in (where or {}).items():
        clause, values = _metadata_match(str(key), value)
        clauses.append(clause)
        parameters.extend(values)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), parameters


class CatalogReader:
    """The catalog of the archive root ``root``, read-only. Raises CatalogError (naming where it looked) when
    there is none, or it is not one of this schema. Use as a context manager, or ``close()`` it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.path = catalog_path(root)
        self._connection = open_read_only(root)

    def items(
        self,
        source: str | None = None,
        since: Since = None,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[CatalogItem]:
        """The archived items, in commit order, filtered (see the module docstring)."""
        for row in self._rows("items", source, since, where, limit):
            values = list(row)
            values[11] = _parse_metadata(values[11])
            yield CatalogItem(*values)

    def failures(
        self,
        source: str | None = None,
        since: Since = None,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[CatalogFailure]:
        """The items dead-lettered or dropped, in the order they failed, filtered as ``items``."""
        for row in self._rows("failures", source, since, where, limit):
            values = list(row)
            values[8] = _parse_metadata(values[8])
            yield CatalogFailure(*values)

    def table(self, name: str, batch: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of table ``name`` (``items`` or ``failures``) as stored, columns as ``ITEM_COLUMNS`` /
        ``FAILURE_COLUMNS`` (metadata as JSON text), in id order, in batches of at most ``batch`` (``export``)."""
        if name not in _COLUMNS:
            raise ValueError(f"table: expected 'items' or 'failures', got {name!r}")
        cursor = self._connection.execute(f"SELECT {', '.join(_COLUMNS[name])} FROM {name} ORDER BY id")
        while rows := cursor.fetchmany(batch):
            yield rows

    def count(self, source: str | None = None, since: Since = None, where: Mapping[str, Any] | None = None) -> int:
        """How many items (rows of ``items``) match."""
        conditions, parameters = _conditions(source, since, where)
        return int(self._connection.execute(f"SELECT count(*) FROM items{conditions}", parameters).fetchone()[0])

    def _rows(
        self,
        table: str,
        source: str | None,
        since: Since,
        where: Mapping[str, Any] | None,
        limit: int | None,
    ) -> Iterator[tuple[Any, ...]]:
        conditions, parameters = _conditions(source, since, where)
        query = f"SELECT {', '.join(_COLUMNS[table])} FROM {table}{conditions} ORDER BY id"
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(int(limit))
        cursor = self._connection.execute(query, parameters)
        while rows := cursor.fetchmany(_FETCH):
            yield from rows

    def close(self) -> None:
        """Release the file. Idempotent."""
        self._connection.close()

    def __enter__(self) -> CatalogReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
