"""The per-file TIFF format: any array TIFF can hold comes back from tifffile as it was; the rest is refused.

Arrays arrive from the network (any dtype, byte order, shape), hence a property test. Real tifffile, in memory.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from heros_archiver.errors import PayloadError
from heros_archiver.formats.tiff import TiffFormat

DTYPES = [f"{order}{kind}" for order in "<>" for kind in ("u2", "i2", "u4", "i4", "i8", "u8", "f2", "f4", "f8", "c8")]
DTYPES += ["u1", "i1", "bool"]


def written(payload: Any) -> tifffile.TiffFile:
    content = TiffFormat().prepare(payload)
    return tifffile.TiffFile(io.BytesIO(b"".join(bytes(part) for part in content)))


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(DTYPES).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=5),
    )
)
def test_any_array_tiff_can_hold_reads_back_with_its_dtype_shape_byte_order_and_bytes(array: np.ndarray) -> None:
    assume(not (array.dtype.kind == "b" and array.ndim < 2 and array.size < 2))  # refused: see the test below
    with written(array) as handle:
        back = handle.asarray()
        assert back.shape == array.shape
        assert back.dtype.newbyteorder("=") == array.dtype.newbyteorder("=")
        if array.dtype.itemsize > 1:
            assert handle.byteorder == (">" if array.dtype.byteorder == ">" else "<")
    expected = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("="))
    assert back.astype(expected.dtype).tobytes() == expected.tobytes()  # NaNs and signed zeros too


def test_a_frame_is_one_grayscale_page_and_a_non_contiguous_array_is_written_in_its_logical_order() -> None:
    frame = np.arange(20, dtype=np.uint16).reshape(4, 5).T
    with written(frame) as handle:
        assert len(handle.pages) == 1 and handle.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        np.testing.assert_array_equal(handle.asarray(), frame)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (np.zeros((0, 3), np.uint16), ["(0, 3)", "empty axis"]),
        (np.array(False), ["bool", "shape ()"]),
        (np.array([True]), ["bool", "shape (1,)"]),
        (np.array(["a", "b"]), ["<U1"]),
        (np.zeros(2, dtype="datetime64[s]"), ["datetime64"]),
        (np.zeros(2, dtype=[("a", "u1"), ("b", "f4")]), ["dtype"]),
        ({"not": "an array"}, ["dict"]),
    ],
    ids=["empty", "bool-0d", "bool-one", "strings", "datetimes", "structured", "dict"],
)
def test_what_tiff_cannot_hold_is_refused_naming_it(payload: Any, words: list[str]) -> None:
    with pytest.raises(PayloadError) as refused:
        TiffFormat().prepare(payload)
    assert all(word in str(refused.value) for word in words), refused.value
