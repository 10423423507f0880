"""Keep items that could not be archived, with everything needed to archive them later.

One directory per item, published atomically (written under a temporary name, then renamed):
``entry.json`` (source, event, merged metadata, error, attempts, time, payload file, and the writer
settings: template, root, format, policies) and the payload
as ``payload.npy`` (arrays) or ``payload.json`` (anything JSON can carry). Plain numpy and json read
both; ``heros-archiver replay`` re-drives them through the same naming and writing.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PayloadError, ReplayError
from .formats.json import encode_json
from .formats.npy import NpyFormat
from .storage import PROCESS_TOKEN, owner_alive, write_new_file

ENTRY_FILE = "entry.json"
#: The only payload files an entry may name (an edited or planted entry cannot point elsewhere).
PAYLOAD_FILES = ("payload.npy", "payload.json")
_TMP_PREFIX = ".tmp-"
_TMP_DIR = re.compile(re.escape(_TMP_PREFIX) + r"(\d+)-([0-9a-f]{8})-[0-9a-f]{32}$")
_counter = itertools.count()


@dataclass
class DeadLetter:
    """One stored item, as read back from its directory."""

    path: Path
    source: str
    event: str
    payload: Any
    metadata: dict[str, Any]
    error: str
    attempts: int
    time: float
    writer: dict[str, Any] | None


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:60] or "source"


class DeadLetterStore:
    """A directory of dead-lettered items (created on first use).

    ``fsync``: make every entry durable before ``put`` returns (its files, its directory and the store's
    directory that names it), as the archiver's ``fsync`` setting asks for anything but ``none``.
    """

    def __init__(self, directory: str | os.PathLike[str], fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.fsync = fsync

    def put(
        self,
        *,
        source: str,
        event: str,
        payload: Any,
        metadata: dict[str, Any],
        error: str,
        attempts: int,
        writer: dict[str, Any] | None = None,
    ) -> Path:
        """Store one item; returns its entry directory. Raises OSError if even this cannot be written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{os.getpid()}-{next(_counter):08d}-{_safe(source)}"
        tmp = self.directory / f"{_TMP_PREFIX}{os.getpid()}-{PROCESS_TOKEN}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            payload_file, payload_note = _write_payload(tmp, payload)
            try:
                metadata_doc: Any = json.loads(encode_json(metadata))
            except PayloadError:
                metadata_doc = {key: repr(value) for key, value in metadata.items()}
            entry = {
                "source": source,
                "event": event,
                "metadata": metadata_doc,
                "error": error,
                "attempts": attempts,
                "time": now,
                "time_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "payload_file": payload_file,
                "payload_note": payload_note,
                "writer": writer,
            }
            (tmp / ENTRY_FILE).write_text(json.dumps(entry, indent=2))
            if self.fsync:
                _fsync_entry(tmp)
            final = self.directory / name
            os.rename(tmp, final)
            if self.fsync:
                _fsync_path(self.directory)
            return final
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_stale_temporaries(self) -> int:
        """Delete half-written entries of processes that no longer run (a crash during ``put``)."""
        removed = 0
        if not self.directory.is_dir():
            return 0
        for path in self.directory.iterdir():
            match = _TMP_DIR.match(path.name)
            if match and not owner_alive(int(match.group(1)), match.group(2)):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def entries(self) -> Iterator[Path]:
        """Entry directories, oldest first."""
        if not self.directory.is_dir():
            return iter(())
        return iter(sorted(p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(_TMP_PREFIX)))

    def load(self, entry: Path) -> DeadLetter:
        """Read one entry back (payload as it was stored)."""
        try:
            info = json.loads((entry / ENTRY_FILE).read_text())
            payload_file = info.get("payload_file")
            if payload_file is None:
                raise ReplayError(f"{entry}: payload was not storable ({info.get('payload_note')}); cannot replay")
            if payload_file not in PAYLOAD_FILES:
                raise ReplayError(f"{entry}: payload_file must be one of {PAYLOAD_FILES}, got {payload_file!r}")
            if payload_file.endswith(".npy"):
                payload: Any = np.load(entry / payload_file, allow_pickle=False)
            else:
                payload = json.loads((entry / payload_file).read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise ReplayError(f"{entry}: cannot read dead-letter entry: {exc}") from exc
        return DeadLetter(
            path=entry,
            source=info["source"],
            event=info["event"],
            payload=payload,
            metadata=info["metadata"],
            error=info["error"],
            attempts=int(info["attempts"]),
            time=float(info["time"]),
            writer=info.get("writer"),
        )

    def remove(self, entry: Path) -> None:
        """Delete an entry once its item was archived."""
        shutil.rmtree(entry)

    def __len__(self) -> int:
        return sum(1 for _ in self.entries())


def _write_payload(directory: Path, payload: Any) -> tuple[str | None, str]:
    if isinstance(payload, np.ndarray) and not payload.dtype.hasobject:
        write_new_file(directory / "payload.npy", NpyFormat().prepare(payload, {}))
        return "payload.npy", "numpy array"
    try:
        encoded = encode_json(payload)
    except PayloadError as exc:
        (directory / "payload.repr.txt").write_text(repr(payload))
        return None, f"not storable as npy or json ({exc}); repr in payload.repr.txt"
    (directory / "payload.json").write_bytes(encoded)
    return "payload.json", "json"


def _fsync_entry(entry: Path) -> None:
    """fsync every file of an entry, then the entry's directory (whatever files its format has)."""
    for path in entry.iterdir():
        _fsync_path(path)
    _fsync_path(entry)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
