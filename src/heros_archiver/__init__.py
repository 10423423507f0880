"""heros-archiver: archive the events of HEROS devices to files, losing nothing silently.

The archivers are imported when first asked for (``heros_archiver.ArrayArchiver``), not with every
submodule: the helper process that publishes small files (decision 0012) needs neither heros nor Zenoh.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ArchiverError,
    ConfigurationError,
    PathConfinementError,
    PayloadError,
    StorageError,
    TargetExistsError,
    TemplateRenderError,
)

if TYPE_CHECKING:
    from .archivers.base import HERODataArchiver
    from .archivers.datasource import DatasourceArchiver
    from .archivers.files import ArrayArchiver, FileArchiver, JsonArchiver
    from .archivers.hdf5 import Hdf5Archiver
    from .archivers.parquet import ParquetArchiver
    from .archivers.postgres import PostgresArchiver
    from .archivers.tiff import TiffArchiver
    from .archivers.zarr import ZarrArchiver
    from .archivers.zarr_append import ZarrAppendArchiver

__version__ = "0.1.0"

_ARCHIVERS = {
    "HERODataArchiver": "archivers.base",
    "ArrayArchiver": "archivers.files",
    "FileArchiver": "archivers.files",
    "JsonArchiver": "archivers.files",
    "Hdf5Archiver": "archivers.hdf5",
    "TiffArchiver": "archivers.tiff",
    "ZarrArchiver": "archivers.zarr",
    "ZarrAppendArchiver": "archivers.zarr_append",
    "ParquetArchiver": "archivers.parquet",
    "DatasourceArchiver": "archivers.datasource",
    "PostgresArchiver": "archivers.postgres",
}

__all__ = [
    "ArchiverError",
    "ArrayArchiver",
    "ConfigurationError",
    "DatasourceArchiver",
    "FileArchiver",
    "HERODataArchiver",
    "Hdf5Archiver",
    "JsonArchiver",
    "ParquetArchiver",
    "PathConfinementError",
    "PayloadError",
    "PostgresArchiver",
    "StorageError",
    "TargetExistsError",
    "TemplateRenderError",
    "TiffArchiver",
    "ZarrArchiver",
    "ZarrAppendArchiver",
]


def __getattr__(name: str) -> Any:
    """The archiver classes, imported on first use."""
    module = _ARCHIVERS.get(name)
    if module is None:
        raise AttributeError(f"module 'heros_archiver' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
