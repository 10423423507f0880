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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for_items, wait_until
from hypothesis import given
from hypothesis import strategies as st

from heros_archiver import ArrayArchiver, ConfigurationError, JsonArchiver, TiffArchiver
from heros_archiver.errors import PathConfinementError, TemplateRenderError
from heros_archiver.naming.keys import confine_key
from heros_archiver.state.replay import replay
from heros_archiver.storage.objectstore import ObjectLocation
from heros_archiver.testing import make_frame
from heros_archiver.testing.servers import S3Server

from conftest import RigFactory

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
