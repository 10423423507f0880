"""The benchmark harness reads the frame index from a raw heros payload exactly as heros would decode it, and
reads back every committed frame of an HDF5 run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from heros import serdes
from hypothesis import given, settings
from hypothesis import strategies as st

from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.hdf5 import Hdf5Container


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_harness", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_harness", module)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@settings(max_examples=40, deadline=None)
@given(
    index=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 300), st.integers(2, 300)),
    metadata_size=st.integers(0, 2000),
)
def test_wire_index_reads_the_stamp_of_a_heros_frame(index: int, shape: tuple[int, int], metadata_size: int) -> None:
    frame = bench.base_frame(shape)
    bench.stamp(frame, index)
    raw = serdes.serialize((frame, {"frame": index, "t_send": 1.5, "pad": "x" * metadata_size}))
    decoded, _meta = serdes.deserialize(raw)
    assert bench.frame_index(decoded) == index
    assert bench.wire_index(raw) == index


def _committed_stack(path: Path, frames: list[np.ndarray]) -> None:
    """An HDF5 file as Hdf5Archiver writes it (the real container), every frame committed."""
    container = Hdf5Container(path, "cam1/data")
    for k, frame in enumerate(frames):
        container.append(ItemKey.of("cam1", frame, None, k), frame, {"frame": k}, received=100.0 + k)
    container.close()


@pytest.mark.parametrize("pixels", bench.PIXELS)
def test_verify_hdf5_loads_every_committed_frame_and_times_it_by_its_commit(tmp_path: Path, pixels: str) -> None:
    shape = (8, 6)
    frames = []
    for i in (0, 1, 2, 2, 4, 5):  # frame 2 twice (a duplicate), frame 3 never (lost)
        frame = bench.base_frame(shape, pixels)
        bench.stamp(frame, i)
        frames.append(frame)
    frames[5][3, 3] ^= 1  # frame 5 arrives with one pixel changed
    _committed_stack(tmp_path / "run.h5", frames)
    commits = [[10.0, 0], [11.0, 4], [12.0, 6]]  # rows 0-3 committed by t=11, rows 4-5 by t=12

    good, bad, dup, partial, by_received = bench.verify_hdf5(tmp_path, 6, shape, {"commits": commits}, pixels)

    assert sorted(good) == [0, 1, 2, 4]
    assert (bad, dup, partial, by_received) == (1, 1, None, 0)
    assert good[0] == good[1] == 11.0 and good[4] == 12.0


def test_verify_hdf5_times_frames_committed_after_the_last_poll_by_their_receipt(tmp_path: Path) -> None:
    shape = (4, 4)
    frames = []
    for i in range(3):
        frame = bench.base_frame(shape)
        bench.stamp(frame, i)
        frames.append(frame)
    _committed_stack(tmp_path / "run.h5", frames)

    good, bad, dup, _partial, by_received = bench.verify_hdf5(tmp_path, 3, shape, {"commits": [[10.0, 0], [11.0, 2]]})

    assert (bad, dup, by_received) == (0, 0, 1)
    assert good == {0: 11.0, 1: 11.0, 2: 102.0}


def test_the_swmr_reader_of_the_hdf5_swmr_rows_polls_a_growing_file(tmp_path: Path) -> None:
    """bench.py's `_reader` child opens the archiver's file with SWMR while it grows, reads the newest frame
    at each poll, and reports what it saw at STOP."""
    data, meta = tmp_path / "data", tmp_path / "meta"
    data.mkdir()
    meta.mkdir()
    spec = {"data": str(data), "meta": str(meta), "poll": 0.01, "max_life": 60}
    reader = bench.Child("_reader", spec, None, meta / "reader.log")
    container = Hdf5Container(data / "run.h5", "cam1/data")
    try:
        reader.expect("READY", bench.time.time() + 30)
        frame = bench.base_frame((8, 6))
        for k in range(3):
            bench.stamp(frame, k)
            container.append(ItemKey.of("cam1", frame, None, k), frame.copy(), {"frame": k})
            container.commit()
        bench.time.sleep(0.5)  # 50 polls
        reader.send("STOP")
        stats = reader.expect("BYE", bench.time.time() + 30)
    finally:
        reader.stop(10)
        container.close()
    assert stats["seen"] == 3 and stats["frames_read"] >= 1 and stats["polls"] >= 1, stats


@pytest.mark.parametrize("pixels", bench.PIXELS)
def test_verify_zarr_append_loads_every_committed_frame_and_times_it_by_its_commit(tmp_path: Path, pixels: str) -> None:
    from heros_archiver.sinks.containers.zarr_append import ZarrAppendContainer

    shape = (8, 6)
    frames = []
    for i in (0, 1, 2, 2, 4, 5):  # frame 2 twice (a duplicate), frame 3 never (lost)
        frame = bench.base_frame(shape, pixels)
        bench.stamp(frame, i)
        frames.append(frame)
    frames[5][3, 3] ^= 1  # frame 5 arrives with one pixel changed
    with ZarrAppendContainer(tmp_path / "run.zarr", "cam1/data", frames_per_shard=4) as container:
        for k, frame in enumerate(frames):
            container.append(ItemKey(f"cam1-{k}", k, "0" * 32), frame, {"frame": k}, received=100.0 + k)
    commits = [[10.0, 0], [11.0, 4], [12.0, 6]]  # rows 0-3 committed by t=11, rows 4-5 by t=12

    good, bad, dup, partial, by_received = bench.verify_zarr_append(tmp_path, 6, shape, {"commits": commits}, pixels)

    assert sorted(good) == [0, 1, 2, 4]
    assert (bad, dup, partial, by_received) == (1, 1, None, 0)
    assert good[0] == good[1] == 11.0 and good[4] == 12.0
