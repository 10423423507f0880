"""The one client layer of the package over S3-compatible object storage (``s3://bucket/prefix`` roots).

Everything that talks to an object store goes through ``ObjectStore``: the file-per-item sinks, replay and,
later, the ``PostgresArchiver``'s artifacts. Small objects go through obstore (Rust, one request per call,
~15 % faster than boto3 for 2 MiB objects here, decision 0035); boto3 does what obstore cannot: a multipart
upload completed with ``If-None-Match: *`` (large items, still no silent overwrite) and the listing and
aborting of stale multipart uploads. Both are imported on first use (the extra ``[s3]``).

No silent overwrite rests on the store's conditional create (``If-None-Match: *`` on PUT and on completing a
multipart upload): ``check_conditional_create`` finds at start whether the store honours it, by creating one
probe key twice under the prefix's ``.heros-archiver/`` area. Errors become the package's hierarchy:
``TargetExistsError`` (the key exists), ``InvalidTargetError`` (a 4xx that comes from the item: its key,
its size; retrying cannot help) and ``StorageError`` (connection refused, timeouts, 5xx, refused
credentials: may pass, so the pipeline retries with backoff and then dead-letters).

Credentials, endpoint and region follow the AWS conventions when an argument is not given: the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, ``AWS_ALLOW_HTTP``), then the
profile in ``~/.aws/config`` and ``~/.aws/credentials`` (read by botocore), then each client's own chain.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import errno
import importlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, InvalidTargetError, StorageError, TargetExistsError
from ..extras import require_extra
from ..formats.base import Content
from ..naming.keys import key_problem
from ..state.statedir import STATE_DIR_NAME

SCHEME = "s3://"
#: The archiver's own area under a prefix (probe keys); local state stays on local disk (``state_dir``).
STATE_AREA = STATE_DIR_NAME
#: From this size an object is sent as a multipart upload: one PUT was faster up to 256 MiB here (150 MiB/s
#: against 88 for 16 MiB parts, decision 0035); above, parts bound what one failed request costs, and a
#: single PUT holds at most 5 GiB on S3.
MULTIPART_THRESHOLD = 512 << 20
#: Size of each part of a multipart upload (S3: 5 MiB to 5 GiB, at most 10,000 parts).
PART_SIZE = 16 << 20
#: Parts in flight at once for one multipart upload.
PART_THREADS = 4
#: S3's bucket naming rules (3-63 characters; lowercase letters, digits, dots, hyphens; letter or digit at
#: both ends); an IP address is refused separately.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")


def is_object_url(text: object) -> bool:
    """Whether ``text`` names an object-store location (``s3://...``), not a local path."""
    return isinstance(text, str) and text.startswith(SCHEME)


@dataclass(frozen=True)
class ObjectLocation:
    """A bucket and a key prefix in it (``""`` or text without a leading or trailing ``/``)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> ObjectLocation:
        """``s3://bucket`` or ``s3://bucket/some/prefix`` (a trailing ``/`` is dropped); anything else is refused
        with a ConfigurationError naming what arrived."""
        if not is_object_url(url):
            raise ConfigurationError(f"object-store location: expected 's3://bucket/prefix', got {url!r}")
        bucket, _, prefix = url[len(SCHEME) :].partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket or _IP_ADDRESS.fullmatch(bucket):
            raise ConfigurationError(
                f"object-store location {url!r}: expected a bucket name of 3-63 lowercase letters, digits, dots "
                f"and hyphens, starting and ending with a letter or digit, got {bucket!r}"
            )
        prefix = prefix.rstrip("/")
        if prefix:
            check_key(prefix, f"the prefix of {url!r}")
        return cls(bucket, prefix)

    def key(self, relative: str) -> str:
        """The key of ``relative`` (already confined) under the prefix."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def url(self, key: str | None = None) -> str:
        """``s3://bucket/key`` (``key`` a full key), or the location itself."""
        return f"{SCHEME}{self.bucket}/{self.prefix if key is None else key}".rstrip("/")

    @property
    def state_prefix(self) -> str:
        """Where the archiver's probe keys go: ``<prefix>/.heros-archiver/``."""
        return self.key(STATE_AREA) + "/"


def check_key(key: str, what: str) -> None:
    """Refuse a key that is not plain segments joined by ``/``: empty, absolute, ``//``, ``.`` or ``..``
    segments, control characters (S3 lists keys in XML 1.0, which cannot hold most of them), over 1024 bytes.
    Raises ConfigurationError naming ``what`` and the key."""
    problem = key_problem(key)
    if problem:
        raise ConfigurationError(f"{what}: expected a key of plain segments joined by '/', got {key!r}: {problem}")


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key, size in bytes, ETag (as the store gives it) and last change."""

    key: str
    size: int
    etag: str | None
    modified: datetime.datetime | None


@dataclass(frozen=True)
class StoreSettings:
    """Where a store is and how to sign for it, each value resolved (argument, environment, profile)."""

    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    allow_http: bool


def resolve_settings(
    endpoint: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    profile: str | None = None,
    allow_http: bool | None = None,
) -> StoreSettings:
    """Each setting from its argument, else the AWS environment, else the profile's files (``AWS_PROFILE`` or
    ``profile``; read only when named or when ``~/.aws`` holds files, so nothing is asked of the network)."""
    env = os.environ
    endpoint = endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    if access_key is None and secret_key is None:
        access_key, secret_key = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        session_token = session_token or env.get("AWS_SESSION_TOKEN")
    if (access_key is None) != (secret_key is None):
        raise ConfigurationError(
            f"object store credentials: expected both an access key and a secret key, got only the "
            f"{'access key' if secret_key is None else 'secret key'}"
        )
    profile = profile or env.get("AWS_PROFILE")
    if profile or (access_key is None and _profile_files_exist()) or (region is None and _profile_files_exist()):
        access_key, secret_key, session_token, region = _from_profile(
            profile, access_key, secret_key, session_token, region
        )
    if allow_http is None:
        allow_http = env.get("AWS_ALLOW_HTTP", "").strip().lower() in ("1", "true", "yes")
    if endpoint is not None:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(f"object store endpoint: expected an http:// or https:// URL, got {endpoint!r}")
        if endpoint.startswith("http://") and not allow_http:
            raise ConfigurationError(
                f"object store endpoint {endpoint!r} is plain HTTP: pass allow_http=True (or set AWS_ALLOW_HTTP=true) "
                "to send requests unencrypted, or use an https:// endpoint"
            )
    return StoreSettings(endpoint, region or "us-east-1", access_key, secret_key, session_token, allow_http)


def _profile_files_exist() -> bool:
    env = os.environ
    files = (
        env.get("AWS_CONFIG_FILE", os.path.expanduser("~/.aws/config")),
        env.get("AWS_SHARED_CREDENTIALS_FILE", os.path.expanduser("~/.aws/credentials")),
    )
    return any(os.path.isfile(path) for path in files)


def _from_profile(
    profile: str | None, access_key: str | None, secret_key: str | None, token: str | None, region: str | None
) -> tuple[str | None, str | None, str | None, str | None]:
    """Fill what is missing from a profile of the AWS files, through botocore (boto3's own reading of them)."""
    require_extra("s3", "botocore")
    botocore_session = importlib.import_module("botocore.session")
    botocore_exceptions = importlib.import_module("botocore.exceptions")
    try:
        session = botocore_session.Session(profile=profile)
        region = region or session.get_config_variable("region")
        if access_key is None:
            credentials = session.get_credentials()
            if credentials is not None:
                frozen = credentials.get_frozen_credentials()
                access_key, secret_key, token = frozen.access_key, frozen.secret_key, frozen.token
    except botocore_exceptions.ProfileNotFound as exc:
        raise ConfigurationError(
            f"object store profile: expected a profile of the AWS config files, got {exc}"
        ) from exc
    return access_key, secret_key, token, region


def open_object_store(
    bucket: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    profile: str | None = None,
    allow_http: bool | None = None,
) -> ObjectStore:
    """A client of ``bucket``; every argument not given follows the AWS conventions (``resolve_settings``).
    Makes no request: ``ObjectStore.check_conditional_create`` is the first contact."""
    location = ObjectLocation.parse(SCHEME + bucket)
    settings = resolve_settings(endpoint, region, access_key, secret_key, session_token, profile, allow_http)
    return ObjectStore(location.bucket, settings)


class ObjectStore:
    """One bucket of an S3-compatible store. Thread-safe (both clients are); one per archiver is enough."""

    def __init__(self, bucket: str, settings: StoreSettings) -> None:
        self._obstore = require_extra("s3", "obstore")
        obstore_store = importlib.import_module("obstore.store")
        self._exceptions = importlib.import_module("obstore.exceptions")
        self.bucket = bucket
        self.settings = settings
        config: dict[str, Any] = {"region": settings.region}
        if settings.endpoint:
            config["endpoint"] = settings.endpoint
        if settings.access_key is not None:
            config["access_key_id"] = settings.access_key
            config["secret_access_key"] = settings.secret_key
        if settings.session_token:
            config["session_token"] = settings.session_token
        # A few quick retries of obstore's own for a dropped connection; the pipeline does the long backoff
        # (counted in the archiver's stats), so a store that is down fails an attempt within seconds.
        self._arguments: dict[str, Any] = {
            "config": config,
            "virtual_hosted_style_request": settings.endpoint is None,
            "client_options": {"allow_http": settings.allow_http, "connect_timeout": "3s", "timeout": "120s"},
            "retry_config": {
                "max_retries": 2,
                "retry_timeout": datetime.timedelta(seconds=10),
                "backoff": {"init_backoff": datetime.timedelta(milliseconds=100)},
            },
        }
        self._store = obstore_store.S3Store(bucket, **self._arguments)
        self._boto3: Any = None

    def __repr__(self) -> str:
        return f"ObjectStore({self.bucket!r}, endpoint={self.settings.endpoint!r})"

    def url(self, key: str) -> str:
        """``s3://bucket/key``, as messages and the catalog name an object."""
        return f"{SCHEME}{self.bucket}/{key}"

    def put_new(self, key: str, data: Content | bytes) -> None:
        """Create ``key`` holding ``data`` only if no object has that key (``If-None-Match: *``), else raise
        TargetExistsError naming bucket and key. Large data goes as a multipart upload, completed conditionally."""
        body = _joined(data)
        if len(body) >= MULTIPART_THRESHOLD:
            self._put_multipart(key, body, create=True)
            return
        try:
            self._obstore.put(self._store, key, body, mode="create", use_multipart=False)
        except (self._exceptions.AlreadyExistsError, self._exceptions.PreconditionError) as exc:
            raise self._exists(key) from exc
        except Exception as exc:
            raise self._error("creating", key, exc) from exc

    def put(self, key: str, data: Content | bytes) -> None:
        """Write ``key``, replacing any object there (``on_exists="overwrite"``)."""
        body = _joined(data)
        if len(body) >= MULTIPART_THRESHOLD:
            self._put_multipart(key, body, create=False)
            return
        try:
            self._obstore.put(self._store, key, body, use_multipart=False)
        except Exception as exc:
            raise self._error("writing", key, exc) from exc

    def get(self, key: str) -> bytes:
        """The bytes of ``key``; a missing key raises StorageError with ``errno.ENOENT`` (permanent)."""
        try:
            return bytes(self._obstore.get(self._store, key).bytes())
        except Exception as exc:
            raise self._error("reading", key, exc) from exc

    def head(self, key: str) -> ObjectInfo | None:
        """Size, ETag and time of ``key``, or None when there is no such object."""
        try:
            meta = self._obstore.head(self._store, key)
        except (self._exceptions.NotFoundError, FileNotFoundError):  # obstore raises the builtin for a 404
            return None
        except Exception as exc:
            raise self._error("looking up", key, exc) from exc
        return _info(meta)

    def exists(self, key: str) -> bool:
        """Whether an object has the key ``key``."""
        return self.head(key) is not None

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when it is not there: S3's DELETE is idempotent)."""
        try:
            self._obstore.delete(self._store, key)
        except (self._exceptions.NotFoundError, FileNotFoundError):
            return
        except Exception as exc:
            raise self._error("deleting", key, exc) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (use a trailing ``/`` for a "directory"), in key order."""
        try:
            for chunk in self._obstore.list(self._store, prefix or None, chunk_size=1000):
                for meta in chunk:
                    yield _info(meta)
        except Exception as exc:
            raise self._error("listing", prefix, exc) from exc

    def abort_stale_uploads(self, prefix: str, older_than: float) -> int:
        """Abort the multipart uploads under ``prefix`` begun more than ``older_than`` seconds ago (a killed
        writer's: they hold storage and are invisible to a listing); returns how many. Through boto3:
        obstore lists no uploads."""
        client = self._client()
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than)
        aborted = 0
        try:
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"] < cutoff:
                        client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
        except Exception as exc:
            raise self._error("aborting stale uploads under", prefix, exc) from exc
        return aborted

    def create_bucket(self) -> bool:
        """Make the bucket if it does not exist (daily buckets of the PostgresArchiver); True when it was made
        now, False when it was there (ours or not: S3 answers BucketAlreadyOwnedByYou or BucketAlreadyExists)."""
        client = self._client()
        try:
            if self.settings.endpoint is None and self.settings.region != "us-east-1":
                location = {"LocationConstraint": self.settings.region}
                client.create_bucket(Bucket=self.bucket, CreateBucketConfiguration=location)
            else:
                client.create_bucket(Bucket=self.bucket)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise self._error("creating the bucket of", "", exc) from exc
        return True

    def check_conditional_create(self, prefix: str) -> bool:
        """Whether the store refuses a second create of one key (``If-None-Match: *``): a probe key under
        ``prefix`` (the location's ``.heros-archiver/`` area) created twice, then removed. The first request
        also tells whether endpoint, bucket and credentials work: if not, ConfigurationError says which."""
        key = f"{prefix}probe-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            self.put_new(key, b"heros-archiver conditional-create probe\n")
        except StorageError as exc:
            raise ConfigurationError(
                f"object store {self.url(prefix)} at {self.settings.endpoint or 'AWS'}: expected to create a probe "
                f"object, got {exc}; check the endpoint, the bucket and the credentials"
            ) from exc
        try:
            self.put_new(key, b"second create of the probe\n")
        except TargetExistsError:
            return True
        except StorageError:
            return False  # refused in another way (501 Not Implemented, 400): not honoured
        finally:
            self.delete(key)
        return False

    def _put_multipart(self, key: str, body: memoryview | bytes, create: bool) -> None:
        """A multipart upload of ``body`` in ``PART_SIZE`` parts, ``PART_THREADS`` at a time; completed with
        ``If-None-Match: *`` when ``create``; aborted on any failure, so no part is left behind."""
        client = self._client()
        try:
            upload = client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        except Exception as exc:
            raise self._error("starting a multipart upload of", key, exc) from exc
        view = memoryview(body)

        def send(number: int) -> dict[str, Any]:
            part = view[(number - 1) * PART_SIZE : number * PART_SIZE].tobytes()  # boto3 takes no memoryview
            answer = client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=part)
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            with concurrent.futures.ThreadPoolExecutor(PART_THREADS, thread_name_prefix="s3-part") as pool:
                parts = list(pool.map(send, range(1, -(-len(view) // PART_SIZE) + 1)))
            extra = {"IfNoneMatch": "*"} if create else {}
            client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, **extra
            )
        except Exception as exc:
            # the upload's own error is the one to report; an upload left behind is aborted at the next start
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            if create and _status(exc) == 412:
                raise self._exists(key) from exc
            raise self._error("uploading", key, exc) from exc

    def zarr_store(self, prefix: str) -> Any:
        """A read-only zarr-python store of the objects under ``prefix`` (zarr's own ``ObjectStore`` over an
        obstore client of the same bucket, endpoint and credentials), for reading a Zarr store back."""
        require_extra("zarr", "zarr")
        obstore_store = importlib.import_module("obstore.store")
        zarr_storage = importlib.import_module("zarr.storage")
        client = obstore_store.S3Store(self.bucket, prefix=prefix.strip("/") or None, **self._arguments)
        return zarr_storage.ObjectStore(client, read_only=True)

    def _client(self) -> Any:
        """The boto3 client (multipart, uploads), made on first use."""
        if self._boto3 is None:
            boto3 = require_extra("s3", "boto3")
            botocore_config = importlib.import_module("botocore.config")
            settings = self.settings
            self._boto3 = boto3.client(
                "s3",
                endpoint_url=settings.endpoint,
                region_name=settings.region,
                aws_access_key_id=settings.access_key,
                aws_secret_access_key=settings.secret_key,
                aws_session_token=settings.session_token,
                use_ssl=not (settings.endpoint or "").startswith("http://"),
                config=botocore_config.Config(
                    s3={"addressing_style": "path" if settings.endpoint else "virtual"},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=3,
                    read_timeout=120,
                    max_pool_connections=PART_THREADS * 2,
                ),
            )
        return self._boto3

    def _exists(self, key: str) -> TargetExistsError:
        return TargetExistsError(f"{self.url(key)} exists and on_exists='error' keeps it; the new item was not written")

    def _error(self, action: str, key: str, exc: BaseException) -> StorageError:
        """The package's error for a client's: permanent when the request itself is refused (4xx other than
        auth, timeout and throttling: a bad key, an object too large), else transient."""
        where = f"{action} {self.url(key)} (endpoint {self.settings.endpoint or 'AWS'})"
        text = " ".join(str(exc).split("Debug source:")[0].split())  # obstore appends a multi-line dump
        if isinstance(exc, (self._exceptions.NotFoundError, FileNotFoundError)) or _status(exc) == 404:
            return InvalidTargetError(errno.ENOENT, f"{where}: no such object or bucket: {text[:400]}")
        if isinstance(exc, self._exceptions.InvalidPathError):
            return InvalidTargetError(errno.EINVAL, f"{where}: the key is refused: {text[:400]}")
        if isinstance(exc, (self._exceptions.PermissionDeniedError, self._exceptions.UnauthenticatedError)):
            return StorageError(errno.EACCES, f"{where}: the store refused the credentials: {text[:400]}")
        status = _status(exc)
        if status is not None and 400 <= status < 500 and status not in (401, 403, 408, 409, 429):
            return InvalidTargetError(errno.EINVAL, f"{where}: refused with HTTP {status}: {text[:400]}")
        return StorageError(errno.EIO, f"{where}: {text[:400]}")


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a client error: boto3's response, or the ``status NNN`` obstore's message names."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(code) if code else None
    match = re.search(r"status:? (\d{3})\b", str(exc))
    return int(match.group(1)) if match else None


def _joined(data: Content | bytes) -> memoryview | bytes:
    """One buffer of a file's content: the buffer itself when there is one (no copy), else joined once."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data if not isinstance(data, bytearray) else bytes(data)
    if len(data) == 1:
        return data[0]
    return b"".join(data)


def _info(meta: Any) -> ObjectInfo:
    return ObjectInfo(meta["path"], int(meta["size"]), meta.get("e_tag"), meta.get("last_modified"))
