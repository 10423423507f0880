"""Where a ``PostgresArchiver`` keeps the arrays of its records: objects in buckets of an S3-compatible store.

Objects go through the package's one object-store client (``storage.objectstore``, decision 0035), a client
per bucket; this module adds what the archiver needs beyond it. ``put_new`` is a conditional create
(``If-None-Match: *``): an object is never replaced, and since an artifact's key is derived from its content
(``postgres_records.artifact_id``), "already there" means "already uploaded" (a retry, a replay), not a clash.
Buckets are made on first use, as the reference does (``ObjectStore.create_bucket``).

``MemoryArtifactStore`` is what the reference offers for ``artifact_storage_kwargs=None``: arrays in this
process only, gone with it (for trials, not for archiving).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError, StorageError, TargetExistsError
from ..extras import require_extra
from ..formats.base import Content

__all__ = [
    "ArtifactMissingError",
    "ArtifactStore",
    "MemoryArtifactStore",
    "S3ArtifactStore",
    "open_artifact_store",
]

#: The reference's defaults for an omitted ``artifact_storage_kwargs`` (a local development store).
DEFAULT_ENDPOINT = "http://localhost:9000"
DEFAULT_BUCKET = "artifacts"
DEFAULT_KEY = "heros"
DEFAULT_MAX_WORKERS = 10
DEFAULT_MAX_ARTIFACTS_PER_BATCH = 100
#: The keys of ``artifact_storage_kwargs`` (the reference's, and ``region`` / ``allow_http`` of ours).
STORAGE_KEYS = frozenset(
    {
        "endpoint_url",
        "bucket",
        "access_key",
        "secret_key",
        "max_workers",
        "max_artifacts_per_batch",
        "create_buckets",
        "region",
        "allow_http",
    }
)


class ArtifactMissingError(StorageError):
    """An artifact a record names is not in its bucket (removed behind the archiver's back, or never there)."""

    permanent = True


@runtime_checkable
class ArtifactStore(Protocol):
    """What the archiver needs of a store of artifacts (``artifact_storage=`` takes any object that has it)."""

    #: the bucket of ``use_single_bucket`` and the prefix of the daily ones (None: a store without buckets)
    default_bucket: str | None
    #: threads that upload or download at once
    max_workers: int
    #: artifacts ``get_artifacts`` fetches in one call at most
    max_artifacts_per_batch: int

    def ensure_bucket(self, bucket: str) -> None:
        """Make ``bucket`` if it does not exist (StorageError if that fails)."""

    def put_new(self, bucket: str, key: str, data: Content | bytes) -> bool:
        """Create the object from ``data`` (bytes, or parts joined in order); False when it exists already (it is
        then left as it is)."""

    def get(self, bucket: str, key: str) -> bytes:
        """The object's bytes (ArtifactMissingError when there is none)."""

    def delete(self, bucket: str, keys: Iterable[str]) -> None:
        """Remove these objects (those already gone are no error)."""

    def list(self, bucket: str) -> list[tuple[str, dt.datetime]]:
        """Every object of ``bucket`` with its last-modified time ([] for a bucket that does not exist)."""


class MemoryArtifactStore:
    """Artifacts in this process's memory (``artifact_storage_kwargs=None``): lost when it ends."""

    default_bucket: str | None = None

    def __init__(
        self, max_workers: int = DEFAULT_MAX_WORKERS, max_artifacts_per_batch: int = DEFAULT_MAX_ARTIFACTS_PER_BATCH
    ) -> None:
        self.max_workers = max_workers
        self.max_artifacts_per_batch = max_artifacts_per_batch
        self._objects: dict[tuple[str, str], tuple[bytes, dt.datetime]] = {}
        self._lock = threading.Lock()

    def ensure_bucket(self, bucket: str) -> None:
        return None

    def put_new(self, bucket: str, key: str, data: Content | bytes) -> bool:
        body = bytes(data) if isinstance(data, bytes) else b"".join(bytes(part) for part in data)
        with self._lock:
            if (bucket, key) in self._objects:
                return False
            self._objects[bucket, key] = (body, dt.datetime.now(dt.UTC))
            return True

    def get(self, bucket: str, key: str) -> bytes:
        with self._lock:
            found = self._objects.get((bucket, key))
        if found is None:
            raise ArtifactMissingError(f"artifact {key!r}: expected an object in memory bucket {bucket!r}, got none")
        return found[0]

    def delete(self, bucket: str, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._objects.pop((bucket, key), None)

    def list(self, bucket: str) -> list[tuple[str, dt.datetime]]:
        with self._lock:
            return [(key, when) for (b, key), (_, when) in self._objects.items() if b == bucket]


class S3ArtifactStore:
    """Artifacts as objects of an S3-compatible store (SeaweedFS, MinIO, Ceph, AWS): one ``storage.objectstore``
    client per bucket.

    Args:
        endpoint_url: the store's URL (None: AWS's, or ``AWS_ENDPOINT_URL``).
        bucket: the default bucket (the daily buckets are ``<bucket>-YYYY-MM-DD``).
        access_key, secret_key: credentials (None: the AWS conventions, environment then profile, else the
            reference's development default ``heros``).
        region: the signing region (None: ``AWS_REGION``, the profile's, else ``us-east-1``).
        allow_http: plain HTTP to the endpoint (None: when ``endpoint_url`` starts with ``http://``, as the
            reference connects).
        create_buckets: make missing buckets (False: a bucket must exist; writes to a missing one fail).
    """

    def __init__(
        self,
        endpoint_url: str | None = DEFAULT_ENDPOINT,
        bucket: str = DEFAULT_BUCKET,
        access_key: str | None = None,
        secret_key: str | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_artifacts_per_batch: int = DEFAULT_MAX_ARTIFACTS_PER_BATCH,
        create_buckets: bool = True,
        region: str | None = None,
        allow_http: bool | None = None,
    ) -> None:
        from ..storage import objectstore

        require_extra("postgres", "obstore")  # the client's: missing ones fail here, not at the first upload
        require_extra("postgres", "boto3")  # (boto3 makes the buckets)
        self._objectstore = objectstore
        if allow_http is None:
            allow_http = bool(endpoint_url and endpoint_url.startswith("http://"))
        settings = objectstore.resolve_settings(endpoint_url, region, access_key, secret_key, allow_http=allow_http)
        if settings.access_key is None:
            settings = dataclasses.replace(settings, access_key=DEFAULT_KEY, secret_key=DEFAULT_KEY)
        self._settings = settings
        self.default_bucket: str | None = bucket
        self.max_workers = max_workers
        self.max_artifacts_per_batch = max_artifacts_per_batch
        self.create_buckets = create_buckets
        self._stores: dict[str, Any] = {}
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """The settings without the credentials (recorded with dead letters)."""
        return {
            "endpoint_url": self._settings.endpoint,
            "bucket": self.default_bucket,
            "region": self._settings.region,
            "allow_http": self._settings.allow_http,
            "create_buckets": self.create_buckets,
        }

    def _store(self, bucket: str) -> Any:
        with self._lock:
            store = self._stores.get(bucket)
            if store is None:
                self._objectstore.ObjectLocation.parse(f"s3://{bucket}")  # S3's bucket naming rules
                store = self._stores[bucket] = self._objectstore.ObjectStore(bucket, self._settings)
            return store

    def ensure_bucket(self, bucket: str) -> None:
        if bucket in self._known:
            return
        if self.create_buckets:
            self._store(bucket).create_bucket()
        self._known.add(bucket)

    def put_new(self, bucket: str, key: str, data: Content | bytes) -> bool:
        try:
            self._store(bucket).put_new(key, data)
        except TargetExistsError:
            return False
        return True

    def get(self, bucket: str, key: str) -> bytes:
        try:
            data: bytes = self._store(bucket).get(key)
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                raise ArtifactMissingError(f"artifact s3://{bucket}/{key}: expected an object, got none") from exc
            raise
        return data

    def delete(self, bucket: str, keys: Iterable[str]) -> None:
        store = self._store(bucket)
        keys = list(keys)
        if len(keys) < 2:
            for key in keys:
                store.delete(key)
            return
        with ThreadPoolExecutor(min(len(keys), self.max_workers)) as pool:
            list(pool.map(store.delete, keys))

    def list(self, bucket: str) -> list[tuple[str, dt.datetime]]:
        try:
            return [(info.key, info.modified) for info in self._store(bucket).list()]
        except StorageError as exc:
            if exc.errno == errno.ENOENT:  # no such bucket: nothing in it
                return []
            raise


def open_artifact_store(kwargs: Mapping[str, Any] | None) -> ArtifactStore:
    """The store of ``artifact_storage_kwargs``: None for memory, a dict of ``STORAGE_KEYS`` for S3 (the
    reference's keys: ``endpoint_url``, ``bucket``, ``access_key``, ``secret_key``, ...)."""
    if kwargs is None:
        return MemoryArtifactStore()
    unknown = sorted(set(kwargs) - STORAGE_KEYS)
    if unknown:
        raise ConfigurationError(
            f"artifact_storage_kwargs: expected keys among {', '.join(sorted(STORAGE_KEYS))}, got {', '.join(unknown)}"
        )
    return S3ArtifactStore(**kwargs)
