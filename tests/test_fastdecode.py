"""The zero-copy decoder gives exactly what heros' own decoder gives, or steps aside."""

from __future__ import annotations

import numpy as np
from heros import serdes
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from heros_archiver.transport.fastdecode import decode_frame_event

DTYPES = st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "complex64", "bool", ">u2", "<f8"])
METADATA = st.dictionaries(
    st.text(max_size=10),
    st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=20), st.none()),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(
    array=DTYPES.flatmap(lambda dt: arrays(dt, array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40))),
    padding=st.integers(0, 70_000),
    metadata=METADATA,
)
def test_matches_heros_decoder(array: np.ndarray, padding: int, metadata: dict[str, object]) -> None:
    metadata = {**metadata, "pad": "x" * padding}  # crosses the size threshold in some examples
    raw = serdes.serialize((array, metadata))
    expected = serdes.deserialize(raw)
    decoded = decode_frame_event(raw)
    if decoded is None:
        assert len(raw) < 1 << 16, "a large camera payload should take the fast path"
        return
    got_array, got_metadata = decoded
    assert got_array.dtype == expected[0].dtype and got_array.shape == expected[0].shape
    assert np.array_equal(got_array, expected[0], equal_nan=got_array.dtype.kind in "fc")
    assert got_metadata == expected[1]
    assert not got_array.flags.writeable, "a view into the received buffer must stay read-only"


def test_large_frame_is_a_view_not_a_copy() -> None:
    frame = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
    raw = serdes.serialize((frame, {"frame": 3}))
    decoded = decode_frame_event(raw)
    assert decoded is not None
    array, metadata = decoded
    assert metadata == {"frame": 3} and np.array_equal(array, frame)
    assert array.base is not None and np.shares_memory(array, np.frombuffer(raw, dtype=np.uint8))


@given(st.one_of(st.binary(max_size=200), st.just(serdes.serialize({"not": "a frame"}))))
def test_anything_else_falls_back(raw: bytes) -> None:
    assert decode_frame_event(raw) is None


def test_other_payload_shapes_fall_back() -> None:
    big = np.zeros(100_000, dtype=np.uint8)
    for payload in ([big, {"a": 1}, 3], {"data": big}, (big.tolist()[:10], {"a": 1}), (big, [1, 2])):
        raw = serdes.serialize(payload)
        decoded = decode_frame_event(raw)
        if decoded is not None:  # only the exact (ndarray, x) form may be decoded, and then faithfully
            expected = serdes.deserialize(raw)
            assert np.array_equal(decoded[0], expected[0]) and decoded[1] == expected[1]
