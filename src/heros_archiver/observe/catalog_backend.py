"""Where a catalog lives: one small interface, two implementations (SQLite per root, PostgreSQL for a facility).

The catalog's tables, columns and their meaning are one schema (README, decisions 0031 and 0037); what differs
between the two databases is only how a connection is made, how a transaction that applies a journal is
serialised, how a location is upserted and how metadata is matched. That difference is ``CatalogBackend``; the
journal, its applier, the recovery, ``ls``, ``export`` and ``verify`` are written once, over it.

* ``SqliteCatalog`` (``catalog_sqlite``): ``<root>/.heros-archiver/catalog.sqlite``, one per archive root.
* ``PostgresCatalog`` (``catalog_postgres``): one database for every archiver of a facility (``catalog_url``);
  each row also says which ``host`` and ``root`` it is of, and a journal's applied offset is kept per host,
  root and journal, so archivers on several hosts share it without clashing.

``CatalogTarget`` is what an archiver is configured with (the URL, or None for SQLite, and the host name it
writes as); it opens the right backend. The SQL that readers and ``verify`` send is written here once with
``?`` parameters; a backend translates the markers to its driver's.
"""

from __future__ import annotations

import os
import re
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "FAILURE_COLUMNS",
    "ITEM_COLUMNS",
    "SCOPE_COLUMNS",
    "CatalogBackend",
    "CatalogTarget",
    "Cursor",
    "json_matches",
    "open_reader",
    "redact_url",
    "this_host",
]

#: The columns of ``items`` and ``failures`` every catalog has, in the schema's order.
ITEM_COLUMNS = ("id", "archiver", "source", "event", "sequence", "path", "member", "idx", "count", "nbytes", "checksum",
                "metadata", "received", "committed")  # fmt: skip
FAILURE_COLUMNS = ("id", "archiver", "source", "event", "sequence", "kind", "entry", "error", "metadata", "received",
                   "time")  # fmt: skip
#: The columns a shared catalog adds to both: which host and archive root a row is of.
SCOPE_COLUMNS = ("host", "root")

_PASSWORD = re.compile(r"(://[^/:@]*):[^@/]*@")
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without its password, given before the host or as a parameter (for messages and ``status()``)."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _PASSWORD.sub(r"\1:***@", url))


def this_host() -> str:
    """The name this machine writes into a shared catalog by default: its host name."""
    return socket.gethostname()


