"""to_array: Arrow arrays made from readings' values without pyarrow.array, equal to what pyarrow.array makes,
and a ParquetArchiver that archives readings without importing pandas (pyarrow.array would import it)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heros_archiver.sinks.containers.arrow_arrays import to_array

pytestmark = pytest.mark.timeout(120)

_EARLIEST, _LATEST = dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30)
_UTC_TIMES = st.datetimes(timezones=st.just(dt.UTC), min_value=_EARLIEST, max_value=_LATEST)
_OFFSETS = st.sampled_from([dt.timezone(dt.timedelta(hours=-7)), dt.timezone(dt.timedelta(hours=5, minutes=30))])
_COLUMNS: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    (pa.float64(), st.floats(allow_nan=False)),
    (pa.bool_(), st.booleans()),
    (pa.string(), st.text()),
    (pa.binary(), st.binary(max_size=40)),
    (pa.binary(16), st.binary(min_size=16, max_size=16)),
    (pa.float32(), st.floats(width=32, allow_nan=False).map(np.float32)),
    (pa.int16(), st.integers(-(2**15), 2**15 - 1).map(np.int16)),
    (pa.uint64(), st.integers(0, 2**64 - 1).map(np.uint64)),
    (pa.bool_(), st.booleans().map(np.bool_)),
    (pa.timestamp("us", tz="UTC"), _UTC_TIMES),
    (pa.timestamp("us", tz="UTC"), st.datetimes(timezones=_OFFSETS, min_value=_EARLIEST, max_value=_LATEST)),
    (pa.timestamp("us"), st.datetimes(min_value=_EARLIEST, max_value=_LATEST)),
]


@st.composite
def columns(draw: st.DrawFn) -> tuple[pa.DataType, list[Any]]:
    kind, values = draw(st.sampled_from(_COLUMNS))
    return kind, draw(st.lists(st.one_of(st.none(), values), max_size=70))


@settings(max_examples=400, deadline=None)
@given(columns())
def test_to_array_makes_what_pyarrow_array_makes(column: tuple[pa.DataType, list[Any]]) -> None:
    """Every kind a reading's column has, with nulls anywhere (also all null, or none): the same array."""
    kind, values = column
    ours = to_array(values, kind)
    ours.validate(full=True)
    assert ours.type == kind and ours.null_count == values.count(None)
    assert ours.equals(pa.array(values, kind))


def test_kinds_without_a_buffer_of_their_own_go_to_pyarrow_array() -> None:
    """Lists and dates are made by pyarrow.array, as before; a fixed-size binary of another width is refused by it."""
    assert to_array([[1, 2], None, []], pa.list_(pa.int64())).to_pylist() == [[1, 2], None, []]
    assert to_array([dt.date(2026, 12, 2)], pa.date32()).to_pylist() == [dt.date(2026, 12, 2)]
    with pytest.raises(pa.ArrowInvalid):
        to_array([b"short"], pa.binary(16))


def test_a_parquet_archiver_archives_readings_without_importing_pandas(tmp_path: Path) -> None:
    """pyarrow.array imports pandas (~45 MiB resident with what pandas imports): a ParquetArchiver of
    numbers, text, booleans, numpy scalars and datetimes, with nulls, never calls it. In a child process, as
    the test session itself has pandas imported."""
    code = f"""
import datetime as dt, sys
import numpy as np
import pyarrow.parquet as pq
from heros_archiver import ParquetArchiver
from heros_archiver.testing import free_port, session_manager, unique_realm
archiver = ParquetArchiver(
    "{{{{ file_path }}}}/run.parquet", "sender", "acquisition_data",
    default_metadata={{"file_path": {str(tmp_path)!r}}},
    realm=unique_realm(), session_manager=session_manager(listen_port=free_port()), flush_items=7,
)
when = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
for n in range(50):
    reading = {{"n": n, "t": n * 0.5, "ok": n % 2 == 0, "name": f"s{{n}}", "f": np.float32(n), "at": when,
               "maybe": None if n % 3 else n}}
    archiver.feed("sender", (reading, {{}}))
archiver._teardown()
print("pandas" in sys.modules)  # before reading back: pyarrow's reader may import it
table = pq.read_table({str(tmp_path / "run.parquet")!r})
assert table.column("n").to_pylist() == list(range(50)), table
assert table.column("maybe").null_count == 33
print("read back")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-2:] == ["False", "read back"], out.stdout
