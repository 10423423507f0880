"""The per-frame 1-D arrays beside a Zarr stack of frames: what each frame's metadata and item key became.

Layout, in the group that holds the frames (``cam/data`` -> group ``cam``)::

    cam/metadata/<key>       one 1-D array per metadata key of the first frame: bool, integers, floats,
                             strings (Zarr v3 ``string``, vlen-utf8)
    cam/archive/item_key     the 32-hex-digit id of each frame's ItemKey (de-duplication after a reopen)
    cam/archive/content_hash ItemKey.digest
    cam/archive/source_name  the HERO that sent the frame
    cam/archive/sequence     its sequence value; -2**63 when it had none
    cam/archive/received     receive time, seconds since the epoch
    cam/archive/extra_json   per frame a JSON document of what had no column ("" when nothing): keys first
                             seen later or whose value does not fit the column, keys of the first frame it
                             lacks (``absent``), a sequence value beyond 64 bits

As the HDF5 archiver's columns (``hdf5_columns``), with one difference Zarr allows: strings have any
length. Every column is a plain chunked array (no sharding) of ``rows`` rows per chunk, uncompressed; a
chunk is written whole at a commit (a partial one again, whole, at the next), so a reader that opens a
chunk file reads one complete version of it. ``read_metadata`` puts a frame's metadata back together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...formats.base import Content
from . import Row, lossless_json
from .hdf5_columns import NO_SEQUENCE, MetaColumn
from .zarr_shards import CHUNK_KEY_ENCODING, metadata_document

#: The attribute of the frames array that says how the container wrote it (its columns among others).
ATTRIBUTE = "heros_archiver"
#: Rows per chunk of a column file (a partial chunk is rewritten whole at each commit until it is full).
COLUMN_ROWS = 4096
#: Column names Zarr and every file system take as they are (others go to the JSON): no "/", no NUL, not
#: "zarr.json", not Zarr's reserved "__" prefix, no leading dot, at most 128 characters.
_NAME = re.compile(r"(?!__)[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_RESERVED = frozenset({"zarr.json"})
#: Metadata keys of the first frame that get a column (each costs two small files per commit); the rest
#: go to the per-frame JSON.
MAX_METADATA_COLUMNS = 64
ARCHIVE_COLUMNS = ("item_key", "content_hash", "source_name", "sequence", "received", "extra_json")


@dataclass(frozen=True)
class Column:
    """One 1-D array: its path inside the store, kind and dtype (``str``: Zarr's variable-length string)."""

    path: str
    kind: str  # "bool", "int", "float", "str"
    dtype: str

    def fit(self, value: Any) -> Any:
        """``value`` as this column stores it, or None when it does not fit (it then goes to the JSON)."""
        return self.fitter()(value)

    def fitter(self) -> Callable[[Any], Any]:
        """``fit`` as a function with the column's limits looked up once (it runs per frame and key)."""
        if self.kind == "str":
            return _text
        if self.kind == "int":
            limits = np.iinfo(np.dtype(self.dtype))
            low, high = int(limits.min), int(limits.max)

            def fit_int(value: Any) -> int | None:
                if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
                    return None
                number = int(value)
                return number if low <= number <= high else None

            return fit_int
        slow = MetaColumn(self.path, self.kind, np.dtype(self.dtype)).fit
        if self.kind == "float" and np.dtype(self.dtype) == np.float64:

            def fit_float(value: Any) -> Any:
                return value if type(value) is float else slow(value)  # a Python float is a float64

            return fit_float
        return slow

    @property
    def fill(self) -> Any:
        return {"bool": False, "int": 0, "float": np.nan, "str": ""}[self.kind]

    def block(self, values: Sequence[Any], rows: int) -> np.ndarray:
        """``values`` as one full chunk of ``rows`` rows (the rest fill)."""
        padded = [*values, *([self.fill] * (rows - len(values)))]
        if self.kind == "str":
            return np.array(padded, dtype=object)
        return np.array(padded, dtype=np.dtype(self.dtype).newbyteorder("<"))


def _text(value: Any) -> str | None:
    """A string a vlen-utf8 column stores and gives back unchanged, or None (lone surrogates: not UTF-8)."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def column_for(name: Any, value: Any) -> tuple[str, str] | None:
    """(kind, dtype) of the column the first frame's ``value`` of key ``name`` gets, or None (always JSON)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
        return None
    if isinstance(value, bool | np.bool_):
        return "bool", "bool"
    if isinstance(value, np.integer):
        return "int", value.dtype.newbyteorder("<").str
    if isinstance(value, int):
        return ("int", "<i8") if -(2**63) <= value < 2**63 else None
    if isinstance(value, np.floating) and value.dtype.itemsize >= 4:
        return "float", value.dtype.newbyteorder("<").str
    if isinstance(value, float | np.floating):
        return "float", "<f8"
    if _text(value) is not None:
        return "str", "str"
    return None


@dataclass
class ColumnState:
    """A column and the rows of its last, incomplete chunk (rewritten whole at each commit)."""

    column: Column
    tail: list[Any] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)


