"""Keep items that could not be archived, with everything needed to archive them later, exactly as they were.

One directory per item, published atomically (written under a temporary name, then renamed):

* ``entry.json``: readable by anyone: source, event, error, attempts, times, the writer settings
  (template, root, format, policies) and the metadata value by value (a value JSON cannot carry is
  described, the others stay as they are; keys that are not text are listed apart);
* ``item.pickle``: the faithful copy of payload and metadata (``faithful.py``): the pickle, then the arrays'
  raw bytes (``entry.json`` says where each starts); ``load``, so ``heros-archiver replay`` and the spool,
  read it. One file, not one per array: creating a file costs more than writing a frame into it;
* ``payload.npy`` (arrays) or ``payload.json`` (anything JSON can carry): a readable copy of the payload
  for plain numpy and json (dead letters only; the spool, private state, does without).

An item that has no faithful copy is still written (described), and ``write`` says it is a loss.
Entries of format 1 (before the faithful copy) are still read, from their readable files.
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

from ..errors import ReplayError, UnfaithfulError
from ..formats.base import Content
from ..formats.json import encode_json
from ..formats.npy import NpyFormat
from ..pipeline.payload import estimate_nbytes
from ..saferepr import safe_str, type_name
from ..storage.atomic import PROCESS_TOKEN, owner_alive, write_new_file
from .describe import describe, readable_metadata, summary
from .faithful import Encoded, decode, encode

ENTRY_FILE = "entry.json"
#: The only payload files an entry may name (an edited or planted entry cannot point elsewhere).
PAYLOAD_FILES = ("payload.npy", "payload.json")
COPY_FILE = "item.pickle"
#: 1: readable files only (lossy); 2: with the faithful copy.
ENTRY_FORMAT = 2
#: Names inside a store directory that are never entries (the spool's damaged entries go there).
QUARANTINE_DIR = "quarantine"
#: Arrays' bytes start at multiples of this in ``item.pickle``, so that they load aligned.
_ALIGNMENT = 64
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
    metadata: dict[Any, Any]
    error: str
    attempts: int
    time: float
    writer: dict[str, Any] | None
    #: the item's size as the queue counted it when it arrived
    nbytes: int = 0
    #: when the item arrived (``time`` is when the entry was written)
    received: float = 0.0
    #: what the archiver added to the item on receipt (``Item.context``), None for none
    context: dict[str, Any] | None = None
    #: the item's sequence value (the archiver's ``sequence_key``), which a replay catalogs it under
    sequence: int | None = None


@dataclass(frozen=True)
class Written:
    """An entry written by ``DeadLetterStore.write``."""

    path: Path
    #: why the item is not kept faithfully (only described: a loss), or "" when it is
    lost: str = ""


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:60] or "source"


def _write_file(path: Path, content: Content) -> None:
    """Every file of an entry is written here (made durable with the entry by ``_fsync_entry``)."""
    write_new_file(path, content)


class DeadLetterStore:
    """A directory of dead-lettered items (created on first use).

    Args:
        directory: where the entries are.
        fsync: make every entry durable before ``put`` returns (its files, its directory and the store's
            directory that names it), as the archiver's ``fsync`` setting asks for anything but ``none``.
        readable_payload: also write the payload as ``payload.npy`` / ``payload.json`` (off for the spool).
    """

    def __init__(self, directory: str | os.PathLike[str], fsync: bool = False, readable_payload: bool = True) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.readable_payload = readable_payload

    def put(
        self,
        *,
        source: str,
        event: str,
        payload: Any,
        metadata: dict[Any, Any],
        error: str,
        attempts: int,
        writer: dict[str, Any] | None = None,
    ) -> Path:
        """Store one item; returns its entry directory. Raises OSError if even this cannot be written."""
        return self.write(
            source=source,
            event=event,
            payload=payload,
            metadata=metadata,
            error=error,
            attempts=attempts,
            writer=writer,
        ).path

    def write(
        self,
        *,
        source: str,
        event: str,
        payload: Any,
        metadata: dict[Any, Any],
        error: str,
        attempts: int,
        writer: dict[str, Any] | None = None,
        nbytes: int | None = None,
        received: float | None = None,
        require_faithful: bool = False,
        described: bool = False,
        context: dict[str, Any] | None = None,
        sequence: int | None = None,
    ) -> Written:
        """Store one item with its faithful copy; raises OSError (or StorageError) only if storage fails.

        An item with no faithful copy raises UnfaithfulError with ``require_faithful`` (the spool), and is
        otherwise written described, with ``Written.lost`` saying why. ``described``: write only the
        description (``entry.json``), the form that cannot fail whatever the item holds. ``context``: what the
        archiver added on receipt (``Item.context``: text, numbers, booleans), kept in ``entry.json``; so is
        ``sequence``, the item's sequence value (a replay catalogs the item under it).
        """
        copy: Encoded | None = None
        lost = "kept as a description only"
        if not described:
            try:
                copy = encode((payload, metadata))
                lost = ""
            except UnfaithfulError as exc:
                if require_faithful:
                    raise
                lost = str(exc)
        self.directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{os.getpid()}-{next(_counter):08d}-{_safe(source)}"
        tmp = self.directory / f"{_TMP_PREFIX}{os.getpid()}-{PROCESS_TOKEN}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            faithful = _write_copy(tmp, copy) if copy is not None else None
            payload_file: str | None = None
            if not self.readable_payload:
                payload_note = "no readable copy: the spool is private state, item.pickle holds the payload"
            elif described:
                payload_note = "not written: the entry describes the item only"
            else:
                payload_file, payload_note = _write_readable_payload(tmp, payload)
            values, other_keys = readable_metadata(metadata)
            entry = {
                "format": ENTRY_FORMAT,
                "source": source,
                "event": event,
                "metadata": values,
                "metadata_other_keys": other_keys,
                "error": error,
                "attempts": attempts,
                "time": now,
                "time_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "received": now if received is None else received,
                "nbytes": estimate_nbytes(payload) if nbytes is None else nbytes,
                "faithful": faithful,
                "lost": lost,
                "payload_file": payload_file,
                "payload_note": payload_note,
                "payload": _payload_description(payload, payload_file, self.readable_payload),
                "writer": writer,
                "context": context,
                "sequence": sequence,
            }
            _write_file(tmp / ENTRY_FILE, [json.dumps(entry, indent=2).encode()])
            if self.fsync:
                _fsync_entry(tmp)
            final = self.directory / name
            os.rename(tmp, final)
            if self.fsync:
                _fsync_path(self.directory)
            return Written(final, lost)
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
        """Entry directories, oldest first (symbolic links are not entries: removing one would not remove it)."""
        if not self.directory.is_dir():
            return iter(())
        return iter(
            sorted(
                p
                for p in self.directory.iterdir()
                if p.is_dir() and not p.is_symlink() and not p.name.startswith(_TMP_PREFIX) and p.name != QUARANTINE_DIR
            )
        )

    def load(self, entry: Path) -> DeadLetter:
        """Read one entry back, payload and metadata as they arrived (format 1 entries: as they were stored).

        Raises ReplayError, and nothing else, for an entry that cannot be read: missing or damaged files,
        a missing field or one of the wrong type, an unknown format, a copy naming a type not allowed.
        """
        try:
            return _load(entry)
        except ReplayError as exc:
            raise ReplayError(f"{entry}: cannot read dead-letter entry: {exc}") from exc
        except Exception as exc:  # whatever a damaged entry raises, the caller gets one error type
            detail = f"{type(exc).__name__}: {safe_str(exc, 500)}"
            raise ReplayError(f"{entry}: cannot read dead-letter entry: {detail}") from exc

    def remove(self, entry: Path) -> None:
        """Delete an entry once its item was archived."""
        shutil.rmtree(entry)

    def __len__(self) -> int:
        return sum(1 for _ in self.entries())


def _payload_description(payload: Any, payload_file: str | None, readable_payload: bool) -> dict[str, Any]:
    """What ``entry.json`` says of the payload: a repr where no readable file holds it (dead letters), else
    its type (and dtype, shape): the spool writes one per spilled frame and keeps it faithfully anyway."""
    return describe(payload) if readable_payload and payload_file is None else summary(payload)


def _write_copy(directory: Path, copy: Encoded) -> dict[str, Any]:
    """Write the faithful copy (the pickle, then each array's bytes, aligned); returns where each part is."""
    content: Content = [copy.pickle]
    offset = len(copy.pickle)
    spans: list[list[int]] = []
    for buffer in copy.buffers:
        padding = -offset % _ALIGNMENT
        if padding:
            content.append(bytes(padding))
        offset += padding
        spans.append([offset, buffer.nbytes])
        content.append(buffer)
        offset += buffer.nbytes
    _write_file(directory / COPY_FILE, content)
    return {"pickle": [0, len(copy.pickle)], "buffers": spans}


def _write_readable_payload(directory: Path, payload: Any) -> tuple[str | None, str]:
    """``payload.npy`` or ``payload.json`` for plain tools, if the payload has such a form (storage errors raise)."""
    note = ""
    if isinstance(payload, np.ndarray) and not payload.dtype.hasobject:
        try:
            content = NpyFormat().prepare(np.asarray(payload))
        except Exception as exc:  # noqa: BLE001 - a form numpy cannot write is described, never retried
            note = f"not storable as npy ({type(exc).__name__}: {safe_str(exc, 200)}); "
        else:
            _write_file(directory / "payload.npy", content)
            kind = "numpy array" if type(payload) is np.ndarray else f"{type_name(payload)}: its data as an array"
            return "payload.npy", kind
    try:
        encoded = encode_json(payload)
    except Exception as exc:  # noqa: BLE001 - PayloadError, RecursionError...: described in entry.json instead
        return None, f"{note}not storable as json ({type(exc).__name__}: {safe_str(exc, 200)}); described in entry.json"
    _write_file(directory / "payload.json", [encoded])
    return "payload.json", "json"


def _field(info: dict[str, Any], name: str, kinds: tuple[type, ...]) -> Any:
    """``info[name]``, checked to be of one of ``kinds`` (a bool is no number here): ReplayError otherwise."""
    if name not in info:
        raise ReplayError(f"{ENTRY_FILE} lacks the field {name!r}")
    value = info[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds)
        raise ReplayError(f"{ENTRY_FILE} field {name!r}: expected {expected}, got {type(value).__name__}")
    return value


def _load(entry: Path) -> DeadLetter:
    info = json.loads((entry / ENTRY_FILE).read_bytes())
    if not isinstance(info, dict):
        raise ReplayError(f"{ENTRY_FILE}: expected a JSON object, got {type(info).__name__}")
    version = info.get("format", 1)
    if version == 1:
        payload, metadata = _load_readable(entry, info)
    elif version == ENTRY_FORMAT:
        payload, metadata = _load_copy(entry, info)
    else:
        raise ReplayError(f"expected an entry of format 1 or {ENTRY_FORMAT}, got format {version!r}")
    moment = float(_field(info, "time", (int, float)))
    writer = _field(info, "writer", (dict, type(None)))
    if version == 1:
        nbytes, received = estimate_nbytes(payload), moment
    else:
        nbytes = _field(info, "nbytes", (int,))
        received = float(_field(info, "received", (int, float)))
    return DeadLetter(
        path=entry,
        source=_field(info, "source", (str,)),
        event=_field(info, "event", (str,)),
        payload=payload,
        metadata=metadata,
        error=_field(info, "error", (str,)),
        attempts=_field(info, "attempts", (int,)),
        time=moment,
        writer=writer,
        nbytes=nbytes,
        received=received,
        context=info.get("context") and _field(info, "context", (dict,)),
        sequence=_sequence_field(info),
    )


def _sequence_field(info: dict[str, Any]) -> int | None:
    """The entry's ``sequence`` (None: entries written before it was kept have none)."""
    if "sequence" not in info:
        return None
    value: int | None = _field(info, "sequence", (int, type(None)))
    return value


def _load_copy(entry: Path, info: dict[str, Any]) -> tuple[Any, dict[Any, Any]]:
    """Payload and metadata from the faithful copy (format 2)."""
    faithful = _field(info, "faithful", (dict, type(None)))
    if faithful is None:
        raise ReplayError(f"payload was not storable faithfully with its metadata ({info.get('lost')}); cannot replay")
    listed = faithful.get("buffers")
    spans = [faithful.get("pickle"), *(listed if isinstance(listed, list) else [listed])]
    if not all(_is_span(span) for span in spans):
        raise ReplayError(f"faithful: expected [offset, size] pairs for the pickle and buffers, got {faithful!r:.200}")
    with open(entry / COPY_FILE, "rb") as file:
        raw = bytearray(os.fstat(file.fileno()).st_size)  # writable: the arrays come back writable, as they were
        if file.readinto(raw) != len(raw):
            raise ReplayError(f"{COPY_FILE} changed size while it was read")
    whole = memoryview(raw)
    for offset, size in spans:
        if offset + size > len(raw):
            raise ReplayError(f"{COPY_FILE} holds {len(raw)} bytes, expected {offset + size} or more")
    (start, length), *buffer_spans = spans
    data = bytes(whole[start : start + length])
    buffers = [whole[offset : offset + size] for offset, size in buffer_spans]
    try:
        item = decode(data, buffers)
    except UnfaithfulError as exc:
        raise ReplayError(f"{COPY_FILE}: {exc}") from exc
    if type(item) is not tuple or len(item) != 2 or not isinstance(item[1], dict):
        raise ReplayError(f"{COPY_FILE}: expected (payload, metadata dict), got {type_name(item)}")
    return item[0], item[1]


def _is_span(span: Any) -> bool:
    return isinstance(span, list) and len(span) == 2 and all(type(n) is int and n >= 0 for n in span)


def _load_readable(entry: Path, info: dict[str, Any]) -> tuple[Any, dict[Any, Any]]:
    """Payload and metadata from the readable files (format 1: what JSON and npy kept of them)."""
    payload_file = _field(info, "payload_file", (str, type(None)))
    if payload_file is None:
        raise ReplayError(f"payload was not storable ({info.get('payload_note')}); cannot replay")
    if payload_file not in PAYLOAD_FILES:
        raise ReplayError(f"payload_file must be one of {PAYLOAD_FILES}, got {payload_file!r}")
    if payload_file.endswith(".npy"):
        payload: Any = np.load(entry / payload_file, allow_pickle=False)
    else:
        payload = json.loads((entry / payload_file).read_text())
    return payload, _field(info, "metadata", (dict,))


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
