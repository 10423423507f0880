"""One array payload as a Zarr v3 array: its ``zarr.json`` and its chunk objects, as zarr-python makes them.

The reference's ``ZarrArchiver`` stores each event with ``group[key] = payload``: an array with zarr's default
settings (chunks guessed from shape and dtype, the ``bytes`` codec in little-endian order, then ``zstd`` at
level 0). Going through zarr's API costs milliseconds of asyncio per array (see decision 0022), so the bytes
are made here: the array's metadata document is made once per shape and dtype *by zarr itself* (an array
created in a dict), which keeps it byte-identical to what zarr writes for the same payload, and each chunk is
the payload's region, padded at the edges, in C order and little-endian, compressed by the same numcodecs
codec zarr's ``ZstdCodec`` calls. zarr and numcodecs are imported only when an encoder is made.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ConfigurationError, PayloadError
from ..extras import require_extra
from .npy import _describe, as_array

#: numpy kinds with a Zarr v3 data type whose chunks are the array's bytes (bool, integers, floats,
#: complex, datetime64/timedelta64, fixed-length bytes and unicode); objects and structs are refused.
SUPPORTED_KINDS = "biufcmMSU"
COMPRESSIONS: tuple[str, ...] = ("zstd", "none")
#: ``auto``: the chunks zarr guesses for the shape (the reference's); ``array``: one chunk per array
CHUNKINGS: tuple[str, ...] = ("auto", "array")
#: (shape, dtype) layouts kept: a run has few shapes; a source that changes shape every frame must not grow it
_MAX_LAYOUTS = 256


def load_zarr() -> tuple[ModuleType, ModuleType]:
    """``(zarr, numcodecs)``, or a ConfigurationError that names the extra to install."""
    return require_extra("zarr", "zarr"), require_extra("zarr", "numcodecs")


@dataclass(frozen=True)
class ArrayLayout:
    """What every array of one shape and dtype shares: its metadata document and its chunk grid."""

    document: bytes
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    #: the dtype chunks are stored in (little-endian where the order matters)
    dtype: np.dtype[Any]

    @property
    def grid(self) -> tuple[int, ...]:
        """Chunks along each dimension (0 along an empty one: an empty array has no chunk objects)."""
        return tuple(math.ceil(n / c) for n, c in zip(self.shape, self.chunk_shape, strict=True))


class EncodedArray:
    """The objects of one array, relative to its directory: ``zarr.json`` first, then the chunks.

    Chunks are made one at a time while they are written (``objects``), each in a buffer of the writing
    thread that the next chunk reuses: a 2 MiB frame does not become eight fresh 256 KiB allocations, whose
    first touch costs more than the copy on the virtual machines measured (decision 0009, 0022).
    """

    def __init__(self, layout: ArrayLayout, array: np.ndarray, encoder: ZarrArrayEncoder) -> None:
        self.layout = layout
        self._array = array
        self._encoder = encoder

    @property
    def directories(self) -> list[str]:
        """The directories the chunk keys need, parents first (``c``, ``c/0``, ...)."""
        grid = self.layout.grid
        if not grid or 0 in grid:
            return []
        found = ["c"]
        for depth in range(1, len(grid)):
            found.extend("c/" + "/".join(map(str, index)) for index in itertools.product(*map(range, grid[:depth])))
        return found

    @property
    def nbytes(self) -> int:
        """Bytes of the payload (the chunks' size before compression, without padding)."""
        return int(self._array.nbytes)

    @property
    def data(self) -> np.ndarray:
        """The array as stored: its values in the stored byte order (little-endian, as the ``bytes`` codec says)."""
        return self._array

    def objects(self) -> Iterator[tuple[str, bytes | memoryview]]:
        """``(key, bytes)`` of ``zarr.json`` and each chunk; a chunk's bytes are valid until the next one is made."""
        yield "zarr.json", self.layout.document
        array, layout, compress = self._array, self.layout, self._encoder.compress
        if not array.shape:
            yield "c", compress(np.ascontiguousarray(array).reshape(-1))
            return
        for index in itertools.product(*(range(n) for n in layout.grid)):
            yield "c/" + "/".join(map(str, index)), compress(_chunk(array, layout, index))


class ZarrArrayEncoder:
    """Payload -> ``EncodedArray``; holds the layouts made so far and the compressor.

    Args:
        compression: ``zstd`` (the reference's: zarr's default codec) or ``none`` (only the ``bytes`` codec).
        level: the zstd level (0, zarr's default, is zstd's own default, 3).
        chunks: ``auto`` (zarr's guess from shape and dtype, as the reference's arrays; a 2 MiB frame is eight
            chunks) or ``array`` (the whole array in one chunk: fewer objects, each a file and most of an array's
            cost on a local disk).
    """

    def __init__(self, compression: str = "zstd", level: int = 0, chunks: str = "auto") -> None:
        if compression not in COMPRESSIONS:
            raise ConfigurationError(f"compression: expected one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        if isinstance(level, bool) or not isinstance(level, int) or not -131072 <= level <= 22:
            raise ConfigurationError(f"compression_level: expected a zstd level (an integer up to 22), got {level!r}")
        if chunks not in CHUNKINGS:
            raise ConfigurationError(f"chunks: expected one of {', '.join(CHUNKINGS)}, got {chunks!r}")
        self.chunks = chunks
        self._zarr, numcodecs = load_zarr()
        self.compression = compression
        self.level = level
        self._codec = numcodecs.Zstd(level=level, checksum=False) if compression == "zstd" else None
        self._layouts: OrderedDict[tuple[tuple[int, ...], str], ArrayLayout] = OrderedDict()
        self._group_document: bytes | None = None
        self._lock = threading.Lock()

    @property
    def group_document(self) -> bytes:
        """The ``zarr.json`` of an empty group with no attributes, as zarr writes it (``zarr.open_group``)."""
        if self._group_document is None:
            objects: dict[str, Any] = {}
            self._zarr.create_group(store=objects)
            self._group_document = bytes(objects["zarr.json"].to_bytes())
        return self._group_document

    def layout(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> ArrayLayout:
        """The layout zarr gives an array of ``shape`` and ``dtype`` with this encoder's compression."""
        key = (shape, dtype.str)
        with self._lock:  # writer threads share the encoder
            layout = self._layouts.get(key)
            if layout is not None:
                self._layouts.move_to_end(key)
                return layout
        objects: dict[str, Any] = {}
        compressors: Any = None  # the bytes codec alone
        if self._codec is not None:  # zarr's default (zstd, level 0, no checksum), or zstd at another level
            compressors = "auto" if self.level == 0 else self._zarr.codecs.ZstdCodec(level=self.level, checksum=False)
        try:
            grid: Any = "auto" if self.chunks == "auto" or not shape else tuple(max(1, n) for n in shape)
            array = self._zarr.create_array(
                store=objects, shape=shape, dtype=dtype, chunks=grid, compressors=compressors
            )
        except Exception as exc:  # zarr's own refusal of this dtype or shape, worded as ours
            raise PayloadError(f"expected an array Zarr v3 can store, got shape {shape} dtype {dtype} ({exc})") from exc
        stored = dtype.newbyteorder("<") if dtype.byteorder not in ("|", "<") else dtype
        layout = ArrayLayout(bytes(objects["zarr.json"].to_bytes()), shape, tuple(array.chunks), stored)
        with self._lock:
            self._layouts[key] = layout
            if len(self._layouts) > _MAX_LAYOUTS:
                self._layouts.popitem(last=False)
        return layout

    def encode(self, payload: Any) -> EncodedArray:
        """Check ``payload`` (a numpy array, or a list of numbers) and make its objects.

        Raises PayloadError for what Zarr v3 cannot hold as the reference stores it (objects, structs).
        """
        array = as_array(payload)
        if array.dtype.kind not in SUPPORTED_KINDS or array.dtype.fields is not None:
            raise PayloadError(
                f"expected a numpy array of a bool, integer, float, complex, datetime64/timedelta64 or fixed-length "
                f"bytes/str dtype, got dtype {array.dtype} from {_describe(payload)}"
            )
        layout = self.layout(tuple(int(n) for n in array.shape), array.dtype)
        if array.dtype != layout.dtype:
            array = array.astype(layout.dtype)  # big-endian -> little-endian, as zarr's bytes codec does
        return EncodedArray(layout, array, self)

    def compress(self, chunk: np.ndarray) -> bytes | memoryview:
        """The stored bytes of one C-ordered chunk."""
        flat = chunk.reshape(-1).view(np.uint8)
        if self._codec is None:
            return flat.data
        return bytes(self._codec.encode(flat))


_buffers = threading.local()


def _buffer(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """A chunk buffer of this thread for ``shape`` and ``dtype``, reused from the last chunk of that kind."""
    key = (shape, dtype.str)
    cached: np.ndarray | None = getattr(_buffers, "chunk", None)
    if cached is None or getattr(_buffers, "key", None) != key:
        cached = np.empty(shape, dtype=dtype)
        _buffers.chunk, _buffers.key = cached, key
    return cached


def _chunk(array: np.ndarray, layout: ArrayLayout, index: tuple[int, ...]) -> np.ndarray:
    """The C-ordered chunk at grid ``index`` (a view when it is one already, else this thread's buffer); an edge
    chunk is padded to the full chunk shape, as zarr stores it (the padding is outside the array: no reader
    sees it)."""
    bounds = zip(index, layout.chunk_shape, layout.shape, strict=True)
    region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in bounds)
    part = array[region]
    if part.shape == layout.chunk_shape and part.flags.c_contiguous:
        return part
    buffer = _buffer(layout.chunk_shape, array.dtype)
    if part.shape != layout.chunk_shape:
        buffer.fill(0)
        buffer[tuple(slice(0, n) for n in part.shape)] = part
    else:
        np.copyto(buffer, part)
    return buffer
