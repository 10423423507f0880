"""What a PostgresArchiver answers about its records: ``get``, ``get_ids``, ``tag_ids``, ``purge``, ``cleanup``.

The reference's methods, with its arguments and results: ``get`` merges the tags over the document and
replaces every ``artifact_ref`` (within ``size_limit_bytes``) by its array; ``get_ids`` finds identifiers by
tag or by a top-level document key, compared as text; ``purge`` and ``cleanup`` need ``allow_purge``;
``cleanup`` skips records tagged ``_save`` (``1``, ``true``, ``True``) and is a dry run unless told otherwise.

Ours differ where the reference could lose or leave data behind. ``purge`` deletes the rows first, in one
transaction, and the objects after it, so that a failure leaves orphans, never a record without its arrays (all
under the exclusive advisory lock: a commit that sends one of those arrays again waits and uploads it anew);
it removes every object uploaded for the identifier (``heros_archiver_artifacts``), also those a later merge
no longer references, and those the references of a reference-written record name. ``cleanup`` (not a dry
run, ``remove_artifacts``) also removes orphans: objects named like artifacts (a UUID) in the buckets the
archiver wrote to that no record owns (a commit that failed after its uploads), under the exclusive advisory
lock every commit of ours takes shared (the reference's writers take none: do not run it while one writes).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import ArchiverError, ConfigurationError
from .artifact_store import ArtifactMissingError, ArtifactStore
from .postgres_db import connect, database_error, load_psycopg, redact_url
from .postgres_schema import ARTIFACT_LOCK

__all__ = ["PurgeDisabledError", "RecordQueries", "UnknownIdentifierError", "artifact_refs", "named_objects"]

log = logging.getLogger("heros_archiver")

_TRUTHY_SAVE = ("1", "true", "True")
#: The keys an artifact can have (a UUID: ours, version 8, or the reference's, version 4): another application's
#: objects in a shared bucket are never taken for orphans
_ARTIFACT_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


class PurgeDisabledError(ArchiverError, PermissionError):
    """``purge`` or ``cleanup`` of an archiver made without ``allow_purge=True`` (a PermissionError, as the
    reference raises)."""


class UnknownIdentifierError(ArchiverError, KeyError):
    """``tag_ids`` of identifiers that have no record."""


def artifact_refs(value: Any) -> Iterator[dict[str, Any]]:
    """Every ``artifact_ref`` in a document, at any depth."""
    if isinstance(value, dict):
        if value.get("__type__") == "artifact_ref":
            yield value
            return
        for item in value.values():
            yield from artifact_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from artifact_refs(item)


def named_objects(document: Any, default_bucket: str) -> set[tuple[str, str]]:
    """``(bucket, key)`` of every object a document's references name (no bucket: the default one)."""
    return {(ref.get("bucket") or default_bucket, str(ref.get("artifact_id"))) for ref in artifact_refs(document)}


def _resolved(value: Any, arrays: Mapping[tuple[str | None, str], np.ndarray]) -> Any:
    if isinstance(value, dict):
        if value.get("__type__") == "artifact_ref":
            return arrays.get((value.get("bucket"), value.get("artifact_id", "")), value)
        return {key: _resolved(item, arrays) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolved(item, arrays) for item in value]
    return value


def _load_npy(data: bytes, where: str) -> np.ndarray:
    import io

    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        problem = f"{where}: expected an .npy object, got {len(data)} bytes that are none ({exc})"
        raise ArtifactMissingError(problem) from exc


