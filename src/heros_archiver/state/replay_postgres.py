"""Replaying the dead letters of a ``PostgresArchiver`` with ``heros-archiver replay``: each item stored again as
its record, its arrays uploaded first, as the archiver would.

The archiver records its settings with every dead letter (``PostgresWriterSettings``, ``kind: "postgres"``), and
never its secrets: the database URL without its password (libpq then takes it from ``PGPASSWORD`` or
``~/.pgpass``), the store without its keys (taken from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or the
AWS profile, as for any S3 root). ``root`` is the directory whose ``.heros-archiver/dead-letter`` the entries are
in, which ``replay`` checks as for every kind. The record is the same as the archiver's (the artifact ids come from
the content, the daily bucket from the item's receipt), so a replay run twice merges the same values again and
uploads nothing twice. The archiver's own ``replay_dead_letters()`` does the same with its own settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ReplayError
from .deadletter import DeadLetter
from .records import NONE, SettingsRecord
from .replay_catalog import Placed

__all__ = ["POSTGRES_KIND", "PostgresReplay", "PostgresWriterSettings"]

#: The ``kind`` a PostgresArchiver's writer settings carry.
POSTGRES_KIND = "postgres"


@dataclass
class PostgresWriterSettings(SettingsRecord):
    """What decides where and how a PostgresArchiver stores a record (recorded in its dead-letter entries)."""

    KIND: ClassVar[str] = POSTGRES_KIND
    LABEL: ClassVar[str] = "postgres writer settings"
    FIELD_TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "kind": (str,), "root": (str,), "db_url": (str,), "identifier_key": (str,), "array_key_template": (str,),
        "use_single_bucket": (bool,), "endpoint_url": (str, NONE), "bucket": (str, NONE), "region": (str,),
        "allow_http": (bool,), "create_buckets": (bool,),
    }  # fmt: skip

    kind: str
    root: str
    db_url: str
    identifier_key: str
    array_key_template: str
    use_single_bucket: bool
    #: the S3 store's endpoint (None: AWS's) and default bucket (None: the archiver kept its arrays in memory)
    endpoint_url: str | None
    bucket: str | None
    region: str
    allow_http: bool
    create_buckets: bool


class PostgresReplay:
    """Stores dead-lettered records through one sink per kind of settings; ``close`` at the end."""

    def __init__(self) -> None:
        self._writers: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def plan(self, item: DeadLetter, settings: PostgresWriterSettings) -> list[Path | str]:
        """The record the item would be merged into (built, so a bad item fails here too); nothing written."""
        builder, _ = self._writer(settings, connect=False)
        record = builder.build(item.source, item.payload, item.metadata, item.received or item.time)
        return [Path("records") / record.identifier]

    def write(self, item: DeadLetter, settings: PostgresWriterSettings) -> Placed:
        """Upload the item's arrays and commit its record; the record it went to."""
        builder, sink = self._writer(settings, connect=True)
        record = builder.build(item.source, item.payload, item.metadata, item.received or item.time)
        sink.write([record])
        return Placed([Path("records") / record.identifier])

    def close(self) -> None:
        for _, sink in self._writers.values():
            if sink is not None:
                sink.close()
        self._writers.clear()

    def _writer(self, settings: PostgresWriterSettings, connect: bool) -> tuple[Any, Any]:
        from ..naming.templates import PathTemplate
        from ..sinks.artifact_store import S3ArtifactStore
        from ..sinks.postgres import PostgresSink, PostgresSinkSettings
        from ..sinks.postgres_db import connect as connect_to
        from ..sinks.postgres_records import RecordBuilder
        from ..sinks.postgres_schema import ensure_schema

        if settings.bucket is None:
            raise ReplayError(
                f"{settings.LABEL}: the archiver kept its arrays in memory (artifact_storage_kwargs=None): expected "
                "an S3 store to upload them to; replay these entries with an archiver that has one"
            )
        key = tuple(settings.to_dict().values())
        builder, sink = self._writers.get(key, (None, None))
        if builder is None:
            template = PathTemplate(settings.array_key_template, "/")
            builder = RecordBuilder(settings.identifier_key, template, settings.bucket, settings.use_single_bucket)
        if connect and sink is None:
            store = S3ArtifactStore(
                settings.endpoint_url, settings.bucket, region=settings.region, allow_http=settings.allow_http,
                create_buckets=settings.create_buckets,
            )  # fmt: skip
            connection = connect_to(settings.db_url, "replay")
            try:
                ensure_schema(connection)
            finally:
                connection.close()
            sink = PostgresSink(PostgresSinkSettings(settings.db_url, 1, 1, 0.0, None), builder, store)
        self._writers[key] = (builder, sink)
        return builder, sink
