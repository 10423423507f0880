"""The per-frame datasets beside a stack of frames: what each frame's metadata and item key became.

Layout, inside the NXdata group that holds the frames::

    metadata/<key>          one 1-D dataset per metadata key of the first frame: numbers, booleans,
                            fixed-length UTF-8 strings (NXcollection)
    archive/item_key        the 32-hex-digit id of each frame's ItemKey (de-duplication after a reopen)
    archive/digest          ItemKey.digest: the receive time (float.hex) of a received frame, or a content hash
    archive/source_name     the HERO that sent the frame
    archive/sequence        its sequence value; -2**63 when it had none
    archive/received        receive time, seconds since the epoch
    archive/extra_json      UTF-8 JSON of everything that had no column, all frames concatenated (uint8);
    archive/extra_json_end  ... frame i's document is extra_json[end[i-1]:end[i]] (empty: nothing extra)
    archive/committed_length  one integer: frames committed; a reader after a crash trusts this, not the shape

SWMR forbids creating objects once it has started and appending to variable-length data, so every column
is created with the first frame, has a fixed-size type, and the JSON documents are a ragged uint8 array.
A value that has no column (a key first seen later, a name HDF5 cannot hold) or does not fit its column
(a longer string, another type, an integer out of range) goes into that frame's JSON document, under
``metadata``; keys of the first frame that a later frame lacks are listed under ``absent``; a
``source_name``, sequence or digest too long for its column goes under ``archive``. Nothing is
dropped, and ``read_metadata`` puts each frame's metadata back together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import Row, lossless_json

NO_SEQUENCE = np.iinfo(np.int64).min
_ROWS_PER_CHUNK = 1024
_MIN_STRING_WIDTH = 32
_SOURCE_WIDTH = 128
_DIGEST_WIDTH = 64


@dataclass(frozen=True)
class MetaColumn:
    """One metadata key's dataset: its kind decides which values fit."""

    name: str
    kind: str  # "bool", "int", "float", "str"
    dtype: np.dtype[Any]
    #: the values an "int" column holds (looked up once: ``np.iinfo`` per value cost more than the rest of fit)
    low: int = field(default=0, init=False, compare=False, repr=False)
    high: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "int":
            limits = np.iinfo(self.dtype)
            object.__setattr__(self, "low", int(limits.min))
            object.__setattr__(self, "high", int(limits.max))

    def fit(self, value: Any) -> Any:
        """``value`` as this column stores it, or None when it does not fit (it then goes to the JSON)."""
        kind = self.kind
        if type(value) is int and kind == "int":  # the usual cases first: a frame number, a time
            return value if self.low <= value <= self.high else None
        if type(value) is float and kind == "float" and self.dtype.itemsize == 8:
            return value
        if self.kind == "bool":
            return bool(value) if isinstance(value, bool | np.bool_) else None
        if isinstance(value, bool | np.bool_):
            return None
        if self.kind == "int":
            if not isinstance(value, int | np.integer):
                return None
            return int(value) if self.low <= int(value) <= self.high else None
        if self.kind == "float":
            if not isinstance(value, int | float | np.integer | np.floating):
                return None
            try:
                with np.errstate(over="ignore"):
                    stored = self.dtype.type(value)
            except OverflowError:
                return None
            if isinstance(value, int | np.integer):
                return stored if np.isfinite(stored) and int(stored) == int(value) else None
            return stored if stored == value or (np.isnan(stored) and np.isnan(value)) else None
        encoded = _utf8(value)
        return encoded if encoded is not None and len(encoded) <= self.dtype.itemsize else None

    @property
    def fill(self) -> Any:
        """What the dataset holds for a frame whose value went to the JSON or was absent."""
        return {"bool": False, "int": 0, "float": np.nan, "str": b""}[self.kind]