class RecordQueries:
    """The record store's reading and maintenance side, on a connection of its own (one call at a time)."""

    def __init__(
        self, db_url: str, store: ArtifactStore, allow_purge: bool, retention_days: int, purpose: str = "queries"
    ) -> None:
        self._url = db_url
        self._store = store
        self._allow_purge = allow_purge
        self.retention_days = retention_days
        self._purpose = purpose
        self._connection: Any = None
        self._lock = threading.Lock()
        self._where = redact_url(db_url)

    @contextmanager
    def _cursor(self, action: str) -> Iterator[Any]:
        """A cursor on the shared connection, in a transaction; psycopg's errors as ours, reconnecting next time."""
        psycopg = load_psycopg()
        with self._lock:
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = connect(self._url, self._purpose)
                with self._connection.transaction(), self._connection.cursor() as cursor:
                    yield cursor
            except psycopg.Error as exc:
                self._close()
                raise database_error(f"{action} at {self._where}", exc) from exc

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            connection.close()

    def close(self) -> None:
        with self._lock:
            self._close()

    # ------------------------------------------------------------------ reading
    def documents(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored documents with their tags merged over them, unresolved."""
        with self._cursor("reading records") as cursor:
            cursor.execute(
                """SELECT r.identifier, COALESCE(r.data_json, '{}'::jsonb) || COALESCE(
                        jsonb_object_agg(g.tag_key, g.tag_value) FILTER (WHERE g.tag_key IS NOT NULL), '{}'::jsonb)
                   FROM records r LEFT JOIN identifier_groups g ON g.identifier = r.identifier
                   WHERE r.identifier = ANY(%s) GROUP BY r.identifier, r.data_json""",
                ([str(i) for i in ids],),
            )
            return {identifier: document for identifier, document in cursor.fetchall()}

    def get(
        self, ids: Sequence[str], resolve_artifacts: bool = True, size_limit_bytes: int | None = None
    ) -> dict[str, dict[str, Any]]:
        documents = self.documents(ids)
        if not resolve_artifacts:
            return documents
        wanted = {
            (ref.get("bucket"), str(ref.get("artifact_id")))
            for document in documents.values()
            for ref in artifact_refs(document)
            if size_limit_bytes is None or int(ref.get("size_bytes", 0)) <= size_limit_bytes
        }
        arrays = self.fetch(wanted)
        return {identifier: _resolved(document, arrays) for identifier, document in documents.items()}

    def fetch(self, locations: set[tuple[str | None, str]]) -> dict[tuple[str | None, str], np.ndarray]:
        """The arrays at ``(bucket, artifact_id)`` (None: the default bucket), read in parallel."""

        def one(location: tuple[str | None, str]) -> np.ndarray:
            bucket = location[0] or self._store.default_bucket or ""
            return _load_npy(self._store.get(bucket, location[1]), f"s3://{bucket}/{location[1]}")

        ordered = sorted(locations, key=lambda pair: (pair[0] or "", pair[1]))
        if len(ordered) < 2:
            return {location: one(location) for location in ordered}
        with ThreadPoolExecutor(min(len(ordered), max(1, self._store.max_workers))) as pool:
            return dict(zip(ordered, pool.map(one, ordered), strict=True))

    def get_artifacts(self, locations: Sequence[tuple[str, str | None]]) -> dict[str, np.ndarray]:
        """The reference's ``get_artifacts``: ``(artifact_id, bucket)`` pairs, at most ``max_artifacts_per_batch``."""
        limit = self._store.max_artifacts_per_batch
        if len(locations) > limit:
            raise ConfigurationError(f"get_artifacts: expected at most {limit} artifacts, got {len(locations)}")
        buckets: dict[str, str | None] = {}
        for aid, bucket in locations:
            if buckets.setdefault(str(aid), bucket) != bucket:
                raise ConfigurationError(f"get_artifacts: artifact {aid!r} asked for from more than one bucket")
        arrays = self.fetch({(bucket, aid) for aid, bucket in buckets.items()})
        return {aid: arrays[bucket, aid] for aid, bucket in buckets.items()}

    def get_ids(self, tag: str, values: Sequence[Any]) -> list[str]:
        texts = sorted({str(value) for value in values})
        with self._cursor("finding identifiers") as cursor:
            cursor.execute(
                """SELECT identifier FROM identifier_groups WHERE tag_key = %s AND tag_value = ANY(%s)
                   UNION SELECT identifier FROM records WHERE data_json->>%s = ANY(%s) ORDER BY identifier""",
                (str(tag), texts, str(tag), texts),  # a number would index a JSON array
            )
            return [row[0] for row in cursor.fetchall()]

    # ------------------------------------------------------------------ changing
    def tag_ids(self, ids: Sequence[str], tag: str, value: Any) -> None:
        identifiers = sorted({str(i) for i in ids})
        with self._cursor("tagging records") as cursor:
            cursor.execute("SELECT identifier FROM records WHERE identifier = ANY(%s)", (identifiers,))
            missing = sorted(set(identifiers) - {row[0] for row in cursor.fetchall()})
            if missing:
                raise UnknownIdentifierError(
                    f"tag_ids({tag!r}): expected identifiers that have records at {self._where}, got "
                    f"{len(missing)} without: {missing[:10]}"
                )
            cursor.executemany(
                """INSERT INTO identifier_groups (identifier, tag_key, tag_value) VALUES (%s, %s, %s)
                   ON CONFLICT (identifier, tag_key) DO UPDATE SET tag_value = EXCLUDED.tag_value""",
                [(identifier, str(tag), str(value)) for identifier in identifiers],
            )

    def _check_purge(self, method: str) -> None:
        if not self._allow_purge:
            raise PurgeDisabledError(f"{method}(): expected an archiver made with allow_purge=True, got False")

    def purge(self, ids: Sequence[str], remove_artifacts: bool = True) -> None:
        self._check_purge("purge")
        identifiers = sorted({str(i) for i in ids})
        psycopg = load_psycopg()
        with self._exclusive("purging records") as connection:
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    objects = self._owned_objects(cursor, identifiers) if remove_artifacts else set()
                    cursor.execute("DELETE FROM identifier_groups WHERE identifier = ANY(%s)", (identifiers,))
                    cursor.execute("DELETE FROM heros_archiver_artifacts WHERE identifier = ANY(%s)", (identifiers,))
                    cursor.execute("DELETE FROM records WHERE identifier = ANY(%s)", (identifiers,))
            except psycopg.Error as exc:
                raise database_error(f"purging records at {self._where}", exc) from exc
            # the rows are gone; still under the lock, so that a commit sending one of these arrays again (the
            # same key) waits, and then uploads it anew instead of finding it here about to be removed
            self._delete_objects(objects)

    def _owned_objects(self, cursor: Any, identifiers: list[str]) -> set[tuple[str, str]]:
        """``(bucket, key)`` of every object uploaded for these records, and every one their documents name."""
        cursor.execute(
            "SELECT bucket, artifact_id FROM heros_archiver_artifacts WHERE identifier = ANY(%s)", (identifiers,)
        )
        objects = {(bucket, aid) for bucket, aid in cursor.fetchall()}
        cursor.execute("SELECT data_json FROM records WHERE identifier = ANY(%s)", (identifiers,))
        default = self._store.default_bucket or ""
        for (document,) in cursor.fetchall():
            objects.update(named_objects(document, default))
        return objects

    @contextmanager
    def _exclusive(self, action: str) -> Iterator[Any]:
        """A connection of its own holding the exclusive artifact lock (session-level: across its transaction and
        what follows it), released by closing the connection."""
        psycopg = load_psycopg()
        connection = connect(self._url, self._purpose)
        try:
            try:
                connection.execute("SELECT pg_advisory_lock(%s)", (ARTIFACT_LOCK,))
            except psycopg.Error as exc:
                raise database_error(f"{action} at {self._where}", exc) from exc
            yield connection
        finally:
            connection.close()

    def _delete_objects(self, objects: set[tuple[str, str]]) -> None:
        by_bucket: dict[str, list[str]] = {}
        for bucket, aid in objects:
            by_bucket.setdefault(bucket, []).append(aid)
        for bucket, keys in sorted(by_bucket.items()):
            self._store.delete(bucket, sorted(keys))

    def expired(self, days: int) -> list[str]:
        with self._cursor("finding expired records") as cursor:
            cursor.execute(
                """SELECT identifier FROM records WHERE updated_at < now() - interval '1 day' * %s
                   AND identifier NOT IN (SELECT identifier FROM identifier_groups
                                          WHERE tag_key = '_save' AND tag_value = ANY(%s))
                   ORDER BY identifier""",
                (days, list(_TRUTHY_SAVE)),
            )
            return [row[0] for row in cursor.fetchall()]

    def cleanup(self, retention_days: int | None, remove_artifacts: bool, dry_run: bool) -> list[str]:
        self._check_purge("cleanup")
        days = self.retention_days if retention_days is None else retention_days
        expired = self.expired(days) if days else []
        if not dry_run:
            if expired:
                self.purge(expired, remove_artifacts=remove_artifacts)
            if remove_artifacts:
                removed = self.remove_orphans()
                if removed:
                    log.info("cleanup removed %d orphan object(s) from %s", len(removed), self._where)
        return expired

    def orphans(self) -> list[tuple[str, str]]:
        """Objects in the buckets the archiver wrote to that no record owns, as ``(bucket, key)``."""
        with self._cursor("finding orphans") as cursor:
            return self._orphans(cursor)

    def _orphans(self, cursor: Any) -> list[tuple[str, str]]:
        cursor.execute("SELECT bucket FROM heros_archiver_buckets ORDER BY bucket")
        buckets = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT bucket, artifact_id FROM heros_archiver_artifacts")
        owned = {(bucket, aid) for bucket, aid in cursor.fetchall()}
        cursor.execute("SELECT data_json FROM records WHERE data_json::text LIKE '%%artifact_ref%%'")
        default = self._store.default_bucket or ""
        for (document,) in cursor.fetchall():
            owned.update(named_objects(document, default))
        listed = [(bucket, key) for bucket in buckets for key, _ in self._store.list(bucket)]
        return [(bucket, key) for bucket, key in listed if _ARTIFACT_KEY.match(key) and (bucket, key) not in owned]

    def remove_orphans(self) -> list[tuple[str, str]]:
        """Remove the orphans, holding the lock that keeps every commit out meanwhile; the ones removed."""
        with self._cursor("removing orphans") as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (ARTIFACT_LOCK,))
            found = self._orphans(cursor)
            self._delete_objects(set(found))
        return found
