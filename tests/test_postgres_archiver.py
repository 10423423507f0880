"""PostgresArchiver, the reference's drop-in (decision 0036), against a real PostgreSQL, a real SeaweedFS S3 store
and real Zenoh: a config written for the reference runs with only its classname changed, records are merged per
identifier, arrays become objects in daily buckets and come back from ``get``; ``get_ids``, ``tag_ids``, ``purge``
and ``cleanup`` behave as the reference's; ``record_changed`` reaches a remote subscriber; with the database down
items are retried and dead-lettered, never dropped, and a replay stores them; two archivers starting together
create the schema once."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

import procs
from helpers import DEAD_LETTER_DIR, RawCamera, remote_hero, wait_until
from heros_archiver import ConfigurationError, PayloadError, PostgresArchiver
from heros_archiver.cli.config import load_config, resolve_class
from heros_archiver.naming.templates import PathTemplate
from heros_archiver.sinks.artifact_store import S3ArtifactStore
from heros_archiver.sinks.postgres_queries import RecordQueries
from heros_archiver.sinks.postgres_records import RecordBuilder
from heros_archiver.sinks.postgres_schema import SCHEMA_VERSION
from heros_archiver.state.replay import replay
from heros_archiver.testing import free_port, session_manager, unique_realm, wait_for_subscriber
from heros_archiver.testing.servers import PostgresServer, S3Server
from heros_archiver.transport import heros_compat
from heros_archiver.transport.hero_builder import hero_class

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresServer, S3Server]]:
    """One PostgreSQL and one S3 server for the module (a fresh database and bucket per test)."""
    directory = tmp_path_factory.mktemp("servers")
    with PostgresServer(directory / "pg") as postgres, S3Server(directory / "s3") as s3:
        yield postgres, s3


@pytest.fixture
def db_url(servers: tuple[PostgresServer, S3Server]) -> str:
    return servers[0].create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def storage(servers: tuple[PostgresServer, S3Server]) -> dict[str, Any]:
    """The reference's ``artifact_storage_kwargs`` for the test's S3 server, with a bucket of the test's own."""
    s3 = servers[1]
    return {
        "endpoint_url": s3.endpoint,
        "bucket": f"art{uuid.uuid4().hex[:10]}",
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
    }


def today_bucket(storage: dict[str, Any]) -> str:
    return f"{storage['bucket']}-{dt.datetime.now(dt.UTC):%Y-%m-%d}"


def objects(s3: S3Server, bucket: str) -> set[str]:
    client = s3.boto3_client()
    try:
        return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    except client.exceptions.NoSuchBucket:
        return set()


@contextlib.contextmanager
def rig(**arguments: Any) -> Iterator[tuple[Any, RawCamera, str]]:
    """A camera that publishes any payload, and a PostgresArchiver HERO named ``records`` observing it."""
    port, realm = free_port(), unique_realm()
    camera = RawCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    archiver = None
    try:
        archiver = hero_class(PostgresArchiver)(
            "records",
            realm=realm,
            session_manager=session_manager(connect_port=port),
            **{"object_selector": "cam", "event_name": "acquisition_data", **arguments},
        )
        wait_for_subscriber(camera)
        yield archiver, camera, realm
    finally:
        if archiver is not None:
            archiver.close()
        camera._destroy_hero()


def settled(archiver: Any, count: int) -> dict[str, Any]:
    wait_until(
        lambda: archiver.stats()["total"]["archived"] + archiver.stats()["total"]["dead_lettered"] >= count,
        what=f"{count} items archived or dead-lettered",
    )
    return dict(archiver.stats()["total"])