class Columns:
    """The per-frame arrays of one stack: made with the first frame, appended at each commit."""

    def __init__(self, group: str, columns: Sequence[Column], rows: int) -> None:
        self.group = group
        self.rows = rows
        self.states = {c.path: ColumnState(c) for c in columns}
        self.metadata = {c.path.rsplit("/", 1)[1]: c for c in columns if c.path.startswith(f"{group}/metadata/")}
        self._fitters = {name: (column, column.fitter()) for name, column in self.metadata.items()}

    @staticmethod
    def plan(group: str, first_metadata: Mapping[str, Any]) -> list[Column]:
        """The columns of a new stack: the archive columns, and one per metadata key of the first frame."""
        prefix = f"{group}/archive"
        archive = [
            Column(f"{prefix}/item_key", "str", "str"),
            Column(f"{prefix}/content_hash", "str", "str"),
            Column(f"{prefix}/source_name", "str", "str"),
            Column(f"{prefix}/sequence", "int", "<i8"),
            Column(f"{prefix}/received", "float", "<f8"),
            Column(f"{prefix}/extra_json", "str", "str"),
        ]
        metadata: list[Column] = []
        for name, value in first_metadata.items():
            found = column_for(name, value)
            if found is not None and len(metadata) < MAX_METADATA_COLUMNS:
                metadata.append(Column(f"{group}/metadata/{name}", *found))
        return archive + metadata

    def create(self, zarr: Any, store: Any) -> None:
        """Make every column's array (length 0) in ``store`` (a MemoryStore), and keep its ``zarr.json``."""
        for path, state in self.states.items():
            column = state.column
            dtype: Any = str if column.kind == "str" else np.dtype(column.dtype)
            array = zarr.create_array(
                store, name=path, shape=(0,), dtype=dtype, chunks=(self.rows,), compressors=None,
                fill_value=column.fill, chunk_key_encoding=CHUNK_KEY_ENCODING, dimension_names=["frame"],
            )  # fmt: skip
            state.document = metadata_document(array)

    def rows_of(self, rows: Sequence[Row]) -> dict[str, list[Any]]:
        """Each column's values for ``rows`` (each metadata value fitted once: this runs per frame)."""
        values: dict[str, list[Any]] = {path: [] for path in self.states}
        prefix = f"{self.group}/archive/"
        item_keys, hashes, sources = (
            values[prefix + "item_key"],
            values[prefix + "content_hash"],
            values[prefix + "source_name"],
        )
        sequences, received, documents = (
            values[prefix + "sequence"],
            values[prefix + "received"],
            values[prefix + "extra_json"],
        )
        fitters = [(name, column, fit, values[column.path]) for name, (column, fit) in self._fitters.items()]
        for row in rows:
            key, metadata = row.key, row.metadata
            item_keys.append(row.key_id)
            hashes.append(_text(key.digest) or "")
            sources.append(_text(key.source) or "")
            sequences.append(_sequence(key.sequence))
            received.append(row.received)
            extra: dict[str, Any] = {}
            absent: list[str] = []
            for name, column, fit, out in fitters:
                if name not in metadata:
                    absent.append(name)
                    out.append(column.fill)
                    continue
                value = metadata[name]
                fitted = fit(value)
                if fitted is None:
                    extra[name] = value
                    out.append(column.fill)
                else:
                    out.append(fitted)
            if len(metadata) > len(fitters) - len(absent):
                extra.update({str(k): v for k, v in metadata.items() if k not in self._fitters})
            documents.append(self._document(row, extra, absent))
        return values

    @staticmethod
    def _document(row: Row, extra: dict[str, Any], absent: list[str]) -> str:
        """The frame's JSON document: what has no column or does not fit it; "" when there is nothing."""
        archive: dict[str, Any] = {}
        key = row.key
        if _text(key.source) != key.source:
            archive["source_name"] = key.source
        if key.sequence is not None and _sequence(key.sequence) == NO_SEQUENCE:
            archive["sequence"] = key.sequence
        if _text(key.digest) != key.digest:
            archive["content_hash"] = key.digest
        if not (extra or absent or archive):
            return ""
        document = {"metadata": extra, "absent": absent, "archive": archive}
        return lossless_json({k: v for k, v in document.items() if v}).decode("ascii")

    def chunks(self, start: int, rows: Sequence[Row], encode: Any) -> list[tuple[str, Content]]:
        """The chunk files the rows ``start ..`` change, per column: (key inside the store, content).

        Advances each column's tail (the rows of its last incomplete chunk) past ``rows``.
        """
        out: list[tuple[str, Content]] = []
        for path, values in self.rows_of(rows).items():
            state = self.states[path]
            position = start - len(state.tail)  # the first row of the tail's chunk
            pending = state.tail + values
            while pending:
                room = self.rows - position % self.rows
                block, pending = pending[:room], pending[room:]
                state.tail = block
                out.append(self._chunk(state, position, encode))
                position += len(block)
            if len(state.tail) == self.rows:
                state.tail = []
        return out

    def _chunk(self, state: ColumnState, first: int, encode: Any) -> tuple[str, Content]:
        block = state.column.block(state.tail, self.rows)
        return f"{state.column.path}/c.{first // self.rows}", [encode(state.column, block)]


