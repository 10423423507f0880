"""The spool gives back exactly what entered it (issue 13, item 1): types, dtypes, byte order, shapes, keys.

Property tests generate payloads and metadata as a network or a script could send them; an item must
leave the spool equal to the item that entered it, compared strictly (type identity, dtype with byte
order, shape, the bytes of every value, NaN included), and a file written after the spool must be
byte-identical to the file written directly.
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math
import os
import pickle
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from heros_archiver.errors import ArchiverError, ReplayError, UnfaithfulError
from heros_archiver.formats.json import encode_json
from heros_archiver.pipeline.payload import estimate_nbytes
from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks.writer import FileWriter, WriterSettings
from heros_archiver.state import faithful
from heros_archiver.state.deadletter import DeadLetterStore
from heros_archiver.state.spool import Spool

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------------------ strict comparison


def assert_same(expected: Any, actual: Any, where: str = "item") -> None:
    """``actual`` is ``expected``'s equal in every way a file or a template could tell apart."""
    assert type(actual) is type(expected), f"{where}: type {type(actual)} != {type(expected)}"
    if isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and actual.dtype.str == expected.dtype.str, f"{where}: dtype"
        assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
        if isinstance(expected, np.ma.MaskedArray):
            assert_same(np.ma.getmaskarray(expected), np.ma.getmaskarray(actual), f"{where}.mask")
            assert_same(expected.data, actual.data, f"{where}.data")
        elif expected.dtype.hasobject:
            for index in np.ndindex(expected.shape):
                assert_same(expected[index], actual[index], f"{where}[{index}]")
        else:
            assert actual.tobytes() == expected.tobytes(), f"{where}: values differ"
    elif isinstance(expected, np.generic):
        assert actual.dtype.str == expected.dtype.str and actual.tobytes() == expected.tobytes(), where
    elif isinstance(expected, float):
        assert (math.isnan(expected) and math.isnan(actual)) or actual == expected, f"{where}: {actual} != {expected}"
        assert math.copysign(1, actual) == math.copysign(1, expected), f"{where}: sign of {actual}"
    elif isinstance(expected, complex):
        assert_same(expected.real, actual.real, f"{where}.real")
        assert_same(expected.imag, actual.imag, f"{where}.imag")
    elif isinstance(expected, dict):
        assert len(actual) == len(expected), f"{where}: {len(actual)} keys != {len(expected)}"
        for (key, value), (got_key, got_value) in zip(expected.items(), actual.items(), strict=True):
            assert_same(key, got_key, f"{where} key {key!r}")
            assert_same(value, got_value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{where}: length"
        for index, (value, got) in enumerate(zip(expected, actual, strict=True)):
            assert_same(value, got, f"{where}[{index}]")
    elif isinstance(expected, (datetime.datetime, datetime.time)):
        assert actual == expected and actual.tzinfo == expected.tzinfo and actual.fold == expected.fold, where
    elif isinstance(expected, decimal.Decimal):
        assert str(actual) == str(expected), where
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


# ------------------------------------------------------------------------------------------ what can arrive

_DTYPES = st.one_of(
    npst.boolean_dtypes(),
    npst.integer_dtypes(endianness="?"),
    npst.unsigned_integer_dtypes(endianness="?"),
    npst.floating_dtypes(endianness="?"),
    npst.complex_number_dtypes(endianness="?"),
    npst.datetime64_dtypes(endianness="?"),
    npst.timedelta64_dtypes(endianness="?"),
    npst.byte_string_dtypes(max_len=4),
    npst.unicode_string_dtypes(endianness="?", max_len=4),
    npst.array_dtypes(npst.integer_dtypes(endianness="?") | npst.floating_dtypes(endianness="?"), max_size=3),
)


@st.composite
def _arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of any of those dtypes and shapes, C-ordered, Fortran-ordered or non-contiguous views."""
    array = draw(npst.arrays(_DTYPES, npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
    layout = draw(st.sampled_from(["c", "fortran", "strided", "transposed"]))
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:
        return array[::2]
    if layout == "transposed":
        return array.T
    return array


_NUMPY_SCALARS = _arrays().map(lambda array: array.reshape(-1)[0] if array.size else np.zeros((), array.dtype)[()])
_HASHABLE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # any size: CBOR and Python have no 64-bit limit
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.builds(PurePosixPath, st.text(max_size=8)),
)
_KEYS = st.one_of(
    st.text(max_size=8), st.integers(), st.none(), st.binary(max_size=4), st.tuples(st.integers(), st.text(max_size=3))
)
#: What heros' CBOR decoder returns for CBOR it has no Python type for: it arrives over the network too.
_CBOR = st.one_of(
    st.builds(cbor2.CBORTag, st.integers(256, 2**32), st.text(max_size=4) | st.integers()),
    st.builds(cbor2.CBORSimpleValue, st.integers(32, 255)),
    st.just(cbor2.undefined),
)
_LEAVES = st.one_of(_HASHABLE, st.floats(), st.complex_numbers(), _NUMPY_SCALARS, _arrays(), _CBOR)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_KEYS, inner, max_size=3),
        st.frozensets(_HASHABLE, max_size=3),
        st.sets(_HASHABLE, max_size=3),
    ),
    max_leaves=12,
)
_METADATA = st.dictionaries(_KEYS, _VALUES, max_size=6)


def _through_spool(directory: Path, payload: Any, metadata: dict[Any, Any]) -> tuple[Item, Item]:
    """(the item put into a fresh spool at ``directory``, the item taken out of it)."""
    spool = Spool(directory, "acquisition_data")
    item = Item("cam", payload, metadata, estimate_nbytes(payload), received=1234.5, attempts=2)
    spool.put(item)
    taken = spool.take(timeout=1)
    assert isinstance(taken, Item), taken
    return item, taken


@PROPERTY
@given(payload=_VALUES, metadata=_METADATA)
def test_an_item_leaves_the_spool_as_it_entered(tmp_path: Path, payload: Any, metadata: dict[Any, Any]) -> None:
    item, taken = _through_spool(tmp_path / uuid.uuid4().hex, payload, metadata)
    assert_same(item.payload, taken.payload, "payload")
    assert_same(item.metadata, taken.metadata, "metadata")
    assert (taken.source, taken.nbytes, taken.received, taken.attempts) == ("cam", item.nbytes, 1234.5, 2)


@pytest.mark.parametrize(
    ("payload", "metadata"),
    [
        (np.float32(1.5), {"frame": np.int64(7)}),
        (np.arange(6, dtype=">u2").reshape(2, 3), {(1, 2): "tuple key", 3: "int key", b"k": b"\x00\xff"}),
        (np.ma.masked_array([1.0, 2.0, np.nan], mask=[0, 1, 0]), {"when": datetime.datetime(2026, 12, 1, 20, 0)}),
        (decimal.Decimal("1.10"), {"tags": {"a", "b"}, "shape": (4, 3), "big": 2**100}),
    ],
    ids=["float32-scalar", "big-endian-and-odd-keys", "masked-array-and-datetime", "decimal-set-tuple-bigint"],
)
def test_known_cases_leave_the_spool_as_they_entered(tmp_path: Path, payload: Any, metadata: dict[Any, Any]) -> None:
    """The cases issue 13 names: each came back changed from the JSON-based spool."""
    item, taken = _through_spool(tmp_path / "spool", payload, metadata)
    assert_same(item.payload, taken.payload, "payload")
    assert_same(item.metadata, taken.metadata, "metadata")


def _written(root: Path, fmt: str, payload: Any, metadata: dict[Any, Any]) -> bytes | str:
    """The bytes FileWriter writes for the item under ``root``, or the error it raises instead."""
    writer = FileWriter(WriterSettings(fmt, f"{{{{ name }}}}.{fmt}", str(root)))  # type: ignore[arg-type]
    try:
        [path] = writer.write("cam", payload, metadata)
    except (ArchiverError, OSError) as exc:
        return type(exc).__name__
    return Path(path).read_bytes()


@PROPERTY
@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")  # non-ASCII field names: numpy's own note
@given(payload=_arrays(), metadata=_METADATA)
def test_an_npy_file_written_after_the_spool_is_the_one_written_directly(
    tmp_path: Path, payload: np.ndarray, metadata: dict[Any, Any]
) -> None:
    base = tmp_path / uuid.uuid4().hex
    metadata = {**metadata, "name": "frame"}
    _, taken = _through_spool(base / "spool", payload, metadata)
    direct = _written(base / "direct", "npy", payload, metadata)
    assert _written(base / "spooled", "npy", taken.payload, taken.metadata) == direct


_JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=4), st.datetimes()
)
_JSON_DICTS = st.dictionaries(
    st.text(max_size=6) | st.integers(),
    st.recursive(
        st.one_of(_JSON_LEAVES, _NUMPY_SCALARS, _arrays()),
        lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple),
        max_leaves=8,
    ),
    max_size=5,
)


@PROPERTY
@given(payload=_JSON_DICTS)
def test_a_json_file_written_after_the_spool_is_the_one_written_directly(tmp_path: Path, payload: dict) -> None:
    base = tmp_path / uuid.uuid4().hex
    metadata = {"name": "reading", "frame": 1}
    _, taken = _through_spool(base / "spool", payload, metadata)
    direct = _written(base / "direct", "json", payload, metadata)
    assert _written(base / "spooled", "json", taken.payload, taken.metadata) == direct


# ------------------------------------------------------------------------------------------ what is refused


class _Custom:
    """A class the faithful encoding does not know (an application's own type)."""


def test_an_item_the_spool_cannot_keep_exactly_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "acquisition_data")
    with pytest.raises(UnfaithfulError, match="_Custom"):
        spool.put(Item("cam", np.zeros(3), {"calibration": _Custom()}, 100))
    assert len(spool) == 0 and list(spool.store.entries()) == []
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").iterdir())


class _Planted:
    """What an attacker would plant: a pickle that runs a command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_runs_nothing_and_the_entry_is_unreadable(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl")
    entry = store.put(source="cam", event="e", payload=np.zeros(2), metadata={}, error="x", attempts=1)
    marker = tmp_path / "pwned"
    planted = pickle.dumps((_Planted(marker), {}))
    (entry / "item.pickle").write_bytes(planted)
    info = json.loads((entry / "entry.json").read_text())
    info["faithful"] = {"pickle": [0, len(planted)], "buffers": []}
    (entry / "entry.json").write_text(json.dumps(info))
    with pytest.raises(ReplayError, match=r"posix\.system"):
        store.load(entry)
    assert not marker.exists()


def test_a_big_endian_array_in_a_json_payload_is_written() -> None:
    """Found by the property test above: orjson refuses a contiguous big-endian array instead of falling
    back, so such a payload was a PayloadError unless it was a view (and a spooled view is contiguous)."""
    assert encode_json({"a": np.array([1, 258], dtype=">i2")}) == encode_json({"a": [1, 258]})


def test_copies_written_before_the_subpackages_still_read_back() -> None:
    """Spool and dead-letter entries outlive an upgrade: copies that name the module by its old path
    (``heros_archiver.faithful``, before it moved into ``state/``) read back as the same values."""
    value = {"tag": cbor2.CBORTag(4711, [1, 2]), "simple": cbor2.CBORSimpleValue(99)}
    stream = io.BytesIO()
    faithful._Pickler(stream, protocol=2).dump(value)  # protocol 2 names its globals as text: "module\nname\n"
    current = stream.getvalue()
    assert b"heros_archiver.state.faithful\n" in current
    old = current.replace(b"heros_archiver.state.faithful\n", b"heros_archiver.faithful\n")
    assert faithful.decode(old, []) == value
    with pytest.raises(UnfaithfulError, match=r"heros_archiver\.elsewhere\._cbor_tag"):
        faithful.decode(current.replace(b"heros_archiver.state.faithful\n", b"heros_archiver.elsewhere\n"), [])
