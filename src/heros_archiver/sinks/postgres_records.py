"""One event as a PostgreSQL record: its JSON document, with every array replaced by a reference to an object.

The document is what the reference stores (the metadata with the payload over it, a bare array under the key
``array_key_template`` renders), and each array becomes an ``artifact_ref`` the reference's readers
understand (``artifact_id``, ``bucket``, ``size_bytes``, ``shape``, ``dtype``) and an ``.npy`` object in that
bucket. Where the reference drops a value it cannot store and logs it, this raises ``PayloadError`` naming the
key, so that the whole item goes to the dead-letter store, as it arrived: numpy scalars and datetimes are
stored (as numbers, bools and ISO 8601 text); NaN and infinities, text holding U+0000 or lone surrogates,
and other types are refused (JSONB cannot hold them).

An artifact's id is a UUID made from the hash of the identifier, the key path and the array's bytes, so that a
retry or a replay of the same item uploads to the same key (the conditional create then finds it there) and
never leaves a second copy; the daily bucket is that of the item's receipt (UTC), for the same reason.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from ..errors import PayloadError, TemplateRenderError
from ..formats.base import Content
from ..formats.npy import NpyFormat
from ..naming.templates import PathTemplate
from ..saferepr import safe_repr

__all__ = ["MAX_IDENTIFIER_BYTES", "Artifact", "PreparedRecord", "RecordBuilder", "artifact_id", "daily_bucket"]

#: Longest identifier (UTF-8 bytes): a B-tree key holds ~2,700 bytes and a NOTIFY payload 8,000.
MAX_IDENTIFIER_BYTES = 2048
_NPY = NpyFormat()


@dataclass(frozen=True)
class Artifact:
    """One array of a record, as the ``.npy`` object to upload: its header and a view of the array (joined only
    when sent, so that a pending record holds no second copy of its arrays)."""

    bucket: str
    artifact_id: str
    data: Content
    size_bytes: int


@dataclass
class PreparedRecord:
    """What one item becomes: the record's identifier, its JSON document and the artifacts it references."""

    identifier: str
    document: dict[str, Any]
    artifacts: list[Artifact] = field(default_factory=list)


def daily_bucket(default_bucket: str, when: float) -> str:
    """``<default_bucket>-YYYY-MM-DD`` of ``when`` (seconds since the epoch) in UTC, as the reference names them."""
    return f"{default_bucket}-{dt.datetime.fromtimestamp(when, dt.UTC):%Y-%m-%d}"


def artifact_id(identifier: str, path: str, array: np.ndarray, raw: bytes | memoryview) -> str:
    """A UUID (version 8) of the identifier, the key path, the dtype, the shape and the bytes of an array."""
    digest = xxhash.xxh3_128()
    for part in (identifier, path, array.dtype.str, repr(array.shape)):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    digest.update(raw)
    value = bytearray(digest.digest())
    value[6] = (value[6] & 0x0F) | 0x80
    value[8] = (value[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(value)))


