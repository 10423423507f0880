"""The Zarr append container on its own: round trips per compression and chunking, metadata from the
network, reopening, a second writer, and the shard layout that keeps readers consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heros_archiver.errors import PayloadError, StorageError, TargetExistsError
from heros_archiver.sinks.containers import ContainerBusyError, ItemKey, ItemMismatchError
from heros_archiver.sinks.containers.zarr_append import ZarrAppendContainer, read_metadata
from heros_archiver.sinks.containers.zarr_shards import COMPRESSIONS
from heros_archiver.sinks.containers.zarr_trash import empty, trash_directory

ARRAY = "cam/data"
SRC = Path(__file__).resolve().parents[1] / "src"


def frame(index: int, shape: tuple[int, ...] = (6, 5), dtype: str = "<u2") -> np.ndarray:
    return np.random.default_rng(index).integers(0, 1000, size=shape).astype(dtype)


def append(container: ZarrAppendContainer, index: int, **metadata: Any) -> int:
    data, meta = frame(index), {"frame": index, **metadata}
    return container.append(ItemKey.of("cam", data, meta, index), data, meta)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("frames_per_chunk", [1, 3])
def test_frames_read_back_bit_identical_across_commits_and_a_reopen(
    tmp_path: Path, compression: Any, frames_per_chunk: int
) -> None:
    store = tmp_path / "run.zarr"
    options = {"compression": compression, "frames_per_chunk": frames_per_chunk, "frames_per_shard": 6}
    with ZarrAppendContainer(store, ARRAY, root=tmp_path, column_rows=4, **options) as container:
        for index in range(11):
            assert append(container, index) == index
            if index % 4 == 3:
                assert container.commit().stop == index + 1
    with ZarrAppendContainer(store, ARRAY, root=tmp_path, on_exists="append") as container:
        assert container.committed_length == 11
        assert append(container, 5) == 5  # its key is stored: not written again
        for index in range(11, 20):
            append(container, index)
    array = zarr.open_array(store, path=ARRAY, mode="r")
    np.testing.assert_array_equal(array[...], np.stack([frame(i) for i in range(20)]))
    assert array.shards == (6, 6, 5) and array.chunks == (frames_per_chunk, 6, 5)
    group = zarr.open_group(store, mode="r")["cam"]
    assert [read_metadata(group, i) for i in range(20)] == [{"frame": i} for i in range(20)]


def test_a_partial_shard_is_replaced_by_one_that_starts_with_the_same_bytes(tmp_path: Path) -> None:
    """What keeps a reader that read the old shard index right: committed chunks never move."""
    store = tmp_path / "run.zarr"
    shard = store / "cam" / "data" / "c.0.0.0"
    with ZarrAppendContainer(store, ARRAY, compression="zstd", frames_per_shard=8) as container:
        for index in range(3):
            append(container, index)
        container.commit()
        before = shard.read_bytes()
        for index in range(3, 6):
            append(container, index)
        container.commit()
        after = shard.read_bytes()
    index_bytes = 8 * 16 + 4
    assert after[: len(before) - index_bytes] == before[: len(before) - index_bytes]
    assert len(after) > len(before)


network_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
    st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)  # fmt: skip
network_metadata = st.dictionaries(st.text(max_size=12), network_values, max_size=6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(network_metadata, min_size=1, max_size=4))
def test_any_metadata_from_the_network_reads_back_as_sent(tmp_path_factory: pytest.TempPathFactory, sent: Any) -> None:
    store = tmp_path_factory.mktemp("meta") / "run.zarr"
    data = np.zeros((2, 2), dtype=np.uint16)
    with ZarrAppendContainer(store, ARRAY) as container:
        for i, metadata in enumerate(sent):
            container.append(ItemKey.of("cam", data, metadata, i), data, metadata)
    group = zarr.open_group(store, mode="r")["cam"]
    for i, metadata in enumerate(sent):
        assert read_metadata(group, i) == metadata


def test_bad_frames_raise_and_change_nothing(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    with ZarrAppendContainer(store, ARRAY) as container:
        with pytest.raises(PayloadError, match=r"without empty axes.*\(0, 4\)"):
            container.append(ItemKey("cam", 0, "x"), np.zeros((0, 4)), {})
        append(container, 0)
        with pytest.raises(ItemMismatchError, match=r"\(3, 3\).*\(6, 5\)"):
            container.append(ItemKey("cam", 1, "y"), np.zeros((3, 3), dtype="<u2"), {})
        with pytest.raises(PayloadError, match="numpy array"):
            container.append(ItemKey("cam", 1, "z"), {"not": "a frame"}, {})  # type: ignore[arg-type]
        append(container, 1)
    assert zarr.open_array(store, path=ARRAY, mode="r").shape == (2, 6, 5)


def test_a_second_writer_of_the_same_array_is_refused_and_an_existing_store_under_error(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    with ZarrAppendContainer(store, ARRAY) as container:
        append(container, 0)
        with pytest.raises(ContainerBusyError, match="another archiver"):
            ZarrAppendContainer(store, ARRAY, on_exists="append")
        with ZarrAppendContainer(store, "other/data", on_exists="append") as other:  # another array: fine
            append(other, 0)
    with pytest.raises(TargetExistsError, match=r"run\.zarr"):
        ZarrAppendContainer(store, ARRAY)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_the_shards_decode_in_another_implementation_zarrs(tmp_path: Path, compression: Any) -> None:
    """The shards are written by this module, not by zarr-python: zarrs (Rust, through zarr's codec pipeline
    setting) reads them too, as any Zarr v3 reader with sharding must."""
    store = tmp_path / "run.zarr"
    with ZarrAppendContainer(store, ARRAY, compression=compression, frames_per_shard=4) as container:
        for index in range(10):
            append(container, index)
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        array = zarr.open_array(store, path=ARRAY, mode="r")
        np.testing.assert_array_equal(array[...], np.stack([frame(i) for i in range(10)]))
        np.testing.assert_array_equal(array[7], frame(7))


def test_fsync_commits_read_back_and_an_undecodable_partial_shard_is_a_storage_error(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    with ZarrAppendContainer(store, ARRAY, root=tmp_path, fsync=True, frames_per_shard=4) as container:
        for index in range(6):
            append(container, index)
    np.testing.assert_array_equal(zarr.open_array(store, path=ARRAY)[...], np.stack([frame(i) for i in range(6)]))
    (store / "cam" / "data" / "c.1.0.0").write_bytes(b"not a shard")  # holds committed frames 4 and 5
    with pytest.raises(StorageError, match=r"cannot read back .* 6 committed frames"):
        ZarrAppendContainer(store, ARRAY, root=tmp_path, on_exists="append")


def test_replaced_objects_wait_in_the_trash_until_the_background_thread_frees_them(tmp_path: Path) -> None:
    """Each commit replaces zarr.json files and a partial shard: their old versions are hard-linked into
    the root's trash first (the rename then frees nothing) and unlinked behind the writer; ``empty`` removes
    what a killed run left there."""
    store = tmp_path / "run.zarr"
    trash = Path(trash_directory(str(tmp_path)))
    with ZarrAppendContainer(store, ARRAY, root=tmp_path, frames_per_shard=8) as container:
        for index in range(6):
            append(container, index)
            container.commit()  # shard 0 replaced five times, every zarr.json too
    np.testing.assert_array_equal(zarr.open_array(store, path=ARRAY)[...], np.stack([frame(i) for i in range(6)]))
    deadline = time.monotonic() + 30
    while any(trash.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(trash.iterdir()) == []
    (trash / "12345.0123abcd.0").write_bytes(b"an old shard a killed run left")
    assert empty(str(tmp_path)) == 1 and list(trash.iterdir()) == []


def test_without_zarr_the_package_imports_and_the_container_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['zarr'] = None\n"
        "import heros_archiver, heros_archiver.archivers.zarr_append\n"
        "import heros_archiver.sinks.containers.zarr_append as za\n"
        "try:\n"
        f"    za.ZarrAppendContainer({str(tmp_path / 'x.zarr')!r}, 'a/b')\n"
        "except heros_archiver.ConfigurationError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "REFUSED" in result.stdout and "pip install 'heros-archiver[zarr]'" in result.stdout, result.stderr


def test_a_commit_of_the_first_frames_keeps_the_rest_pending_and_says_where_shards_end(tmp_path: Path) -> None:
    """``commit(frames)`` commits a prefix (a producer waiting for room gets whole shards only, decision 0048)."""
    store = tmp_path / "run.zarr"
    with ZarrAppendContainer(store, ARRAY, root=tmp_path, frames_per_shard=4) as container:
        assert container.whole_shard_frames == 0  # nothing pending
        for index in range(6):
            append(container, index)
        assert container.whole_shard_frames == 4
        report = container.commit(4)
        assert (report.start, report.stop, container.pending, container.committed_length) == (0, 4, 2, 4)
        assert [key.sequence for key in report.keys] == [0, 1, 2, 3]
        assert zarr.open_array(store, path=ARRAY, mode="r").shape[0] == 4
        assert container.whole_shard_frames == 0  # 2 of the next shard's 4
        container.commit()  # a partial shard (by time, at drain): 6 committed
        for index in range(6, 11):
            append(container, index)
        assert container.whole_shard_frames == 2  # frames 6 and 7 end the second shard
        assert container.commit(2).stop == 8 and container.pending == 3
        assert container.commit(99).stop == 11 and container.pending == 0
    array = zarr.open_array(store, path=ARRAY, mode="r")
    np.testing.assert_array_equal(array[...], np.stack([frame(i) for i in range(11)]))
    group = zarr.open_group(store, mode="r")["cam"]
    assert [read_metadata(group, i) for i in range(11)] == [{"frame": i} for i in range(11)]


def test_a_zarr_json_with_what_orjson_refuses_is_written_by_the_standard_encoder() -> None:
    from heros_archiver.sinks.containers.zarr_shards import with_shape

    document = {"shape": [0, 4], "attributes": {"configuration": {"big": 2**70, "name": "cam ü"}}}
    assert json.loads(with_shape(document, 7)) == {**document, "shape": [7, 4]}
    plain = {"shape": [0, 4], "attributes": {"name": "cam ü", "x": 0.1}}
    assert json.loads(with_shape(plain, 3)) == {**plain, "shape": [3, 4]}
