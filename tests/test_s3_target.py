"""File-per-item archivers writing to an object store (``root="s3://bucket/prefix"``, decision 0035).

Over real Zenoh on loopback and a real S3 server (SeaweedFS ``weed mini`` from ``testing.servers``, started
in the test's directory, stopped by PID at the end): frames and JSON read back bit-identical from the
objects, no silent overwrite, the store stopped and restarted mid-run with nothing lost, stale multipart
uploads aborted at start, clear errors for a bad endpoint or credentials, replay of dead letters to the
store, and keys from hostile metadata that never leave the prefix.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import dead_letter_entries, read_entry, wait_for_items
from heros_archiver import JsonArchiver, TiffArchiver
from heros_archiver.state.replay import replay
from heros_archiver.testing import make_frame
from heros_archiver.testing.servers import S3Server

BUCKET = "frames"
SHAPE = (64, 48)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 server for the tests that do not stop it (started and stopped by PID by the context manager)."""
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The server's credentials and endpoint in the environment (the AWS conventions the archiver reads),
    and the default state directory under the test's tmp_path."""
    for name, value in s3.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    return s3


def objects(server: S3Server, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix``, read with boto3 (another client than the archiver's)."""
    client = server.boto3_client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for entry in page.get("Contents", ()):
            found[entry["Key"]] = client.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
    return found


def test_frames_to_s3_read_back_bit_identical(make_rig: RigFactory, s3_env: S3Server, tmp_path: Path) -> None:
    rig = make_rig("{{ source_name }}/{{ '%03d' % frame }}.npy", root=f"s3://{BUCKET}/run1")
    rig.camera.acquire(12, shape=SHAPE)
    totals = wait_for_items(rig.archiver, 12)
    assert totals["archived"] == 12 and totals["dead_lettered"] == 0
    found = objects(s3_env, "run1/")
    assert sorted(found) == [f"run1/cam/{i:03d}.npy" for i in range(12)]
    for i in range(12):
        array = np.load(io.BytesIO(found[f"run1/cam/{i:03d}.npy"]))
        expected = make_frame(0, SHAPE)
        expected.flat[0] = i
        assert array.dtype == expected.dtype and np.array_equal(array, expected)
    # the archiver's own state is local: dead letters, spool and catalog under the default state directory
    state = tmp_path / "state-home" / "heros-archiver" / "s3" / BUCKET / "run1"
    assert rig.archiver.root == state
    record = json.loads((state / ".heros-archiver" / "object-store.json").read_text())
    assert record["root"] == f"s3://{BUCKET}/run1" and "secret" not in json.dumps(record).lower()


def test_json_to_s3_reads_back_and_skips_the_helper_process(make_rig: RigFactory, s3_env: S3Server) -> None:
    rig = make_rig("s3://frames/json/{{ name }}.json", archiver_cls=JsonArchiver, merge_metadata=True)
    assert rig.archiver.stats()["helper_processes"] == []  # objects are sent by the writer itself
    payload = {"temperature": 21.5, "counts": [1, 2, 3], "nested": {"a": None}, "label": "ü"}
    for i in range(3):
        rig.camera.acquisition_data(payload, {"name": f"reading-{i}"})
    assert wait_for_items(rig.archiver, 3)["archived"] == 3
    found = objects(s3_env, "json/")
    assert sorted(found) == [f"json/reading-{i}.json" for i in range(3)]
    for i in range(3):
        document = json.loads(found[f"json/reading-{i}.json"])
        assert document == {
            **payload,
            "metadata": {"file_path": document["metadata"]["file_path"], "name": f"reading-{i}"},
        }


def test_tiff_files_to_s3(make_rig: RigFactory, s3_env: S3Server) -> None:
    tifffile = pytest.importorskip("tifffile")
    rig = make_rig("{{ '%03d' % frame }}.tif", archiver_cls=TiffArchiver, root="s3://frames/tiff")
    rig.camera.acquire(3, shape=SHAPE)
    assert wait_for_items(rig.archiver, 3)["archived"] == 3
    found = objects(s3_env, "tiff/")
    assert sorted(found) == [f"tiff/{i:03d}.tif" for i in range(3)]
    image = tifffile.imread(io.BytesIO(found["tiff/002.tif"]))
    assert image.shape == SHAPE and int(image.flat[0]) == 2


def test_an_existing_key_is_never_overwritten(make_rig: RigFactory, s3_env: S3Server, tmp_path: Path) -> None:
    """``error``: the conditional create refuses the key, the item is dead-lettered naming bucket and key and
    the object keeps its bytes; ``unique``: the item gets ``-1``."""
    client = s3_env.boto3_client()
    client.put_object(Bucket=BUCKET, Key="keep/001.npy", Body=b"someone else's object")
    state = tmp_path / "state-error"
    rig = make_rig("{{ '%03d' % frame }}.npy", root="s3://frames/keep", state_dir=str(state))
    rig.camera.acquire(2, shape=SHAPE)
    totals = wait_for_items(rig.archiver, 2)
    assert totals["archived"] == 1 and totals["dead_lettered"] == 1, totals
    [entry] = dead_letter_entries(state)
    error = read_entry(entry)["error"]
    assert "TargetExistsError" in error and "s3://frames/keep/001.npy" in error, error
    assert objects(s3_env, "keep/")["keep/001.npy"] == b"someone else's object"

    unique = make_rig("{{ '%03d' % frame }}.npy", root="s3://frames/keep", on_exists="unique",
                      state_dir=str(tmp_path / "state-unique"))  # fmt: skip
    unique.camera.acquire(2, shape=SHAPE)
    assert wait_for_items(unique.archiver, 2)["archived"] == 2
    found = objects(s3_env, "keep/")
    assert sorted(found) == ["keep/000-1.npy", "keep/000.npy", "keep/001-1.npy", "keep/001.npy"]
    assert found["keep/001.npy"] == b"someone else's object"
    assert int(np.load(io.BytesIO(found["keep/001-1.npy"])).flat[0]) == 1


def test_dead_letters_of_an_s3_root_replay_to_the_store(make_rig: RigFactory, s3_env: S3Server, tmp_path: Path) -> None:
    """An item refused for its key is dead-lettered locally; once the key is free, ``replay`` of the state
    directory's store writes it to the recorded location (and only there)."""
    client = s3_env.boto3_client()
    client.put_object(Bucket=BUCKET, Key="replay/000.npy", Body=b"in the way")
    state = tmp_path / "state"
    rig = make_rig("{{ '%03d' % frame }}.npy", root="s3://frames/replay", state_dir=str(state))
    rig.camera.acquire(1, shape=SHAPE)
    assert wait_for_items(rig.archiver, 1)["dead_lettered"] == 1
    client.delete_object(Bucket=BUCKET, Key="replay/000.npy")
    [outcome] = replay(state / ".heros-archiver" / "dead-letter")
    assert outcome.ok and outcome.paths == ["s3://frames/replay/000.npy"], outcome
    assert int(np.load(io.BytesIO(objects(s3_env, "replay/")["replay/000.npy"])).flat[0]) == 0
    assert dead_letter_entries(state) == []


def test_the_catalog_records_the_object_urls(make_rig: RigFactory, s3_env: S3Server, tmp_path: Path) -> None:
    from heros_archiver.observe.catalog_reader import CatalogReader

    state = tmp_path / "state"
    rig = make_rig("{{ '%03d' % frame }}.npy", root="s3://frames/catalog", state_dir=str(state))
    rig.camera.acquire(3, shape=SHAPE)
    assert wait_for_items(rig.archiver, 3)["archived"] == 3
    rig.archiver._teardown()
    with CatalogReader(state) as reader:
        paths = sorted(row.path for row in reader.items())
    assert paths == [f"s3://frames/catalog/{i:03d}.npy" for i in range(3)]
