"""Reading the catalog of an archive root, also while archivers write it: ``ls``, ``export``, ``verify``.

``CatalogReader(root)`` opens ``<root>/.heros-archiver/catalog.sqlite`` read-only, ``CatalogReader(url=...)`` a
shared PostgreSQL catalog (``catalog_backend``, decision 0037), and yields its rows as frozen dataclasses,
metadata parsed, in commit order (the row id). Each query reads one snapshot of the catalog: rows committed
while it runs appear in the next one. A shared catalog's rows also say their ``host`` and ``root``, and are
filtered by them (with a URL, ``root`` is a filter: the rows of that archive root only).

Filters: ``source`` (the HERO that sent it), ``archiver`` (who wrote it: ``<name>:<event>``), ``host`` (shared
catalogs only), ``since`` (received at or after: a unix time, a ``datetime``, an ISO
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

from .catalog_backend import FAILURE_COLUMNS, ITEM_COLUMNS, CatalogBackend, json_matches, open_reader

__all__ = [
    "FAILURE_COLUMNS",
    "ITEM_COLUMNS",
    "CatalogFailure",
    "CatalogItem",
    "CatalogReader",
    "Filters",
    "Since",
    "parse_since",
]

#: What ``since`` may be given as.
Since = float | int | datetime | str | None

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
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
    #: the host and archive root it is of (a shared catalog's rows; None in a root's SQLite catalog)
    host: str | None = None
    root: str | None = None

    @property
    def location(self) -> str:
        """``path``, or ``path[member@idx]`` (``path[member@idx:end]`` for more than one index)."""
        if self.member is None:
            return self.path
        span = f"{self.idx}" if self.count == 1 else f"{self.idx}:{(self.idx or 0) + self.count}"
        return f"{self.path}[{self.member}@{span}]"

    def file(self, root: str | os.PathLike[str] | None = None) -> Path:
        """The file (or container) under ``root`` (or, given None, under the root it is of)."""
        base = self.root if root is None else root
        if base is None:
            raise ValueError(f"{self.path}: expected the archive root it is under (a root's catalog names none)")
        return Path(base, self.path)


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
    #: as ``CatalogItem``'s
    host: str | None = None
    root: str | None = None


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


@dataclass(frozen=True)
class Filters:
    """What ``CatalogReader`` keeps of the rows (None: any)."""

    source: str | None = None
    since: Since = None
    where: Mapping[str, Any] | None = None
    archiver: str | None = None
    host: str | None = None

    def sql(self, catalog: CatalogBackend, root: str | None) -> tuple[str, list[Any]]:
        """`` WHERE ...`` (or nothing) and its parameters, in ``catalog``'s SQL."""
        clauses, parameters = catalog.scope(self.host, root)
        for column, value in (("source", self.source), ("archiver", self.archiver)):
            if value is not None:
                clauses.append(f"{column} = ?")
                parameters.append(value)
        start = parse_since(self.since)
        if start is not None:
            clauses.append("received >= ?")
            parameters.append(start)
        matches, values = json_matches(catalog, self.where)
        return (" WHERE " + " AND ".join([*clauses, *matches]) if clauses or matches else ""), [*parameters, *values]


class CatalogReader:
    """The catalog of the archive root ``root`` (its SQLite file), or with ``url`` the shared PostgreSQL catalog
    (``root``, if given, then keeps the rows of that root), read-only. Raises CatalogError (naming where it
    looked) when there is none, or it is not one of this schema. Use as a context manager, or ``close()`` it."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, url: str | None = None) -> None:
        self.root = None if root is None else Path(root)
        self._catalog = open_reader(root, url)
        #: where the catalog is (the file, or the URL without its password)
        self.where = self._catalog.where
        #: the root whose rows are kept, in a shared catalog (its rows say the absolute root)
        self._scope_root = None if url is None or root is None else os.path.abspath(root)

    @property
    def shared(self) -> bool:
        """Rows of several hosts and roots (a PostgreSQL catalog): they say which."""
        return self._catalog.shared

    @property
    def item_columns(self) -> tuple[str, ...]:
        """The columns of ``items`` in this catalog (``ITEM_COLUMNS``, and ``host``, ``root`` when shared)."""
        return self._catalog.item_columns

    @property
    def failure_columns(self) -> tuple[str, ...]:
        return self._catalog.failure_columns

    def items(
        self,
        source: str | None = None,
        since: Since = None,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
        archiver: str | None = None,
        host: str | None = None,
    ) -> Iterator[CatalogItem]:
        """The archived items, in commit order, filtered (see the module docstring)."""
        metadata = ITEM_COLUMNS.index("metadata")
        for row in self._rows("items", Filters(source, since, where, archiver, host), limit):
            values = list(row)
            values[metadata] = _parse_metadata(values[metadata])
            yield CatalogItem(*values)

    def failures(
        self,
        source: str | None = None,
        since: Since = None,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
        archiver: str | None = None,
        host: str | None = None,
    ) -> Iterator[CatalogFailure]:
        """The items dead-lettered or dropped, in the order they failed, filtered as ``items``."""
        metadata = FAILURE_COLUMNS.index("metadata")
        for row in self._rows("failures", Filters(source, since, where, archiver, host), limit):
            values = list(row)
            values[metadata] = _parse_metadata(values[metadata])
            yield CatalogFailure(*values)

    def table(self, name: str, batch: int = 10_000, filters: Filters | None = None) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of table ``name`` (``items`` or ``failures``) as stored, columns as ``item_columns`` /
        ``failure_columns`` (metadata as JSON text), in id order, in batches of at most ``batch`` (``export``)."""
        columns = {"items": self.item_columns, "failures": self.failure_columns}.get(name)
        if columns is None:
            raise ValueError(f"table: expected 'items' or 'failures', got {name!r}")
        conditions, parameters = (filters or Filters()).sql(self._catalog, self._scope_root)
        cursor = self._catalog.execute(f"SELECT {', '.join(columns)} FROM {name}{conditions} ORDER BY id", parameters)
        while rows := cursor.fetchmany(batch):
            yield [tuple(row) for row in rows]

    def count(
        self,
        source: str | None = None,
        since: Since = None,
        where: Mapping[str, Any] | None = None,
        archiver: str | None = None,
        host: str | None = None,
    ) -> int:
        """How many items (rows of ``items``) match."""
        conditions, parameters = Filters(source, since, where, archiver, host).sql(self._catalog, self._scope_root)
        return int(self._catalog.execute(f"SELECT count(*) FROM items{conditions}", parameters).fetchone()[0])

    def _rows(self, table: str, filters: Filters, limit: int | None) -> Iterator[tuple[Any, ...]]:
        conditions, parameters = filters.sql(self._catalog, self._scope_root)
        columns = self.item_columns if table == "items" else self.failure_columns
        query = f"SELECT {', '.join(columns)} FROM {table}{conditions} ORDER BY id"
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(int(limit))
        cursor = self._catalog.execute(query, parameters)
        while rows := cursor.fetchmany(_FETCH):
            yield from rows

    def close(self) -> None:
        """Release the file or the connection. Idempotent."""
        self._catalog.close()

    def __enter__(self) -> CatalogReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
