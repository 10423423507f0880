"""The queue's byte bound counts what an item really holds: payload and metadata, at every depth."""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import RigFactory
from helpers import wait_until
from heros_archiver import HERODataArchiver
from heros_archiver.pipeline.payload import estimate_nbytes, item_nbytes

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


def reference_size(value: Any) -> int:
    """Deep size measured another way: every distinct object reached through ``gc.get_referents`` with its
    ``sys.getsizeof``, plus the data of array views (which ``getsizeof`` leaves out). Slow and recursive."""
    seen: set[int] = set()

    def walk(obj: Any) -> int:
        if id(obj) in seen or isinstance(obj, type):
            return 0
        seen.add(id(obj))
        size = sys.getsizeof(obj)
        if isinstance(obj, np.ndarray):
            size += 0 if obj.base is None else obj.nbytes
            if obj.dtype.hasobject:
                size += sum(walk(element) for element in obj.ravel().tolist())
            return size
        return size + sum(walk(referent) for referent in gc.get_referents(obj))

    return walk(value)


arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.complex64, np.dtype(">u4")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=8),
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=200)
    | arrays
    | arrays.map(lambda a: a[..., ::2] if a.ndim else a)  # views, whose data belongs to another array
    | st.builds(np.float32, st.floats(width=32, allow_nan=False))
)
keys = st.text(max_size=10) | st.integers() | st.tuples(st.integers(), st.text(max_size=3)) | st.binary(max_size=8)
nested = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(payload=nested, metadata=st.dictionaries(st.text(max_size=10) | st.integers(), nested, max_size=8))
def test_the_estimate_is_never_below_the_deep_size(payload: Any, metadata: dict[Any, Any]) -> None:
    assert estimate_nbytes(payload) >= reference_size(payload)
    assert estimate_nbytes(metadata) >= reference_size(metadata)
    assert item_nbytes(payload, metadata) >= reference_size((payload, metadata)) - sys.getsizeof((1, 2))


def test_nesting_of_any_depth_and_cycles_are_counted_without_recursion() -> None:
    deep: Any = np.zeros(MiB, dtype=np.uint8)
    for _ in range(100_000):  # far beyond the interpreter's recursion limit
        deep = [deep]
    assert estimate_nbytes(deep) >= MiB + 100_000 * sys.getsizeof([0])
    cyclic: dict[str, Any] = {"data": np.zeros(MiB, dtype=np.uint8)}
    cyclic["self"] = cyclic
    looped: list[Any] = [cyclic]
    looped.append(looped)
    assert MiB <= estimate_nbytes(looped) < 2 * MiB


class GatedArchiver(HERODataArchiver):
    """Storage that waits until the test opens the gate, then keeps nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gate = threading.Event()
        super().__init__(*args, **kwargs)

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        self.gate.wait(30)


def _nested(value: Any, depth: int) -> Any:
    for level in range(depth):
        value = {f"level{level}": value}
    return value


@pytest.mark.parametrize("where", ["payload", "metadata"])
def test_items_of_8_mib_nested_four_deep_fill_the_byte_bound(make_rig: RigFactory, where: str) -> None:
    """40 events of 8 MiB (zeroed arrays: the pages are never touched, so the test costs no memory)."""
    max_bytes = 32 * MiB
    rig = make_rig(None, archiver_cls=GatedArchiver, overflow="drop", max_queue_bytes=max_bytes)
    archiver: Any = rig.archiver
    for frame in range(40):
        blob = _nested(np.zeros(8 * MiB, dtype=np.uint8), 4)
        if where == "payload":
            archiver.feed("cam", (blob, {"frame": frame}))
        else:
            archiver.feed("cam", (np.zeros(4), {"frame": frame, "extra": blob}))
        if frame == 0:
            wait_until(lambda: archiver.stats()["queue"]["items"] == 0, what="the writer to hold the first item")
    stats = archiver.stats()
    queue, total = stats["queue"], stats["total"]
    # one item is with the (gated) writer, three fill 32 MiB, the rest are dropped as the policy says
    assert queue["items"] == 3, queue
    assert 24 * MiB < queue["bytes"] <= max_bytes, queue
    assert total["dropped"] == 40 - 1 - queue["items"], total
    archiver.gate.set()
