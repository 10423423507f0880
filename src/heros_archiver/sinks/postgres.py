"""The PostgresArchiver's container sink: records committed in batches, their arrays uploaded first.

``append`` only builds the item's record (``postgres_records``): an item that cannot be one is refused then,
alone, and dead-lettered. ``commit`` does all the I/O of the pending items in one transaction, in this order:

1. the batch's buckets recorded (``heros_archiver_buckets``, committed on their own: an orphan left by a
   failed commit is in a bucket ``cleanup`` looks in), and made in the store on first use;
2. ``pg_advisory_xact_lock_shared(ARTIFACT_LOCK)``: orphan removal (``cleanup``, exclusive) waits for this
   commit, and this commit for it, so that it never removes an object a commit is about to reference;
3. every artifact uploaded (a conditional create, in parallel; "already there" is the same object, see
   ``postgres_records``);
4. the artifacts' rows, then the records, merged per identifier in arrival order (``||``, later keys win:
   the reference's merge), one statement each; the triggers ``NOTIFY record_changed``;
5. COMMIT. Only now are the items archived. A failure before it leaves the records as they were (and at most
   objects no record references: orphans, found by ``cleanup``); the items are appended again and retried.

A batch refused for good (the database refuses its data: ``RecordRefusedError``; the store refuses an object)
is committed again one record at a time, and
so is every batch of retried items (appended again after a failed commit): a record that keeps failing, for
whatever reason, is retried and dead-lettered alone, and the others of its batch are committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ArchiverError, StorageError
from ..pipeline.queueing import Item
from .artifact_store import ArtifactStore
from .base import CommitFailure, ContainerSink, Settled
from .postgres_db import (
    DatabaseUnavailableError,
    StoreUnavailableError,
    connect,
    database_error,
    load_psycopg,
    redact_url,
)
from .postgres_records import Artifact, PreparedRecord, RecordBuilder
from .postgres_schema import ARTIFACT_LOCK

__all__ = ["PostgresSink", "PostgresSinkSettings", "upload_all"]

log = logging.getLogger("heros_archiver")

_UPSERT_RECORDS = """
INSERT INTO records (identifier, data_json, updated_at)
SELECT identifier, document::jsonb, now() FROM unnest(%s::text[], %s::text[]) AS batch (identifier, document)
ON CONFLICT (identifier) DO UPDATE
    SET data_json = COALESCE(records.data_json, '{}'::jsonb) || EXCLUDED.data_json, updated_at = EXCLUDED.updated_at
"""
_INSERT_ARTIFACTS = """
INSERT INTO heros_archiver_artifacts (bucket, artifact_id, identifier, size_bytes)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True)
class PostgresSinkSettings:
    """How the sink commits (``PostgresOptions.sink_settings``)."""

    db_url: str
    flush_items: int
    flush_bytes: int
    flush_seconds: float
    flush_idle: float | None


def encode_document(document: dict[str, Any]) -> str:
    """The JSON text of a record's document (orjson; Python's json for integers beyond 64 bits)."""
    try:
        return orjson.dumps(document).decode()
    except TypeError:
        import json

        return json.dumps(document, ensure_ascii=False, allow_nan=False)


def upload_all(store: ArtifactStore, artifacts: list[Artifact], pool: ThreadPoolExecutor | None) -> None:
    """Make the buckets and upload every artifact (in ``pool`` when there are several); raises the first error."""
    for bucket in sorted({artifact.bucket for artifact in artifacts}):
        store.ensure_bucket(bucket)
    if pool is None or len(artifacts) < 2:
        for artifact in artifacts:
            store.put_new(artifact.bucket, artifact.artifact_id, artifact.data)
        return
    for future in [pool.submit(store.put_new, a.bucket, a.artifact_id, a.data) for a in artifacts]:
        future.result()