def column_for(name: str, value: Any) -> MetaColumn | None:
    """The column the first frame's ``value`` of key ``name`` gets, or None (then it always goes to the JSON)."""
    if not name or "/" in name or name == "." or "\0" in name:
        return None
    if isinstance(value, bool | np.bool_):
        return MetaColumn(name, "bool", np.dtype(bool))
    if isinstance(value, np.integer):
        return MetaColumn(name, "int", value.dtype)
    if isinstance(value, int):
        return MetaColumn(name, "int", np.dtype(np.int64)) if -(2**63) <= value < 2**63 else None
    if isinstance(value, float | np.floating):
        dtype = value.dtype if isinstance(value, np.floating) and value.dtype.itemsize >= 4 else np.dtype(np.float64)
        return MetaColumn(name, "float", dtype)
    encoded = _utf8(value)
    if encoded is not None:
        return MetaColumn(name, "str", np.dtype(f"S{max(_MIN_STRING_WIDTH, 2 * len(encoded))}"))
    return None


def _utf8(value: Any) -> bytes | None:
    """A string as a fixed-length HDF5 string stores it, or None: not a string, not valid UTF-8 (lone
    surrogates), or with a NUL (fixed-length strings are NUL-padded, the NUL would vanish)."""
    if not isinstance(value, str) or "\0" in value:
        return None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


