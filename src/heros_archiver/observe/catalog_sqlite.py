"""The catalog as the SQLite file of one archive root (``catalog_schema``): the ``CatalogBackend`` of decision 0031.

Transactions that apply a journal are ``BEGIN IMMEDIATE``: SQLite's one write lock serialises every applier of
the root, so reading a journal's offset and moving it in the same transaction applies each line once. Readers
open the file read-only (WAL: they never block the writer nor it them).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CatalogError
from .catalog_backend import FAILURE_COLUMNS, ITEM_COLUMNS, AdoptedRow, CatalogBackend, Cursor
from .catalog_schema import catalog_path, open_for_writing, open_read_only

__all__ = ["SqliteCatalog"]

_INSERT_ITEM = """
INSERT INTO items (archiver, source, event, sequence, path, member, idx, count, nbytes, checksum, metadata, received,
                   committed)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (path, ifnull(member, ''), ifnull(idx, -1)) DO UPDATE SET
  archiver = excluded.archiver, source = excluded.source, event = excluded.event, sequence = excluded.sequence,
  count = excluded.count, nbytes = excluded.nbytes, checksum = excluded.checksum, metadata = excluded.metadata,
  received = excluded.received, committed = excluded.committed
"""
_INSERT_FAILURE = """
INSERT INTO failures (archiver, source, event, sequence, kind, entry, error, metadata, received, time)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_ADOPT = (
    "INSERT OR IGNORE INTO items (archiver, source, event, sequence, path, member, idx, count, nbytes, checksum, "
    "metadata, received, committed) VALUES (?, ?, ?, NULL, ?, ?, NULL, 1, ?, ?, '{}', ?, ?)"
)


_CONTAINER_ENDS = (
    "SELECT path, member, max(idx + count) FROM items WHERE archiver = ? AND member IS NOT NULL AND idx IS NOT NULL "
    "AND committed >= ?"
)


class SqliteCatalog(CatalogBackend):
    """``<root>/.heros-archiver/catalog.sqlite``; make one with ``for_writing`` or ``for_reading``."""

    item_columns = ITEM_COLUMNS
    failure_columns = FAILURE_COLUMNS
    shared = False

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection = connection
        self._connection.isolation_level = None  # transactions as this class opens them
        self.where = str(path)

    @classmethod
    def for_writing(cls, root: Path) -> SqliteCatalog:
        return cls(open_for_writing(root), catalog_path(root))

    @classmethod
    def for_reading(cls, root: Path) -> SqliteCatalog:
        return cls(open_read_only(root), catalog_path(root))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise CatalogError(f"{self.where}: expected the archiver's catalog, cannot use it: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._errors():
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._connection.execute("COMMIT")
            except BaseException:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise

    def journal_applied(self, name: str) -> tuple[int, str] | None:
        # BEGIN IMMEDIATE already holds the file's write lock: no other applier runs until the commit
        row = self._connection.execute("SELECT offset, header FROM journal_applied WHERE name = ?", (name,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def set_journal_applied(self, name: str, offset: int, state: str) -> None:
        self._connection.execute(
            "INSERT INTO journal_applied (name, offset, header) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET offset = excluded.offset, header = excluded.header",
            (name, offset, state),
        )

    def add(self, items: Sequence[tuple[Any, ...]], failures: Sequence[tuple[Any, ...]]) -> None:
        self._connection.executemany(_INSERT_ITEM, items)
        self._connection.executemany(_INSERT_FAILURE, failures)

    def journal_names(self) -> list[str]:
        with self._errors():
            return [str(row[0]) for row in self._connection.execute("SELECT name FROM journal_applied")]

    def forget_journals(self, names: Sequence[str]) -> None:
        if names:
            with self.transaction():
                self._connection.executemany("DELETE FROM journal_applied WHERE name = ?", [(n,) for n in names])

    def has_path(self, path: str, member: str | None = None) -> bool:
        query, parameters = "SELECT 1 FROM items WHERE path = ?", [path]
        if member is not None:
            query, parameters = query + " AND member = ?", [path, member]
        with self._errors():
            return self._connection.execute(query + " LIMIT 1", parameters).fetchone() is not None

    def container_ends(self, archiver: str, since: float) -> list[tuple[str, str, int]]:
        query = _CONTAINER_ENDS + " GROUP BY path, member"
        with self._errors():
            return [(str(p), str(m), int(e)) for p, m, e in self._connection.execute(query, (archiver, since))]

    def adopt(self, rows: Sequence[AdoptedRow]) -> None:
        if rows:
            with self.transaction():
                self._connection.executemany(_ADOPT, [(*row, row[-1]) for row in rows])

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        with self._errors():
            return self._connection.execute(sql, parameters)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self._errors():
            self._connection.execute("BEGIN")
            try:
                yield
            finally:
                self._connection.execute("COMMIT")

    def metadata_match(self, key: str, value: Any) -> tuple[str, list[Any]]:
        # json_each rather than a JSON path: a key may hold any character, which a path would have to quote
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

    def scope(self, host: str | None = None, root: str | None = None) -> tuple[list[str], list[Any]]:
        if host is not None:
            raise CatalogError(
                f"{self.where}: expected a shared catalog to select a host in, got a root's SQLite catalog, which "
                "records no host (pass --catalog-url postgresql://...)"
            )
        return [], []  # the file is the root's: every row is of it

    @property
    def location_key(self) -> str:
        return "path = ? AND ifnull(member, '') = ? AND ifnull(idx, -1) = ?"

    def roots(self) -> list[tuple[str | None, str | None, int]]:
        return [(None, None, int(self.execute("SELECT count(*) FROM items").fetchone()[0]))]

    def close(self) -> None:
        self._connection.close()
