"""The catalog's SQLite file: where it is, its schema, and how the archiver and its readers open it.

One file per archive root, ``<root>/.heros-archiver/catalog.sqlite``, shared by every archiver writing under
that root (each in a transaction of its own; SQLite's lock and ``busy_timeout`` serialise them) and read by
``ls``, ``export`` and ``verify`` while they run. WAL mode, so that readers never block the writer nor the
writer the readers; ``synchronous=NORMAL``: a commit survives the process (SIGKILL), the last ones may not
survive a power loss, which the journals do not either (``catalog_journal``).

The tables ``items`` and ``failures`` are the schema every reader relies on (``PRAGMA user_version = 1``;
README, decision 0031); ``journal_applied`` is the applier's own: how far each journal is in the catalog.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..errors import CatalogError
from ..state.statedir import CATALOG_FILE, CATALOG_JOURNAL_SUBDIR, STATE_DIR_NAME

__all__ = ["SCHEMA_VERSION", "catalog_path", "journal_directory", "open_read_only", "open_for_writing"]

#: ``PRAGMA user_version`` of the schema below; a reader refuses another one.
SCHEMA_VERSION = 1
#: Milliseconds a writer waits for another archiver's transaction (several archivers may share a root).
BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE items (
  id INTEGER PRIMARY KEY,
  archiver TEXT NOT NULL,
  source TEXT NOT NULL,
  event TEXT NOT NULL,
  sequence INTEGER,
  path TEXT NOT NULL,
  member TEXT,
  idx INTEGER,
  count INTEGER NOT NULL,
  nbytes INTEGER NOT NULL,
  checksum TEXT,
  metadata TEXT NOT NULL,
  received REAL NOT NULL,
  committed REAL NOT NULL
);
CREATE UNIQUE INDEX items_location ON items (path, ifnull(member, ''), ifnull(idx, -1));
CREATE INDEX items_source ON items (source, event, sequence);
CREATE INDEX items_received ON items (received);
CREATE TABLE failures (
  id INTEGER PRIMARY KEY,
  archiver TEXT NOT NULL,
  source TEXT NOT NULL,
  event TEXT NOT NULL,
  sequence INTEGER,
  kind TEXT NOT NULL,
  entry TEXT,
  error TEXT NOT NULL,
  metadata TEXT NOT NULL,
  received REAL NOT NULL,
  time REAL NOT NULL
);
CREATE TABLE journal_applied (
  name TEXT PRIMARY KEY,
  offset INTEGER NOT NULL,
  header TEXT NOT NULL
);
"""


def catalog_path(root: str | os.PathLike[str]) -> Path:
    """The catalog file of the archive root ``root``."""
    return Path(root) / CATALOG_FILE


def journal_directory(root: str | os.PathLike[str]) -> Path:
    """Where the archivers under ``root`` keep their journals."""
    return Path(root) / CATALOG_JOURNAL_SUBDIR


def open_for_writing(root: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating it and its schema if need be) the catalog of ``root`` for an archiver.

    The connection is in autocommit mode: the caller opens its transactions (``BEGIN IMMEDIATE``).
    Raises CatalogError when the file is not a catalog of this schema or cannot be opened.
    """
    path = catalog_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / CATALOG_JOURNAL_SUBDIR).mkdir(exist_ok=True)
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise CatalogError(
            f"cannot open the catalog {path} for writing: {exc}; expected a writable {STATE_DIR_NAME} directory "
            "under the archive root (or pass catalog=False to archive without a catalog)"
        ) from exc
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        _create_schema(connection, path)
    except sqlite3.Error as exc:
        connection.close()
        raise CatalogError(
            f"{path}: expected the archiver's catalog (SQLite), got a file SQLite cannot use: {exc}; "
            "move it away (a new catalog is made), or pass catalog=False"
        ) from exc
    except CatalogError:
        connection.close()
        raise
    return connection


def _create_schema(connection: sqlite3.Connection, path: Path) -> None:
    """Create the tables in a new file (once, whichever archiver gets there first); check an existing one."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:  # still new once we hold the lock: no other archiver made it meanwhile
                tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    raise CatalogError(
                        f"{path}: expected the archiver's catalog, got an SQLite file with other tables; "
                        "move it away, or pass catalog=False"
                    )
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                version = SCHEMA_VERSION
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    if version != SCHEMA_VERSION:
        raise CatalogError(
            f"{path}: expected a catalog of schema version {SCHEMA_VERSION}, got version {version} "
            "(written by another release of heros-archiver)"
        )


def open_read_only(root: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open the catalog of ``root`` read-only (``ls``, ``export``, ``verify``), also while archivers write it.

    Raises CatalogError naming where it looked when there is no catalog, or not one of this schema.
    """
    path = catalog_path(root)
    if not path.is_file():
        raise CatalogError(
            f"no catalog at {path}: expected the catalog an archiver keeps under its archive root "
            f"(ROOT/{CATALOG_FILE}); is {root} the archive root, and did an archiver with catalog=True write there?"
        )
    try:
        connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        version = connection.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise CatalogError(f"{path}: expected the archiver's catalog (SQLite), cannot read it: {exc}") from exc
    if version != SCHEMA_VERSION:
        connection.close()
        raise CatalogError(
            f"{path}: expected a catalog of schema version {SCHEMA_VERSION}, got version {version}"
            + (" (no catalog: an empty or foreign SQLite file)" if version == 0 else "")
        )
    return connection
