"""The three archivers that append frames to a file or store per rendered route (HDF5, TIFF stack, Zarr
append), described once so that their common behaviour is tested once (``test_routed_archivers.py``) and
each archiver's own test file shares the same rig, sender and readers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import tifffile
import zarr

import procs
from conftest import Rig, RigFactory
from heros_archiver import Hdf5Archiver, TiffArchiver, ZarrAppendArchiver
from heros_archiver.archivers.base import HERODataArchiver
from heros_archiver.sinks.containers import ContainerBusyError
from heros_archiver.sinks.containers.hdf5 import read_metadata
from heros_archiver.sinks.containers.tiff import TiffStackContainer

SHAPE = (16, 24)
MEMBER = "cam/data"  # the HDF5 dataset and the Zarr array of camera ``cam``


def send(cam: object, indices: range | list[int], shape: tuple[int, ...] = SHAPE, **metadata: object) -> None:
    """Frames ``indices`` of ``shape`` from ``cam``, with ``metadata`` (e.g. ``run=1``) merged into theirs."""
    procs.send_frames(cam, list(indices), shape, **metadata)


# --------------------------------------------------------------------------------------------------- HDF5
def hdf5_stack(path: Path) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Frames and per-frame metadata of the ``cam/data`` stack in ``path`` (a SWMR read: works on any file)."""
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        frames = handle[MEMBER][()]
        group = handle["cam"]
        return frames, [read_metadata(group, i) for i in range(frames.shape[0])]


def hdf5_indices(path: Path) -> list[int]:
    """The frame numbers (first element of each frame) of the stack in ``path``, in order."""
    frames, _ = hdf5_stack(path)
    return [int(f.flat[0]) for f in frames]


def hdf5_visible(path: Path) -> int:
    """Frames a SWMR reader sees in ``path`` now; -1 while there is no file or it is not yet open for SWMR."""
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as handle:
            return int(handle[MEMBER].shape[0]) if MEMBER in handle else -1
    except OSError:  # missing, or created and not yet in SWMR mode (HDF5's own lock)
        return -1


def hdf5_closed(path: Path) -> bool:
    """Whether the writer closed ``path``: a plain (non-SWMR) open works only then."""
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------- TIFF
def tiff_indices(path: Path) -> list[int]:
    """The frame numbers (first pixel of each page) of the stack in ``path``, in order."""
    with tifffile.TiffFile(path) as handle:
        return [int(page.asarray().flat[0]) for page in handle.pages]


def tiff_visible(path: Path) -> int:
    """Pages a reader sees in ``path`` now (-1 while there is no TIFF there)."""
    try:
        with tifffile.TiffFile(path) as handle:
            return len(handle.pages)
    except (OSError, ValueError):
        return -1


def tiff_closed(path: Path) -> bool:
    """Whether the writer closed ``path``: another container refuses a stack an archiver holds."""
    try:
        TiffStackContainer(path, on_exists="append").close()
        return True
    except ContainerBusyError:
        return False


# --------------------------------------------------------------------------------------------------- Zarr
def zarr_indices(store: Path) -> list[int]:
    """The frame numbers (first element of each frame) of the ``cam/data`` array in ``store``, in order."""
    return [int(f.flat[0]) for f in zarr.open_array(store, path=MEMBER, mode="r")[...]]


def zarr_visible(store: Path) -> int:
    """Frames a reader sees in ``store`` now; -1 while there is no array."""
    try:
        return int(zarr.open_array(store, path=MEMBER, mode="r").shape[0])
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        return -1


# ---------------------------------------------------------------------------------------------- the kinds
@dataclass(frozen=True)
class RoutedKind:
    """One routed frame archiver: how to make it into ``run-<run><extension>`` and read what it wrote."""

    name: str
    archiver_cls: type[HERODataArchiver]
    arguments: dict[str, object]
    extension: str
    indices: Callable[[Path], list[int]]
    visible: Callable[[Path], int]
    #: whether the writer closed a file (None: the kind holds nothing open between commits)
    closed: Callable[[Path], bool] | None
    #: the arguments that leave commits to ``flush_frames`` and the drain alone
    count_commits_only: dict[str, object]

    def rig(self, make_rig: RigFactory, **kwargs: object) -> Rig:
        """A camera ``cam`` and this archiver of its frames under tmp_path, ``kwargs`` over the defaults."""
        arguments = {**self.arguments, "sequence_key": "frame", **kwargs}
        made = make_rig(None, archiver_cls=self.archiver_cls, **arguments)
        assert isinstance(made.archiver, self.archiver_cls)
        return made

    def part(self, root: Path, run: object, number: int = 0) -> Path:
        """The file of ``run`` (its ``number``-th rollover part) under ``root``."""
        suffix = f"-{number}" if number else ""
        return root / f"run-{run}{suffix}{self.extension}"


HDF5 = RoutedKind(
    "hdf5",
    Hdf5Archiver,
    {"file_template": "{{ file_path }}/run-{{ run }}.h5", "dataset_template": MEMBER},
    ".h5",
    hdf5_indices,
    hdf5_visible,
    hdf5_closed,
    {"flush_seconds": 3600, "flush_idle": None},
)
TIFF = RoutedKind(
    "tiff",
    TiffArchiver,
    {"save_template": "{{ file_path }}/run-{{ run }}.tif", "stack": True},
    ".tif",
    tiff_indices,
    tiff_visible,
    tiff_closed,
    {"flush_seconds": 3600},
)
ZARR = RoutedKind(
    "zarr",
    ZarrAppendArchiver,
    {"store_template": "{{ file_path }}/run-{{ run }}.zarr", "array_template": MEMBER},
    ".zarr",
    zarr_indices,
    zarr_visible,
    None,
    {"flush_seconds": 3600, "flush_idle": None},
)
KINDS = (HDF5, TIFF, ZARR)