class Columns:
    """Creates, reopens and appends the per-frame datasets of one stack (see the module docstring)."""

    def __init__(self, h5py: Any, group: Any) -> None:
        self._h5py = h5py
        self.group = group
        self.archive = group["archive"]
        self.metadata_group = group["metadata"]
        self.columns = [self._column_of(name, self.metadata_group[name]) for name in self.metadata_group]
        self._json_length = 0
        # looked up once: h5py's group lookup and type inspection cost more than writing a few rows
        self._datasets = {name: self.archive[name] for name in self.archive}
        self._datasets.update({f"metadata/{c.name}": self.metadata_group[c.name] for c in self.columns})

    @staticmethod
    def create(h5py: Any, group: Any, first_metadata: Mapping[str, Any]) -> Columns:
        """The datasets of a new stack, metadata columns taken from the first frame's metadata."""
        archive = group.create_group("archive")
        archive.attrs["NX_class"] = "NXcollection"
        metadata = group.create_group("metadata")
        metadata.attrs["NX_class"] = "NXcollection"
        string = h5py.string_dtype
        for name, dtype, fill in (
            ("item_key", string("ascii", 32), b""),
            ("digest", string("utf-8", _DIGEST_WIDTH), b""),
            ("source_name", string("utf-8", _SOURCE_WIDTH), b""),
            ("sequence", np.dtype(np.int64), NO_SEQUENCE),
            ("received", np.dtype(np.float64), np.nan),
            ("extra_json_end", np.dtype(np.int64), 0),
        ):
            _appendable(archive, name, dtype, fill, _ROWS_PER_CHUNK)
        _appendable(archive, "extra_json", np.dtype(np.uint8), 0, 65536)
        archive.create_dataset("committed_length", shape=(1,), dtype=np.int64, data=[0])
        archive["received"].attrs["units"] = "s"
        for name, value in first_metadata.items():
            column = column_for(str(name), value) if isinstance(name, str) else None
            if column is not None:
                dtype = string("utf-8", column.dtype.itemsize) if column.kind == "str" else column.dtype
                _appendable(metadata, column.name, dtype, column.fill, _ROWS_PER_CHUNK)
        return Columns(h5py, group)

    def _column_of(self, name: str, dataset: Any) -> MetaColumn:
        dtype = dataset.dtype
        if dtype.kind == "S":
            return MetaColumn(name, "str", dtype)
        kind = {"b": "bool", "i": "int", "u": "int", "f": "float"}[dtype.kind]
        return MetaColumn(name, kind, dtype)

    def datasets(self) -> list[Any]:
        """Every per-frame dataset (one row per frame)."""
        names = ("item_key", "digest", "source_name", "sequence", "received", "extra_json_end")
        return [self._datasets[n] for n in names] + [self._datasets[f"metadata/{c.name}"] for c in self.columns]

    def recover(self, frames_length: int) -> int:
        """Cut every dataset back to the committed length (a commit the writer did not finish) and return it.

        The length is ``committed_length`` unless a dataset is shorter (a file not written by this module
        the same way): then the shortest.
        """
        committed = int(self.archive["committed_length"][0])
        committed = min([committed, frames_length] + [d.shape[0] for d in self.datasets()])
        for dataset in self.datasets():
            dataset.resize((committed,))
        ends = self.archive["extra_json_end"]
        self._json_length = int(ends[committed - 1]) if committed else 0
        self.archive["extra_json"].resize((self._json_length,))
        return committed

    def keys(self, length: int) -> list[str]:
        """The stored item key ids of frames ``0 .. length - 1``."""
        return [k.decode("ascii") for k in self.archive["item_key"][:length]] if length else []

    def write(self, start: int, rows: Sequence[Row]) -> None:
        """Write ``rows`` as frames ``start ..``: resize every dataset, then fill the new rows."""
        stop = start + len(rows)
        columns = self.columns
        names = {c.name for c in columns}
        values: dict[str, list[Any]] = {c.name: [] for c in columns}
        extras = []
        for row in rows:  # each value fitted once: this loop is most of a commit's Python for small frames
            metadata = row.metadata
            unfit: list[str] = []
            absent: list[str] = []
            for column in columns:
                name = column.name
                fitted = column.fit(metadata[name]) if name in metadata else None
                if fitted is None:
                    (unfit if name in metadata else absent).append(name)
                    fitted = column.fill
                values[name].append(fitted)
            no_column = len(metadata) + len(absent) != len(columns)
            extras.append(self._extras(row, unfit if unfit or no_column else None, absent, names))
        ends = np.cumsum([len(e) for e in extras], dtype=np.int64) + self._json_length
        sources = {source: _fixed(source, _SOURCE_WIDTH) for source in {r.key.source for r in rows}}
        archive = {
            "item_key": np.array([r.key_id.encode("ascii") for r in rows], dtype="S32"),
            "digest": np.array([_fixed(r.key.digest, _DIGEST_WIDTH) for r in rows], dtype=f"S{_DIGEST_WIDTH}"),
            "source_name": np.array([sources[r.key.source] for r in rows], dtype=f"S{_SOURCE_WIDTH}"),
            "sequence": np.array([_sequence(r.key.sequence) for r in rows], dtype=np.int64),
            "received": np.array([r.received for r in rows], dtype=np.float64),
            "extra_json_end": ends,
        }
        for name, array in archive.items():
            self._write_rows(name, start, stop, array)
        for column in columns:
            name = f"metadata/{column.name}"
            self._write_rows(name, start, stop, np.array(values[column.name], dtype=self._datasets[name].dtype))
        blob = b"".join(extras)
        if blob:
            dataset = self._datasets["extra_json"]
            write_block(self._h5py, dataset, self._json_length, np.frombuffer(blob, dtype=np.uint8))
        self._json_length += len(blob)

    def _write_rows(self, name: str, start: int, stop: int, array: np.ndarray) -> None:
        write_block(self._h5py, self._datasets[name], start, array)

    def mark_committed(self, length: int) -> None:
        """Record the committed length (written after the frames and columns it counts were flushed)."""
        marker = self._datasets["committed_length"]
        write_block(self._h5py, marker, 0, np.array([length], dtype=np.int64))
        marker.id.flush()

    def _extras(self, row: Row, unfit: list[str] | None, absent: list[str], names: set[str]) -> bytes:
        """The frame's JSON document: what has no column or does not fit it (``unfit``: the names of the
        columns whose value did not fit; None when every key has a column and fits it), the columns' names
        its metadata lacks (``absent``), the archive fields too long for theirs; b"" when there is nothing."""
        extra: dict[str, Any] = {}
        if unfit is not None:
            misfit = set(unfit)
            extra = {str(k): v for k, v in row.metadata.items() if k not in names or k in misfit}
        archive: dict[str, Any] = {}
        key = row.key
        if _fixed(key.source, _SOURCE_WIDTH) == b"":
            archive["source_name"] = key.source
        if key.sequence is not None and _sequence(key.sequence) == NO_SEQUENCE:
            archive["sequence"] = key.sequence
        if _fixed(key.digest, _DIGEST_WIDTH) == b"":
            archive["digest"] = key.digest
        if not (extra or absent or archive):
            return b""
        document = {"metadata": extra, "absent": absent, "archive": archive}
        return lossless_json({k: v for k, v in document.items() if v})


def _appendable(group: Any, name: str, dtype: Any, fill: Any, chunk: int) -> None:
    group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(chunk,), dtype=dtype, fillvalue=fill)