def test_the_references_config_with_its_classname_changed_stores_records_that_get_returns_resolved(
    tmp_path: Path, servers: tuple[PostgresServer, S3Server], db_url: str, storage: dict[str, Any]
) -> None:
    """A BOSS config as the reference documents its PostgresArchiver (db_url, identifier_key, the S3 store's
    kwargs), classname changed: the events of one identifier are merged into one record, a bare array lands under
    ``array_key_template``, arrays (also nested and in lists) are objects of today's bucket, ``get`` gives them
    back equal, and a remote subscriber hears ``record_changed``."""
    config = {
        "_id": "records",
        "classname": "heros_archiver.PostgresArchiver",
        "arguments": {
            "db_url": db_url,
            "identifier_key": "sample",
            "allow_purge": True,
            "artifact_storage_kwargs": storage,
            "array_key_template": "{{ source_name }}_{{ channel }}",
            "object_selector": "cam",
            "event_name": "acquisition_data",
            "default_metadata": {"beamline": "b1"},
        },
    }
    path = tmp_path / "boss.json"
    path.write_text(json.dumps(config))
    (entry,) = load_config(path)
    assert resolve_class(entry["classname"]) is PostgresArchiver
    assert resolve_class("herostools.actor.PostgresArchiver") is PostgresArchiver

    image = np.arange(64, dtype=">u2").reshape(8, 8)
    spectrum = np.linspace(0, 1, 33)
    mask = np.eye(3, dtype=bool)
    with rig(**entry["arguments"]) as (archiver, camera, realm):
        changed: list[list[str]] = []
        subscriber = remote_hero("records", realm, heros_compat.session_manager(camera))
        try:
            subscriber.record_changed.connect(changed.append)
            wait_until(lambda: archiver.record_changed.publisher.matching_status.matching, what="a record_changed sub")
            camera.acquisition_data((image, {"sample": "s1", "channel": "a", "step": 1, "gain": 2.5}))
            reading = {"spectrum": spectrum, "nested": {"mask": [mask, 7]}, "step": 2}
            camera.acquisition_data((reading, {"sample": "s1"}))
            camera.acquisition_data({"sample": 42, "temperature": 21.5})
            # fed in-process (the path a decoded event takes): values CBOR may not carry, stored as JSON
            archiver.feed("cam", {"sample": 42, "gain": np.float32(0.5), "when": dt.datetime(2026, 1, 2, 3, 4, 5)})
            total = settled(archiver, 4)
            wait_until(lambda: {"s1", "42"} <= {i for batch in changed for i in batch}, what="record_changed of both")
            records = subscriber.get(["s1", "42", "absent"])  # a remote call, as another process would make it
        finally:
            subscriber._destroy_hero()
        local = archiver.get(["s1"], resolve_artifacts=False)
        shown = archiver.config()["sink_options"]
        small = archiver.get(["s1"], size_limit_bytes=100)
    assert total["archived"] == 4 and total["dead_lettered"] == 0 and total["dropped"] == 0, total

    assert set(records) == {"s1", "42"}
    s1 = records["s1"]
    np.testing.assert_array_equal(s1["cam_a"], image)
    assert s1["cam_a"].dtype == image.dtype
    np.testing.assert_array_equal(s1["spectrum"], spectrum)
    np.testing.assert_array_equal(s1["nested"]["mask"][0], mask)
    assert s1["nested"]["mask"][1] == 7 and s1["step"] == 2 and s1["channel"] == "a" and s1["gain"] == 2.5
    assert s1["beamline"] == "b1" and s1["sample"] == "s1"
    assert records["42"]["temperature"] == 21.5 and records["42"]["when"] == "2026-01-02T03:04:05"
    assert records["42"]["gain"] == 0.5

    refs = local["s1"]
    bucket = today_bucket(storage)
    assert refs["cam_a"]["__type__"] == "artifact_ref" and refs["cam_a"]["bucket"] == bucket
    assert refs["cam_a"]["shape"] == [8, 8] and refs["cam_a"]["dtype"] == ">u2" and refs["cam_a"]["size_bytes"] == 128
    stored = objects(servers[1], bucket)
    assert {refs["cam_a"]["artifact_id"], refs["spectrum"]["artifact_id"]} <= stored and len(stored) == 3
    assert isinstance(small["s1"]["nested"]["mask"][0], np.ndarray)  # 9 bytes: resolved
    assert small["s1"]["spectrum"]["__type__"] == "artifact_ref"  # 264 bytes: left as a reference
    assert shown["artifact_storage_kwargs"]["secret_key"] == "<not shown>", shown  # config() is a remote capability


