"""The pieces of a Zarr v3 store that the append container writes itself: shards, chunks, ``zarr.json``.

Why not ``array[a:b] = frames``: zarr-python writes a shard in place with no commit point (its shard index
comes last, so a crash mid-write leaves a shard that does not decode), advances the array's shape in a
separate step of the caller's choosing, and 3.1's ``LocalStore`` (temporary + ``replace``) neither fsyncs
nor confines the path to an archive root, and leaves its ``*.partial`` temporary behind after a SIGKILL.
Here every object is encoded in memory and written whole through ``storage.atomic.write_atomic``
(temporary + rename beneath the archive root's directory handle, recorded so that a restart removes
stale temporaries), and the array's ``zarr.json`` is built with zarr's own metadata classes.

A shard is the ``sharding_indexed`` codec's object: the encoded inner chunks one after the other, then the
index (per inner chunk its offset and size, ``2**64 - 1`` twice for a chunk not written) as little-endian
uint64 followed by its CRC32C, which is what ``index_codecs = [bytes(little), crc32c]`` with
``index_location = "end"`` means. The inner chunks are written in order and never re-encoded once
complete, so a shard replaced by a longer one at the next commit starts with the same bytes: a reader that
read the old index finds the same chunks at the same offsets in the new file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Literal, get_args

import numpy as np
import orjson

from ...errors import ConfigurationError
from ...formats.base import Content

Compression = Literal["none", "zstd", "blosc-lz4"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
#: Chosen by measurement (benchmarks/zarr_compression.py, decision 0023): shot noise barely compresses,
#: and ``none`` writes at the disk's speed and opens in every Zarr reader.
DEFAULT_COMPRESSION: Compression = "none"
#: zstd level and blosc settings (LZ4 with byte shuffle, level 5: the HDF5 archiver's ``blosc``)
ZSTD_LEVEL = 3
BLOSC_LEVEL = 5
#: An index entry of an inner chunk that was never written (the sharding codec's "missing").
MISSING = np.uint64(2**64 - 1)
#: Keys as ``c.0.0.0`` (the ``default`` encoding with "." as separator): every shard of an array in one
#: directory, so a new shard needs no new directory (and no new entry in the temporaries' record).
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
#: Inner chunks smaller than this on average are joined into one buffer before they are written.
JOIN_BELOW_BYTES = 1 << 18


def crc32c(data: bytes) -> int:
    """CRC32C of ``data`` with the library zarr itself uses for its ``crc32c`` codec."""
    import google_crc32c

    return int(google_crc32c.value(data))


class ChunkEncoder:
    """Encodes one inner chunk (a block of rows of one dtype) as the array's codecs do, to bytes."""

    def __init__(self, numcodecs: ModuleType, compression: Compression, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self._codec: Any = None
        if compression == "zstd":
            self._codec = numcodecs.Zstd(level=ZSTD_LEVEL, checksum=False)
        elif compression == "blosc-lz4":
            self._codec = numcodecs.Blosc(cname="lz4", clevel=BLOSC_LEVEL, shuffle=numcodecs.Blosc.SHUFFLE)
        elif compression != "none":
            raise ConfigurationError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")

    def encode(self, block: np.ndarray) -> bytes | memoryview:
        """The bytes codec (the array's own byte order), then the compressor if any."""
        raw = np.ascontiguousarray(block, dtype=self.dtype)
        if self._codec is None:
            return raw.data.cast("B")
        return bytes(self._codec.encode(raw))


def shard_content(chunks: Sequence[bytes | memoryview], chunks_per_shard: int, inner_shape: int) -> Content:
    """The buffers of a shard holding ``chunks`` (inner chunks 0 .. len - 1 in order; the rest missing).

    ``inner_shape``: how many index entries follow the first axis's (1 for every array here: the inner
    chunk spans every axis but the first). Small chunks are joined into one buffer (one ``write`` instead
    of a thousand for 8 KiB frames); large ones stay separate buffers (no copy of the frames).
    """
    sizes = np.fromiter((memoryview(c).nbytes for c in chunks), dtype="<u8", count=len(chunks))
    index = np.full((chunks_per_shard * inner_shape, 2), MISSING, dtype="<u8")
    if len(chunks):
        index[: len(chunks), 0] = np.cumsum(sizes) - sizes
        index[: len(chunks), 1] = sizes
    encoded = index.tobytes()
    tail = encoded + crc32c(encoded).to_bytes(4, "little")
    if len(chunks) > 1 and int(sizes.sum()) < JOIN_BELOW_BYTES * len(chunks):
        return [b"".join(chunks), tail]
    return [*chunks, tail]


def serializer_endian(dtype: np.dtype[Any]) -> str | None:
    """The bytes codec's ``endian`` for ``dtype``: its own byte order (so it reads back as it arrived)."""
    if dtype.itemsize == 1 or dtype.byteorder == "|":
        return None
    if dtype.byteorder == "=":
        return "little" if np.little_endian else "big"
    return "big" if dtype.byteorder == ">" else "little"


def zarr_compressors(zarr: ModuleType, compression: Compression, dtype: np.dtype[Any]) -> Any:
    """The ``compressors=`` of ``zarr.create_array`` that decode what ``ChunkEncoder`` wrote."""
    codecs = zarr.codecs
    if compression == "zstd":
        return [codecs.ZstdCodec(level=ZSTD_LEVEL, checksum=False)]
    if compression == "blosc-lz4":
        return [codecs.BloscCodec(cname="lz4", clevel=BLOSC_LEVEL, shuffle="shuffle", typesize=dtype.itemsize)]
    return None


def metadata_document(array: Any) -> dict[str, Any]:
    """The ``zarr.json`` document of a zarr array (made in a MemoryStore), as a dict."""
    document: dict[str, Any] = json.loads(array.metadata.to_buffer_dict(_prototype())["zarr.json"].to_bytes())
    return document


def with_shape(document: dict[str, Any], length: int) -> bytes:
    """``zarr.json`` of ``document`` with the first axis ``length`` long.

    ``document`` comes from zarr's own metadata classes (``metadata_document``), validated there once; only
    the shape changes here, so plain JSON does (zarr's ``ArrayV3Metadata`` round trip costs ~110 us a call,
    and a commit writes one ``zarr.json`` per column), written by orjson: 12 us for the ten documents of a
    commit against 378 with the standard library's encoder, which holds the GIL throughout; the standard
    library's where orjson refuses a value (an integer beyond 64 bits in the attributes).
    """
    shaped = {**document, "shape": [length, *document["shape"][1:]]}
    try:
        return orjson.dumps(shaped, option=orjson.OPT_INDENT_2)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(shaped, indent=2).encode()


def group_document() -> bytes:
    """``zarr.json`` of a plain Zarr v3 group."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}, indent=2).encode()


def _prototype() -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()
