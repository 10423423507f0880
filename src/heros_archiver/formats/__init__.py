"""File formats: each turns one payload into the bytes of one file, knowing nothing of Zenoh or naming."""

from .base import FileFormat
from .json import JsonFormat
from .npy import NpyFormat

__all__ = ["FileFormat", "JsonFormat", "NpyFormat"]
