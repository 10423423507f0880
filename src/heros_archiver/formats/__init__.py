"""File formats: each turns one payload into the bytes of one file, knowing nothing of Zenoh or naming."""

from .base import Content, FileFormat
from .json import JsonFormat
from .npy import NpyFormat

__all__ = ["Content", "FileFormat", "JsonFormat", "NpyFormat"]
