"""The PostgresArchiver's schema, created and migrated by the archiver itself (the reference ships none).

The tables the reference reads and writes keep its names and columns (``records``: one JSONB document per
identifier, ``identifier_groups``: the tags of ``tag_ids``), so that the reference's readers work on a
database of ours and ours adopts a database of the reference's (every step is ``IF NOT EXISTS``). Ours adds:
``heros_archiver_artifacts`` (every object uploaded for a record, by bucket and id: what ``purge`` removes and
what tells an orphan from a referenced object), ``heros_archiver_buckets`` (every bucket written to, recorded
before its first upload: where ``cleanup`` looks for orphans) and the triggers that ``NOTIFY record_changed``
with the identifier of every record or tag changed, by anyone.

``ensure_schema`` applies the migrations newer than the version ``heros_archiver_schema`` records, in one
transaction under a transaction-level advisory lock: archivers that start together wait for one another,
and the second finds the work done. A migration is never edited once released; a change is a new one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ARTIFACT_LOCK", "MIGRATIONS", "SCHEMA_LOCK", "SCHEMA_VERSION", "ensure_schema"]

#: Advisory lock keys (64-bit): the schema's migration, and stores (shared) against orphan removal (exclusive).
SCHEMA_LOCK = 0x68657A6F73_0001
ARTIFACT_LOCK = 0x68657A6F73_0002

_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION heros_archiver_record_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('record_changed', OLD.identifier);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('record_changed', NEW.identifier);
    RETURN NEW;
END
$$
"""

#: (version, description, statements), applied in order, each version once.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "records, tags, artifacts, buckets, record_changed notifications",
        (
            """CREATE TABLE IF NOT EXISTS records (
                identifier text PRIMARY KEY,
                data_json jsonb NOT NULL DEFAULT '{}'::jsonb,
                updated_at timestamptz NOT NULL DEFAULT now()
            )""",
            "ALTER TABLE records ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now()",
            "CREATE INDEX IF NOT EXISTS records_updated_at_idx ON records (updated_at)",
            """CREATE TABLE IF NOT EXISTS identifier_groups (
                identifier text NOT NULL REFERENCES records (identifier) ON DELETE CASCADE,
                tag_key text NOT NULL,
                tag_value text NOT NULL,
                PRIMARY KEY (identifier, tag_key)
            )""",
            "CREATE INDEX IF NOT EXISTS identifier_groups_tag_idx ON identifier_groups (tag_key, tag_value)",
            """CREATE TABLE IF NOT EXISTS heros_archiver_buckets (
                bucket text PRIMARY KEY,
                created_at timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE IF NOT EXISTS heros_archiver_artifacts (
                bucket text NOT NULL,
                artifact_id text NOT NULL,
                identifier text NOT NULL,
                size_bytes bigint NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (bucket, artifact_id)
            )""",
            """CREATE INDEX IF NOT EXISTS heros_archiver_artifacts_identifier_idx
                ON heros_archiver_artifacts (identifier)""",
            _TRIGGER_FUNCTION,
            "DROP TRIGGER IF EXISTS heros_archiver_records_changed ON records",
            """CREATE TRIGGER heros_archiver_records_changed AFTER INSERT OR UPDATE OR DELETE ON records
                FOR EACH ROW EXECUTE FUNCTION heros_archiver_record_changed()""",
            "DROP TRIGGER IF EXISTS heros_archiver_tags_changed ON identifier_groups",
            """CREATE TRIGGER heros_archiver_tags_changed AFTER INSERT OR UPDATE OR DELETE ON identifier_groups
                FOR EACH ROW EXECUTE FUNCTION heros_archiver_record_changed()""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def ensure_schema(connection: Any) -> list[int]:
    """Bring the database of ``connection`` (psycopg, autocommit) to ``SCHEMA_VERSION``; the versions applied
    now ([] when another archiver, or an earlier start, did it). A database newer than this release is left
    alone: its migrations only add."""
    with connection.transaction(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        cursor.execute(
            """CREATE TABLE IF NOT EXISTS heros_archiver_schema (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )"""
        )
        cursor.execute("SELECT coalesce(max(version), 0) FROM heros_archiver_schema")
        row = cursor.fetchone()
        current = int(row[0]) if row else 0
        applied = []
        for version, description, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                cursor.execute(statement)
            cursor.execute(
                "INSERT INTO heros_archiver_schema (version, description) VALUES (%s, %s)", (version, description)
            )
            applied.append(version)
    return applied