def test_get_ids_tag_ids_purge_and_cleanup_behave_as_the_references(
    servers: tuple[PostgresServer, S3Server], db_url: str, storage: dict[str, Any]
) -> None:
    s3 = servers[1]
    with rig(db_url=db_url, artifact_storage_kwargs=storage, use_single_bucket=True) as (archiver, camera, _):
        for index in range(4):
            camera.acquisition_data(({"frame": np.full(4, index)}, {"identifier": f"r{index}", "run": index % 2}))
        settled(archiver, 4)
        assert archiver.get_ids("run", [1]) == ["r1", "r3"]
        archiver.tag_ids(["r0", "r1"], "quality", "good")
        assert archiver.get_ids("quality", ["good", "bad"]) == ["r0", "r1"]
        assert archiver.get(["r0"], resolve_artifacts=False)["r0"]["quality"] == "good"
        with pytest.raises(KeyError, match="nope"):
            archiver.tag_ids(["r0", "nope"], "quality", "bad")
        assert archiver.get(["r0"], resolve_artifacts=False)["r0"]["quality"] == "good"  # nothing tagged then
        with pytest.raises(PermissionError, match="allow_purge"):
            archiver.purge(["r0"])
        with pytest.raises(PermissionError, match="allow_purge"):
            archiver.cleanup(1)
        assert len(objects(s3, storage["bucket"])) == 4
        status = archiver.status()  # what `heros-archiver status` shows of it
        assert status["archiver"]["class"] == "heros_archiver.archivers.postgres.PostgresArchiver", status
        assert status["sources"]["cam"]["archived"] == 4 and status["archiver"]["root"] is None, status

    with rig(db_url=db_url, artifact_storage_kwargs=storage, use_single_bucket=True, allow_purge=True) as (
        archiver,
        _camera,
        _,
    ):
        ids = {r: archiver.get([r], resolve_artifacts=False)[r]["frame"]["artifact_id"] for r in ("r0", "r1", "r2")}
        archiver.purge(["r0"])
        assert archiver.get(["r0"]) == {} and ids["r0"] not in objects(s3, storage["bucket"])
        with psycopg.connect(db_url, autocommit=True) as connection:
            connection.execute("UPDATE records SET updated_at = now() - interval '10 days' WHERE identifier <> 'r3'")
        archiver.tag_ids(["r1"], "_save", "true")
        orphan = f"{uuid.uuid4()}"
        s3.boto3_client().put_object(Bucket=storage["bucket"], Key=orphan, Body=b"left by a failed commit")
        s3.boto3_client().put_object(Bucket=storage["bucket"], Key="notes.txt", Body=b"another application's")
        assert archiver.orphans() == [[storage["bucket"], orphan]]
        assert archiver.cleanup(0, dry_run=False) == []  # 0: keep forever
        assert archiver.cleanup(5) == ["r2"]  # a dry run: nothing deleted
        assert set(archiver.get(["r1", "r2", "r3"])) == {"r1", "r2", "r3"}
        assert archiver.cleanup(5, dry_run=False) == ["r2"]
        assert set(archiver.get(["r1", "r2", "r3"])) == {"r1", "r3"}
        left = objects(s3, storage["bucket"])
        assert ids["r2"] not in left and orphan not in left and ids["r1"] in left and "notes.txt" in left
        assert len(left) == 3
        assert archiver.orphans() == []


