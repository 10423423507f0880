"""One Zarr v3 array of frames appended along axis 0, sharded, committed by atomic writes, readable at any time.

What a store looks like (``store="run-7.zarr"``, ``array_path="cam/data"``)::

    run-7.zarr/zarr.json                  group
    run-7.zarr/cam/zarr.json              group
    run-7.zarr/cam/data/zarr.json         the frames: shape (N, *frame), sharding_indexed, @heros_archiver
    run-7.zarr/cam/data/c.0.0.0           shard 0: frames 0 .. S-1, one inner chunk per frame by default
    run-7.zarr/cam/metadata/<key>/...     1-D arrays, one per metadata key    } see zarr_columns
    run-7.zarr/cam/archive/<name>/...     item keys, source, sequence, ...   }

**Commit protocol.** ``append`` keeps frames in memory. ``commit`` encodes them into inner chunks, writes
every shard they touch whole (temporary + rename, confined to the archive root: ``storage.atomic``) and the
columns' chunks the same way, then the columns' ``zarr.json`` with the new length, and last the frames'
``zarr.json``: the array's shape is the commit point. A shard that is not full at a commit is written whole
and replaced whole, by a longer one, at the next commit; its inner chunks never change once written, so an
old and a new version agree on every committed frame (``zarr_shards``). Hence at any moment, also after a
SIGKILL, ``zarr.open_array(store, path="cam/data")`` opens a valid array of exactly the committed frames,
and a reader that opened it earlier (shape N) keeps reading correct frames below N.

**Recovery.** The committed length is the frames' ``zarr.json`` shape. A shard or column chunk beyond it
(a commit that wrote its objects but not its ``zarr.json``) is ignored and overwritten by the next commit;
temporaries of a killed writer are removed by ``storage.atomic.remove_stale_temporaries`` at the archiver's
start (they never have a name Zarr reads). A reopen reads back the frames of the last, partial shard (to
write it whole again) and every stored item key (so that a resumed item is not written twice).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ...errors import ArchiverError, ConfigurationError, StorageError
from ...formats.base import Content
from ...formats.zarr_v3 import load_zarr
from . import (
    CommitReport,
    ContainerCapabilities,
    FrameStack,
    ItemKey,
    PendingFrame,
    Row,
    check_frame,
    lossless_json,
)
from .zarr_columns import ATTRIBUTE, COLUMN_ROWS, Column, Columns, read_archive_row, read_metadata
from .zarr_places import LocalPlace, ZarrPlace
from .zarr_shards import (
    CHUNK_KEY_ENCODING,
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    ChunkEncoder,
    Compression,
    group_document,
    metadata_document,
    serializer_endian,
    shard_content,
    with_shape,
    zarr_compressors,
)

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "SHARD_TARGET_BYTES",
    "ZarrAppendContainer",
    "read_archive_row",
    "read_metadata",
    "stored_dtype",
]

OnExists = Literal["error", "append", "unique"]
#: With ``frames_per_shard=None``, a shard holds as many frames as make this many bytes (at least one, at
#: most ``MAX_AUTO_SHARD_FRAMES``): the default commit size (``flush_bytes``), so that a commit writes about
#: one shard and a partial shard is rarely rewritten.
SHARD_TARGET_BYTES = 32 << 20
MAX_AUTO_SHARD_FRAMES = 1000
FORMAT_VERSION = 1
_RESERVED_NAMES = frozenset({"metadata", "archive", "zarr.json"})


class ZarrAppendContainer(FrameStack):
    """Frames of one array appended to a Zarr v3 store, sharded, with atomic commits and crash recovery.

    ``store`` is the store's directory (rendered and confined by the caller; ``root`` the archive root its
    writes are confined to, None to trust the path), ``array_path`` the frames' array inside it (at least
    ``group/name``: the per-frame arrays go beside it in the group). ``on_exists`` says what an existing
    store means: ``error`` refuses it (TargetExistsError), ``append`` writes into it (creating the array or
    continuing it after its committed frames, after a crash too), ``unique`` takes the first free name among
    ``name.zarr``, ``name-1.zarr``, ... ``frames_per_chunk`` frames make an inner chunk (the unit a reader
    decodes), ``frames_per_shard`` frames a shard (the object on disk; None: about 32 MiB, at most 1000
    frames; rounded up to whole inner chunks). ``fsync``: each commit survives a power loss too (an fsync of
    every object and directory written); without it a commit survives the writer's process being killed.
    ``attributes`` (e.g. a camera's configuration) go into the frames array's attributes (``configuration``)
    when it is made.
    """

    capabilities = ContainerCapabilities(
        supports_swmr=True, supports_append=True, needs_single_writer=True, commit_survives_process_kill=True
    )

    def __init__(
        self,
        store: str | os.PathLike[str] | ZarrPlace,
        array_path: str,
        *,
        root: str | os.PathLike[str] | None = None,
        compression: Compression = DEFAULT_COMPRESSION,
        frames_per_chunk: int = 1,
        frames_per_shard: int | None = None,
        on_exists: OnExists = "error",
        fsync: bool = False,
        attributes: Mapping[str, Any] | None = None,
        column_rows: int = COLUMN_ROWS,
    ) -> None:
        parts = _array_parts(array_path)
        if compression not in COMPRESSIONS:
            raise ConfigurationError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        for name, value in (("frames_per_chunk", frames_per_chunk), ("column_rows", column_rows)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if frames_per_shard is not None and (not isinstance(frames_per_shard, int) or frames_per_shard < 1):
            raise ConfigurationError(f"frames_per_shard must be a positive integer or None, got {frames_per_shard!r}")
        if on_exists not in get_args(OnExists):
            raise ConfigurationError(f"on_exists must be one of error, append, unique, got {on_exists!r}")
        self._zarr, self._numcodecs = load_zarr()
        self.array_path = "/".join(parts)
        self.group = "/".join(parts[:-1])
        self.compression: Compression = compression
        self.frames_per_chunk = frames_per_chunk
        self.frames_per_shard = frames_per_shard
        self.column_rows = column_rows
        self.fsync = fsync
        self._root = None if root is None else os.path.abspath(os.fspath(root))
        self._attributes = dict(attributes or {})
        self._pending: list[PendingFrame] = []
        self._index: dict[str, int] = {}
        self._committed = 0
        self._document: dict[str, Any] | None = None  # the frames' zarr.json (None: no array yet)
        self._frame_shape: tuple[int, ...] = ()
        self._frame_dtype = np.dtype(np.uint8)
        self._encoder: ChunkEncoder | None = None
        self._columns: Columns | None = None
        self._chunks: list[bytes | memoryview] = []  # encoded inner chunks of the current shard
        self._tail: list[np.ndarray] = []  # frames of its incomplete inner chunk
        self._shard_number = 0  # the current shard's number along axis 0
        self._closed = False
        self._broken: BaseException | None = None
        if not isinstance(store, ZarrPlace):
            store = LocalPlace(Path(os.path.abspath(os.fspath(store))), self._root, fsync)
        self._place = store.claim(on_exists)
        self.path = self._place.path
        self._place.lock(self.array_path)
        try:
            document = self._read_json(self.array_path)
            if document is not None:
                self._reopen(document)
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------------------------------ opening
    def _read_json(self, node: str) -> dict[str, Any] | None:
        """The ``zarr.json`` of ``node`` (None when there is none)."""
        raw = self._place.read(f"{node}/zarr.json" if node else "zarr.json")
        if raw is None:
            return None
        document: dict[str, Any] = json.loads(raw)
        return document

    def _reopen(self, document: dict[str, Any]) -> None:
        """Continue an array: its settings, committed length, stored keys, and its last partial shard."""
        settings = document.get("attributes", {}).get(ATTRIBUTE)
        if document.get("node_type") != "array" or not isinstance(settings, dict):
            raise ConfigurationError(
                f"{self.array_path!r} in {self.location} is not an array written by heros-archiver "
                f"(expected a Zarr array with the {ATTRIBUTE!r} attribute)"
            )
        self.compression = settings["compression"]
        self.frames_per_chunk = int(settings["frames_per_chunk"])
        self.frames_per_shard = int(settings["frames_per_shard"])
        self.column_rows = int(settings["column_rows"])
        columns = [Column(*entry) for entry in settings["columns"]]
        self._set_document(document)
        self._columns = Columns(self.group, columns, self.column_rows)
        committed = int(document["shape"][0])
        try:
            self._read_back(committed)
        except ArchiverError:
            raise
        except Exception as exc:  # zarr's own errors for an object that does not decode
            raise StorageError(
                f"cannot read back the last partial shard, column chunks or item keys of {self.array_path!r} in "
                f"{self.location} (expected the objects of its {committed} committed frames): {exc!r}"
            ) from exc
        self._committed = committed

    def _read_back(self, committed: int) -> None:
        """The frames of the last partial shard, each column's last partial chunk, and the stored keys."""
        assert self._columns is not None and self.frames_per_shard is not None
        zarr = self._zarr
        store = self._place.zarr_store()
        frames = zarr.open_array(store=store, path=self.array_path, mode="r")
        start = committed - committed % self.frames_per_shard
        self._shard_number = start // self.frames_per_shard
        for frame in frames[start:committed]:
            self._add_to_shard(frame)
        rows = self.column_rows
        for path, state in self._columns.states.items():
            array = zarr.open_array(store=store, path=path, mode="r")
            if array.shape[0] < committed:
                raise ConfigurationError(
                    f"{path!r} in {self.location} holds {array.shape[0]} rows, expected at least the {committed} "
                    "committed frames (not an array written by heros-archiver)"
                )
            state.document = metadata_document(array)
            state.tail = array[committed - committed % rows : committed].tolist()
            if array.shape[0] != committed:  # an unfinished commit advanced it: back to the committed length
                self._write(f"{path}/zarr.json", [with_shape(state.document, committed)])
        keys = zarr.open_array(store=store, path=f"{self.group}/archive/item_key", mode="r")
        self._index = {str(key): i for i, key in enumerate(keys[:committed].tolist())} if committed else {}

    def _set_document(self, document: dict[str, Any]) -> None:
        self._document = document
        self._frame_shape = tuple(int(n) for n in document["shape"][1:])
        self._frame_dtype = stored_dtype(self._zarr, document)
        self._encoder = ChunkEncoder(self._numcodecs, self.compression, self._frame_dtype)

    def _create(self, data: np.ndarray, metadata: Mapping[str, Any]) -> None:
        """The frames array and its columns, from the first frame: groups first, the frames' zarr.json last
        (its presence is what makes a stack; a crash before it leaves objects a reopen simply overwrites)."""
        zarr = self._zarr
        frame_bytes = max(1, data.nbytes)
        chunk = self.frames_per_chunk
        shard = self.frames_per_shard or max(1, min(MAX_AUTO_SHARD_FRAMES, SHARD_TARGET_BYTES // frame_bytes))
        shard = -(-shard // chunk) * chunk
        self.frames_per_shard = shard
        columns = Columns.plan(self.group, metadata)
        self._columns = Columns(self.group, columns, self.column_rows)
        memory = zarr.storage.MemoryStore({})
        self._columns.create(zarr, memory)
        endian = serializer_endian(data.dtype)
        settings = {
            "format": FORMAT_VERSION, "compression": self.compression, "frames_per_chunk": chunk,
            "frames_per_shard": shard, "column_rows": self.column_rows,
            "columns": [[c.path, c.kind, c.dtype] for c in columns],
        }  # fmt: skip
        attributes: dict[str, Any] = {ATTRIBUTE: settings}
        if self._attributes:
            attributes["configuration"] = json.loads(lossless_json(self._attributes))
        frames = zarr.create_array(
            memory, name=self.array_path, shape=(0, *data.shape), dtype=data.dtype, chunks=(chunk, *data.shape),
            shards=(shard, *data.shape), compressors=zarr_compressors(zarr, self.compression, data.dtype),
            serializer=zarr.codecs.BytesCodec(endian=endian), fill_value=0, attributes=attributes,
            chunk_key_encoding=CHUNK_KEY_ENCODING, dimension_names=_dimension_names(data.ndim),
        )  # fmt: skip
        groups = [""] + ["/".join(self.array_path.split("/")[:n]) for n in range(1, self.array_path.count("/") + 1)]
        for group in groups:
            if self._read_json(group) is None:
                self._write(f"{group}/zarr.json" if group else "zarr.json", [group_document()])
        for group in (f"{self.group}/metadata", f"{self.group}/archive"):
            self._write(f"{group}/zarr.json", [group_document()])
        for path, state in self._columns.states.items():
            self._write(f"{path}/zarr.json", [with_shape(state.document, 0)])
        document = metadata_document(frames)
        self._write(f"{self.array_path}/zarr.json", [with_shape(document, 0)])
        self._set_document(document)

    # ------------------------------------------------------------------------------------------ writing
    def append(
        self, key: ItemKey, data: np.ndarray, metadata: Mapping[str, Any], *, received: float | None = None
    ) -> int:
        """Give the frame the next index (or the one its key already has); written at the next commit.

        The container keeps a reference to ``data`` until its shard is full: the caller must not change it.
        """
        self._check_usable()
        key_id = key.key_id()
        known = self._index.get(key_id)
        if known is not None:
            return known
        self._check_fits(key, data)
        if self._document is None:
            try:
                self._create(data, metadata)
            except ArchiverError:
                self._broken = StorageError(f"creating {self.array_path!r} in {self.location} failed")
                raise
        index = self._committed + len(self._pending)
        when = received if received is not None else time.time()
        self._pending.append(PendingFrame(data, Row(key, when, metadata, key_id)))
        self._index[key_id] = index
        return index

    def _check_fits(self, key: ItemKey, data: Any) -> None:
        fixed = None if self._document is None else (self._frame_shape, self._frame_dtype)
        check_frame(
            data, key.source, self.path, self.array_path, fixed, "a Zarr chunk cannot have one",
            member="array", location=self.location,
        )  # fmt: skip

    def commit(self, frames: int | None = None) -> CommitReport:
        """Write the shards and column chunks of the pending frames (the first ``frames`` of them; None: all),
        then the columns' and last the frames' ``zarr.json`` with the new length (the commit point). A failed
        commit leaves the store as the last commit left it; the container is then unusable (the caller reopens
        it: ``append`` recovers)."""
        self._check_usable()
        start = self._committed
        count = len(self._pending) if frames is None else min(frames, len(self._pending))
        if not count:
            return CommitReport(self.path, self.array_path, start, start)
        assert self._columns is not None and self._document is not None
        stop = start + count
        committing = self._pending[:count]
        try:
            files: list[tuple[str, Content]] = []
            for pending in committing:
                files.extend(self._add_to_shard(pending.frame))
            files.extend(self._partial_shard())
            encoder = self._column_encoder()
            files.extend(self._columns.chunks(start, [p.row for p in committing], encoder))
            for key, content in files:
                self._write(key, content)
            for path, state in self._columns.states.items():
                self._write(f"{path}/zarr.json", [with_shape(state.document, stop)])
            self._write(f"{self.array_path}/zarr.json", [with_shape(self._document, stop)])
        except BaseException as exc:
            self._broken = exc
            if isinstance(exc, ArchiverError) or not isinstance(exc, OSError | ValueError):
                raise
            raise StorageError(
                f"commit of frames {start}..{stop - 1} to {self.array_path!r} in {self.location} failed: {exc}"
            ) from exc
        keys = tuple(p.row.key for p in committing)
        del self._pending[:count]
        self._committed = stop
        return CommitReport(self.path, self.array_path, start, stop, keys)

    @property
    def whole_shard_frames(self) -> int:
        """How many of the pending frames end where a shard does: a commit of just those writes every shard it
        touches once, whole (a commit that ends inside a shard writes it now and again, longer, next time)."""
        if not self._pending or self.frames_per_shard is None:
            return 0
        end = self._committed + len(self._pending)
        return max(0, end - end % self.frames_per_shard - self._committed)

    def _add_to_shard(self, frame: np.ndarray) -> list[tuple[str, Content]]:
        """Add a frame to the current shard; the shard's content when that filled it (then a new one starts)."""
        assert self._encoder is not None and self.frames_per_shard is not None
        self._tail.append(frame)
        if len(self._tail) < self.frames_per_chunk:
            return []
        block = self._tail[0][np.newaxis] if len(self._tail) == 1 else np.stack(self._tail)
        self._chunks.append(self._encoder.encode(block))
        self._tail = []
        per_shard = self.frames_per_shard // self.frames_per_chunk
        if len(self._chunks) < per_shard:
            return []
        content = shard_content(self._chunks, per_shard, 1)
        self._chunks = []
        self._shard_number += 1
        return [(self._shard_key(self._shard_number - 1), content)]

    def _partial_shard(self) -> list[tuple[str, Content]]:
        """The current shard as far as it goes (its incomplete inner chunk padded), or nothing."""
        if not self._chunks and not self._tail:
            return []
        assert self._encoder is not None and self.frames_per_shard is not None
        chunks = list(self._chunks)
        if self._tail:
            block = np.zeros((self.frames_per_chunk, *self._frame_shape), dtype=self._frame_dtype)
            block[: len(self._tail)] = np.stack(self._tail)
            chunks.append(self._encoder.encode(block))
        content = shard_content(chunks, self.frames_per_shard // self.frames_per_chunk, 1)
        return [(self._shard_key(self._shard_number), content)]

    def _shard_key(self, number: int) -> str:
        return f"{self.array_path}/c." + ".".join([str(number)] + ["0"] * len(self._frame_shape))

    def _column_encoder(self) -> Any:
        vlen = self._numcodecs.VLenUTF8()

        def encode(column: Column, block: np.ndarray) -> bytes | memoryview:
            if column.kind == "str":
                return bytes(vlen.encode(block))
            return np.ascontiguousarray(block).data.cast("B")

        return encode

    def _write(self, key: str, content: Content) -> None:
        """One object of the store, written whole (``zarr_places``)."""
        self._place.write(key, content)

    def discard(self) -> int:
        """Forget the frames appended since the last commit (the store is not touched); how many were dropped."""
        dropped = len(self._pending)
        for pending in self._pending:
            self._index.pop(pending.row.key_id, None)
        self._pending.clear()
        return dropped

    def close(self) -> CommitReport:
        """Commit what is pending and release the array (also when that commit fails); idempotent."""
        if self._closed:
            return CommitReport(self.path, self.array_path, self._committed, self._committed)
        try:
            if self._broken is not None:
                return CommitReport(self.path, self.array_path, self._committed, self._committed)
            return self.commit()
        finally:
            self._release()

    def release(self) -> None:
        """Let the array go without committing (after a failed commit: the store keeps its last commit)."""
        if not self._closed:
            self._release()

    def _release(self) -> None:
        self._closed = True
        self._place.unlock()

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"container {self.array_path!r} in {self.location} is closed (expected an open one)")
        if self._broken is not None:
            raise StorageError(
                f"container {self.array_path!r} in {self.location} had a failed write ({self._broken}); expected a "
                "reopened one (the store keeps its last commit)"
            )

    @property
    def location(self) -> str:
        return self._place.name

    def __repr__(self) -> str:
        return f"ZarrAppendContainer({self.location!r}, {self.array_path!r}, committed={self._committed})"


def _array_parts(array_path: str) -> list[str]:
    parts = [p for p in str(array_path).split("/") if p]
    if (
        len(parts) < 2
        or any(p in (".", "..") or p.startswith("__") or "\0" in p for p in parts)
        or parts[-1] in _RESERVED_NAMES
        or "zarr.json" in parts
    ):
        raise ConfigurationError(
            "array_path must name an array inside a group, e.g. 'cam/data' (no '.', '..', '__' prefixes, "
            f"'zarr.json', and not named 'metadata' or 'archive', which the per-frame arrays use), got {array_path!r}"
        )
    return parts


def _dimension_names(ndim: int) -> list[str]:
    """``frame`` and the frame's axes (``y``, ``x`` for images), for xarray and napari."""
    return ["frame", *(["y", "x"] if ndim == 2 else [f"dim_{i}" for i in range(1, ndim + 1)])]


def stored_dtype(zarr: Any, document: dict[str, Any]) -> np.dtype[Any]:
    """The numpy dtype of an array's values as stored, from its ``zarr.json`` ``document``: the byte order its
    bytes codec says (zarr-python reads them in the machine's order; ``observe.readers`` turns them back)."""
    from zarr.core.metadata.v3 import ArrayV3Metadata

    metadata = ArrayV3Metadata.from_dict(document)
    dtype = np.dtype(metadata.dtype.to_native_dtype())
    endian = _find_endian(document.get("codecs", []))
    if dtype.itemsize > 1 and endian is not None:
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    return dtype


def _find_endian(codecs: list[Any]) -> str | None:
    for codec in codecs:
        if codec.get("name") == "bytes":
            endian: str | None = (codec.get("configuration") or {}).get("endian")
            return endian
        inner = (codec.get("configuration") or {}).get("codecs")
        if inner:
            return _find_endian(inner)
    return None
