"""PostgresArchiver: the reference's record archiver as a drop-in, losing no record and no array.

Same constructor and methods as ``herostools.actor.PostgresArchiver``: one JSONB record per identifier, later
events merged in; arrays as ``.npy`` objects in an S3-compatible store (daily buckets, or one with
``use_single_bucket``), referenced from the record; ``get`` / ``get_ids`` / ``tag_ids`` / ``purge`` /
``cleanup`` and the ``record_changed`` event. A BOSS config written for the reference works after changing only
``classname``. What differs (decision 0036): the archiver creates and migrates its schema
(``sinks.postgres_schema``); it is an archiver like the others (the pipeline's queue, retries, spool,
dead-letter store, stats and events); an item it cannot store (the database or the store down past the
retries, a value JSONB cannot hold, no identifier) goes to the dead-letter store with its error where the
reference drops it; and a record is committed only after its arrays are in the store
(``sinks.postgres``), so no record names a missing object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from heros import event
from heros.event import reliable

from ..errors import ArchiverError, StorageError
from ..naming.templates import PathTemplate
from ..pipeline.queueing import Item
from ..sinks.artifact_store import ArtifactStore, open_artifact_store
from ..sinks.base import ContainerSink
from ..sinks.postgres_records import RecordBuilder
from ..state.deadletter import DeadLetterStore
from ..state.replay_postgres import POSTGRES_KIND, PostgresWriterSettings
from ..state.statedir import DEAD_LETTER_SUBDIR
from ..transport import heros_compat
from ..transport.hero_builder import is_hero
from .base import HERODataArchiver
from .options import DEFAULT_POSTGRES_FLUSH_ITEMS, DEFAULT_POSTGRES_FLUSH_SECONDS, DEFAULT_STORAGE, PostgresOptions

__all__ = ["PostgresArchiver"]

log = logging.getLogger("heros_archiver")


class PostgresArchiver(HERODataArchiver):
    """Keep one JSONB record per identifier in PostgreSQL, its arrays as objects in an S3-compatible store.

    Args:
        db_url: libpq connection string or URL of the database (``postgresql://user@host:5432/db``; a password
            may also come from ``PGPASSWORD`` or ``~/.pgpass``).
        identifier_key: the key (in the payload, else the metadata) whose value names the record.
        allow_purge: allow ``purge`` and ``cleanup`` (default False).
        artifact_storage_kwargs: the S3 store of the arrays, the reference's keys: ``endpoint_url`` (None: AWS),
            ``bucket`` (default ``artifacts``), ``access_key``, ``secret_key`` (default: ``AWS_ACCESS_KEY_ID`` /
            ``AWS_SECRET_ACCESS_KEY``, else ``heros``), ``max_workers``, ``max_artifacts_per_batch``,
            ``create_buckets``; and ours, ``region``, ``allow_http``. None: arrays in this process's memory
            only (the reference's in-memory store, for trials). Omitted: the reference's default,
            ``http://localhost:9000``.
        array_key_template: the key a bare array payload is stored under (Jinja2 over the metadata and
            ``source_name``; default ``{{ source_name }}``).
        use_single_bucket: put every array in ``bucket`` instead of ``<bucket>-YYYY-MM-DD`` (UTC day of receipt).
        retention_days: ``cleanup``'s default age in days (0: keep forever).
        artifact_storage: a store object instead of ``artifact_storage_kwargs``
            (``heros_archiver.sinks.artifact_store``; not for BOSS configs).
        flush_items: commit the records of this many items in one transaction at most (default 500) ...
        flush_seconds: ... or this many seconds after the oldest of them arrived (default 0.2).

    The arguments of ``HERODataArchiver`` (``object_selector``, ``event_name``, ``max_retries``, ...) follow.
    """

    def __init__(
        self,
        db_url: str,
        identifier_key: str = "identifier",
        allow_purge: bool = False,
        artifact_storage_kwargs: Mapping[str, Any] | None = DEFAULT_STORAGE,
        array_key_template: str = "{{ source_name }}",
        use_single_bucket: bool = False,
        retention_days: int = 0,
        artifact_storage: ArtifactStore | None = None,
        *args: Any,
        flush_items: int = DEFAULT_POSTGRES_FLUSH_ITEMS,
        flush_seconds: float = DEFAULT_POSTGRES_FLUSH_SECONDS,
        **kwargs: Any,
    ) -> None:
        self.sink_options = PostgresOptions(
            db_url, identifier_key, allow_purge, artifact_storage_kwargs, array_key_template, use_single_bucket,
            retention_days, artifact_storage, flush_items, flush_seconds,
        )  # fmt: skip
        self._changes: Any = None
        self._direct_lock = threading.Lock()
        self._direct: Any = None
        HERODataArchiver.__init__(self, *args, **kwargs)
        if self.options.events and is_hero(self):
            from ..sinks.postgres_changes import ChangeListener

            self._changes = ChangeListener(self.sink_options.db_url, self._send_changes)

    # ------------------------------------------------------------------ storage side
    def _setup_storage(self) -> None:
        """Import psycopg and obstore (a missing extra fails here), open the store, create or migrate the schema
        (a database down now is logged, and the schema made at the first commit)."""
        from ..sinks.postgres_db import connect, load_psycopg, redact_url
        from ..sinks.postgres_queries import RecordQueries
        from ..sinks.postgres_schema import ensure_schema

        load_psycopg()
        options = self.sink_options
        if options.artifact_storage is not None:
            store: ArtifactStore = options.artifact_storage
        else:
            kwargs = options.artifact_storage_kwargs
            store = open_artifact_store({} if kwargs is DEFAULT_STORAGE else kwargs)
        self._store_of_artifacts = store
        self._builder = RecordBuilder(
            options.identifier_key,
            PathTemplate(options.array_key_template, "/"),
            store.default_bucket,
            options.use_single_bucket,
        )
        self._queries = RecordQueries(options.db_url, store, options.allow_purge, options.retention_days)
        self._schema_ready = False
        self._where = redact_url(options.db_url)
        try:
            connection = connect(options.db_url, "schema")
            try:
                applied = ensure_schema(connection)
            finally:
                connection.close()
        except (StorageError, load_psycopg().Error) as exc:
            log.warning("PostgresArchiver: %s not reachable at start, the first commit retries: %s", self._where, exc)
            return
        self._schema_ready = True
        if applied:
            log.info("PostgresArchiver: schema of %s migrated to version %d", self._where, applied[-1])

    def _ensure_schema(self) -> None:
        """The schema, made before the first commit if the database was down at start."""
        if self._schema_ready:
            return
        from ..sinks.postgres_db import connect, database_error, load_psycopg
        from ..sinks.postgres_schema import ensure_schema

        connection = connect(self.sink_options.db_url, "schema")
        try:
            ensure_schema(connection)
        except load_psycopg().Error as exc:
            raise database_error(f"creating the schema at {self._where}", exc) from exc
        finally:
            connection.close()
        self._schema_ready = True

    def _new_sink(self) -> Any:
        from ..sinks.postgres import PostgresSink

        settings = self.sink_options.sink_settings()
        return PostgresSink(settings, self._builder, self._store_of_artifacts, self._ensure_schema)

    def _container_sink_factory(self) -> Callable[[], ContainerSink]:
        return self._new_sink

    def _item_router(self) -> Callable[[Item], None]:
        return self._route

    def _route(self, item: Item) -> None:
        """The record's identifier is the item's route: every event of one record is merged by one writer, in
        the order it arrived (an item without one is refused by the sink, with why)."""
        identifier = self._builder.identifier_of(item.payload, item.metadata)
        if identifier is not None:
            item.route = f"record:{identifier}"

    def _writer_settings(self) -> dict[str, Any] | None:
        """Recorded with each dead letter, without the password and the store's keys, for ``heros-archiver replay``
        (``state.replay_postgres``) and ``replay_dead_letters``."""
        options = self.sink_options
        directory = Path(self.options.dead_letter_dir or self._default_dead_letter_dir()).absolute()
        root = directory.parents[1] if directory.parts[-2:] == DEAD_LETTER_SUBDIR.parts else directory
        describe = getattr(self._store_of_artifacts, "describe", None)
        storage = describe() if callable(describe) else {}
        return PostgresWriterSettings(
            kind=POSTGRES_KIND, root=str(root), db_url=self._where, identifier_key=options.identifier_key,
            array_key_template=options.array_key_template, use_single_bucket=options.use_single_bucket,
            endpoint_url=storage.get("endpoint_url"), bucket=storage.get("bucket"),
            region=storage.get("region", "us-east-1"), allow_http=bool(storage.get("allow_http", False)),
            create_buckets=bool(storage.get("create_buckets", True)),
        ).to_dict()  # fmt: skip

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """The reference API's hook: store one payload now (as ``store``); the pipeline uses the sink instead."""
        self.store(source_name, payload, metadata)

    def config(self) -> dict[str, Any]:
        """As every archiver's (a remote capability), without the database's password and the store's secret."""
        config = super().config()
        sink = config.get("sink_options")
        if isinstance(sink, dict):
            sink["db_url"] = self._where
            kwargs = sink.get("artifact_storage_kwargs")
            if isinstance(kwargs, dict) and "secret_key" in kwargs:
                kwargs["secret_key"] = "<not shown>"
        return config

    # ------------------------------------------------------------------ the reference's methods
    def store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Store one payload now, bypassing the queue (raises what prevents it; nothing is retried)."""
        record = self._builder.build(source_name, payload, {**self.metadata, **metadata}, time.time())
        with self._direct_lock:
            if self._direct is None:
                self._direct = self._new_sink()
            self._direct.write([record])

    def get(
        self, ids: list[str], resolve_artifacts: bool = True, size_limit_bytes: int | None = None
    ) -> dict[str, dict[str, Any]]:
        """The record of each identifier (absent ones left out), tags merged over it, every artifact reference
        within ``size_limit_bytes`` (None: all) replaced by its array unless ``resolve_artifacts`` is False."""
        return self._queries.get(ids, resolve_artifacts, size_limit_bytes)

    def get_ids(self, tag: str, values: list[Any]) -> list[str]:
        """Identifiers whose tag ``tag``, or whose record's top-level key ``tag``, has one of ``values`` (as
        text), sorted."""
        return self._queries.get_ids(tag, values)

    def tag_ids(self, ids: list[str], tag: str, value: str) -> None:
        """Set the tag ``tag`` to ``value`` on each record of ``ids`` (replacing its value); UnknownIdentifierError
        (a KeyError) when one has no record, and nothing is tagged then."""
        self._queries.tag_ids(ids, tag, value)

    def purge(self, ids: list[str], remove_artifacts: bool = True) -> None:
        """Delete these records, their tags and (``remove_artifacts``) every object uploaded for them; needs
        ``allow_purge`` (PurgeDisabledError, a PermissionError, otherwise)."""
        self._queries.purge(ids, remove_artifacts)

    def cleanup(
        self, retention_days: int | None = None, remove_artifacts: bool = True, dry_run: bool = True
    ) -> list[str]:
        """The identifiers of records not updated for ``retention_days`` (None: the archiver's; 0: none), except
        those tagged ``_save``; unless ``dry_run``, purged, and with ``remove_artifacts`` the orphan objects
        (uploaded by a commit that failed) removed too. Needs ``allow_purge``."""
        return self._queries.cleanup(retention_days, remove_artifacts, dry_run)

    def orphans(self) -> list[list[str]]:
        """``[bucket, key]`` of every object in the archiver's buckets that no record owns (``cleanup`` removes
        them)."""
        return [[bucket, key] for bucket, key in self._queries.orphans()]

    def get_artifact(self, artifact_id: str, bucket: str | None = None) -> np.ndarray:
        """One array by its id and bucket (None: the default bucket)."""
        return self._queries.fetch({(bucket, artifact_id)})[bucket, artifact_id]

    def get_artifacts(self, locations: Sequence[tuple[str, str | None]]) -> dict[str, np.ndarray]:
        """Arrays by ``(artifact_id, bucket)``, at most ``max_artifacts_per_batch`` of them, keyed by id."""
        return self._queries.get_artifacts([(str(aid), bucket) for aid, bucket in locations])

    @reliable
    @event
    def record_changed(self, identifiers: list[str]) -> list[str]:
        """Sent with the identifiers of records changed (written, merged, tagged, purged) by anyone, in batches."""
        return identifiers

    def _send_changes(self, identifiers: list[str]) -> None:
        if heros_compat.hero_ready(self):
            self.record_changed(identifiers)

    # ------------------------------------------------------------------ replay and shutdown
    def replay_dead_letters(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """Store this archiver's dead-lettered items again (after the database or the store came back); an entry
        leaves once its record is committed. One dict per entry: ``entry``, ``source``, ``ok``, ``error``."""
        store = DeadLetterStore(self._pipeline.dead_letters.directory)
        sink = None
        outcomes = []
        try:
            for entry in store.entries():
                outcome: dict[str, Any] = {"entry": str(entry), "source": None, "ok": False, "error": ""}
                try:
                    letter = store.load(entry)
                    outcome["source"] = letter.source
                    if not self._is_mine(letter.writer):
                        continue  # another archiver's, sharing the directory
                    if not isinstance(letter.metadata, dict):
                        raise ArchiverError(f"{entry}: expected metadata as a JSON object")
                    received = letter.received or letter.time
                    record = self._builder.build(letter.source, letter.payload, letter.metadata, received)
                    if not dry_run:
                        sink = sink or self._new_sink()
                        sink.write([record])
                        store.remove(entry)
                    outcome["ok"] = True
                except Exception as exc:  # noqa: BLE001 - one entry's failure never stops the others
                    outcome["error"] = f"{type(exc).__name__}: {exc}"
                outcomes.append(outcome)
        finally:
            if sink is not None:
                sink.close()
        return outcomes

    def _is_mine(self, writer: dict[str, Any] | None) -> bool:
        """Whether a dead letter's settings are this archiver's (same kind, database and identifier key)."""
        own = self._writer_settings() or {}
        return writer is not None and all(writer.get(key) == own[key] for key in ("kind", "db_url", "identifier_key"))

    def _stop(self, *_boss: Any) -> None:
        """Drain as every archiver does, then stop listening for changes and close the connections."""
        super()._stop(*_boss)
        if getattr(self, "_changes", None) is not None:
            self._changes.stop()
        with self._direct_lock:
            if self._direct is not None:
                self._direct.close()
                self._direct = None
        queries = getattr(self, "_queries", None)
        if queries is not None:
            queries.close()