def test_the_database_down_mid_run_retries_and_dead_letters_every_item_then_replay_stores_them(
    servers: tuple[PostgresServer, S3Server], db_url: str, storage: dict[str, Any]
) -> None:
    """The database stopped while events arrive: each item is retried, then dead-lettered with its error (none
    dropped, none archived half: no record without its objects); a value JSONB cannot hold is dead-lettered at
    once; after the restart the archiver's replay stores every entry, merged as if nothing happened."""
    postgres = servers[0]  # the module's server, stopped and started again (the same port, the same data)
    with rig(db_url=db_url, artifact_storage_kwargs=storage, max_retries=2, retry_delay=0.05) as (archiver, cam, _):
        cam.acquisition_data(({"a": np.arange(3)}, {"identifier": "x", "part": 0}))
        settled(archiver, 1)
        postgres.stop()
        try:
            for part in range(1, 6):
                cam.acquisition_data(({"b": np.arange(part)}, {"identifier": "x", f"p{part}": part}))
            cam.acquisition_data(({"value": math.nan}, {"identifier": "bad"}))
            total = settled(archiver, 7)
        finally:
            postgres.start()
        assert total["archived"] == 1 and total["dead_lettered"] == 6 and total["dropped"] == 0, total
        assert total["retried"] >= 5, total
        outcomes = archiver.replay_dead_letters()
        record = archiver.get(["x"])["x"]
    errors = {o["error"] for o in outcomes if not o["ok"]}
    assert sum(o["ok"] for o in outcomes) == 5 and len(errors) == 1 and "finite" in errors.pop(), outcomes
    assert [record[f"p{part}"] for part in range(1, 6)] == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(record["a"], np.arange(3))
    np.testing.assert_array_equal(record["b"], np.arange(5))  # the last event's array wins, as merged in order


def all_references_resolve(archiver: Any, ids: list[str]) -> bool:
    """No record names an object that is not there: every reference resolves."""
    for record in archiver.get(ids).values():
        assert "artifact_ref" not in json.dumps(record, default=lambda value: "array"), record
    return True


def test_a_record_the_database_refuses_leaves_its_batch_committed_and_only_an_orphan_cleanup_finds(
    servers: tuple[PostgresServer, S3Server], db_url: str, storage: dict[str, Any]
) -> None:
    """A trigger of the test's database fails the commit of one record, after its array was uploaded: the other
    records of its batch are committed on the retry, the refused one is dead-lettered, no record names a missing
    object, and its object is an orphan that ``orphans()`` lists and ``cleanup`` removes."""
    arguments = {"db_url": db_url, "artifact_storage_kwargs": storage, "allow_purge": True, "use_single_bucket": True}
    with rig(**arguments, max_retries=1, retry_delay=0.05) as (archiver, camera, _):
        with psycopg.connect(db_url, autocommit=True) as connection:
            connection.execute(
                """CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                   IF NEW.identifier = 'poison' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$;
                   CREATE TRIGGER refuse_poison BEFORE INSERT ON records
                   FOR EACH ROW EXECUTE FUNCTION refuse_poison()"""
            )
        names = ["a", "b", "poison", "c", "d"]
        for index, name in enumerate(names):
            camera.acquisition_data(({"image": np.full((4, 4), index)}, {"identifier": name}))
        total = settled(archiver, len(names))
        assert total["archived"] == 4 and total["dead_lettered"] == 1, total
        assert set(archiver.get(names)) == {"a", "b", "c", "d"} and all_references_resolve(archiver, names)
        (orphan,) = archiver.orphans()
        assert orphan[0] == storage["bucket"]
        assert archiver.cleanup(dry_run=False) == [] and archiver.orphans() == []
        assert len(objects(servers[1], storage["bucket"])) == 4 and all_references_resolve(archiver, names)


