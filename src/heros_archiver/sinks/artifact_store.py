"""Where a ``PostgresArchiver`` keeps the arrays of its records: objects in buckets of an S3-compatible store.

The one module of the archiver that talks to the object store (obstore, imported when a store is made), so
that it can move onto the package's shared object-store layer without touching the rest (decision 0036).
``put_new`` is a conditional create (``If-None-Match: *``): an object is never replaced, and since an
artifact's key is derived from its content (``postgres_records.artifact_id``), "already there" means
"already uploaded" (a retry, a replay), not a clash. Buckets are made on first use, as the reference does,
by one presigned ``PUT`` of the bucket (obstore cannot create buckets; an answer "already yours" is fine).

``MemoryArtifactStore`` is what the reference offers for ``artifact_storage_kwargs=None``: arrays in this
process only, gone with it (for trials, not for archiving).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError, StorageError
from ..extras import require_extra
from ..saferepr import safe_str

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

    def put_new(self, bucket: str, key: str, data: bytes) -> bool:
        """Create the object; False when it exists already (it is then left as it is)."""

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

    def put_new(self, bucket: str, key: str, data: bytes) -> bool:
        with self._lock:
            if (bucket, key) in self._objects:
                return False
            self._objects[bucket, key] = (bytes(data), dt.datetime.now(dt.UTC))
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
    """Artifacts as objects of an S3-compatible store (SeaweedFS, MinIO, Ceph, AWS), through obstore.

    Args:
        endpoint_url: the store's URL (None: AWS's, for ``region``).
        bucket: the default bucket (the daily buckets are ``<bucket>-YYYY-MM-DD``).
        access_key, secret_key: credentials (None: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, else the
            reference's development default ``heros``).
        region: the signing region (None: ``AWS_REGION``, else ``us-east-1``).
        allow_http: plain HTTP to the endpoint (None: when ``endpoint_url`` starts with ``http://``).
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
        self._obstore = require_extra("postgres", "obstore")
        self._stores_module = require_extra("postgres", "obstore.store")
        self._exceptions = require_extra("postgres", "obstore.exceptions")
        self.default_bucket: str | None = bucket
        self.endpoint_url = endpoint_url
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        plain = bool(endpoint_url and endpoint_url.startswith("http://"))
        self.allow_http = plain if allow_http is None else allow_http
        self.max_workers = max_workers
        self.max_artifacts_per_batch = max_artifacts_per_batch
        self.create_buckets = create_buckets
        self._access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID") or DEFAULT_KEY
        self._secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or DEFAULT_KEY
        self._stores: dict[str, Any] = {}
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """The settings without the credentials (recorded with dead letters, shown by ``config()``)."""
        return {
            "endpoint_url": self.endpoint_url,
            "bucket": self.default_bucket,
            "region": self.region,
            "allow_http": self.allow_http,
            "create_buckets": self.create_buckets,
        }

    def _where(self, bucket: str, key: str = "") -> str:
        return f"s3://{bucket}/{key} at {self.endpoint_url or 'AWS'}"

    def _store(self, bucket: str) -> Any:
        with self._lock:
            store = self._stores.get(bucket)
            if store is None:
                options: dict[str, Any] = {
                    "access_key_id": self._access_key,
                    "secret_access_key": self._secret_key,
                    "region": self.region,
                    "client_options": {"allow_http": self.allow_http, "timeout": "30s", "connect_timeout": "5s"},
                    "retry_config": {"max_retries": 2, "backoff": {"init_backoff": dt.timedelta(milliseconds=100)}},
                }
                if self.endpoint_url:
                    options["endpoint"] = self.endpoint_url
                    options["virtual_hosted_style_request"] = False
                store = self._stores[bucket] = self._stores_module.S3Store(bucket, **options)
            return store

    def _error(self, action: str, bucket: str, key: str, exc: Exception) -> StorageError:
        """obstore's error as ours: a missing object is permanent for that object, the rest may pass."""
        if isinstance(exc, self._exceptions.NotFoundError):
            return ArtifactMissingError(f"{action} {self._where(bucket, key)}: expected an object, got none")
        return StorageError(f"{action} {self._where(bucket, key)} failed: {type(exc).__name__}: {safe_str(exc, 400)}")

    def ensure_bucket(self, bucket: str) -> None:
        if bucket in self._known:
            return
        if not self.create_buckets:
            self._known.add(bucket)
            return
        url = self._obstore.sign(self._store(bucket), "PUT", "", dt.timedelta(minutes=5))
        body = b""
        if self.region != "us-east-1" and self.endpoint_url is None:
            body = (
                "<CreateBucketConfiguration><LocationConstraint>"
                f"{self.region}</LocationConstraint></CreateBucketConfiguration>"
            ).encode()
        request = urllib.request.Request(url, data=body, method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            answer = exc.read()[:2000].decode(errors="replace")
            if exc.code != 409 or "BucketAlreadyOwnedByYou" not in answer:
                raise StorageError(
                    f"creating bucket {self._where(bucket)}: expected it made or already ours, got HTTP {exc.code}: "
                    f"{answer[:300]}"
                ) from exc
        except OSError as exc:
            raise StorageError(f"creating bucket {self._where(bucket)} failed: {exc}") from exc
        self._known.add(bucket)

    def put_new(self, bucket: str, key: str, data: bytes) -> bool:
        try:
            self._obstore.put(self._store(bucket), key, data, mode="create")
        except self._exceptions.AlreadyExistsError:
            return False
        except Exception as exc:  # obstore's own and Rust-side errors: all mapped here
            raise self._error("uploading", bucket, key, exc) from exc
        return True

    def get(self, bucket: str, key: str) -> bytes:
        try:
            return bytes(self._obstore.get(self._store(bucket), key).bytes())
        except Exception as exc:
            raise self._error("reading", bucket, key, exc) from exc

    def delete(self, bucket: str, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        try:
            self._obstore.delete(self._store(bucket), keys)
        except self._exceptions.NotFoundError:
            return
        except Exception as exc:
            raise self._error("deleting", bucket, keys[0], exc) from exc

    def list(self, bucket: str) -> list[tuple[str, dt.datetime]]:
        try:
            return [
                (meta["path"], meta["last_modified"])
                for chunk in self._obstore.list(self._store(bucket))
                for meta in chunk
            ]
        except self._exceptions.NotFoundError:
            return []
        except Exception as exc:
            if "NoSuchBucket" in str(exc):
                return []
            raise self._error("listing", bucket, "", exc) from exc


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
