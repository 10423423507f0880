"""Archivers that write one file per event (or per index, when splitting), named by a path template."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from .archiver import DEAD_LETTER_SUBDIR, HERODataArchiver
from .errors import PayloadError, TemplateRenderError
from .formats import FileFormat, JsonFormat, NpyFormat
from .formats.base import Writer
from .formats.npy import as_array
from .naming import PathTemplate, check_no_symlink_escape, derive_root
from .storage import (
    FSYNC_CHOICES,
    ON_EXISTS_CHOICES,
    Fsync,
    OnExists,
    check_choice,
    remove_stale_temporaries,
    write_atomic,
)

log = logging.getLogger("heros_archiver")


class FileArchiver(HERODataArchiver):
    """Base of the template-named file archivers: naming, confinement and atomic writing.

    Args:
        save_template: Jinja2 template of the file path; sees the merged metadata, ``source_name``
            and (when splitting) ``_split_index``.
        file_format: the format that turns a payload into file content.
        root: archive root every file must stay under (default: derived from the template, see
            ``heros_archiver.naming``).
        on_exists: when the target exists: ``error`` (default; keep the file, dead-letter the item),
            ``overwrite``, or ``unique`` (add ``-1``, ``-2``, ... before the extension).
        fsync: durability: ``none`` (default; page cache), ``file``, or ``file+directory``.
    """

    name_template: PathTemplate

    def __init__(
        self,
        save_template: str,
        file_format: FileFormat,
        *args: Any,
        root: str | None = None,
        on_exists: OnExists = "error",
        fsync: Fsync = "none",
        **kwargs: Any,
    ) -> None:
        check_choice("on_exists", on_exists, ON_EXISTS_CHOICES)
        check_choice("fsync", fsync, FSYNC_CHOICES)
        self._template_source = save_template
        self._root_argument = root
        self._format = file_format
        self.on_exists: OnExists = on_exists
        self.fsync: Fsync = fsync
        HERODataArchiver.__init__(self, *args, **kwargs)

    def _setup_storage(self) -> None:
        """Compile the template (a syntax error fails here, at start) and clean stale temporaries."""
        root = Path(self._root_argument) if self._root_argument else derive_root(self._template_source, self.metadata)
        self.name_template = PathTemplate(self._template_source, root)
        self.root = self.name_template.root
        if self.root == Path(self.root.anchor):
            log.warning("archive root is %s: paths are not confined; pass root=... to confine them", self.root)
            return
        removed = remove_stale_temporaries(self.root)
        if removed:
            log.warning("removed %d stale temporary file(s) under %s left by an earlier run", removed, self.root)

    def _default_dead_letter_dir(self) -> Path:
        return self.root / DEAD_LETTER_SUBDIR

    def _parts(self, payload: Any) -> list[tuple[int | None, Any]]:
        """The (split index, data) pairs one payload becomes: one pair, unless a subclass splits."""
        return [(None, payload)]

    def _prepare(self, part: Any, metadata: dict[str, Any]) -> Writer:
        writer, _nbytes = self._format.prepare(part, metadata)
        return writer

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Render, check and write every file of one payload; all of them or none.

        Everything that can fail for bad input (render, confinement, type) is checked before the
        first file is created; if writing fails midway, the files of this attempt are removed so a
        retry does not collide with them.
        """
        planned: list[tuple[Path, Writer]] = []
        seen: dict[Path, int | None] = {}
        for index, part in self._parts(payload):
            context = {**self.metadata, **metadata, "source_name": source_name}
            if index is not None:
                context["_split_index"] = index
            path = self.name_template.render(context)
            if path in seen:
                raise TemplateRenderError(
                    f"template {self.name_template.source!r} renders {str(path)!r} for split indices {seen[path]} and "
                    f"{index}; use {{{{ _split_index }}}} in it"
                )
            seen[path] = index
            planned.append((path, self._prepare(part, metadata)))
        written: list[Path] = []
        try:
            for path, writer in planned:
                check_no_symlink_escape(path, self.root)
                written.append(write_atomic(path, writer, self.on_exists, self.fsync))
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise


class ArrayArchiver(FileArchiver):
    """Save array payloads as ``.npy`` files (``np.load`` reads them).

    Args:
        save_template: Jinja2 template of the file path (see FileArchiver).
        split_data_array: write one file per index along axis 0; the template gets ``_split_index``.
    """

    split_data_array: bool

    def __init__(self, save_template: str, split_data_array: bool = False, *args: Any, **kwargs: Any) -> None:
        self.split_data_array = bool(split_data_array)
        FileArchiver.__init__(self, save_template, NpyFormat(), *args, **kwargs)

    def _parts(self, payload: Any) -> list[tuple[int | None, Any]]:
        if not self.split_data_array:
            return [(None, payload)]
        array = as_array(payload)
        if array.ndim == 0:
            raise PayloadError(f"split_data_array needs an array with at least one dimension, got a scalar {array!r}")
        return [(index, array[index]) for index in range(array.shape[0])]


class JsonArchiver(FileArchiver):
    """Save dict payloads as ``.json`` files.

    Args:
        save_template: Jinja2 template of the file path (see FileArchiver).
        merge_metadata: also write the merged metadata, under the key ``metadata``.
    """

    merge_metadata: bool

    def __init__(self, save_template: str, merge_metadata: bool = False, *args: Any, **kwargs: Any) -> None:
        self.merge_metadata = bool(merge_metadata)
        FileArchiver.__init__(self, save_template, JsonFormat(), *args, **kwargs)

    def _prepare(self, part: Any, metadata: dict[str, Any]) -> Writer:
        if self.merge_metadata and isinstance(part, dict):
            part = {**part, "metadata": metadata}
        return super()._prepare(part, metadata)
