"""The TIFF sinks pass the contract of ``heros_archiver.testing.contract``: one file per item, and the stack.

In a file of their own (not tests/test_sink_contract.py) so that the branches adding sinks merge apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from heros_archiver import TiffArchiver
from heros_archiver.testing.contract import SinkContract

pytestmark = pytest.mark.timeout(120)


def _in_file_byte_order(handle: tifffile.TiffFile, data: np.ndarray) -> np.ndarray:
    """tifffile gives native byte order; the file keeps the frame's own (a big-endian array, a big-endian TIFF)."""
    return data.astype(data.dtype.newbyteorder(handle.byteorder)) if data.dtype.itemsize > 1 else data


class TestTiffFileSink(SinkContract):
    archiver_class = TiffArchiver

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        return {"save_template": "{{ file_path }}/{{ source_name }}/{{ '%04d' % frame }}.tif"}

    def cases(self) -> list[Any]:
        """A TIFF page has a width and a height: the empty array of the shared cases is refused (dead-lettered)."""
        return [case for case in super().cases() if case.size]

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        back: dict[str, list[Any]] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            back[folder.name] = []
            for path in sorted(folder.glob("*.tif")):
                with tifffile.TiffFile(path) as handle:
                    back[folder.name].append(_in_file_byte_order(handle, handle.asarray()))
        return back


class TestTiffStackSink(SinkContract):
    archiver_class = TiffArchiver

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        # append: a restart continues the source's stack (the default, error, keeps an existing file untouched)
        return {
            "save_template": "{{ file_path }}/{{ source_name }}.tif",
            "stack": True,
            "on_exists": "append",
            "sequence_key": "frame",
        }

    def cases(self) -> list[Any]:
        """A stack's page is a non-empty 2-D frame of integers, floats or complex floats: the 1-D, 3-D, bool and
        empty arrays of the shared cases are refused (dead-lettered, as the stack tests show)."""
        return [case for case in super().cases() if case.ndim == 2 and case.size and case.dtype.kind != "b"]

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        back: dict[str, list[Any]] = {}
        for path in sorted(root.glob("*.tif")):
            with tifffile.TiffFile(path) as handle:
                assert handle.is_imagej and handle.imagej_metadata["images"] == len(handle.pages)
                back[path.stem] = [_in_file_byte_order(handle, page.asarray()) for page in handle.pages]
        return back
