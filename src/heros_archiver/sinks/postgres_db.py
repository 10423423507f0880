"""Connections to the PostgresArchiver's database, and what its errors mean for an item.

psycopg is imported here, when an archiver is made (the extra ``[postgres]``). Every connection is in
autocommit mode and says who it is (``application_name``), and the server's errors become ours: a lost or
refused connection or a server shutting down (``DatabaseUnavailableError``), a deadlock, a serialisation failure or a
trigger's exception may pass (``StorageError``, retried); data the server refuses for what it is
(``DataError``, ``IntegrityError``) will not (``RecordRefusedError``, dead-lettered). The URL in messages has
its password removed.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ArchiverError, StorageError
from ..extras import require_extra
from ..saferepr import safe_str

__all__ = [
    "DatabaseUnavailableError",
    "RecordRefusedError",
    "StoreUnavailableError",
    "connect",
    "database_error",
    "load_psycopg",
    "redact_url",
]

_PASSWORD = re.compile(r"(://[^:/@]*):[^@]*@")
_PASSWORD_PARAM = re.compile(r"\s*\bpassword=[^\s&]*&?", re.IGNORECASE)


class RecordRefusedError(ArchiverError):
    """The database refused a record for what it holds (a value it cannot store, a constraint it breaks)."""


class DatabaseUnavailableError(StorageError):
    """The database cannot be reached or went away: every record would fail alike now."""


class StoreUnavailableError(StorageError):
    """The artifact store cannot be reached: every record with arrays would fail alike now."""


def load_psycopg() -> Any:
    """psycopg 3, or a ConfigurationError naming the extra that installs it."""
    return require_extra("postgres", "psycopg")


def redact_url(url: str) -> str:
    """``url`` without its password (for messages, logs, ``config()`` and dead-letter entries): still a URL libpq
    connects with, taking the password from ``PGPASSWORD`` or ``~/.pgpass``."""
    return _PASSWORD_PARAM.sub("", _PASSWORD.sub(r"\1@", url))


def connect(url: str, purpose: str, connect_timeout: int = 5) -> Any:
    """A new autocommit connection to ``url`` (StorageError if the server cannot be reached)."""
    psycopg = load_psycopg()
    try:
        return psycopg.connect(
            url, autocommit=True, connect_timeout=connect_timeout, application_name=f"heros-archiver {purpose}"
        )
    except psycopg.Error as exc:
        raise database_error(f"connecting to {redact_url(url)}", exc) from exc


def database_error(action: str, exc: BaseException) -> ArchiverError:
    """The error of ours for a psycopg error raised while doing ``action`` (see the module docstring)."""
    psycopg = load_psycopg()
    detail = f"{action}: {type(exc).__name__}: {safe_str(exc, 600)}"
    if isinstance(exc, psycopg.errors.DataError | psycopg.errors.IntegrityError):
        return RecordRefusedError(detail)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return DatabaseUnavailableError(detail)
    return StorageError(detail)
