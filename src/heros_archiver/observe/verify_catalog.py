"""What verify reads from the catalog: one snapshot of its entries, and a second look at what looked wrong.

Only the catalog's documented schema (``items`` and ``failures``) is read, through a read-only connection
(``catalog_backend``: the root's SQLite file, WAL, or a shared PostgreSQL catalog, of whose rows only those of
one host and root are read), so verify runs beside an archiver that writes the catalog (the writer never waits
for this reader, nor this reader for it). Every entry is read in one read transaction: one snapshot, in which
each item is either wholly cataloged or not yet. Items committed after it are not
checked, and their files are not orphans (``second look``): before a finding is reported, the catalog is
read again, and what the archiver has changed or cataloged meanwhile is not reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from .catalog_backend import CatalogBackend

__all__ = ["CatalogSnapshot", "Entry", "Stream"]

#: Parameters per ``IN (...)`` of a second look (below SQLite's limit of 32,766).
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Entry:
    """One cataloged location: a file (``member`` None) or indices of a member of a container."""

    path: str
    member: str | None
    index: int | None
    count: int
    nbytes: int
    checksum: str | None
    committed: float
    #: the item's source and sequence value (what a Parquet row holds is checked against them)
    source: str
    sequence: int | None

    @property
    def key(self) -> tuple[str, str, int]:
        """The catalog's unique key of the location (``items_location``)."""
        return (self.path, self.member or "", -1 if self.index is None else self.index)


@dataclass(frozen=True, slots=True)
class Stream:
    """The sequence values of one archiver, source and event: ``(value, items)`` in increasing order."""

    archiver: str
    source: str
    event: str
    values: tuple[tuple[int, int], ...]


class CatalogSnapshot:
    """The entries of one catalog (of ``host`` and ``root`` in a shared one) as they were at one moment, and a
    second look at it later. The connection stays the caller's."""

    def __init__(self, catalog: CatalogBackend, host: str | None = None, root: str | None = None) -> None:
        self.catalog = catalog
        self.path = catalog.where
        clauses, self._parameters = catalog.scope(host, root)
        self._scope = "".join(f" AND {clause}" for clause in clauses)

    def _execute(self, sql: str, parameters: tuple[Any, ...] | list[Any] = ()) -> Any:
        """``sql`` (its conditions ending in ``{scope}``) with the scope's conditions and parameters after its own."""
        return self.catalog.execute(sql.replace("{scope}", self._scope), [*parameters, *self._parameters])

    def read(self) -> tuple[list[Entry], dict[str, list[Entry]], list[Stream]]:
        """Files, containers (their entries by path, in member and index order) and sequence streams, all from
        one snapshot. Raises CatalogError when the catalog cannot be read."""
        with self.catalog.snapshot():
            files = [
                Entry(path, None, None, 1, nbytes, checksum, committed, source, sequence)
                for path, nbytes, checksum, committed, source, sequence in self._execute(
                    "SELECT path, nbytes, checksum, committed, source, sequence FROM items"
                    " WHERE member IS NULL{scope} ORDER BY id"
                )
            ]
            rows = self._execute(
                "SELECT path, member, idx, count, nbytes, checksum, committed, source, sequence FROM items"
                " WHERE member IS NOT NULL{scope} ORDER BY path, member, idx"
            )
            containers = {path: [Entry(*row) for row in group] for path, group in groupby(rows, lambda r: r[0])}
            streams = list(self._streams())
        return files, containers, streams

    def _streams(self, where: str = "", parameters: tuple[object, ...] = ()) -> Iterator[Stream]:
        # One item written as several entries (an array split into files) shares its receive time: the
        # number of items holding a value is the number of distinct receive times.
        rows = self._execute(
            "SELECT archiver, source, event, sequence, COUNT(DISTINCT received) FROM items"
            f" WHERE sequence IS NOT NULL{where}{{scope}} GROUP BY archiver, source, event, sequence"
            " ORDER BY archiver, source, event, sequence",
            parameters,
        )
        for (archiver, source, event), group in groupby(rows, lambda r: r[:3]):
            yield Stream(archiver, source, event, tuple((row[3], row[4]) for row in group))

    def unchanged(self, entries: Iterable[Entry]) -> set[tuple[str, str, int]]:
        """The keys of ``entries`` the catalog still holds as they were read (a second look: an entry the archiver
        replaced or removed meanwhile is not reported)."""
        found: set[tuple[str, str, int]] = set()
        for entry in entries:
            row = self._execute(
                f"SELECT nbytes, checksum, committed FROM items WHERE {self.catalog.location_key}{{scope}}", entry.key
            ).fetchone()
            if row is not None and tuple(row) == (entry.nbytes, entry.checksum, entry.committed):
                found.add(entry.key)
        return found

    def cataloged(self, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` the catalog names now (as a file, or as a container)."""
        wanted = list(paths)
        found: set[str] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._execute(f"SELECT DISTINCT path FROM items WHERE path IN ({marks}){{scope}}", chunk)
            found.update(path for (path,) in rows)
        return found

    def stream_now(self, archiver: str, source: str, event: str, first: int, last: int) -> Stream | None:
        """The stream's values from ``first`` to ``last`` as the catalog holds them now (a second look at a gap)."""
        where = " AND archiver = ? AND source = ? AND event = ? AND sequence BETWEEN ? AND ?"
        return next(self._streams(where, (archiver, source, event, first, last)), None)

    def failed(self, archiver: str, source: str, event: str, first: int, last: int) -> dict[str, int]:
        """How many items of the stream with values from ``first`` to ``last`` the catalog's ``failures`` table
        holds, per kind (``dead_lettered``, ``dropped``): why a gap is there, when the archiver knew."""
        rows = self._execute(
            "SELECT kind, COUNT(DISTINCT sequence) FROM failures WHERE archiver = ? AND source = ? AND event = ?"
            " AND sequence BETWEEN ? AND ?{scope} GROUP BY kind ORDER BY kind",
            (archiver, source, event, first, last),
        )
        return {str(kind): int(count) for kind, count in rows}