#: Dataspaces of blocks and HDF5 types of string columns, made once (see ``write_block``); bounded.
_memory_spaces: dict[tuple[int, ...], Any] = {}
_string_types: dict[tuple[int, str], Any] = {}
_KEPT = 64


def write_block(h5py: Any, dataset: Any, start: int, block: np.ndarray) -> None:
    """Grow ``dataset`` along axis 0 to hold ``block`` at ``start`` and write it, through h5py's low-level
    API (its ``dataset[a:b] = x`` costs ~160 us of Python per call here, a dozen calls per commit), in at
    most three calls into HDF5: h5py releases the GIL in each, and while another thread of the archiver
    runs, each release costs a handoff of the GIL (100-800 us measured, decision 0044); the file's
    dataspace is grown in place and the block's dataspace and string type are made once and kept."""
    block = np.ascontiguousarray(block)
    dsid = dataset.id
    stop = start + block.shape[0]
    file_space = dsid.get_space()
    extent = file_space.shape
    if extent[0] < stop:
        grown = (stop, *extent[1:])
        dsid.set_extent(grown)
        file_space.set_extent_simple(grown, file_space.get_simple_extent_dims(True))
    file_space.select_hyperslab((start,) + (0,) * (block.ndim - 1), block.shape)
    memory_space = _memory_spaces.get(block.shape)
    if memory_space is None:
        if len(_memory_spaces) >= _KEPT:
            _memory_spaces.clear()
        memory_space = _memory_spaces[block.shape] = h5py.h5s.create_simple(block.shape)
    # fixed-length strings: written in the dataset's own type (h5py would take bytes for ASCII, refusing UTF-8)
    memory_type = _string_type(h5py, dsid.dtype) if block.dtype.kind == "S" else None
    dsid.write(memory_space, file_space, block, mtype=memory_type)


def _string_type(h5py: Any, dtype: np.dtype[Any]) -> Any:
    """The HDF5 type of a fixed-length string column's dtype (its encoding in h5py's dtype metadata, which
    numpy's equality of dtypes ignores: the key holds it)."""
    info = h5py.check_string_dtype(dtype)
    key = (dtype.itemsize, info.encoding if info is not None else "ascii")
    made = _string_types.get(key)
    if made is None:
        if len(_string_types) >= _KEPT:
            _string_types.clear()
        made = _string_types[key] = h5py.h5t.py_create(dtype)
    return made


def _fixed(text: str, width: int) -> bytes:
    """``text`` as its fixed-length column stores it, or b"" when it cannot (it then goes to the JSON)."""
    encoded = _utf8(text)
    return encoded if encoded and len(encoded) <= width else b""


def _sequence(value: int | None) -> int:
    if value is None or not -(2**63) < value < 2**63:
        return int(NO_SEQUENCE)
    return int(value)


def read_metadata(group: Any, index: int) -> dict[str, Any]:
    """Frame ``index``'s metadata as it arrived, from its columns and JSON document (``group``: the NXdata
    group that holds the frames).
    """
    columns = group["metadata"]
    document = _document(group["archive"], index)
    absent = set(document.get("absent", ()))
    result: dict[str, Any] = {}
    for name in columns:
        if name in absent:
            continue
        value = columns[name][index]
        result[name] = value.decode("utf-8") if isinstance(value, bytes) else value.item()
    result.update(document.get("metadata", {}))
    return result


def read_archive_row(group: Any, index: int) -> dict[str, Any]:
    """Frame ``index``'s source name, sequence value (None if it had none), key digest and receive time."""
    archive = group["archive"]
    document = _document(archive, index).get("archive", {})
    sequence = int(archive["sequence"][index])
    return {
        "source_name": document.get("source_name", archive["source_name"][index].decode("utf-8")),
        "sequence": document.get("sequence", None if sequence == NO_SEQUENCE else sequence),
        "digest": document.get("digest", archive["digest"][index].decode("utf-8")),
        "received": float(archive["received"][index]),
    }


def _document(archive: Any, index: int) -> dict[str, Any]:
    end = int(archive["extra_json_end"][index])
    start = int(archive["extra_json_end"][index - 1]) if index else 0
    if end == start:
        return {}
    parsed: dict[str, Any] = json.loads(archive["extra_json"][start:end].tobytes())  # orjson refuses lone surrogates
    return parsed
