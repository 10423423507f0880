"""The HDF5 container: round trips, per-frame metadata, mismatches, SWMR readers, SIGKILL and reopen.

Real h5py files in tmp_path, real child processes (tests/hdf5_child.py) for the reader and the killed
writer; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import heros_archiver
import heros_archiver.sinks.containers.hdf5 as hdf5_module
import procs
from hdf5_child import expected_frame, expected_metadata
from heros_archiver.errors import ConfigurationError, PayloadError, TargetExistsError
from heros_archiver.sinks.containers import CommitReport, ItemKey, ItemMismatchError
from heros_archiver.sinks.containers.hdf5 import (
    COMPRESSIONS,
    Hdf5Container,
    clear_status_flags,
    read_archive_row,
    read_metadata,
)

CHILD = Path(__file__).with_name("hdf5_child.py")
SRC = Path(heros_archiver.__file__).resolve().parents[1]
DATASET = "entry/cam/data"


def child_env() -> dict[str, str]:
    """The environment of a child: this checkout's package first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(CHILD.parent), env.get("PYTHONPATH", "")])
    return env


def append(
    container: Hdf5Container, index: int, data: np.ndarray | None = None, metadata: dict[str, Any] | None = None
) -> int:
    """Append frame ``index`` (``expected_frame``/``expected_metadata`` unless given), its index as sequence."""
    frame = expected_frame(index) if data is None else data
    meta = expected_metadata(index) if metadata is None else metadata
    return container.append(ItemKey.of("cam", frame, meta, index), frame, meta)


def last_committed(output: str) -> int:
    """The committed length the writer child printed last (0 before its first commit)."""
    found = re.findall(r"@@ COMMITTED (\d+)", output)
    return int(found[-1]) if found else 0


# ------------------------------------------------------------------------------------------ round trips
DTYPES = ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64", "bool"]
DTYPES += [">u2", ">i4", ">f8", "complex64"]
SHAPES = [(), (7,), (5, 6), (2, 3, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_of_dtypes_and_shapes_is_bit_identical(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 100, size=shape).astype(dtype) for _ in range(5)]
    with Hdf5Container(tmp_path / "run.h5", DATASET) as container:
        for i, frame in enumerate(frames):
            assert container.append(ItemKey.of("cam", frame, {}, i), frame, {}) == i
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        stack = handle[DATASET]
        assert stack.shape == (5, *shape)
        assert stack.dtype == np.dtype(dtype)
        for i, frame in enumerate(frames):
            read = stack[i : i + 1]  # an array keeps the byte order (numpy scalars are always native)
            assert read.dtype == np.dtype(dtype)
            assert read.tobytes() == frame.tobytes()


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("frames_per_chunk", [None, 1, 3])
def test_every_compression_and_chunking_round_trips(tmp_path: Path, compression: Any, frames_per_chunk: Any) -> None:
    with Hdf5Container(tmp_path / "run.h5", DATASET, compression=compression, frames_per_chunk=frames_per_chunk) as c:
        for i in range(7):
            append(c, i)
            if i % 2:
                c.commit()  # commits in the middle of chunks: the partial chunk is written again later
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        stack = handle[DATASET]
        assert stack.shape[0] == 7
        assert all(np.array_equal(stack[i], expected_frame(i)) for i in range(7))
        if frames_per_chunk:
            assert stack.chunks[0] == frames_per_chunk


def test_nexus_attributes_point_at_the_stack(tmp_path: Path) -> None:
    with Hdf5Container(tmp_path / "run.h5", DATASET) as container:
        append(container, 0)
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        assert handle.attrs["default"] == "entry"
        assert handle["entry"].attrs["NX_class"] == "NXentry"
        assert handle["entry"].attrs["default"] == "cam"
        assert handle["entry/cam"].attrs["NX_class"] == "NXdata"
        assert handle["entry/cam"].attrs["signal"] == "data"
        assert handle[DATASET].attrs["interpretation"] == "image"


# ------------------------------------------------------------------------------------------ metadata
def test_per_frame_metadata_reads_back_with_its_types(tmp_path: Path) -> None:
    first = {"frame": 0, "exposure": 0.25, "gain": np.float32(1.5), "binning": np.uint8(2), "open": True, "label": "a"}
    with Hdf5Container(tmp_path / "run.h5", DATASET) as container:
        for i in range(3):
            append(container, i, metadata={**first, "frame": i, "label": f"run-{i}"})
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        group = handle["entry/cam"]
        columns = group["metadata"]
        assert columns["frame"].dtype == np.int64 and columns["exposure"].dtype == np.float64
        assert columns["gain"].dtype == np.float32 and columns["binning"].dtype == np.uint8
        assert columns["open"].dtype == np.bool_
        assert h5py.check_string_dtype(columns["label"].dtype).encoding == "utf-8"
        assert list(columns["frame"][:]) == [0, 1, 2]
        for i in range(3):
            metadata = read_metadata(group, i)
            assert metadata == {**first, "frame": i, "label": f"run-{i}"}
            assert type(metadata["frame"]) is int and type(metadata["open"]) is bool
            row = read_archive_row(group, i)
            assert row["source_name"] == "cam" and row["sequence"] == i and row["received"] > 0
        assert group["archive/committed_length"][0] == 3


def test_late_and_unfit_keys_land_in_the_json_never_dropped(tmp_path: Path) -> None:
    sent = [
        {"frame": 0, "label": "short", "exposure": 1.0},
        {"frame": 1, "label": "x" * 500, "exposure": 2.0, "late": {"nested": [1, 2]}},  # too long, new key
        {"frame": 2, "label": "ok", "exposure": "not a number", "a/b": 3, "big": 2**70},  # other type, bad name
        {"frame": 3, "exposure": float("nan")},  # label absent
        {"frame": 2**63, "label": "ok", "exposure": 0.5},  # out of int64 range
    ]
    with Hdf5Container(tmp_path / "run.h5", DATASET) as container:
        for i, metadata in enumerate(sent):
            frame = expected_frame(i)
            container.append(ItemKey.of("cam", frame, metadata, i), frame, metadata)
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        group = handle["entry/cam"]
        assert sorted(group["metadata"]) == ["exposure", "frame", "label"]  # only the first frame's keys
        for i, metadata in enumerate(sent):
            read = read_metadata(group, i)
            assert read.keys() == metadata.keys()
            for key, value in metadata.items():
                assert read[key] == value or (np.isnan(read[key]) and np.isnan(value))


def test_source_names_too_long_for_their_column_are_kept(tmp_path: Path) -> None:
    source = "camera-" + "é" * 200
    frame = expected_frame(0)
    with Hdf5Container(tmp_path / "run.h5", DATASET) as container:
        container.append(ItemKey.of(source, frame, {}, None), frame, {})
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        row = read_archive_row(handle["entry/cam"], 0)
    assert row["source_name"] == source and row["sequence"] is None


network_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
    st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)  # fmt: skip