class PostgresSink(ContainerSink):
    """Records to PostgreSQL and arrays to the artifact store, committed in batches (module docstring)."""

    def __init__(
        self,
        settings: PostgresSinkSettings,
        builder: RecordBuilder,
        store: ArtifactStore,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        #: called before each transaction (the archiver makes its schema there if the database was down at start)
        self._prepare = prepare
        self._builder = builder
        self._store = store
        self.flush_frames = settings.flush_items
        self.flush_bytes = settings.flush_bytes
        self.flush_seconds = settings.flush_seconds
        self.flush_idle = settings.flush_idle
        self._pending: list[tuple[Item, PreparedRecord]] = []
        self._pending_bytes = 0
        self._oldest: float | None = None
        self._connection: Any = None
        self._known_buckets: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._where = redact_url(settings.db_url)

    # ------------------------------------------------------------------ ContainerSink
    def append(self, item: Item) -> Settled:
        record = self._builder.build(item.source, item.payload, item.metadata, item.received)
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append((item, record))
        self._pending_bytes += item.nbytes
        return Settled()

    def commit(self) -> Settled:
        if not self._pending:
            return Settled()
        batch = self._pending
        self._pending, self._pending_bytes, self._oldest = [], 0, None
        if len(batch) > 1 and any(item.attempts > 1 for item, _ in batch):
            return self._commit_one_by_one(batch)  # a retry: one record that fails must not hold back the others
        records = [record for _, record in batch]
        try:
            self.write(records)
        except ArchiverError as exc:
            if exc.permanent and len(batch) > 1:  # refused for what one of them holds, most likely: which one?
                return self._commit_one_by_one(batch)
            return Settled(failed=[CommitFailure(self._where, [item for item, _ in batch], exc)])
        return Settled(archived=[item for item, _ in batch])

    def expire(self, now: float) -> Settled:
        return Settled()

    def close(self) -> Settled:
        settled = self.commit()
        if not self._pending:
            self._disconnect()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
        return settled

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def oldest_pending(self) -> float | None:
        return self._oldest

    # ------------------------------------------------------------------ the transaction
    def write(self, records: list[PreparedRecord]) -> None:
        """Upload the artifacts of ``records`` and commit them in one transaction (StorageError: may pass;
        RecordRefusedError: the database refused the data)."""
        psycopg = load_psycopg()
        artifacts = [artifact for record in records for artifact in record.artifacts]
        try:
            if self._prepare is not None:
                self._prepare()
            connection = self._connect()
            self._record_buckets(connection, {artifact.bucket for artifact in artifacts})
            with connection.transaction(), connection.cursor() as cursor:
                if artifacts:
                    cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ARTIFACT_LOCK,))
                    try:
                        upload_all(self._store, artifacts, self._upload_pool())
                    except StorageError as exc:
                        if exc.permanent:
                            raise
                        raise StoreUnavailableError(f"uploading the arrays of {len(records)} record(s): {exc}") from exc
                    cursor.execute(
                        _INSERT_ARTIFACTS,
                        (
                            [a.bucket for a in artifacts],
                            [a.artifact_id for a in artifacts],
                            [r.identifier for r in records for _ in r.artifacts],
                            [a.size_bytes for a in artifacts],
                        ),
                    )
                merged = merge_documents(records)
                cursor.execute(_UPSERT_RECORDS, (list(merged), [encode_document(doc) for doc in merged.values()]))
        except psycopg.Error as exc:
            self._disconnect()
            raise database_error(f"committing {len(records)} record(s) to {self._where}", exc) from exc

    def _commit_one_by_one(self, batch: list[tuple[Item, PreparedRecord]]) -> Settled:
        """Each record on its own, so that only those that fail fail. Once the database is found unreachable the
        rest fail with that at once, and once the store is, the rest that have arrays: trying each would wait out
        a timeout per record (records without arrays are still committed while the store is down)."""
        settled = Settled()
        store_down: StoreUnavailableError | None = None
        for index, (item, record) in enumerate(batch):
            if store_down is not None and record.artifacts:
                settled.failed.append(CommitFailure(self._where, [item], store_down))
                continue
            try:
                self.write([record])
            except DatabaseUnavailableError as exc:
                settled.failed.append(CommitFailure(self._where, [entry for entry, _ in batch[index:]], exc))
                break
            except StoreUnavailableError as exc:
                store_down = exc
                settled.failed.append(CommitFailure(self._where, [item], exc))
            except ArchiverError as exc:
                settled.failed.append(CommitFailure(self._where, [item], exc))
            else:
                settled.archived.append(item)
        return settled

    def _record_buckets(self, connection: Any, buckets: set[str]) -> None:
        new = sorted(buckets - self._known_buckets)
        if not new:
            return
        connection.execute(
            "INSERT INTO heros_archiver_buckets (bucket) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (new,)
        )
        self._known_buckets.update(new)

    def _connect(self) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = connect(self._settings.db_url, "writer")
        return self._connection

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception as exc:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
                log.debug("closing the connection to %s: %s", self._where, exc)

    def _upload_pool(self) -> ThreadPoolExecutor | None:
        if self._store.max_workers < 2:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._store.max_workers, thread_name_prefix="heros-archiver-upload")
        return self._pool


def merge_documents(records: list[PreparedRecord]) -> dict[str, dict[str, Any]]:
    """The documents of ``records`` merged per identifier in order (later keys win), as ``||`` would."""
    merged: dict[str, dict[str, Any]] = {}
    for record in records:
        before = merged.get(record.identifier)
        merged[record.identifier] = record.document if before is None else {**before, **record.document}
    return merged
