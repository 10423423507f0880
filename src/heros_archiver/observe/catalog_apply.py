"""Applying a journal to the catalog: its lines beyond the recorded offset, as rows, in one transaction each step.

The offset each journal is applied to is kept in the catalog itself (``journal_applied``), read and moved in
the same transaction as the rows, and that transaction is ``BEGIN IMMEDIATE``: whoever applies a journal (its
archiver's thread, or another archiver's start after a kill) applies each line once, even when both try at
the same time. Items are upserted on their location (``items_location``): a location written again (an item
resumed from the spool after a crash, ``on_exists="overwrite"``) keeps its row, with what its last commit
said.
"""

from __future__ import annotations

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
TRANSACTION_BYTES = 4 * 2**20

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
_KINDS = {"d": "dead_lettered", "x": "dropped"}


@dataclass
class JournalState:
    """What the catalog knows of one journal file besides its offset (kept as JSON in ``journal_applied``)."""

    #: the header line, with the changes of it that followed
    header: dict[str, Any] = field(default_factory=dict)
    #: the latest commit (or failure) time applied
    last: float | None = None
    #: the one source of every item applied (None: none yet, or several: ``several_sources``)
    source: str | None = None
    several_sources: bool = False
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

    def saw(self, source: str, when: float) -> None:
        if self.source is None and not self.several_sources:
            self.source = source
        elif source != self.source:
            self.source, self.several_sources = None, True
        if self.last is None or when > self.last:
            self.last = when


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
        items, failures = _rows(data[:end].split(b"\n")[:-1] if end else [], state, root, name)
        connection.executemany(_INSERT_ITEM, items)
        connection.executemany(_INSERT_FAILURE, failures)
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


def _rows(
    lines: list[bytes], state: JournalState, root: str, name: str
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The items' and failures' rows of ``lines``; header lines change ``state``."""
    items: list[tuple[Any, ...]] = []
    failures: list[tuple[Any, ...]] = []
    archiver = state.archiver
    for line in lines:
        try:
            if line[:1] == b"{":
                fields = orjson.loads(line)
                if "closed" in fields:
                    state.closed = True
                else:
                    state.header.update(fields)
                    archiver = state.archiver
                continue
            head_text, _, metadata = line.partition(b"\t")
            head = orjson.loads(head_text)
            kind, source, event, sequence, received, when = head[:6]
            metadata_text = metadata.decode()
            if kind == "a":
                for path, member, index, count, nbytes, checksum in head[6]:
                    items.append((archiver, source, event, sequence, relative_to_root(path, root), member, index,
                                  count, nbytes, checksum, metadata_text, received, when))  # fmt: skip
            else:
                entry = relative_to_root(head[6], root) if kind == "d" else None
                failures.append(
                    (archiver, source, event, sequence, _KINDS[kind], entry, head[-1], metadata_text, received, when)
                )
            state.saw(source, when)
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
            state.skipped += 1
            log.warning("catalog journal %s: a line that cannot be read, skipped: %s", name, safe_str(exc, 200))
    return items, failures