class RecordBuilder:
    """Turns items into ``PreparedRecord``s (one per archiver; used by its writers and by its replay)."""

    def __init__(
        self, identifier_key: str, array_key_template: PathTemplate, default_bucket: str | None, single_bucket: bool
    ) -> None:
        self.identifier_key = identifier_key
        self.array_key = array_key_template
        self.default_bucket = default_bucket
        self.single_bucket = single_bucket

    def identifier_of(self, payload: Any, metadata: Mapping[str, Any]) -> str | None:
        """The identifier of an item as the record will have it (None: it has none), without building it."""
        value = payload.get(self.identifier_key) if isinstance(payload, Mapping) else None
        if value is None:
            value = metadata.get(self.identifier_key)
        return None if value is None else str(value)

    def bucket_for(self, received: float) -> str:
        if self.default_bucket is None:
            return ""
        return self.default_bucket if self.single_bucket else daily_bucket(self.default_bucket, received)

    def build(self, source: str, payload: Any, metadata: Mapping[str, Any], received: float) -> PreparedRecord:
        """The record of one item (PayloadError or TemplateRenderError when it cannot be one)."""
        if isinstance(payload, np.ndarray):
            payload = {render_array_key(self.array_key, source, metadata): payload}
        if not isinstance(payload, Mapping):
            raise PayloadError(
                f"from {source!r}: expected a dict or a numpy array as the payload of a record, got "
                f"{type(payload).__name__} {safe_repr(payload, 80)}"
            )
        merged = {**metadata, **payload}
        raw_identifier = merged.get(self.identifier_key)
        if raw_identifier is None:
            raise PayloadError(
                f"from {source!r}: expected the identifier key {self.identifier_key!r} in the payload or metadata, "
                f"got keys {safe_repr(sorted(map(str, merged)), 200)}"
            )
        identifier = str(raw_identifier)
        _check_text(identifier, f"identifier {self.identifier_key!r}", source)
        if len(identifier.encode()) > MAX_IDENTIFIER_BYTES:
            raise PayloadError(
                f"from {source!r}: expected an identifier of at most {MAX_IDENTIFIER_BYTES} bytes, got "
                f"{len(identifier.encode())} bytes starting {identifier[:40]!r}"
            )
        record = PreparedRecord(identifier, {})
        bucket = self.bucket_for(received)
        record.document = self._walk(merged, "", record, bucket, source)
        return record

    def _walk(self, value: Any, path: str, record: PreparedRecord, bucket: str, source: str) -> Any:
        if isinstance(value, np.ndarray):
            return self._artifact(value, path, record, bucket, source)
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if isinstance(key, bool) or not isinstance(key, str | int):
                    raise PayloadError(
                        f"from {source!r}: at {path or 'the top'!r}: expected text keys, got key {safe_repr(key, 60)}"
                    )
                text = str(key)
                _check_text(text, f"key at {path or 'the top'!r}", source)
                if text in out:
                    raise PayloadError(f"from {source!r}: at {path or 'the top'!r}: key {text!r} given twice")
                out[text] = self._walk(item, f"{path}.{text}" if path else text, record, bucket, source)
            return out
        if isinstance(value, list | tuple):
            return [
                self._walk(item, f"{path}.{index}" if path else str(index), record, bucket, source)
                for index, item in enumerate(value)
            ]
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, np.generic):
            return self._walk(value.item(), path, record, bucket, source)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise PayloadError(f"from {source!r}: at {path!r}: expected a finite number (JSONB), got {value!r}")
            return float(value)
        if isinstance(value, str):
            _check_text(value, f"value at {path!r}", source)
            return value
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return value.isoformat()
        raise PayloadError(
            f"from {source!r}: at {path!r}: expected JSON values or numpy arrays, got {type(value).__name__} "
            f"{safe_repr(value, 80)}"
        )

    def _artifact(self, array: np.ndarray, path: str, record: PreparedRecord, bucket: str, source: str) -> Any:
        try:
            parts = _NPY.prepare(array)
        except PayloadError as exc:
            raise PayloadError(f"from {source!r}: at {path!r}: {exc}") from exc
        raw = parts[-1]
        aid = artifact_id(record.identifier, path, array, raw)
        record.artifacts.append(Artifact(bucket, aid, parts, int(array.nbytes)))
        return {
            "__type__": "artifact_ref",
            "artifact_id": aid,
            "size_bytes": int(array.nbytes),
            "bucket": bucket or None,
            "shape": list(array.shape),
            "dtype": array.dtype.str,
        }


def _check_text(text: str, what: str, source: str) -> None:
    """PostgreSQL text holds neither U+0000 nor lone surrogates: refused here, with where, not by the server."""
    if "\0" in text:
        raise PayloadError(f"from {source!r}: {what}: expected text without U+0000 (JSONB), got {text[:60]!r}")
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise PayloadError(f"from {source!r}: {what}: expected valid Unicode, got {text[:60]!r} ({exc})") from exc


def render_array_key(template: PathTemplate, source: str, metadata: Mapping[str, Any]) -> str:
    """The key of a bare array (``array_key_template``), or TemplateRenderError naming the source."""
    try:
        return template.render_text({**metadata, "source_name": source})
    except TemplateRenderError as exc:
        raise TemplateRenderError(f"array_key_template for {source!r}: {exc}") from exc
