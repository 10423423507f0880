"""Every sink passes the contract of ``heros_archiver.testing.contract`` (the npy, JSON and HDF5 sinks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from heros_archiver import ArrayArchiver, Hdf5Archiver, JsonArchiver, ParquetArchiver
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


#: The columns every Parquet row gets from the archiver (left out when a row is compared with its payload).
_PARQUET_OWN = ("source_name", "sequence", "received", "item_key")


class TestParquetSink(SinkContract):
    archiver_class = ParquetArchiver
    payloads = "dicts"

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
