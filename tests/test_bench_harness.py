"""The benchmark harness reads the frame index from a raw heros payload exactly as heros would decode it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from heros import serdes
from hypothesis import given, settings
from hypothesis import strategies as st


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
