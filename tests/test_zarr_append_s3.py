"""The Zarr append container on an object store (a real SeaweedFS S3 server started here): the same commit
protocol as on disk, the store claimed by a conditional create, the writer's lock an object, and a store that
zarr-python reads straight from the bucket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import procs
from conftest import RigFactory
from helpers import DEADLINE, dead_letter_entries, read_entry, wait_for_items
from heros_archiver import ZarrAppendArchiver
from heros_archiver.errors import TargetExistsError
from heros_archiver.sinks.containers import ContainerBusyError, ItemKey
from heros_archiver.sinks.containers.zarr_append import ZarrAppendContainer, read_metadata
from heros_archiver.sinks.containers.zarr_places import ObjectPlace
from heros_archiver.state.replay import replay
from heros_archiver.storage.objectstore import ObjectStore, open_object_store
from heros_archiver.testing.servers import S3Server

ARRAY = "cam/data"
BUCKET = "zarr-append"
LOCKS = "runs/.heros-archiver/locks/"


@pytest.fixture
def store(s3: S3Server) -> ObjectStore:
    return open_object_store(
        BUCKET, endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, allow_http=True
    )


def place(store: ObjectStore, name: str) -> ObjectPlace:
    return ObjectPlace(store, f"runs/{name}", LOCKS)


def frame(index: int, shape: tuple[int, ...] = (6, 5)) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 1000, size=shape).astype("<u2")


def append(container: ZarrAppendContainer, index: int) -> int:
    data, meta = frame(index), {"frame": index}
    return container.append(ItemKey.of("cam", data, meta, index), data, meta)


def test_frames_read_back_from_the_bucket_across_commits_and_a_reopen(store: ObjectStore, request: Any) -> None:
    name = f"{request.node.name[:20]}.zarr"
    with ZarrAppendContainer(place(store, name), ARRAY, frames_per_shard=4, column_rows=4) as container:
        assert container.location == f"s3://{BUCKET}/runs/{name}"
        for index in range(10):
            assert append(container, index) == index
            if index % 3 == 2:
                container.commit()
    with ZarrAppendContainer(place(store, name), ARRAY, on_exists="append") as container:
        assert container.committed_length == 10
        assert append(container, 4) == 4  # its key is stored: not written again
        for index in range(10, 15):
            append(container, index)
    readable = store.zarr_store(f"runs/{name}")
    array = zarr.open_array(readable, path=ARRAY, mode="r")
    np.testing.assert_array_equal(array[...], np.stack([frame(i) for i in range(15)]))
    assert array.shards == (4, 6, 5)
    group = zarr.open_group(readable, mode="r")["cam"]
    assert [read_metadata(group, i)["frame"] for i in range(15)] == list(range(15))
    # shard objects: 15 frames in 4 shards of 4, nothing else beside zarr.json
    keys = sorted(info.key.rsplit("/", 1)[1] for info in store.list(f"runs/{name}/{ARRAY}/"))
    assert keys == ["c.0.0.0", "c.1.0.0", "c.2.0.0", "c.3.0.0", "zarr.json"]


def test_uncommitted_objects_are_invisible_and_overwritten_by_the_next_commit(store: ObjectStore) -> None:
    """A writer that stopped after writing shards but before the frames' zarr.json (a kill mid-commit) leaves
    the array at its last commit; the next writer goes on from there."""
    with ZarrAppendContainer(place(store, "killed.zarr"), ARRAY, frames_per_shard=4) as container:
        for index in range(3):
            append(container, index)
    document = json.loads(store.get(f"runs/killed.zarr/{ARRAY}/zarr.json"))
    with ZarrAppendContainer(place(store, "killed.zarr"), ARRAY, on_exists="append") as container:
        for index in range(3, 6):
            append(container, index)
        container.commit()
        # put the frames' zarr.json of the first commit back: as if the last commit had not reached it
        store.put(f"runs/killed.zarr/{ARRAY}/zarr.json", json.dumps(document).encode())
        container.release()
    with ZarrAppendContainer(place(store, "killed.zarr"), ARRAY, on_exists="append") as container:
        assert container.committed_length == 3
        for index in range(3, 7):
            assert append(container, index) == index
    array = zarr.open_array(store.zarr_store("runs/killed.zarr"), path=ARRAY, mode="r")
    np.testing.assert_array_equal(array[...], np.stack([frame(i) for i in range(7)]))


def test_an_existing_store_is_kept_under_error_and_unique_takes_the_next_name(store: ObjectStore) -> None:
    with ZarrAppendContainer(place(store, "taken.zarr"), ARRAY) as container:
        append(container, 0)
    with pytest.raises(TargetExistsError, match=r"s3://zarr-append/runs/taken\.zarr exists"):
        ZarrAppendContainer(place(store, "taken.zarr"), ARRAY, on_exists="error")
    with ZarrAppendContainer(place(store, "taken.zarr"), ARRAY, on_exists="unique") as beside:
        assert beside.location == f"s3://{BUCKET}/runs/taken-1.zarr"
        append(beside, 1)
    assert store.exists(f"runs/taken-1.zarr/{ARRAY}/zarr.json")


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(store: ObjectStore) -> None:
    first = ZarrAppendContainer(place(store, "locked.zarr"), ARRAY)
    try:
        with pytest.raises(ContainerBusyError, match=r"locks/runs%2Flocked\.zarr%2Fcam%2Fdata"):
            ZarrAppendContainer(place(store, "locked.zarr"), ARRAY, on_exists="append")
    finally:
        first.close()
    # a lock left by a process of this host that is gone (here: one that exited) is stale
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"holder": "x", "host": socket.gethostname(), "pid": int(gone.stdout), "since": 0}
    store.put_new(f"{LOCKS}runs%2Flocked.zarr%2Fcam%2Fdata", json.dumps(record).encode())
    with ZarrAppendContainer(place(store, "locked.zarr"), ARRAY, on_exists="append") as container:
        append(container, 1)
    # another host's lock cannot be judged from here: refused, naming the holder
    record = {"holder": "y", "host": "elsewhere", "pid": os.getpid(), "since": 0}
    store.put_new(f"{LOCKS}runs%2Flocked.zarr%2Fcam%2Fdata", json.dumps(record).encode())
    with pytest.raises(ContainerBusyError, match="host 'elsewhere'"):
        ZarrAppendContainer(place(store, "locked.zarr"), ARRAY, on_exists="append")
    assert not list(store.list("runs/locked.zarr/.heros"))  # no lock inside the store


# --------------------------------------------------------------------------------- the archiver, over Zenoh
def test_a_zarr_append_archiver_appends_a_run_to_one_array_in_the_bucket(
    make_rig: RigFactory, s3_env: S3Server, store: ObjectStore, tmp_path: Path
) -> None:
    made = make_rig(
        None, archiver_cls=ZarrAppendArchiver, store_template="{{ source_name }}-{{ run }}.zarr",
        root=f"s3://{BUCKET}/archive", sequence_key="frame", frames_per_shard=8, flush_frames=8, max_frames=20,
    )  # fmt: skip
    procs.send_frames(made.camera, list(range(30)), (16, 24), run=5)
    totals = wait_for_items(made.archiver, 30)
    assert totals["archived"] == 30 and totals["dead_lettered"] == 0
    made.archiver._teardown()
    parts = [("archive/cam-5.zarr", range(20)), ("archive/cam-5-1.zarr", range(20, 30))]  # max_frames rolled over
    for prefix, expected in parts:
        array = zarr.open_array(store.zarr_store(prefix), path="cam/data", mode="r")
        assert [int(f.flat[0]) for f in array[...]] == list(expected)
        np.testing.assert_array_equal(array[0], procs.frame(expected[0], (16, 24)))
    assert not list(store.list("archive/.heros-archiver/locks/"))  # every lock let go at the end
    state = tmp_path / "state-home" / "heros-archiver" / "s3" / BUCKET / "archive"
    assert made.archiver.root == state and (state / ".heros-archiver").is_dir()


def test_a_store_key_leaving_the_prefix_is_dead_lettered(make_rig: RigFactory, s3_env: S3Server) -> None:
    made = make_rig(
        None, archiver_cls=ZarrAppendArchiver, store_template="{{ run }}/run.zarr", root=f"s3://{BUCKET}/confined",
        sequence_key="frame",
    )  # fmt: skip
    procs.send_frames(made.camera, [0], (4, 4), run="..")
    procs.send_frames(made.camera, [1], (4, 4), run="ok")
    totals = wait_for_items(made.archiver, 2)
    assert totals["archived"] == 1 and totals["dead_lettered"] == 1
    [entry] = dead_letter_entries(made.archiver.root)
    assert "not a plain key" in read_entry(entry)["error"]


def test_the_store_stopped_for_5_s_mid_run_loses_nothing(
    make_rig: RigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits fail while the S3 server is down (and restarted on the same directory): the array is let go,
    its frames retried with backoff into the reopened array (its lock, left behind, taken over), none lost."""
    with S3Server(tmp_path / "s3") as server:
        server.create_bucket(BUCKET)
        for name, value in server.client_env().items():
            monkeypatch.setenv(name, value)
        made = make_rig(
            None, archiver_cls=ZarrAppendArchiver, store_template="run.zarr", root=f"s3://{BUCKET}/outage",
            state_dir=str(tmp_path / "state"), sequence_key="frame", flush_frames=5, max_retries=12,
        )  # fmt: skip
        procs.send_frames(made.camera, list(range(10)), (16, 24))
        wait_for_items(made.archiver, 10)
        server.stop()
        procs.send_frames(made.camera, list(range(10, 20)), (16, 24))
        time.sleep(3.0)
        server.start()
        procs.send_frames(made.camera, list(range(20, 30)), (16, 24))
        totals = wait_for_items(made.archiver, 30, timeout=90)
        assert totals["archived"] == 30 and totals["dead_lettered"] == 0, totals
        assert totals["retried"] >= 1, totals
        made.archiver._teardown()
        store = open_object_store(BUCKET, endpoint=server.endpoint, allow_http=True)
        array = zarr.open_array(store.zarr_store("outage/run.zarr"), path="cam/data", mode="r")
        assert [int(f.flat[0]) for f in array[...]] == list(range(30))


