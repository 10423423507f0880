"""Applying a journal to the catalog: its lines beyond the recorded offset, as rows, in one transaction each step.

The offset each journal is applied to is kept in the catalog itself (``journal_applied``), read and moved in
the same transaction as the rows, and that transaction is ``BEGIN IMMEDIATE``: whoever applies a journal (its
archiver's thread, or another archiver's start after a kill) applies each line once, even when both try at
the same time. Items are upserted on their location (``items_location``): a location written again (an item
resumed from the spool after a crash, ``on_exists="overwrite"``) keeps its row, with what its last commit
said.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..saferepr import safe_str

__all__ = ["Applied", "JournalState", "apply_journal", "relative_to_root"]

log = logging.getLogger("heros_archiver")

#: Journal bytes applied in one transaction at most (a transaction per step keeps the lock short).
TRANSACTION_BYTES = 2**20

#: Every archived item's locations, as rows of ``items``, straight from a JSON array of journal lines (SQLite
#: reads the lines itself: the thread holds the GIL for one call per batch, not for every row).
_INSERT_ITEMS = """
INSERT INTO items (archiver, source, event, sequence, path, member, idx, count, nbytes, checksum, metadata, received,
                   committed)
SELECT ?1, j.value ->> 1, j.value ->> 2, j.value ->> 3,
       CASE WHEN substr(j.value ->> 6, 1, ?2) = ?3 THEN substr(j.value ->> 6, ?2 + 1) ELSE j.value ->> 6 END,
       j.value ->> 7, j.value ->> 8, j.value ->> 9, j.value ->> 10, j.value ->> 11,
       j.value -> 12, j.value ->> 4, j.value ->> 5
FROM json_each(?4) AS j
WHERE j.value ->> 0 = 'a'
ON CONFLICT (path, ifnull(member, ''), ifnull(idx, -1)) DO UPDATE SET
  archiver = excluded.archiver, source = excluded.source, event = excluded.event, sequence = excluded.sequence,
  count = excluded.count, nbytes = excluded.nbytes, checksum = excluded.checksum, metadata = excluded.metadata,
  received = excluded.received, committed = excluded.committed
"""
_INSERT_FAILURES = """
INSERT INTO failures (archiver, source, event, sequence, kind, entry, error, metadata, received, time)
SELECT ?1, j.value ->> 1, j.value ->> 2, j.value ->> 3,
       CASE j.value ->> 0 WHEN 'd' THEN 'dead_lettered' ELSE 'dropped' END,
       CASE WHEN j.value ->> 0 != 'd' THEN NULL
            WHEN substr(j.value ->> 6, 1, ?2) = ?3 THEN substr(j.value ->> 6, ?2 + 1) ELSE j.value ->> 6 END,
       j.value ->> '$[#-2]', j.value -> '$[#-1]', j.value ->> 4, j.value ->> 5
