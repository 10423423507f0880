"""Applying a journal to the catalog: its lines beyond the recorded offset, as rows, in one transaction each step.

Lines (a commit's records each) are read here (orjson; metadata written as an object is written again by
orjson, which gives back exactly what it wrote, and metadata written as text is stored as it is) and handed to
the catalog's backend (``catalog_backend``: SQLite or PostgreSQL, ``executemany``): by the archiver's applier
process while the archiver runs (``catalog_process``), by the archiver itself at its start (recovery) and at its
stop. The offset each journal is applied to is kept in the catalog itself (``journal_applied``), read and moved
in the same transaction as the rows, and the backend serialises those transactions per journal (SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's advisory lock): whoever applies a journal applies each line once, even when
two try at the same time. Items are upserted on their location (``items_location``): a location written again
(an item resumed from the spool after a crash, ``on_exists="overwrite"``) keeps its row, with what its last
commit said.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..saferepr import safe_str
from .catalog_backend import CatalogBackend

__all__ = ["Applied", "JournalState", "apply_journal", "journaled_paths", "relative_to_root"]

log = logging.getLogger("heros_archiver")

#: Journal bytes applied in one transaction at most (a transaction per step keeps the lock short).
TRANSACTION_BYTES = 2**20

_KINDS = {"d": "dead_lettered", "x": "dropped"}


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

    def saw(self, source: str, when: float) -> None:
        """Note the source and time of the last outcome applied."""
        self.source = source
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


#: How the lines of intent records begin (``catalog_journal.encode_intents``, ``encode_container_intent``: each
#: line holds records of one kind).
INTENT_LINES = (b'[["i"', b'[["c"')


def metadata_text(recorded: Any) -> str:
    """A journal record's metadata as the catalog stores it, JSON text: an object written again (orjson gives back
    exactly what it wrote), text (what orjson could not write as an object) as it is."""
    return recorded if isinstance(recorded, str) else orjson.dumps(recorded).decode()


def relative_to_root(path: str, root: str) -> str:
    """``path`` relative to ``root`` with ``/`` separators when it is under it, else as it is."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def journaled_paths(directory: Path, root: str, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` (paths as the catalog names them: relative to ``root`` when under it) an archived record
    of a journal in ``directory`` names: journaled by an archiver, perhaps not applied yet (an applier behind its
    archiver on a busy machine). Reads every journal there (an applied segment is removed, so at most a few
    segments each); a line torn by a kill, or cut by a write still going on, is skipped."""
    found: set[str] = set()
    try:
        journals = sorted(directory.iterdir())
    except OSError:  # no journal directory: nothing journaled
        return found
    for journal in journals:
        try:
            data = journal.read_bytes()
        except OSError:  # applied and removed meanwhile: then the catalog names its paths
            continue
        for line in data.splitlines():
            if not line.startswith(b"["):
                continue
            try:
                records = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            for record in records:
                if record[0] == "a" and isinstance(record[6], str):
                    path = relative_to_root(record[6], root)
                    if path in wanted:
                        found.add(path)
    return found


def apply_journal(
    catalog: CatalogBackend, path: Path, root: str, dead: bool = False, step_bytes: int = TRANSACTION_BYTES
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
            applied, progress = _apply_step(catalog, fd, path.name, root, dead, step_bytes)
            if applied.complete or not progress:  # all of it, or only a line still being written
                return applied
    finally:
        os.close(fd)


def _apply_step(
    catalog: CatalogBackend, fd: int, name: str, root: str, dead: bool, step_bytes: int
) -> tuple[Applied, bool]:
    """One transaction: read the offset, apply up to ``step_bytes`` of whole lines, move the offset."""
    with catalog.transaction():
        row = catalog.journal_applied(name)
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
            return Applied(state, offset, size), False
        if end:
            catalog.add(*_rows(data[:end], state, root, name))
        catalog.set_journal_applied(name, offset + consumed, state.to_json())
    return Applied(state, offset + consumed, size), True


def _rows(
    data: bytes, state: JournalState, root: str, name: str
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The item and failure rows of whole lines (``data`` ends with a newline); header lines change ``state`` for
    the lines after them; a line that cannot be read (a write torn by a full disk) is skipped."""
    prefix = root.rstrip("/") + "/"
    items: list[tuple[Any, ...]] = []
    failures: list[tuple[Any, ...]] = []
    archiver = state.archiver
    last: list[Any] | None = None
    for line in data.split(b"\n")[:-1]:
        if line.startswith(INTENT_LINES):  # a line of intents only: no item (read after a kill), not parsed here
            continue
        try:
            if line[:1] == b"{":
                fields = orjson.loads(line)
                if "closed" in fields:
                    state.closed = True
                else:
                    state.header.update(fields)
                    archiver = state.archiver
                continue
            for record in orjson.loads(line):
                kind, source, event, sequence, received, when = record[:6]
                if kind in ("i", "c"):  # files or a container about to be made: no item (read after a kill)
                    continue
                metadata = metadata_text(record[-1])
                if kind == "a":
                    path, member, index, count, nbytes, checksum = record[6:12]
                    if path.startswith(prefix):
                        path = path[len(prefix) :]
                    items.append((archiver, source, event, sequence, path, member, index, count, nbytes, checksum,
                                  metadata, received, when))  # fmt: skip
                else:
                    entry = record[6] if kind == "d" else None
                    if entry is not None and entry.startswith(prefix):
                        entry = entry[len(prefix) :]
                    failures.append((archiver, source, event, sequence, _KINDS[kind], entry, record[-2], metadata,
                                     received, when))  # fmt: skip
                last = record
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:  # orjson's errors are these
            _skipped(state, name, exc)
    if last is not None:
        state.saw(str(last[1]), float(last[5]))
    return items, failures


def _skipped(state: JournalState, name: str, error: BaseException) -> None:
    state.skipped += 1
    log.warning("catalog journal %s: a line that cannot be read, skipped: %s", name, safe_str(error, 200))