def test_orphan_sweeps_while_records_are_committed_never_remove_an_object_a_record_names(
    db_url: str, storage: dict[str, Any]
) -> None:
    """``cleanup(dry_run=False)`` over and over while commits of records with arrays go on: the sweep and the
    commits exclude each other (the advisory lock), so every record's arrays are there at the end."""
    arguments = {"db_url": db_url, "artifact_storage_kwargs": storage, "allow_purge": True, "flush_items": 4}
    with rig(**arguments) as (archiver, _camera, _):
        stop = threading.Event()
        sweeps = []

        def sweep() -> None:
            while not stop.is_set():
                sweeps.append(archiver.cleanup(dry_run=False))

        sweeper = threading.Thread(target=sweep)
        sweeper.start()
        try:
            names = [f"r{index}" for index in range(120)]
            for index, name in enumerate(names):
                reading = {"image": np.full((8, 8), index), "trace": np.arange(index)}
                archiver.feed("cam", (reading, {"identifier": name}))
            total = settled(archiver, len(names))
        finally:
            stop.set()
            sweeper.join()
        assert total["archived"] == len(names) and len(sweeps) > 1, (total, len(sweeps))
        records = archiver.get(names)
        assert set(records) == set(names) and all_references_resolve(archiver, names)
        np.testing.assert_array_equal(records["r7"]["trace"], np.arange(7))
        assert archiver.orphans() == []