FROM json_each(?4) AS j
WHERE j.value ->> 0 IN ('d', 'x')
"""


@dataclass
class JournalState:
    """What the catalog knows of one journal file besides its offset (kept as JSON in ``journal_applied``)."""

    #: the header line, with the changes of it that followed
    header: dict[str, Any] = field(default_factory=dict)
    #: the latest commit (or failure) time applied
    last: float | None = None
    #: the source of the last item applied
    source: str | None = None
    #: the journal's last line says its archiver stopped cleanly
    closed: bool = False
    #: lines that could not be read (a write torn by a full disk, a kill in the middle of a large write)
    skipped: int = 0

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> JournalState:
        return cls(**orjson.loads(text))

    @property
    def archiver(self) -> str:
        return str(self.header.get("archiver", "?"))

    def saw(self, line: bytes) -> None:
        """Note the source and time of an outcome line (the last one applied)."""
        with contextlib.suppress(ValueError, TypeError, IndexError):  # a torn line: it is not the last one's
            outcome = orjson.loads(line)
            self.source, when = str(outcome[1]), float(outcome[5])
            self.last = when if self.last is None else max(self.last, when)


@dataclass(frozen=True)
class Applied:
    """How far a journal file is applied, and what is known of it."""

    state: JournalState
    #: bytes of the file applied (or skipped) so far
    offset: int
    #: the file's size when last looked at
    size: int

    @property
    def complete(self) -> bool:
        """Everything the file held is in the catalog."""
        return self.offset >= self.size


def relative_to_root(path: str, root: str) -> str:
    """``path`` relative to ``root`` with ``/`` separators when it is under it, else as it is."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def apply_journal(
    connection: sqlite3.Connection, path: Path, root: str, dead: bool = False, step_bytes: int = TRANSACTION_BYTES
) -> Applied | None:
    """Apply what the journal file ``path`` holds beyond its recorded offset; return how far it is applied.

    ``dead``: its writer no longer runs, so a last line without its newline will never be finished (a write
    torn by the kill): it is skipped instead of waited for. None when the file is gone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        while True:
            applied, progress = _apply_step(connection, fd, path.name, root, dead, step_bytes)
            if applied.complete or not progress:  # all of it, or only a line still being written
                return applied
    finally:
        os.close(fd)


def _apply_step(
    connection: sqlite3.Connection, fd: int, name: str, root: str, dead: bool, step_bytes: int
) -> tuple[Applied, bool]:
    """One transaction: read the offset, apply up to ``step_bytes`` of whole lines, move the offset."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        row = connection.execute("SELECT offset, header FROM journal_applied WHERE name = ?", (name,)).fetchone()
        offset, state = (row[0], JournalState.from_json(row[1])) if row else (0, JournalState())
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(step_bytes, max(0, size - offset)), offset) if size > offset else b""
        end = data.rfind(b"\n") + 1
        if not end and offset + len(data) < size:  # one line longer than a step: read it whole
            data = os.pread(fd, size - offset, offset)
            end = data.rfind(b"\n") + 1
        if dead and offset + len(data) >= size and end < len(data):
            log.warning(
                "catalog journal %s ends in a torn line (%d bytes) of a killed run: skipped", name, len(data) - end
            )
            state.skipped += 1
            consumed = len(data)
        else:
            consumed = end
        if not consumed:
            connection.execute("COMMIT")
            return Applied(state, offset, size), False
        if end:
            _apply_lines(connection, data[:end], state, root, name)
        connection.execute(
            "INSERT INTO journal_applied (name, offset, header) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET offset = excluded.offset, header = excluded.header",
            (name, offset + consumed, state.to_json()),
        )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return Applied(state, offset + consumed, size), True


def _apply_lines(connection: sqlite3.Connection, data: bytes, state: JournalState, root: str, name: str) -> None:
    """Apply whole lines (``data`` ends with a newline): header lines change ``state`` for the lines after them."""
    if b"\n{" not in b"\n" + data:  # the usual chunk: no header line in it
        _apply_run(connection, data, state, root, name)
        return
    run: list[bytes] = []
    for line in data.split(b"\n")[:-1]:
        if line[:1] != b"{":
            run.append(line)
            continue
        if run:
            _apply_run(connection, b"\n".join(run) + b"\n", state, root, name)
            run = []
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            _skipped(state, name, exc)
            continue
        if "closed" in fields:
            state.closed = True
        else:
            state.header.update(fields)
    if run:
        _apply_run(connection, b"\n".join(run) + b"\n", state, root, name)


def _apply_run(connection: sqlite3.Connection, data: bytes, state: JournalState, root: str, name: str) -> None:
    """Insert the rows of outcome lines; a batch SQLite cannot read (a torn line) is applied line by line, and
    the lines it cannot read are skipped."""
    failures = b'\n["d"' in b"\n" + data or b'\n["x"' in b"\n" + data
    try:
        _insert(
            connection, "[" + data[:-1].replace(b"\n", b",").decode("utf-8", "replace") + "]", root, state, failures
        )
    except sqlite3.OperationalError as exc:
        if "malformed JSON" not in str(exc):
            raise
        for line in data.split(b"\n")[:-1]:
            try:
                _insert(connection, "[" + line.decode("utf-8", "replace") + "]", root, state, True)
            except sqlite3.OperationalError as line_error:
                if "malformed JSON" not in str(line_error):
                    raise
                _skipped(state, name, line_error)
    state.saw(data[data.rfind(b"\n", 0, len(data) - 1) + 1 : -1])


def _insert(connection: sqlite3.Connection, batch: str, root: str, state: JournalState, failures: bool) -> None:
    """One statement per table for a whole batch: SQLite reads the lines, the GIL is released meanwhile."""
    prefix = root.rstrip("/") + "/"
    parameters = (state.archiver, len(prefix), prefix, batch)
    connection.execute(_INSERT_ITEMS, parameters)
    if failures:
        connection.execute(_INSERT_FAILURES, parameters)


def _skipped(state: JournalState, name: str, error: BaseException) -> None:
    state.skipped += 1
    log.warning("catalog journal %s: a line that cannot be read, skipped: %s", name, safe_str(error, 200))
