"""The bytes of a BigTIFF stack: the header, one IFD per page, the ImageJ description, and reading them back.

Written here rather than through tifffile's ``TiffWriter`` because the stack needs control over what is on
disk at each instant (decision 0024): a commit writes whole pages (IFD, out-of-line values, pixels) past
the end of the chain, then links them with one 8-byte write of the previous page's next-IFD field, then
rewrites the fixed-size ImageJ description of the first page. A page is therefore either reachable and
complete, or not reachable at all; ``read_chain`` walks the chain as it is after a crash, stopping at the
first page that is not complete, and gives back what a reopen needs (the shape, dtype and byte order, the
pages' item keys, where to append and which field links the next page).

Layout of a page (BigTIFF, the byte order of the first frame)::

    IFD: entry count (8), entries (20 bytes each, sorted by tag), next-IFD offset (8)
    out-of-line values: the ImageJ description (first page only, ``DESCRIPTION_BYTES``), the item's JSON
    padding to ``DATA_ALIGNMENT``, then the frame's pixels as one strip, uncompressed
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

#: BigTIFF header: byte order mark, 43, offset size 8, 0, first IFD offset.
HEADER_BYTES = 16
#: The first IFD starts right after the header.
FIRST_IFD = HEADER_BYTES
#: A private tag (TIFF 6.0 reserves 65000-65535 for reuse): the page's item key, source and metadata as JSON.
METADATA_TAG = 65000
#: Bytes kept for the ImageJ description of the first page, rewritten in place at every commit.
DESCRIPTION_BYTES = 256
#: Pixels start at a multiple of this (memory-mappable for every dtype).
DATA_ALIGNMENT = 16

_ASCII, _SHORT, _LONG, _LONG8 = 2, 3, 4, 16
_NEW_SUBFILE_TYPE, _WIDTH, _LENGTH, _BITS, _COMPRESSION, _PHOTOMETRIC = 254, 256, 257, 258, 259, 262
_DESCRIPTION, _STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_BYTES, _PLANAR, _SAMPLE_FORMAT = (
    270, 273, 277, 278, 279, 284, 339
)  # fmt: skip
#: TIFF SampleFormat of a numpy dtype kind: unsigned, signed, IEEE float, complex IEEE float.
SAMPLE_FORMATS = {"u": 1, "i": 2, "f": 3, "c": 6}
_KINDS = {code: kind for kind, code in SAMPLE_FORMATS.items()}
#: Bytes per sample TIFF readers take for each kind.
ITEM_SIZES = {"u": (1, 2, 4, 8), "i": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
_MAX_ENTRIES = 64


def file_byteorder(dtype: np.dtype) -> str:
    """``<`` or ``>``: the byte order a stack of ``dtype`` frames is written in (the frames' own)."""
    order = dtype.byteorder
    if order == "=":
        return "<" if np.little_endian else ">"
    return ">" if order == ">" else "<"


def header(byteorder: str) -> bytes:
    """The BigTIFF header, pointing at the first IFD right after it."""
    mark = b"II" if byteorder == "<" else b"MM"
    return mark + struct.pack(f"{byteorder}HHHQ", 43, 8, 0, FIRST_IFD)


def imagej_description(images: int) -> bytes:
    """The first page's ImageJ description for ``images`` frames (a T stack), padded to ``DESCRIPTION_BYTES``.

    ImageJ and tifffile take the number of images from here; the rest of the field is NULs, which both
    ignore, so rewriting it in place never moves a byte of the file.
    """
    text = f"ImageJ=1.11a\nimages={images}\nframes={images}\nhyperstack=true\nmode=grayscale\nloop=false\n"
    data = text.encode("ascii")
    return data + b"\0" * (DESCRIPTION_BYTES - len(data))


@dataclass(frozen=True)
class EncodedPage:
    """One page's IFD and values (``head``), where its pixels go and where its next-IFD field is."""

    head: bytes
    data_offset: int
    next_field: int
    description_offset: int | None


def encode_page(
    byteorder: str, offset: int, frame_shape: tuple[int, int], dtype: np.dtype, extra: bytes, images: int | None
) -> EncodedPage:
    """The IFD of a page that starts at ``offset``; ``images`` (first page only) writes the ImageJ description.

    ``extra`` is the page's JSON (ASCII, written NUL-terminated in ``METADATA_TAG``). The next-IFD field
    is 0: the page ends the chain until a later commit links the next one.
    """
    height, width = frame_shape
    nbytes = height * width * dtype.itemsize
    entries: list[tuple[int, int, int, int | bytes]] = [
        (_NEW_SUBFILE_TYPE, _LONG, 1, 0),
        (_WIDTH, _LONG, 1, width),
        (_LENGTH, _LONG, 1, height),
        (_BITS, _SHORT, 1, 8 * dtype.itemsize),
        (_COMPRESSION, _SHORT, 1, 1),
        (_PHOTOMETRIC, _SHORT, 1, 1),  # min-is-black
    ]
    if images is not None:
        entries.append((_DESCRIPTION, _ASCII, DESCRIPTION_BYTES, imagej_description(images)))
    entries += [
        (_STRIP_OFFSETS, _LONG8, 1, -1),  # filled below, once the values' size is known
        (_SAMPLES, _SHORT, 1, 1),
        (_ROWS_PER_STRIP, _LONG, 1, height),
        (_STRIP_BYTES, _LONG8, 1, nbytes),
        (_PLANAR, _SHORT, 1, 1),
        (_SAMPLE_FORMAT, _SHORT, 1, SAMPLE_FORMATS[dtype.kind]),
        (METADATA_TAG, _ASCII, len(extra) + 1, extra + b"\0"),
    ]
    values_at = offset + 8 + 20 * len(entries) + 8
    values = bytearray()
    description_offset = None
    packed = [struct.pack(f"{byteorder}Q", len(entries))]
    for tag, kind, count, value in entries:
        if isinstance(value, bytes):  # out of line (longer than the 8 bytes of the entry)
            where = values_at + len(values)
            if tag == _DESCRIPTION:
                description_offset = where
            values += value
            if len(values) % 2:
                values += b"\0"  # values start on a word boundary
            packed.append(struct.pack(f"{byteorder}HHQQ", tag, kind, count, where))
        elif tag == _STRIP_OFFSETS:
            packed.append(b"")  # placeholder, index kept
        else:
            form = {_SHORT: "H", _LONG: "I", _LONG8: "Q"}[kind]
            inline = struct.pack(f"{byteorder}{form}", value).ljust(8, b"\0")
            packed.append(struct.pack(f"{byteorder}HHQ", tag, kind, count) + inline)
    data_offset = _aligned(values_at + len(values))
    strip = next(i for i, entry in enumerate(entries) if entry[0] == _STRIP_OFFSETS) + 1
    packed[strip] = struct.pack(f"{byteorder}HHQQ", _STRIP_OFFSETS, _LONG8, 1, data_offset)
    next_field = offset + 8 + 20 * len(entries)
    head = b"".join(packed) + struct.pack(f"{byteorder}Q", 0) + bytes(values)
    head += b"\0" * (data_offset - offset - len(head))
    return EncodedPage(head, data_offset, next_field, description_offset)


def _aligned(position: int) -> int:
    return -(-position // DATA_ALIGNMENT) * DATA_ALIGNMENT


@dataclass(frozen=True)
class Page:
    """A complete page found in a file: its geometry, where its pixels are, and its JSON."""

    offset: int
    next_field: int
    next_offset: int
    frame_shape: tuple[int, int]
    dtype: np.dtype
    data_offset: int
    data_bytes: int
    extra: bytes | None
    description_offset: int | None

    @property
    def end(self) -> int:
        """The first byte after the page (its pixels come last)."""
        return self.data_offset + self.data_bytes


@dataclass
class Chain:
    """What ``read_chain`` found: the byte order and the complete pages, in order."""

    byteorder: str
    pages: list[Page]


class NotAStackError(ValueError):
    """The file is not a BigTIFF (or its first page is not a page of ours)."""


def read_chain(fd: int) -> Chain:
    """Walk the IFD chain of the file open as ``fd``, keeping the pages that are complete in the file.

    Stops at the first IFD that is cut off, points outside the file or backwards, or whose pixels are not all
    in the file: what a crash in the middle of a commit leaves. An empty file, or one whose header is still
    zeros (the first commit writes it last), is an empty stack. Raises NotAStackError for a file that is not
    a little- or big-endian BigTIFF.
    """
    size = os.fstat(fd).st_size
    start = os.pread(fd, HEADER_BYTES, 0)
    if not start.strip(b"\0"):  # empty, or pages written and no header yet: a first commit that did not end
        return Chain("<", [])
    byteorder = {b"II": "<", b"MM": ">"}.get(start[:2])
    if byteorder is None or len(start) < HEADER_BYTES:
        raise NotAStackError(f"expected a TIFF header (II or MM, 16 bytes), found {start!r:.60}")
    magic, offset_size, _, first = struct.unpack(f"{byteorder}HHHQ", start[2:])
    if magic != 43 or offset_size != 8:
        raise NotAStackError(
            f"expected a BigTIFF (43, offset size 8), found version {magic}, offset size {offset_size}"
        )
    pages: list[Page] = []
    offset, floor = first, HEADER_BYTES
    while offset:
        page = _read_page(fd, byteorder, offset, floor, size)
        if page is None:
            break
        pages.append(page)
        offset, floor = page.next_offset, page.end
    return Chain(byteorder, pages)


def _read_page(fd: int, byteorder: str, offset: int, floor: int, size: int) -> Page | None:
    """The page whose IFD is at ``offset``, or None when it is not complete in the file (or not a page)."""
    if offset < floor or offset + 8 > size:
        return None
    (count,) = struct.unpack(f"{byteorder}Q", os.pread(fd, 8, offset))
    end = offset + 8 + 20 * count + 8
    if not 0 < count <= _MAX_ENTRIES or end > size:
        return None
    raw = os.pread(fd, 20 * count + 8, offset + 8)
    tags: dict[int, tuple[int, int, bytes]] = {}
    for i in range(count):
        tag, kind, number = struct.unpack(f"{byteorder}HHQ", raw[20 * i : 20 * i + 12])
        tags[tag] = (kind, number, raw[20 * i + 12 : 20 * i + 20])
    (next_offset,) = struct.unpack(f"{byteorder}Q", raw[-8:])

    def inline(tag: int) -> int | None:
        entry = tags.get(tag)
        if entry is None or entry[1] != 1 or entry[0] not in (_SHORT, _LONG, _LONG8):
            return None
        form = {_SHORT: "H", _LONG: "I", _LONG8: "Q"}[entry[0]]
        return int(struct.unpack(f"{byteorder}{form}", entry[2][: struct.calcsize(form)])[0])

    width, height, bits = inline(_WIDTH), inline(_LENGTH), inline(_BITS)
    data_offset, data_bytes, sample_format = inline(_STRIP_OFFSETS), inline(_STRIP_BYTES), inline(_SAMPLE_FORMAT)
    if None in (width, height, bits, data_offset, data_bytes) or (inline(_COMPRESSION) or 1) != 1:
        return None
    assert width is not None and height is not None and bits is not None
    assert data_offset is not None and data_bytes is not None
    kind = _KINDS.get(sample_format or 1)
    if kind is None or bits % 8 or bits // 8 not in ITEM_SIZES[kind] or (inline(_SAMPLES) or 1) != 1:
        return None
    dtype = np.dtype(f"{byteorder}{kind}{bits // 8}")
    if data_bytes != width * height * dtype.itemsize or data_offset < end or data_offset + data_bytes > size:
        return None
    extra = _ascii_value(fd, byteorder, tags.get(METADATA_TAG), size)
    description_offset = None
    described = tags.get(_DESCRIPTION)
    if described is not None and described[1] == DESCRIPTION_BYTES:
        (description_offset,) = struct.unpack(f"{byteorder}Q", described[2])
    next_field = offset + 8 + 20 * count
    return Page(
        offset, next_field, next_offset, (height, width), dtype, data_offset, data_bytes, extra, description_offset
    )


def _ascii_value(fd: int, byteorder: str, entry: tuple[int, int, bytes] | None, size: int) -> bytes | None:
    """The text of an ASCII entry without its NUL (None when absent or not in the file)."""
    if entry is None or entry[0] != _ASCII:
        return None
    _, count, field = entry
    if count <= 8:
        data = field[:count]
    else:
        (where,) = struct.unpack(f"{byteorder}Q", field)
        if where + count > size:
            return None
        data = os.pread(fd, count, where)
    return data.rstrip(b"\0")


def link_bytes(byteorder: str, offset: int) -> bytes:
    """The 8 bytes of a next-IFD field pointing at ``offset``."""
    return struct.pack(f"{byteorder}Q", offset)