def _sequence(value: int | None) -> int:
    if value is None or not -(2**63) < value < 2**63:
        return int(NO_SEQUENCE)
    return int(value)


def read_metadata(group: Any, index: int) -> dict[str, Any]:
    """Frame ``index``'s metadata as it arrived, from its columns and JSON document (``group``: the zarr
    group that holds the frames, e.g. ``zarr.open_group(store)["cam"]``)."""
    document = _document(group, index)
    absent = set(document.get("absent", ()))
    result: dict[str, Any] = {}
    for name in metadata_columns(group):
        if name in absent:
            continue
        value = group["metadata"][name][index]
        result[name] = value.item() if isinstance(value, np.generic | np.ndarray) else value
    result.update(document.get("metadata", {}))
    return result


def metadata_columns(group: Any) -> list[str]:
    """The metadata keys with a column, as the frames array's attributes list them (not every array in
    ``metadata/``: a creation cut short by a crash may have left others there)."""
    prefix = f"{group.path}/metadata/" if group.path else "metadata/"
    for _name, array in group.arrays():
        settings = array.attrs.get(ATTRIBUTE)
        if isinstance(settings, dict):
            return [str(path)[len(prefix) :] for path, *_ in settings["columns"] if str(path).startswith(prefix)]
    return []


def read_archive_row(group: Any, index: int) -> dict[str, Any]:
    """Frame ``index``'s source name, sequence value (None if it had none), content hash and receive time."""
    archive = group["archive"]
    document = _document(group, index).get("archive", {})
    sequence = int(archive["sequence"][index])
    return {
        "source_name": document.get("source_name", str(archive["source_name"][index])),
        "sequence": document.get("sequence", None if sequence == NO_SEQUENCE else sequence),
        "content_hash": document.get("content_hash", str(archive["content_hash"][index])),
        "received": float(archive["received"][index]),
    }


def _document(group: Any, index: int) -> dict[str, Any]:
    text = str(group["archive"]["extra_json"][index])
    if not text:
        return {}
    parsed: dict[str, Any] = json.loads(text)
    return parsed