def test_the_store_down_dead_letters_records_with_arrays_and_writes_none_that_would_name_a_missing_object(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 store stopped: a record with an array is dead-lettered (its record never written without its
    object), one without arrays is archived; ``heros-archiver replay`` (its function), with the store's keys
    from the environment as an operator would give them (entries hold no secrets), stores it after the restart."""
    with S3Server(tmp_path / "s3") as s3:
        storage = {"endpoint_url": s3.endpoint, "bucket": "down"}
        storage |= {"access_key": s3.access_key, "secret_key": s3.secret_key}
        with rig(db_url=db_url, artifact_storage_kwargs=storage, max_retries=1, retry_delay=0.05) as (archiver, cam, _):
            cam.acquisition_data(({"image": np.arange(4)}, {"identifier": "before"}))
            settled(archiver, 1)
            s3.stop()
            cam.acquisition_data(({"image": np.arange(5)}, {"identifier": "during"}))
            cam.acquisition_data(({"temperature": 3.0}, {"identifier": "plain"}))  # no array: the store is not needed
            total = settled(archiver, 3)
            assert total["archived"] == 2 and total["dead_lettered"] == 1, total
            assert set(archiver.get(["before", "during", "plain"], resolve_artifacts=False)) == {"before", "plain"}
            s3.start()
            entry = json.loads(next((tmp_path / DEAD_LETTER_DIR).glob("*/entry.json")).read_text())
            assert "secret" not in json.dumps(entry) and entry["writer"]["kind"] == "postgres", entry
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
            outcomes = replay(tmp_path / DEAD_LETTER_DIR)
            assert [(o.ok, o.paths) for o in outcomes] == [(True, [Path("records/during")])], outcomes
            assert not list((tmp_path / DEAD_LETTER_DIR).iterdir())
            np.testing.assert_array_equal(archiver.get(["during"])["during"]["image"], np.arange(5))


def test_two_archivers_starting_together_create_the_schema_once(db_url: str) -> None:
    barrier = threading.Barrier(2)
    made: list[Any] = []
    failures: list[BaseException] = []
    manager = session_manager(connect_port=free_port())

    def start() -> None:
        barrier.wait()
        try:
            archiver = PostgresArchiver(
                db_url, artifact_storage_kwargs=None, object_selector="cam", event_name="e",
                realm=unique_realm(), session_manager=manager,
            )  # fmt: skip
            made.append(archiver)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for archiver in made:
        archiver.close()
    assert not failures and len(made) == 2
    with psycopg.connect(db_url) as connection:
        versions = [row[0] for row in connection.execute("SELECT version FROM heros_archiver_schema ORDER BY 1")]
        triggers = connection.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'heros_archiver_%'").fetchone()
    assert versions == list(range(1, SCHEMA_VERSION + 1)) and triggers == (2,)


def test_bad_arguments_are_refused_before_zenoh(db_url: str) -> None:
    for arguments, match in (
        ({"db_url": ""}, "db_url"),
        ({"db_url": db_url, "artifact_storage_kwargs": {"endpoint": "x"}}, "artifact_storage_kwargs"),
        ({"db_url": db_url, "retention_days": -1}, "retention_days"),
        ({"db_url": db_url, "artifact_storage_kwargs": {"bucket": "Upper_Case"}}, "bucket name"),
        ({"db_url": db_url, "artifact_storage_kwargs": {"bucket": "b" * 53}}, "at most 52"),
        ({"db_url": db_url, "artifact_storage_kwargs": None, "artifact_storage": object()}, "one of them"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            PostgresArchiver(**arguments, object_selector="cam", event_name="e", realm=unique_realm())


def test_a_record_keeps_what_the_reference_drops_and_refuses_what_jsonb_cannot_hold() -> None:
    """Numpy scalars, tuples, datetimes and integer keys are stored as JSON; what PostgreSQL cannot hold, or what
    names no record, is a PayloadError saying where (the item is dead-lettered whole, as it arrived)."""
    builder = RecordBuilder("id", PathTemplate("{{ source_name }}", "/"), "art", single_bucket=False)
    when = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC).timestamp()
    record = builder.build(
        "cam", np.zeros(2, np.int8), {"id": 7, "n": np.int64(3), "pair": (1, np.bool_(True)), 5: "five"}, when
    )
    assert record.identifier == "7" and [a.bucket for a in record.artifacts] == ["art-2026-05-01"]
    assert record.document["n"] == 3 and record.document["pair"] == [1, True] and record.document["5"] == "five"
    assert record.document["cam"]["__type__"] == "artifact_ref"
    again = builder.build("cam", np.zeros(2, np.int8), {"id": 7}, when + 60)
    assert again.artifacts[0].artifact_id == record.artifacts[0].artifact_id  # a retry uploads to the same key
    for payload, metadata, match in (
        ({"x": 1}, {}, "identifier key 'id'"),
        ({"x": math.inf}, {"id": 1}, "at 'x': expected a finite number"),
        ({"x": {"y": "a\0b"}}, {"id": 1}, "value at 'x.y': expected text without U"),
        ({"x": "\ud800"}, {"id": 1}, "expected valid Unicode"),
        ({"x": b"raw"}, {"id": 1}, "at 'x': expected JSON values or numpy arrays, got bytes"),
        ({"x": np.array([object()])}, {"id": 1}, "at 'x'"),
        ({(1, 2): 1}, {"id": 1}, "expected text keys"),
        ({1: "a", "1": "b"}, {"id": 1}, "given twice"),
        ({}, {"id": "x" * 2049}, "at most 2048 bytes"),
        ("text", {"id": 1}, "expected a dict or a numpy array"),
    ):
        with pytest.raises(PayloadError, match=match):
            builder.build("cam", payload, metadata, when)


def test_heros_archiver_run_of_a_config_with_the_references_classname_archives_a_cameras_frames(
    tmp_path: Path, db_url: str, storage: dict[str, Any]
) -> None:
    """``heros-archiver run`` of a config naming ``herostools.actor.PostgresArchiver`` (unchanged) archives the
    frames a camera in another process sends: one record per frame, its array read back equal."""
    arguments = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "db_url": db_url,
        "identifier_key": "frame",
        "artifact_storage_kwargs": storage,
    }
    config = procs.write_config(tmp_path / "config.json", arguments, "herostools.actor.PostgresArchiver")
    port, realm = free_port(), unique_realm()
    sent = list(range(12))
    with procs.camera(port, realm) as cam, procs.run_archiver(config, realm, port, tmp_path / "run.log") as child:
        procs.wait_for_archiver(cam, child)
        procs.send_frames(cam, sent, (16, 16))

        def stored() -> int:
            with psycopg.connect(db_url) as connection:
                row = connection.execute("SELECT count(*) FROM records").fetchone()
            return int(row[0]) if row else 0

        procs.wait_until(lambda: stored() == len(sent), what="a record per frame")
        code, output = child.terminate()
    assert code == 0, output
    store = S3ArtifactStore(**storage)
    records = RecordQueries(db_url, store, allow_purge=False, retention_days=0).get([str(i) for i in sent])
    for index in sent:
        np.testing.assert_array_equal(records[str(index)]["cam"], procs.frame(index, (16, 16)))
