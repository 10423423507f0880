"""Every sink passes the contract of ``heros_archiver.testing.contract`` (npy, JSON, HDF5, Zarr, Zarr append)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from heros_archiver import ArrayArchiver, Hdf5Archiver, JsonArchiver, ParquetArchiver, ZarrAppendArchiver, ZarrArchiver
from heros_archiver.testing.contract import SinkContract

pytestmark = pytest.mark.timeout(120)


def _files_by_source(root: Path, suffix: str) -> dict[str, list[Path]]:
    """Per source folder, its files in the order of their frame number (the name)."""
    return {
        folder.name: sorted(folder.glob(f"*{suffix}"))
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    }


class TestNpySink(SinkContract):
    archiver_class = ArrayArchiver

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        return {"save_template": "{{ file_path }}/{{ source_name }}/{{ '%04d' % frame }}.npy"}

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        return {
            s: [np.load(f, allow_pickle=False) for f in files] for s, files in _files_by_source(root, ".npy").items()
        }


class TestJsonSink(SinkContract):
    archiver_class = JsonArchiver
    payloads = "dicts"

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        return {"save_template": "{{ file_path }}/{{ source_name }}/{{ '%04d' % frame }}.json"}

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        files = _files_by_source(root, ".json")
        return {source: [json.loads(f.read_text()) for f in paths] for source, paths in files.items()}


class TestHdf5Sink(SinkContract):
    archiver_class = Hdf5Archiver

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        # append: a restart continues the run's file (the default, error, keeps an existing file untouched)
        return {"file_template": "{{ file_path }}/run.h5", "on_exists": "append", "sequence_key": "frame"}

    def cases(self) -> list[Any]:
        """HDF5 chunks cannot have an empty dimension: a frame with an empty axis is refused (and dead-lettered),
        so the empty array of the shared cases is left out here."""
        return [case for case in super().cases() if case.size]

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        path = root / "run.h5"
        if not path.exists():
            return {}
        with h5py.File(path, "r", libver="latest", swmr=True) as handle:
            return {
                name: list(handle[name]["data"][()]) for name in handle if name in handle and "data" in handle[name]
            }


class TestZarrSink(SinkContract):
    archiver_class = ZarrArchiver

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        return {
            "store_template": "{{ file_path }}/run.zarr",
            "array_path_template": "{{ source_name }}/{{ '%04d' % frame }}",
        }

    def assert_same(self, got: list[Any], sent: list[Any]) -> None:
        """Zarr v3 data types have no byte order (the bytes codec has one, little-endian as the reference writes
        it): a big-endian payload comes back with the same values in native order."""
        super().assert_same(got, [payload.astype(payload.dtype.newbyteorder("=")) for payload in sent])

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        if not (root / "run.zarr").exists():
            return {}
        store = zarr.open_group(root / "run.zarr", mode="r")
        return {
            source: [store[source][name][...] for name in sorted(store[source].array_keys())]
            for source in sorted(store.group_keys())
        }


class TestZarrAppendSink(SinkContract):
    archiver_class = ZarrAppendArchiver

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        # append: a restart continues the run's store (the default, error, keeps an existing store untouched)
        return {"store_template": "{{ file_path }}/run.zarr", "on_exists": "append", "sequence_key": "frame"}

    def cases(self) -> list[Any]:
        """A Zarr chunk cannot have an empty dimension: a frame with an empty axis is refused (and
        dead-lettered), so the empty array of the shared cases is left out here."""
        return [case for case in super().cases() if case.size]

    def assert_same(self, got: list[Any], sent: list[Any]) -> None:
        """In Zarr v3 the byte order is the bytes codec's, not the data type's: the stored bytes keep the
        order that arrived (``>i4`` frames are written big-endian), and zarr-python reads a sharded array in
        the machine's order. So dtypes are compared without their byte order; values must be equal."""
        native = [p.astype(p.dtype.newbyteorder("=")) if isinstance(p, np.ndarray) else p for p in sent]
        super().assert_same(got, native)

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        path = root / "run.zarr"
        if not (path / "zarr.json").exists():
            return {}
        group = zarr.open_group(path, mode="r")
        return {name: list(member["data"][...]) for name, member in group.groups() if "data" in member}


#: The columns every Parquet row gets from the archiver (left out when a row is compared with its payload).
_PARQUET_OWN = ("source_name", "sequence", "received", "item_key")


class TestParquetSink(SinkContract):
    archiver_class = ParquetArchiver
    payloads = "dicts"
    readable_before_recovery = False  # committed = journaled; the restart writes the journal into the file

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        return {"file_template": "{{ file_path }}/{{ source_name }}/readings.parquet", "sequence_key": "frame"}

    def cases(self) -> list[Any]:
        """Parquet has no column for an integer beyond 64 bits: that case is dead-lettered, with a message
        (tests/test_parquet_archiver.py), so it is left out of the round trip."""
        return [case for case in super().cases() if "big" not in case]

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        """Per source folder, the rows of its parts in order (``readings.parquet``, ``readings-1.parquet``, ...),
        without the archiver's own columns."""
        back: dict[str, list[Any]] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            parts = sorted(folder.glob("readings*.parquet"), key=lambda p: int(p.stem.partition("-")[2] or 0))
            rows = [row for part in parts for row in pq.read_table(part).to_pylist()]
            back[folder.name] = [{k: v for k, v in row.items() if k not in _PARQUET_OWN} for row in rows]
        return back