network_metadata = st.dictionaries(st.text(max_size=12), network_values, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(network_metadata, min_size=1, max_size=4))
def test_any_metadata_from_the_network_reads_back_as_sent(tmp_path_factory: pytest.TempPathFactory, sent: Any) -> None:
    path = tmp_path_factory.mktemp("meta") / "run.h5"
    frame = np.zeros((2, 2), dtype=np.uint16)
    with Hdf5Container(path, DATASET) as container:
        for i, metadata in enumerate(sent):
            container.append(ItemKey.of("cam", frame, metadata, i), frame, metadata)
    with h5py.File(path, "r") as handle:
        for i, metadata in enumerate(sent):
            assert read_metadata(handle["entry/cam"], i) == metadata


# ------------------------------------------------------------------------------------------ bad items, duplicates
def test_mismatched_frame_raises_with_both_shapes_and_the_next_frame_appends(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with Hdf5Container(path, DATASET) as container:
        assert append(container, 0) == 0
        with pytest.raises(ItemMismatchError) as shape_error:
            append(container, 1, data=np.zeros((3, 3), dtype=np.uint16))
        message = str(shape_error.value)
        assert "(3, 3)" in message and "(24, 40)" in message and str(path) in message and DATASET in message
        assert isinstance(shape_error.value, PayloadError) and shape_error.value.permanent
        with pytest.raises(ItemMismatchError, match=r"float32.*uint16"):
            append(container, 2, data=expected_frame(2).astype(np.float32))
        with pytest.raises(PayloadError, match="numpy array"):
            container.append(ItemKey("cam", 3, "x"), [1, 2, 3], {})  # type: ignore[arg-type]
        with pytest.raises(PayloadError, match="numpy array"):
            container.append(ItemKey("cam", 3, "y"), np.array(["text"]), {})
        assert append(container, 4) == 1
        report = container.commit()
    assert (report.start, report.stop) == (0, 2)
    with h5py.File(path, "r") as handle:
        assert handle[DATASET].shape[0] == 2
        assert np.array_equal(handle[DATASET][1], expected_frame(4))


def test_a_first_frame_with_an_empty_axis_is_refused_and_the_next_one_starts_the_stack(tmp_path: Path) -> None:
    with Hdf5Container(tmp_path / "run.h5", DATASET) as container:
        with pytest.raises(PayloadError, match=re.escape("(0, 4)")):
            append(container, 0, data=np.zeros((0, 4), dtype=np.uint16))
        assert append(container, 1) == 0
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        assert handle[DATASET].shape == (1, 24, 40)


def test_a_key_already_in_the_container_keeps_its_index(tmp_path: Path) -> None:
    with Hdf5Container(tmp_path / "run.h5", DATASET) as container:
        assert [append(container, i) for i in range(3)] == [0, 1, 2]
        assert append(container, 1) == 1  # pending
        first = container.commit()
        assert append(container, 2) == 2  # committed
        assert container.pending == 0
        assert append(container, 3) == 3
        second = container.commit()
    assert [k.sequence for k in first.keys] == [0, 1, 2]
    assert [k.sequence for k in second.keys] == [3]
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        assert handle[DATASET].shape[0] == 4


def test_commit_reports_are_monotonic_and_empty_when_nothing_is_pending(tmp_path: Path) -> None:
    container = Hdf5Container(tmp_path / "run.h5", DATASET)
    assert container.commit() == CommitReport(container.path, DATASET, 0, 0)
    append(container, 0)
    append(container, 1)
    report = container.commit()
    assert (report.start, report.stop, report.count, container.committed_length) == (0, 2, 2, 2)
    append(container, 2)
    final = container.close()
    assert (final.start, final.stop) == (2, 3)
    assert container.close().count == 0  # closing twice is harmless


# ------------------------------------------------------------------------------------------ files
def test_on_exists_error_refuses_and_unique_picks_a_new_name(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with Hdf5Container(path, DATASET) as container:
        append(container, 0)
    before = path.read_bytes()
    with pytest.raises(TargetExistsError, match=re.escape("run.h5")):
        Hdf5Container(path, DATASET)
    assert path.read_bytes() == before
    names = []
    for _ in range(2):
        with Hdf5Container(path, DATASET, on_exists="unique") as container:
            append(container, 1)
            names.append(container.path.name)
    assert names == ["run-1.h5", "run-2.h5"]
    assert path.read_bytes() == before


def test_a_second_writer_is_refused_while_the_first_has_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with Hdf5Container(path, DATASET) as container:
        append(container, 0)
        container.commit()
        with pytest.raises(heros_archiver.StorageError, match="another archiver"):
            Hdf5Container(path, DATASET, on_exists="append")
        append(container, 1)
    with h5py.File(path, "r") as handle:
        assert handle[DATASET].shape[0] == 2


def test_append_adds_a_second_stack_to_a_closed_file(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with Hdf5Container(path, DATASET) as container:
        append(container, 0)
    with Hdf5Container(path, "entry/other/data", on_exists="append") as container:
        container.append(ItemKey("other", 0, "h"), np.arange(3.0), {"x": 1})
    with h5py.File(path, "r") as handle:
        assert handle[DATASET].shape[0] == 1 and handle["entry/other/data"].shape == (1, 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"dataset_path": "data"}, "inside a group"),
        ({"dataset_path": "entry/../data"}, "inside a group"),
        ({"compression": "lzma"}, "compression must be one of"),
        ({"frames_per_chunk": 0}, "frames_per_chunk"),
        ({"on_exists": "overwrite"}, "on_exists"),
    ],
)
def test_bad_arguments_are_refused_at_construction(tmp_path: Path, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Hdf5Container(tmp_path / "run.h5", **{"dataset_path": DATASET, **arguments})
    assert not (tmp_path / "run.h5").exists()


def test_without_h5py_the_package_imports_and_the_container_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['h5py'] = None\n"
        "import heros_archiver, heros_archiver.sinks.containers, heros_archiver.sinks.containers.hdf5 as hdf5\n"
        "try:\n"
        f"    hdf5.Hdf5Container({str(tmp_path / 'x.h5')!r}, 'a/b')\n"
        "except heros_archiver.ConfigurationError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert "REFUSED" in result.stdout and "pip install 'heros-archiver[hdf5]'" in result.stdout, result.stderr


# ------------------------------------------------------------------------------------------ other processes
@pytest.mark.parametrize("compression", ["none", "bitshuffle-lz4"])
def test_a_swmr_reader_in_another_process_sees_every_committed_frame(tmp_path: Path, compression: Any) -> None:
    path = tmp_path / "run.h5"
    total = 12
    container = Hdf5Container(path, DATASET, frames_per_chunk=2, compression=compression)
    try:
        append(container, 0)
        container.commit()
        with procs.child(
            [sys.executable, str(CHILD), "reader", str(path), DATASET, str(total)], tmp_path / "reader.log", child_env()
        ) as reader:
            procs.wait_until(lambda: "@@ SEEN 1" in reader.output(), what="the reader sees frame 0")
            for i in range(1, total):
                append(container, i)
                if i % 3 == 2 or i == total - 1:
                    stop = container.commit().stop
                    procs.wait_until(lambda s=stop: f"@@ SEEN {s}\n" in reader.output(), what=f"reader sees {stop}")
            code, output = reader.proc.wait(procs.DEADLINE), reader.output()
            assert code == 0 and f"@@ DONE {total}" in output, output
            assert "@@ BAD" not in output, output
    finally:
        container.close()


def test_sigkill_of_the_writer_keeps_every_committed_frame_and_append_resumes(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with procs.child(
        [sys.executable, str(CHILD), "writer", str(path), DATASET, "3"], tmp_path / "writer.log", child_env()
    ) as writer:
        procs.wait_until(lambda: last_committed(writer.output()) >= 30, what="30 frames committed")
        writer.kill()  # SIGKILL, mid-run: the writer appends and commits in a loop
        printed = last_committed(writer.output())

    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")  # what a crashed SWMR writer leaves, until the flags are cleared
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:  # a SWMR reader needs no clearing
        committed = int(handle["entry/cam/archive/committed_length"][0])
    assert committed >= printed  # the kill may come after a commit and before its line

    clear_status_flags(path)
    with h5py.File(path, "r") as handle:
        stack = handle[DATASET]
        assert stack.shape[0] >= committed
        for i in range(committed):
            assert stack[i].tobytes() == expected_frame(i).tobytes(), f"frame {i} differs"
            assert read_metadata(handle["entry/cam"], i) == expected_metadata(i)

    with Hdf5Container(path, DATASET, on_exists="append") as container:
        assert container.committed_length == committed
        assert [append(container, i) for i in range(committed)] == list(range(committed))  # resumed: no duplicates
        assert container.pending == 0
        assert append(container, committed) == committed
        assert container.commit().keys[0].sequence == committed
    with h5py.File(path, "r") as handle:
        stack = handle[DATASET]
        assert stack.shape[0] == committed + 1
        assert [read_archive_row(handle["entry/cam"], i)["sequence"] for i in range(committed + 1)] == list(
            range(committed + 1)
        )
        assert all(stack[i].tobytes() == expected_frame(i).tobytes() for i in range(committed + 1))


def test_append_after_a_kill_without_clearing_recovers_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with procs.child(
        [sys.executable, str(CHILD), "writer", str(path), DATASET, "4"], tmp_path / "writer.log", child_env()
    ) as writer:
        procs.wait_until(lambda: last_committed(writer.output()) >= 8, what="8 frames committed")
        writer.kill()
        printed = last_committed(writer.output())
    with Hdf5Container(path, DATASET, on_exists="append") as container:
        committed = container.committed_length
        assert committed >= printed and committed % 4 == 0
        assert append(container, committed - 1) == committed - 1
        append(container, committed)
    with h5py.File(path, "r") as handle:
        assert handle[DATASET].shape[0] == committed + 1
        assert handle["entry/cam/archive/item_key"].shape[0] == committed + 1


def test_frames_of_an_unfinished_commit_are_cut_off_at_reopen(tmp_path: Path) -> None:
    """The state a kill between a commit's two flushes leaves: rows written, committed_length not yet."""
    path = tmp_path / "run.h5"
    with Hdf5Container(path, DATASET) as container:
        for i in range(3):
            append(container, i)
    with h5py.File(path, "a") as handle:
        group = handle["entry/cam"]
        for dataset in [group["data"], *group["archive"].values(), *group["metadata"].values()]:
            if dataset.name.endswith("committed_length"):
                continue
            dataset.resize(dataset.shape[0] + 2, axis=0)
    with Hdf5Container(path, DATASET, on_exists="append") as container:
        assert container.committed_length == 3
        assert append(container, 3) == 3
    with h5py.File(path, "r") as handle:
        group = handle["entry/cam"]
        assert group["data"].shape[0] == 4 and group["archive/item_key"].shape[0] == 4
        assert all(group["data"][i].tobytes() == expected_frame(i).tobytes() for i in range(4))
        assert [read_metadata(group, i) for i in range(4)] == [expected_metadata(i) for i in range(4)]


def test_fsync_commits_and_the_capabilities_say_what_the_container_does(tmp_path: Path) -> None:
    capabilities = Hdf5Container.capabilities
    assert capabilities.supports_swmr and capabilities.supports_append and capabilities.needs_single_writer
    with Hdf5Container(tmp_path / "run.h5", DATASET, fsync=True, swmr=False) as container:
        append(container, 0)
        assert container.commit().count == 1
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        assert handle[DATASET][0].tobytes() == expected_frame(0).tobytes()


def test_writers_killed_again_and_again_lose_and_repeat_no_committed_frame(tmp_path: Path) -> None:
    """Three writers in turn, each reopening the file with append after the previous one's SIGKILL."""
    path = tmp_path / "run.h5"
    printed = 0
    for run in range(3):
        with procs.child(
            [sys.executable, str(CHILD), "writer", str(path), DATASET, "2"], tmp_path / f"writer{run}.log", child_env()
        ) as writer:
            procs.wait_until(lambda w=writer, p=printed: last_committed(w.output()) >= p + 10, what="10 more frames")
            writer.kill()
            printed = last_committed(writer.output())
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        group = handle["entry/cam"]
        committed = int(group["archive/committed_length"][0])
        assert committed >= printed
        sequences = group["archive/sequence"][:committed]
        assert list(sequences) == list(range(committed))  # in order, none twice, none missing
        assert all(group["data"][i].tobytes() == expected_frame(i).tobytes() for i in range(committed))


def test_attributes_are_written_before_swmr_and_kept_at_reopen(tmp_path: Path) -> None:
    config = {"exposure_s": 0.01, "frame_count": 100, "mode": "continuous", "roi": [0, 0, 64, 64], "on": True}
    path = tmp_path / "run.h5"
    with Hdf5Container(path, DATASET, attributes=config) as container:
        append(container, 0)
    with Hdf5Container(path, DATASET, on_exists="append", attributes={"mode": "other", "run": "r2"}) as container:
        append(container, 1)
    with h5py.File(path, "r") as handle:
        attributes = handle["entry/cam/configuration"].attrs
        assert attributes["exposure_s"] == 0.01 and attributes["frame_count"] == 100 and attributes["on"]
        assert attributes["mode"] == "continuous" and attributes["run"] == "r2"
        assert list(attributes["json_attributes"]) == ["roi"]
        assert json.loads(attributes["roi"]) == [0, 0, 64, 64]


@pytest.mark.parametrize("dtype", ["<u2", ">i4", "u1", "<f8"])
def test_small_frames_are_written_through_the_reused_staging_buffer_in_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    """A commit larger than the staging buffer is written a block at a time, every frame in its place, in the
    byte order it arrived in; the buffer is reused by the next commit."""
    monkeypatch.setattr(hdf5_module, "STAGING_BYTES", 7 * 12 * np.dtype(dtype).itemsize)  # 7 frames of 3x4
    frames = [(np.arange(12) + 100 * i).reshape(3, 4).astype(dtype) for i in range(40)]
    container = Hdf5Container(tmp_path / "run.h5", "cam/data")
    for index, frame in enumerate(frames):
        container.append(ItemKey("cam", index, f"{index:032x}"), frame, {"frame": index})
        if index in (22, 39):  # 23 frames (4 blocks), then 17 (3 blocks)
            container.commit()
    container.close()
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        stored = handle["cam/data"]
        assert stored.dtype == np.dtype(dtype) and stored.shape == (40, 3, 4)
        np.testing.assert_array_equal(stored[()], np.stack(frames))


def test_stacked_blocks_of_empty_frames_is_one_block() -> None:
    frames = [np.zeros((0, 5), dtype="<u2") for _ in range(3)]
    [(offset, block)] = list(hdf5_module.stacked_blocks(frames, (0, 5), np.dtype("<u2")))
    assert offset == 0 and block.shape == (3, 0, 5)
