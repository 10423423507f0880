"""heros-archiver: archive the events of HEROS devices to files, losing nothing silently."""

from .archiver import HERODataArchiver
from .errors import (
    ArchiverError,
    ConfigurationError,
    PathConfinementError,
    PayloadError,
    StorageError,
    TargetExistsError,
    TemplateRenderError,
)
from .files import ArrayArchiver, FileArchiver, JsonArchiver

__version__ = "0.1.0"

__all__ = [
    "ArchiverError",
    "ArrayArchiver",
    "ConfigurationError",
    "FileArchiver",
    "HERODataArchiver",
    "JsonArchiver",
    "PathConfinementError",
    "PayloadError",
    "StorageError",
    "TargetExistsError",
    "TemplateRenderError",
]