class Cursor(Protocol):
    """What a backend's ``execute`` returns (sqlite3's and psycopg's cursors both are one)."""

    def fetchone(self) -> Any: ...

    def fetchmany(self, size: int = ...) -> Sequence[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


#: A row ``adopt`` catalogs: (archiver, source, event, path, member, nbytes, checksum, time).
AdoptedRow = tuple[str, str, str, str, "str | None", int, "str | None", float]


class CatalogBackend(ABC):
    """One connection to a catalog. A writer is bound to the ``host`` and ``root`` it writes for (the SQLite
    file is the root's own); a reader sees every row (filtered by ``scope``)."""

    #: where it is, for messages: the file, or the URL without its password
    where: str
    #: ``items``' and ``failures``' columns as this catalog has them (a shared one adds ``SCOPE_COLUMNS``)
    item_columns: tuple[str, ...]
    failure_columns: tuple[str, ...]
    #: rows say which host and root they are of (a shared catalog)
    shared: bool

    # ---------------------------------------------------------------------------- applying a journal
    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction: committed when the block ends, rolled back when it raises. Raises CatalogError."""

    @abstractmethod
    def journal_applied(self, name: str) -> tuple[int, str] | None:
        """Within ``transaction``: how far journal file ``name`` (of this writer's host and root) is applied and
        what is known of it, locking it until the transaction ends so that two appliers never apply a line twice."""

    @abstractmethod
    def set_journal_applied(self, name: str, offset: int, state: str) -> None:
        """Within ``transaction``: record the new offset of journal file ``name`` with the rows it added."""

    @abstractmethod
    def add(self, items: Sequence[tuple[Any, ...]], failures: Sequence[tuple[Any, ...]]) -> None:
        """Within ``transaction``: upsert ``items`` on their location, insert ``failures`` (columns as
        ``ITEM_COLUMNS`` and ``FAILURE_COLUMNS`` without ``id``; metadata as JSON text)."""

    @abstractmethod
    def journal_names(self) -> list[str]:
        """The journal files of this writer's host and root the catalog keeps an offset for."""

    @abstractmethod
    def forget_journals(self, names: Sequence[str]) -> None:
        """Drop the offsets of journal files that are gone (in a transaction of its own)."""

    @abstractmethod
    def has_path(self, path: str, member: str | None = None) -> bool:
        """Whether any row of this writer's root names ``path`` (relative to the root), and with ``member``
        that member of it."""

    @abstractmethod
    def container_ends(self, archiver: str, since: float) -> list[tuple[str, str, int]]:
        """Per stack or array (path, member) that ``archiver`` committed to at ``since`` or later (of this writer's
        root): the index after its last cataloged item."""

    @abstractmethod
    def adopt(self, rows: Sequence[AdoptedRow]) -> None:
        """Catalog files (and arrays) found after a kill, unless cataloged meanwhile: ``(archiver, source, event,
        path, member, nbytes, checksum, time)`` each (``member`` None for a file), metadata ``{}`` (in a
        transaction of its own)."""

    # ---------------------------------------------------------------------------- reading
    @abstractmethod
    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        """Run a query written with ``?`` parameters. Raises CatalogError naming ``where``."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[None]:
        """A read transaction: every query in the block sees the catalog as it was at its start."""

    @abstractmethod
    def metadata_match(self, key: str, value: Any) -> tuple[str, list[Any]]:
        """SQL true when the row's top-level metadata ``key`` holds ``value`` (the number 7 matches 7 and 7.0,
        not the text "7"; a list or an object one written alike), and its parameters."""

    @abstractmethod
    def scope(self, host: str | None = None, root: str | None = None) -> tuple[list[str], list[Any]]:
        """The conditions (joined by AND) that keep the rows of ``host`` and ``root`` (None: any). Raises
        CatalogError when this catalog cannot tell (a root's SQLite file records no host)."""

    @property
    @abstractmethod
    def location_key(self) -> str:
        """SQL of the unique key of a location, compared with ``(path, member or '', idx or -1)``."""

    @abstractmethod
    def roots(self) -> list[tuple[str | None, str | None, int]]:
        """``(host, root, items)`` of every archive root the catalog holds items of (one, unnamed, for SQLite)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection. Idempotent."""

    def __enter__(self) -> CatalogBackend:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class CatalogTarget:
    """Where an archiver's catalog goes: the root's SQLite file (``url`` None) or a shared PostgreSQL database
    (``postgresql://...``), and the host name it writes as there (default: this machine's)."""

    url: str | None = None
    host: str = field(default_factory=this_host)

    @property
    def shared(self) -> bool:
        return self.url is not None

    def describe(self, root: str | os.PathLike[str]) -> str:
        """Where the catalog of ``root`` is, for messages and ``status()``."""
        if self.url is None:
            from .catalog_schema import catalog_path

            return str(catalog_path(root))
        return redact_url(self.url)

    def open_writer(self, root: str | os.PathLike[str]) -> CatalogBackend:
        """A connection that writes the catalog of ``root`` (the schema made or checked first). Raises
        CatalogError (ConfigurationError when the [postgres] extra is missing)."""
        if self.url is None:
            from .catalog_sqlite import SqliteCatalog

            return SqliteCatalog.for_writing(Path(root))
        from .catalog_postgres import PostgresCatalog

        return PostgresCatalog.connect(self.url, writer=(self.host, os.path.abspath(root)))


def open_reader(root: str | os.PathLike[str] | None = None, url: str | None = None) -> CatalogBackend:
    """A read-only connection: to the PostgreSQL catalog at ``url``, else to the SQLite catalog of ``root``.
    Raises CatalogError naming where it looked (ValueError when neither is given)."""
    if url is not None:
        from .catalog_postgres import PostgresCatalog

        return PostgresCatalog.connect(url)
    if root is None:
        raise ValueError("expected an archive root (its SQLite catalog) or a catalog URL (postgresql://...)")
    from .catalog_sqlite import SqliteCatalog

    return SqliteCatalog.for_reading(Path(root))


def json_matches(backend: CatalogBackend, where: Mapping[str, Any] | None) -> tuple[list[str], list[Any]]:
    """The conditions of ``where`` (metadata key -> value, all must hold) in ``backend``'s SQL."""
    clauses: list[str] = []
    parameters: list[Any] = []
    for key, value in (where or {}).items():
        clause, values = backend.metadata_match(str(key), value)
        clauses.append(clause)
        parameters.extend(values)
    return clauses, parameters
