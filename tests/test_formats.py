"""The file formats, property-based: whatever array or dict a device sends reads back as it was sent.

Payloads come from the network, so the strategies cover what a sender can produce (every numpy dtype,
byte order and shape, 0-d and empty arrays, strided views; nested dicts with numpy values and the odd
float), and each check loads the written bytes with numpy / a strict JSON parser, as a user would.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from heros_archiver import PayloadError
from heros_archiver.formats.base import Content
from heros_archiver.formats.json import JsonFormat
from heros_archiver.formats.npy import NpyFormat
from heros_archiver.sinks.writer import FileWriter, WriterSettings

PROPERTY_ROOT = "/srv/heros-archiver-formats-root"  # never created: planning writes nothing

DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="="),
    hnp.complex_number_dtypes(endianness="="),
    hnp.integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness=">"),
    hnp.datetime64_dtypes(),
    hnp.timedelta64_dtypes(),
)
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))


def _load_npy(content: Content) -> np.ndarray:
    return np.load(io.BytesIO(b"".join(bytes(chunk) for chunk in content)), allow_pickle=False)


def _assert_same_array(loaded: np.ndarray, sent: np.ndarray) -> None:
    """Same shape, dtype (byte order included) and bytes: NaN payloads and -0.0 must survive too."""
    assert loaded.shape == sent.shape
    assert loaded.dtype == sent.dtype
    assert loaded.tobytes() == np.ascontiguousarray(sent).tobytes()


@settings(max_examples=300, deadline=None, database=None)
@given(array=ARRAYS, layout=st.sampled_from(["as sent", "fortran", "every other"]))
def test_npy_reads_back_as_sent(array: np.ndarray, layout: str) -> None:
    if layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "every other" and array.ndim:
        array = array[::2]  # a strided view, not contiguous
    _assert_same_array(_load_npy(NpyFormat().prepare(array)), array)


@settings(max_examples=100, deadline=None, database=None)
@given(value=st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(), st.complex_numbers()))
def test_npy_scalar_payload_stays_a_scalar(value: Any) -> None:
    """A number (or numpy scalar) is stored as a 0-d array, as ``np.save`` stores it."""
    for payload in (value, np.asarray(value)[()], np.asarray(value)):
        _assert_same_array(_load_npy(NpyFormat().prepare(payload)), np.asarray(value))


@settings(max_examples=150, deadline=None, database=None)
@given(array=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)))
def test_split_parts_read_back_as_the_slices_sent(array: np.ndarray) -> None:
    """split_data_array: file ``i`` holds ``array[i]``, also when that slice is a 0-d scalar."""
    writer = FileWriter(
        WriterSettings("npy", "{{ file_path }}/f-{{ _split_index }}.npy", PROPERTY_ROOT, split_data_array=True)
    )
    planned = writer.plan("cam", array, {"file_path": PROPERTY_ROOT})
    assert [path.name for path, _ in planned] == [f"f-{i}.npy" for i in range(array.shape[0])]
    for index, (_path, content) in enumerate(planned):
        _assert_same_array(_load_npy(content), array[index])


@pytest.mark.parametrize("payload", [{"a": 1}, "text", b"bytes", None, np.array([{"a": 1}], dtype=object)])
def test_npy_refuses_what_would_need_pickling(payload: Any) -> None:
    with pytest.raises(PayloadError, match="expected a numpy array"):
        NpyFormat().prepare(payload)


NUMPY_SCALARS = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(np.int32),
    st.integers(0, 2**64 - 1).map(np.uint64),
    st.floats(width=32).map(np.float32),
    st.floats().map(np.float64),
    st.booleans().map(np.bool_),
)
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(),
    NUMPY_SCALARS,
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
        hnp.arrays(hnp.floating_dtypes(endianness="="), hnp.array_shapes(max_dims=2, max_side=3)),
    ),
    max_leaves=20,
)


class _InPrecision:
    """Equal to a number that is ``value`` in ``dtype``: a float32 / float16 is written with the shortest
    digits that give it back in its own precision (``0.2012`` for float16's 0.201171875), not as float64."""

    def __init__(self, value: float, dtype: np.dtype[Any]) -> None:
        self.value, self.dtype = value, dtype

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (int, float)) and self.dtype.type(other) == self.dtype.type(self.value)

    def __repr__(self) -> str:
        return f"{self.value!r} as {self.dtype}"


def _as_json_reads_it(value: Any) -> Any:
    """What a strict JSON reader must get back for ``value`` (README: NaN/inf -> null, numpy -> plain)."""
    if isinstance(value, np.ndarray):
        return _as_json_reads_it(list(value) if value.ndim else value[()])
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        return _InPrecision(float(value), value.dtype) if np.isfinite(value) else None
    if isinstance(value, np.generic):
        return _as_json_reads_it(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_as_json_reads_it(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_json_reads_it(item) for key, item in value.items()}
    return value


def _strict_json(data: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(data, parse_constant=refuse)


@settings(max_examples=300, deadline=None, database=None)
@given(payload=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6))
def test_json_reads_back_as_sent(payload: dict[str, Any]) -> None:
    (data,) = JsonFormat().prepare(payload)
    assert _strict_json(bytes(data)) == _as_json_reads_it(payload)


def test_json_keeps_integers_beyond_64_bits(tmp_path: Path) -> None:
    """CBOR (and Python) carry integers of any size; JSON has no limit either, so none is refused."""
    payload = {"big": 2**70, "negative": -(2**65), "nested": [2**64, {"x": 10**30}], "nan": float("nan")}
    (data,) = JsonFormat().prepare(payload)
    assert _strict_json(bytes(data)) == {
        "big": 2**70,
        "negative": -(2**65),
        "nested": [2**64, {"x": 10**30}],
        "nan": None,
    }


#: Keys that JSON writes alike in pairs: 1 / "1", None / "null", True / "true", 1.5 / "1.5", a big integer / its digits.
COLLIDING_KEYS = st.sampled_from([1, "1", None, "null", True, "true", False, "false", 1.5, "1.5", 2**70, str(2**70)])


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"an object with a repeated member name: {names}"
    return dict(pairs)


def _count_members(value: Any) -> int:
    """Object members in ``value`` at every depth (as written: before parsing, keys may repeat)."""
    if isinstance(value, dict):
        return len(value) + sum(_count_members(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_members(item) for item in value)
    return 0


@settings(max_examples=300, deadline=None, database=None)
@given(
    payload=st.recursive(
        st.dictionaries(COLLIDING_KEYS, st.integers(), max_size=4),
        lambda children: st.dictionaries(COLLIDING_KEYS, children, max_size=3),
        max_leaves=12,
    )
)
def test_json_never_merges_keys_silently(payload: dict[Any, Any]) -> None:
    """Either the item is refused, or every key of every object arrives: a reader keeps no fewer values."""
    try:
        (data,) = JsonFormat().prepare(payload)
    except PayloadError as exc:
        assert "distinct" in str(exc), exc
        return
    parsed = json.loads(bytes(data), object_pairs_hook=_pairs_without_duplicates)
    assert _count_members(parsed) == _count_members(payload)


@pytest.mark.parametrize(
    ("payload", "keys"),
    [
        ({1: "int", "1": "text"}, "1 and '1'"),
        ({"inner": {None: 1, "null": 2}}, "None and 'null'"),
        ({"big": 2**70, 2**70: 1, str(2**70): 2}, f"{2**70} and '{2**70}'"),
    ],
)
def test_json_refuses_keys_written_alike(payload: dict[Any, Any], keys: str) -> None:
    with pytest.raises(PayloadError, match=keys):
        JsonFormat().prepare(payload)
