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
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import RigFactory
from helpers import assert_refused_before_zenoh, dead_letter_entries, read_entry, wait_for_items, wait_until
from heros_archiver import ConfigurationError, JsonArchiver, TiffArchiver
from heros_archiver.archivers.options import FileOptions, Hdf5Options, TiffOptions, ZarrAppendOptions
from heros_archiver.errors import PathConfinementError, TemplateRenderError
from heros_archiver.naming.keys import confine_key
from heros_archiver.naming.templates import PathTemplate
from heros_archiver.sinks.writer import FileWriter, WriterSettings
from heros_archiver.state.replay import replay
from heros_archiver.storage.objectstore import open_object_store
from heros_archiver.testing import free_port, make_frame
from heros_archiver.testing.servers import S3Server
from procs import run_cli

pytestmark = pytest.mark.timeout(120)

BUCKET = "frames"
SHAPE = (64, 48)


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


def test_credentials_never_show_in_config_or_reprs(make_rig: RigFactory, s3_env: S3Server, tmp_path: Path) -> None:
    secret = s3_env.secret_key
    rig = make_rig(
        "{{ frame }}.npy",
        root="s3://frames/secret",
        state_dir=str(tmp_path / "state"),
        storage_options={"access_key": s3_env.access_key, "secret_key": secret, "region": s3_env.region},
    )
    rig.camera.acquire(1, shape=SHAPE)
    assert wait_for_items(rig.archiver, 1)["archived"] == 1  # the given credentials are the ones used
    config = rig.archiver.config()
    assert config["sink_options"]["objects"]["storage_options"]["secret_key"] == "<Secret>"
    assert config["sink_options"]["objects"]["storage_options"]["access_key"] == s3_env.access_key
    for text in (json.dumps(config), repr(rig.archiver.sink_options), json.dumps(rig.archiver.status())):
        assert secret not in text


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
    """An item refused for its key is dead-lettered locally; once the key is free, ``heros-archiver replay`` of
    the state directory's store writes it to the recorded location, with the credentials of its environment."""
    client = s3_env.boto3_client()
    client.put_object(Bucket=BUCKET, Key="replay/000.npy", Body=b"in the way")
    state = tmp_path / "state"
    rig = make_rig("{{ '%03d' % frame }}.npy", root="s3://frames/replay", state_dir=str(state))
    rig.camera.acquire(1, shape=SHAPE)
    assert wait_for_items(rig.archiver, 1)["dead_lettered"] == 1
    client.delete_object(Bucket=BUCKET, Key="replay/000.npy")
    dry = replay(state / ".heros-archiver" / "dead-letter", dry_run=True)
    assert [(outcome.ok, outcome.paths) for outcome in dry] == [(True, ["s3://frames/replay/000.npy"])], dry
    done = run_cli(["replay", str(state / ".heros-archiver" / "dead-letter")])  # the command, in a child
    assert done.returncode == 0 and "s3://frames/replay/000.npy" in done.stdout, done.stdout
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