def test_frames_dead_lettered_while_the_store_was_down_replay_into_the_array(
    make_rig: RigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No retries: frames whose commit fails while the store is down go to the local dead-letter store at
    once; ``replay`` of the state directory's dead letters appends them to the array in the bucket."""
    with S3Server(tmp_path / "s3") as server:
        server.create_bucket(BUCKET)
        for name, value in server.client_env().items():
            monkeypatch.setenv(name, value)
        state = tmp_path / "state"
        made = make_rig(
            None, archiver_cls=ZarrAppendArchiver, store_template="run.zarr", root=f"s3://{BUCKET}/replayed",
            state_dir=str(state), sequence_key="frame", flush_frames=5, max_retries=0,
        )  # fmt: skip
        procs.send_frames(made.camera, list(range(5)), (16, 24))
        wait_for_items(made.archiver, 5)
        server.stop()
        procs.send_frames(made.camera, list(range(5, 10)), (16, 24))
        totals = wait_for_items(made.archiver, 10, timeout=90)
        assert totals["archived"] == 5 and totals["dead_lettered"] == 5, totals
        made.archiver._teardown()
        server.start()
        outcomes = replay(state / ".heros-archiver" / "dead-letter")
        assert [outcome.ok for outcome in outcomes] == [True] * 5, [outcome.error for outcome in outcomes]
        assert {str(path) for outcome in outcomes for path in outcome.paths} == {f"s3://{BUCKET}/replayed/run.zarr"}
        assert dead_letter_entries(state) == []
        store = open_object_store(BUCKET, endpoint=server.endpoint, allow_http=True)
        array = zarr.open_array(store.zarr_store("replayed/run.zarr"), path="cam/data", mode="r")
        assert [int(f.flat[0]) for f in array[...]] == list(range(10))


def test_verify_reads_the_frames_back_from_the_bucket(
    make_rig: RigFactory, s3_env: S3Server, store: ObjectStore, tmp_path: Path
) -> None:
    """The catalog of the state directory names each frame by the store's URL, the array and the index; verify
    reads them from the bucket: all intact, then a damaged and a deleted shard reported, frame by frame."""
    from heros_archiver.observe.verify import verify

    state = tmp_path / "state"
    made = make_rig(
        None, archiver_cls=ZarrAppendArchiver, store_template="run.zarr", root=f"s3://{BUCKET}/verified",
        state_dir=str(state), sequence_key="frame", frames_per_shard=4, flush_frames=4,
    )  # fmt: skip
    procs.send_frames(made.camera, list(range(12)), (16, 24))
    assert wait_for_items(made.archiver, 12)["archived"] == 12
    made.archiver._teardown()
    clean = verify(state, settle=0.0)
    assert clean.problems == [] and clean.containers == 1 and clean.items == 12, clean.as_dict()
    shards = f"verified/run.zarr/{ARRAY}"
    body = store.get(f"{shards}/c.0.0.0")
    store.put(f"{shards}/c.0.0.0", body[:100] + bytes([body[100] ^ 0xFF]) + body[101:])  # a pixel of frame 0
    store.delete(f"{shards}/c.2.0.0")  # frames 8-11
    problems = verify(state, settle=0.0).problems
    kinds = sorted((problem.index, problem.kind) for problem in problems)
    assert kinds == [(0, "modified"), *((i, "unreadable") for i in range(8, 12))], [str(p) for p in problems]


@pytest.mark.parametrize("journaled", [10, 0])
def test_a_killed_runs_commits_not_journaled_are_cataloged_from_the_bucket(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journaled: int
) -> None:
    """The kill window on an object-store root: ``catalog_child.py`` archives 20 frames into ``run.zarr`` in the
    bucket, journals the commit lines of the first ``journaled`` (none: the array's only trace is the intent
    record of its first commit) and is SIGKILLed. The restart on its state directory reads the other frames back
    from the bucket and catalogs them with what the store keeps beside each; verify finds all 20 intact."""
    from catalog_kills import kill_and_restart
    from heros_archiver.observe.catalog_reader import CatalogReader
    from heros_archiver.observe.verify import verify

    location = f"s3://{BUCKET}/killed-{journaled}"
    monkeypatch.setenv("HEROS_TEST_OBJECT_ROOT", location)
    kill_and_restart(
        tmp_path, "zarr-append", lambda out: "@@ DONE" in out, DEADLINE, HEROS_TEST_UNJOURNALED=str(journaled)
    )
    state = tmp_path / "archive"
    with CatalogReader(state) as reader:
        items = sorted(reader.items(), key=lambda item: item.idx or 0)
    assert [(item.idx, item.sequence) for item in items] == [(i, i) for i in range(20)]
    assert {(item.path, item.member) for item in items} == {(f"{location}/run.zarr", "cam/data")}
    for item in items:
        expected = ("cam", "acquisition_data", {"frame": item.idx, "run": "crash"})
        assert (item.source, item.event, item.metadata) == expected, item
    result = verify(state, settle=0.0)
    assert result.problems == [] and result.items == 20, result.as_dict()
