"""The catalog in a PostgreSQL database shared by the archivers of a facility (``catalog_url``, decision 0037).

The tables are the SQLite catalog's (``items``, ``failures``, ``journal_applied``, the same columns and meaning),
in the schema ``heros_catalog`` of the database, with two more columns in ``items`` and ``failures``: the
``host`` and the archive ``root`` (absolute, as the archiver saw it) the row is of. A location is unique per host
and root, and a journal's applied offset is kept per host, root and journal file, so that archivers on several
hosts, each applying its own journals, share one database without clashing. Metadata is stored as the JSON
text the journal holds (not JSONB: JSONB turns ``1e16`` into an integer, refuses ``\\u0000`` and drops
repeated keys), so readers get back what SQLite gives them; ``where`` filters parse it through
``heros_catalog.as_jsonb``, which gives NULL (no match) for text that JSONB refuses.

Creating and migrating the schema happens under a transaction-level advisory lock, so that archivers starting
together make it once; ``catalog_version`` says which version it is (a newer one is refused). Every journal
transaction takes an advisory lock on its journal (host, root, name) before it reads the offset: two appliers
of one journal (the archiver's applier process, the archiver at its stop, another start's recovery) never
apply a line twice. psycopg 3 (the ``[postgres]`` extra) is imported when a catalog URL is used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import CatalogError
from ..extras import require_extra
from .catalog_backend import (
    FAILURE_COLUMNS,
    ITEM_COLUMNS,
    SCOPE_COLUMNS,
    AdoptedRow,
    CatalogBackend,
    Cursor,
    redact_url,
)

__all__ = ["SCHEMA_NAME", "SCHEMA_VERSION", "PostgresCatalog"]

SCHEMA_NAME = "heros_catalog"
#: The version of the tables below (``catalog_version``); each step of ``_MIGRATIONS`` makes the next.
SCHEMA_VERSION = 1
#: The advisory lock (one 64-bit key) under which the schema is made or migrated.
_SCHEMA_LOCK = 0x6865726F73434154  # "herosCAT"
#: Seconds to wait for a connection.
CONNECT_TIMEOUT = 10

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # version 1: the SQLite catalog's tables, with host and root
        """CREATE TABLE items (
          id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          archiver text NOT NULL, source text NOT NULL, event text NOT NULL, sequence bigint,
          path text NOT NULL, member text, idx bigint, count bigint NOT NULL, nbytes bigint NOT NULL,
          checksum text, metadata text NOT NULL, received double precision NOT NULL,
          committed double precision NOT NULL, host text NOT NULL, root text NOT NULL)""",
        "CREATE UNIQUE INDEX items_location ON items (host, root, path, coalesce(member, ''), coalesce(idx, -1))",
        "CREATE INDEX items_source ON items (source, event, sequence)",
        "CREATE INDEX items_received ON items (received)",
        """CREATE TABLE failures (
          id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          archiver text NOT NULL, source text NOT NULL, event text NOT NULL, sequence bigint, kind text NOT NULL,
          entry text, error text NOT NULL, metadata text NOT NULL, received double precision NOT NULL,
          time double precision NOT NULL, host text NOT NULL, root text NOT NULL)""",
        "CREATE INDEX failures_stream ON failures (archiver, source, event, sequence)",
        """CREATE TABLE journal_applied (
          host text NOT NULL, root text NOT NULL, name text NOT NULL, "offset" bigint NOT NULL,
          header text NOT NULL, PRIMARY KEY (host, root, name))""",
        """CREATE FUNCTION as_jsonb(value text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE STRICT AS $$
          BEGIN RETURN value::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$""",
    ),
)

#: PostgreSQL types of ``items``' and ``failures``' columns (without ``id``), for the arrays of a batch
_ITEM_TYPES = ("text", "text", "text", "bigint", "text", "text", "bigint", "bigint", "bigint", "text", "text",
               "double precision", "double precision")  # fmt: skip
_FAILURE_TYPES = ("text", "text", "text", "bigint", "text", "text", "text", "text", "double precision",
                  "double precision")  # fmt: skip
_ITEM_SET = ", ".join(f"{c} = excluded.{c}" for c in ITEM_COLUMNS[1:] if c not in ("path", "member", "idx"))
# A batch is one statement: one array per column, sent in binary and unnested into rows (one round trip and one
# parse per batch; measured, benchmarks/catalog_backends.py: 1 us of the client's CPU per row, where executemany
# or text arrays cost 7 us).
_INSERT_ITEM = (
    f"INSERT INTO items ({', '.join(ITEM_COLUMNS[1:])}, host, root) "
    f"SELECT *, %s, %s FROM unnest({', '.join(f'%b::{t}[]' for t in _ITEM_TYPES)}) "
    f"ON CONFLICT (host, root, path, coalesce(member, ''), coalesce(idx, -1)) DO UPDATE SET {_ITEM_SET}"
)
_INSERT_FAILURE = (
    f"INSERT INTO failures ({', '.join(FAILURE_COLUMNS[1:])}, host, root) "
    f"SELECT *, %s, %s FROM unnest({', '.join(f'%b::{t}[]' for t in _FAILURE_TYPES)})"
)
_ADOPT = (
    f"INSERT INTO items ({', '.join(ITEM_COLUMNS[1:])}, host, root) "
    "VALUES (%s, %s, %s, NULL, %s, %s, NULL, 1, %s, %s, '{}', %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


class PostgresCatalog(CatalogBackend):
    """A connection to the shared catalog; ``connect`` makes one (``writer``: the host and root it writes for)."""

    item_columns = (*ITEM_COLUMNS, *SCOPE_COLUMNS)
    failure_columns = (*FAILURE_COLUMNS, *SCOPE_COLUMNS)
    shared = True

    def __init__(self, connection: Any, url: str, writer: tuple[str, str] | None) -> None:
        self._connection = connection
        self._psycopg = require_extra("postgres", "psycopg")
        self.where = redact_url(url)
        self._writer = writer

    @classmethod
    def connect(cls, url: str, writer: tuple[str, str] | None = None) -> PostgresCatalog:
        """Connect to ``url``; a writer makes or migrates the schema first, a reader requires it."""
        psycopg = require_extra("postgres", "psycopg")
        try:
            connection = psycopg.connect(
                url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="heros-archiver catalog"
            )
        except psycopg.Error as exc:
            raise CatalogError(
                f"cannot connect to the catalog database {redact_url(url)}: {exc}; expected a PostgreSQL server "
                "that accepts this URL (or archive with the root's SQLite catalog: no catalog_url)"
            ) from exc
        catalog = cls(connection, url, writer)
        try:
            catalog._prepare(create=writer is not None)
        except BaseException:
            catalog.close()
            raise
        return catalog

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as exc:
            raise CatalogError(f"catalog {self.where}: {type(exc).__name__}: {exc}") from exc

    def _prepare(self, create: bool) -> None:
        """Make or migrate the schema (``create``), or check it is there; then read and write in it."""
        with self._errors():
            if create:
                with self._connection.transaction():
                    self._connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    self._migrate()
            version = self._version()
            if version != SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog {self.where}: expected the schema {SCHEMA_NAME} of version {SCHEMA_VERSION}, got "
                    + (
                        "none (no archiver with this catalog_url has written there yet)"
                        if version is None
                        else f"version {version} (written by another release of heros-archiver)"
                    )
                )
            self._connection.execute(f"SET search_path TO {SCHEMA_NAME}")

    def _version(self) -> int | None:
        exists = self._connection.execute("SELECT to_regclass(%s)", (f"{SCHEMA_NAME}.catalog_version",)).fetchone()
        if exists[0] is None:
            return None
        row = self._connection.execute(f"SELECT version FROM {SCHEMA_NAME}.catalog_version").fetchone()
        return None if row is None else int(row[0])

    def _migrate(self) -> None:
        """Under the schema lock: bring the schema from the version it has to ``SCHEMA_VERSION`` (idempotent)."""
        self._connection.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA_NAME}")
        self._connection.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_NAME}.catalog_version (version integer NOT NULL)")
        version = self._version() or 0
        if version > SCHEMA_VERSION:
            return  # refused by _prepare, naming the version
        self._connection.execute(f"SET LOCAL search_path TO {SCHEMA_NAME}")
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                self._connection.execute(statement)
        if version == 0:
            self._connection.execute("INSERT INTO catalog_version (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            self._connection.execute("UPDATE catalog_version SET version = %s", (SCHEMA_VERSION,))

    def _bound(self) -> tuple[str, str]:
        if self._writer is None:
            raise CatalogError(f"catalog {self.where}: opened for reading, not for writing")
        return self._writer

    # ---------------------------------------------------------------------------- applying a journal
    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._errors(), self._connection.transaction():
            yield

    def journal_applied(self, name: str) -> tuple[int, str] | None:
        host, root = self._bound()
        key = f"{host}\n{root}\n{name}"  # a NUL, which text cannot hold, is no separator here
        self._connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
        row = self._connection.execute(
            'SELECT "offset", header FROM journal_applied WHERE host = %s AND root = %s AND name = %s',
            (host, root, name),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def set_journal_applied(self, name: str, offset: int, state: str) -> None:
        host, root = self._bound()
        self._connection.execute(
            'INSERT INTO journal_applied (host, root, name, "offset", header) VALUES (%s, %s, %s, %s, %s) '
            'ON CONFLICT (host, root, name) DO UPDATE SET "offset" = excluded."offset", header = excluded.header',
            (host, root, name, offset, state),
        )

    def add(self, items: Sequence[tuple[Any, ...]], failures: Sequence[tuple[Any, ...]]) -> None:
        scope = self._bound()
        if items:
            # one statement cannot upsert a location twice: the last of a batch's rows for it wins, as it would
            # one row at a time (only the row's id, which says nothing, may differ)
            last = {(row[4], row[5], row[6]): row for row in items}
            rows = items if len(last) == len(items) else list(last.values())
            self._connection.execute(_INSERT_ITEM, (*scope, *(list(column) for column in zip(*rows, strict=True))))
        if failures:  # an error's text may hold a NUL, which PostgreSQL's text cannot
            rows = [tuple(v.replace("\0", "\\0") if isinstance(v, str) else v for v in row) for row in failures]
            self._connection.execute(_INSERT_FAILURE, (*scope, *(list(column) for column in zip(*rows, strict=True))))

    def journal_names(self) -> list[str]:
        host, root = self._bound()
        with self._errors():
            rows = self._connection.execute(
                "SELECT name FROM journal_applied WHERE host = %s AND root = %s", (host, root)
            )
            return [str(row[0]) for row in rows]

    def forget_journals(self, names: Sequence[str]) -> None:
        host, root = self._bound()
        if names:
            with self.transaction(), self._connection.cursor() as cursor:
                cursor.executemany(
                    "DELETE FROM journal_applied WHERE host = %s AND root = %s AND name = %s",
                    [(host, root, name) for name in names],
                )

    def has_path(self, path: str, member: str | None = None) -> bool:
        host, root = self._bound()
        query, parameters = "SELECT 1 FROM items WHERE host = %s AND root = %s AND path = %s", [host, root, path]
        if member is not None:
            query, parameters = query + " AND member = %s", [*parameters, member]
        with self._errors():
            found = self._connection.execute(query + " LIMIT 1", parameters).fetchone()
        return found is not None

    def container_ends(self, archiver: str, since: float) -> list[tuple[str, str, int]]:
        host, root = self._bound()
        query = (
            "SELECT path, member, max(idx + count) FROM items WHERE host = %s AND root = %s AND archiver = %s "
            "AND member IS NOT NULL AND idx IS NOT NULL AND committed >= %s GROUP BY path, member"
        )
        with self._errors():
            rows = self._connection.execute(query, (host, root, archiver, since)).fetchall()
        return [(str(p), str(m), int(e)) for p, m, e in rows]

    def adopt(self, rows: Sequence[AdoptedRow]) -> None:
        scope = self._bound()
        if rows:
            with self.transaction(), self._connection.cursor() as cursor:
                cursor.executemany(_ADOPT, [(*row, row[-1], *scope) for row in rows])

    # ---------------------------------------------------------------------------- reading
    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        with self._errors():
            cursor: Cursor = self._connection.execute(sql.replace("?", "%s"), list(parameters))
            return cursor

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self._errors():
            self._connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield
            finally:
                self._connection.execute("COMMIT")

    def metadata_match(self, key: str, value: Any) -> tuple[str, list[Any]]:
        field = "(as_jsonb(metadata) -> ?::text)"
        if value is None:
            return f"jsonb_typeof{field} = 'null'", [key]
        if isinstance(value, bool):
            return f"jsonb_typeof{field} = 'boolean' AND {field} = ?::jsonb", [key, key, json.dumps(value)]
        if isinstance(value, (int, float)):
            return f"jsonb_typeof{field} = 'number' AND {field} = ?::jsonb", [key, key, json.dumps(value)]
        if isinstance(value, str):
            return f"jsonb_typeof{field} = 'string' AND {field} = ?::jsonb", [key, key, json.dumps(value)]
        return f"jsonb_typeof{field} IN ('array', 'object') AND {field} = ?::jsonb", [key, key, json.dumps(value)]

    def scope(self, host: str | None = None, root: str | None = None) -> tuple[list[str], list[Any]]:
        clauses, parameters = [], []
        for column, value in (("host", host), ("root", root)):
            if value is not None:
                clauses.append(f"{column} = ?")
                parameters.append(value)
        return clauses, parameters

    @property
    def location_key(self) -> str:
        return "path = ? AND coalesce(member, '') = ? AND coalesce(idx, -1) = ?"

    def roots(self) -> list[tuple[str | None, str | None, int]]:
        rows = self.execute("SELECT host, root, count(*) FROM items GROUP BY host, root ORDER BY host, root")
        return [(str(host), str(root), int(count)) for host, root, count in rows]

    def close(self) -> None:
        self._connection.close()