def test_verify_reads_the_objects_of_an_s3_root(
    make_rig: RigFactory, s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from heros_archiver.observe.verify import verify

    state = tmp_path / "state"
    rig = make_rig("{{ '%03d' % frame }}.npy", root="s3://frames/verify", state_dir=str(state))
    rig.camera.acquire(4, shape=SHAPE)
    assert wait_for_items(rig.archiver, 4)["archived"] == 4
    rig.archiver._teardown()
    clean = verify(state, settle=0.0)
    assert clean.problems == [] and clean.files == 4 and clean.bytes > 0, clean.as_dict()
    command = run_cli(["verify", str(state)])
    assert command.returncode == 0, command.stdout
    client = s3_env.boto3_client()
    client.delete_object(Bucket=BUCKET, Key="verify/000.npy")
    client.put_object(Bucket=BUCKET, Key="verify/001.npy", Body=b"x" * 10)
    body = objects(s3_env, "verify/002.npy")["verify/002.npy"]
    client.put_object(Bucket=BUCKET, Key="verify/002.npy", Body=body[:-1] + bytes([body[-1] ^ 1]))
    kinds = {problem.path: problem.kind for problem in verify(state, settle=0.0).problems}
    assert kinds == {
        "s3://frames/verify/000.npy": "missing",
        "s3://frames/verify/001.npy": "truncated",
        "s3://frames/verify/002.npy": "modified",
    }
    # a store verify cannot read is said so per object, never reported as missing objects
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    unreadable = verify(state, settle=0.0).problems
    assert {problem.kind for problem in unreadable} == {"unreadable"} and len(unreadable) == 4, unreadable
    assert "refused the credentials" in unreadable[0].found


def test_the_store_stopped_for_5_s_mid_run_loses_nothing(
    make_rig: RigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames keep coming while the S3 server is down for 5 s and then restarted on the same directory:
    the writer retries with backoff, every frame is archived (read back), none dead-lettered."""
    with S3Server(tmp_path / "s3") as server:
        server.create_bucket(BUCKET)
        for name, value in server.client_env().items():
            monkeypatch.setenv(name, value)
        state = tmp_path / "state"
        rig = make_rig("{{ '%03d' % frame }}.npy", root="s3://frames/outage", state_dir=str(state), max_retries=12)
        rig.camera.acquire(10, shape=SHAPE)
        wait_until(lambda: rig.archiver.stats()["total"]["archived"] == 10, what="the first 10 frames")
        server.stop()
        rig.camera.acquire(10, shape=SHAPE, start=10, rate=4.0)  # 2.5 s while the store is down
        time.sleep(2.5)
        server.start()
        rig.camera.acquire(10, shape=SHAPE, start=20)
        totals = wait_for_items(rig.archiver, 30, timeout=90)
        assert totals["archived"] == 30 and totals["dead_lettered"] == 0, totals
        assert totals["retried"] >= 1, totals
        found = objects(server, "outage/")
        assert sorted(found) == [f"outage/{i:03d}.npy" for i in range(30)]
        assert [int(np.load(io.BytesIO(found[f"outage/{i:03d}.npy"])).flat[0]) for i in range(30)] == list(range(30))
        assert dead_letter_entries(state) == []


def test_stale_multipart_uploads_are_aborted_at_start(make_rig: RigFactory, s3_env: S3Server, tmp_path: Path) -> None:
    client = s3_env.boto3_client()
    stale = client.create_multipart_upload(Bucket=BUCKET, Key="stale/killed.npy")["UploadId"]
    elsewhere = client.create_multipart_upload(Bucket=BUCKET, Key="other/kept.npy")["UploadId"]
    try:
        make_rig("{{ frame }}.npy", root="s3://frames/stale", state_dir=str(tmp_path / "s"), stale_uploads_after=0.0)
        uploads = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", ())}
        assert stale not in uploads and elsewhere in uploads
    finally:
        client.abort_multipart_upload(Bucket=BUCKET, Key="other/kept.npy", UploadId=elsewhere)


def test_a_large_item_goes_as_a_conditional_multipart_upload(
    make_rig: RigFactory, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """From ``MULTIPART_THRESHOLD`` on (lowered here to keep the test small) an item is a multipart upload,
    completed with If-None-Match: *: read back whole, and a second item of the key is refused."""
    from heros_archiver.storage import objectstore

    monkeypatch.setattr(objectstore, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(objectstore, "PART_SIZE", 5 << 20)
    state = tmp_path / "state"
    rig = make_rig("big.npy", root="s3://frames/multipart", state_dir=str(state))
    rig.camera.acquire(2, shape=(2048, 1600))  # 6.25 MiB each, both named big.npy
    totals = wait_for_items(rig.archiver, 2)
    assert totals["archived"] == 1 and totals["dead_lettered"] == 1, totals
    array = np.load(io.BytesIO(objects(s3_env, "multipart/")["multipart/big.npy"]))
    assert array.shape == (2048, 1600) and int(array.flat[0]) == 0
    assert "s3://frames/multipart/big.npy exists" in read_entry(dead_letter_entries(state)[0])["error"]
    assert not s3_env.boto3_client().list_multipart_uploads(Bucket=BUCKET, Prefix="multipart/").get("Uploads")


def _refused(tmp_path: Path, match: str, **kwargs: Any) -> None:
    kwargs.setdefault("state_dir", str(tmp_path / "state"))
    kwargs.setdefault("root", "s3://frames/refused")
    assert_refused_before_zenoh(tmp_path, match, "{{ frame }}.npy", **kwargs)


def test_a_bad_endpoint_or_bad_credentials_fail_at_start_with_a_clear_error(s3_env: S3Server, tmp_path: Path) -> None:
    unused = f"http://127.0.0.1:{free_port()}"
    _refused(
        tmp_path,
        rf"{unused}.*expected to create a probe object.*check the endpoint",
        storage_options={"endpoint": unused},
    )
    _refused(
        tmp_path, "refused the credentials", storage_options={"secret_key": "wrong", "access_key": "heros-test-key"}
    )
    _refused(tmp_path, "allow_http=True", storage_options={"allow_http": False})
    _refused(tmp_path, "storage_options: expected keys among", storage_options={"password": "x"})
    _refused(
        tmp_path, r"storage_options\['secret_key'\]: expected str, got int \*\*\*", storage_options={"secret_key": 5}
    )
    _refused(tmp_path, "expected a bucket name", root="s3://Bad_Bucket/x")


def test_object_store_arguments_need_an_object_store_root(tmp_path: Path) -> None:
    assert_refused_before_zenoh(tmp_path, "expected only with an object-store root", state_dir=str(tmp_path))
    with pytest.raises(ConfigurationError, match="stack=True with an object-store root"):
        TiffOptions("{{ frame }}.tif", stack=True, root="s3://frames/x")
    with pytest.raises(ConfigurationError, match="expected a key relative to the root"):
        FileOptions("s3://frames/elsewhere/{{ frame }}.npy", "npy", "s3://frames/x")
    # the container archivers that write local files refuse an s3 location rather than make a directory
    # named s3: (the Zarr append mode writes to object stores: tests/test_zarr_append_s3.py)
    with pytest.raises(ConfigurationError, match="Hdf5Archiver: expected a local root"):
        Hdf5Options("run.h5", root="s3://frames/x")
    assert ZarrAppendOptions("s3://frames/x/run.zarr").object_root == "s3://frames/x"


HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["..", ".", "", "/", "//", "../..", "a/../../b", "/etc/passwd", ".heros-archiver", "a//b", "\\x"]),
    st.lists(
        st.sampled_from(["..", ".", "", "a", "/", "s3:", "frames", ".heros-archiver", "\x00", "\n"]), max_size=6
    ).map("/".join),
)


@given(HOSTILE, HOSTILE)
def test_keys_rendered_from_hostile_metadata_never_leave_the_prefix(a: str, b: str) -> None:
    """Whatever the metadata, a rendered key is refused or is plain segments under the prefix, outside the
    archiver's own area."""
    template = PathTemplate("{{ a }}/{{ b }}.npy", os.sep)
    try:
        key = confine_key(template.render_text({"a": a, "b": b}), "s3://frames/safe", "safe", template.source)
    except (PathConfinementError, TemplateRenderError):
        return
    assert key.startswith("safe/")
    segments = key.split("/")
    assert all(segment not in ("", ".", "..") for segment in segments), key
    assert segments[1] != ".heros-archiver"
    assert not any(ord(char) < 0x20 for char in key)
    assert len(key.encode("utf-8", "surrogatepass")) <= 1024


def test_a_bucket_is_made_once(s3_env: S3Server) -> None:
    store = open_object_store("daily-20261202")
    assert store.create_bucket() is True
    assert store.create_bucket() is False
    store.put_new("a.npy", b"x")
    assert store.get("a.npy") == b"x" and [info.key for info in store.list()] == ["a.npy"]


def test_render_shows_the_object_url_or_the_refusal() -> None:
    done = run_cli(["render", "s3://frames/x/{{ run }}/{{ frame }}.npy", "frame=3", "run=r1"])
    assert done.returncode == 0 and done.stdout.strip() == "s3://frames/x/r1/3.npy", done.stdout
    refused = run_cli(["render", "{{ run }}/{{ frame }}.npy", "frame=3", "run=../r1", "--root", "s3://frames/x"])
    assert refused.returncode == 1 and "is not a plain key under 's3://frames/x/'" in refused.stdout, refused.stdout


def test_full_url_templates_render_under_their_root(s3_env: S3Server) -> None:
    store = open_object_store(BUCKET)
    writer = FileWriter(
        WriterSettings("npy", "s3://frames/urls/{{ run }}/{{ frame }}.npy", "s3://frames/urls"), store=store
    )
    [(url, _)] = writer.plan_text("cam", np.zeros(3), {"run": "r1", "frame": 7})
    assert url == "s3://frames/urls/r1/7.npy"
    for hostile in ("../other", "s3://frames/other", "/abs", ".heros-archiver"):
        with pytest.raises(PathConfinementError):
            writer.plan_text("cam", np.zeros(3), {"run": hostile, "frame": 7})
