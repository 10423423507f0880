"""Naming + format + storage for one payload: the part of a file archiver that needs no Zenoh.

The archivers use it for every event, and ``heros-archiver replay`` rebuilds it from the settings a
dead-letter entry recorded, so a replayed item is named and written exactly as it would have been. Where the
files go is one target chosen at construction: ``LocalFiles`` (``storage.atomic`` under a local root) or,
for an ``s3://bucket/prefix`` root, ``ObjectTarget`` (``storage.object_files``: the same names and policies
as objects).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ..checks import check_choice
from ..errors import ArchiverError, ConfigurationError, PathConfinementError, PayloadError, TemplateRenderError
from ..formats.base import Content
from ..formats.npy import as_array
from ..naming.templates import PathTemplate
from ..observe.outcomes import Location, checksum
from ..plugins import make_format
from ..saferepr import safe_repr
from ..state.statedir import STATE_DIR_NAME
from ..storage.atomic import (
    FSYNC_CHOICES,
    ON_EXISTS_CHOICES,
    Fsync,
    OnExists,
    is_temporary,
    remove_file,
    write_unless_present,
)
from ..storage.object_files import ObjectFiles
from ..storage.objectstore import ObjectLocation, ObjectStore, is_object_url
from ..storage.writeback import WritebackWindow

#: The key under which ``merge_metadata=True`` adds the merged metadata to a JSON document.
MERGED_METADATA_KEY = "metadata"


@dataclass
class WriterSettings:
    """Everything that decides where and how a payload is written (recorded in dead-letter entries)."""

    format: str
    save_template: str
    root: str
    on_exists: OnExists = "error"
    fsync: Fsync = "none"
    split_data_array: bool = False
    merge_metadata: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> WriterSettings:
        """Inverse of ``to_dict``, strict: the dict comes from a file (a dead-letter entry) that may have been
        edited, so every field must be there with its JSON type (``true`` is not ``"yes"``) and nothing else
        (a newer entry is not misread). Values are checked further where they are used (``FileWriter``)."""
        if not isinstance(data, dict):
            raise ConfigurationError(
                f"writer settings: expected a JSON object with the fields of WriterSettings, "
                f"got {type(data).__name__} {data!r:.200}"
            )
        names = [item.name for item in fields(cls)]
        unknown = sorted(str(key) for key in data if key not in names)
        missing = [name for name in names if name not in data]
        if unknown or missing:
            raise ConfigurationError(
                f"writer settings: expected exactly the fields {names}, got unknown {unknown} and missing {missing}"
            )
        hints = get_type_hints(cls)
        for name in names:
            hint = hints[name]
            expected = {type(choice) for choice in get_args(hint)} if get_origin(hint) is Literal else {hint}
            if type(data[name]) not in expected:  # exact: a bool must not pass as an int, nor 1 as a bool
                raise ConfigurationError(
                    f"writer settings field {name!r}: expected {' or '.join(sorted(t.__name__ for t in expected))}, "
                    f"got {type(data[name]).__name__} {data[name]!r:.200}"
                )
        return cls(**data)


class LocalFiles:
    """The files of a local root: named by the template, confined beneath the root, written by
    ``storage.atomic`` (no clobber, temporaries, writeback window)."""

    def __init__(self, template: PathTemplate, fsync: Fsync, window: WritebackWindow, confine_root: str | None):
        self._template = template
        self._root_text = str(template.root)
        self._fsync = fsync
        self.window = window
        self._confine_root = confine_root

    def name(self, context: Mapping[str, Any]) -> str:
        """The confined path of the file for ``context``."""
        path = self._template.render_confined(context)
        _refuse_reserved(path, self._root_text, self._template.source)
        return path

    def write(self, path: str, content: Content, on_exists: OnExists, resumed: bool) -> str | None:
        """``storage.atomic.write_unless_present`` beneath the root."""
        return write_unless_present(path, content, on_exists, self._fsync, self.window, self._confine_root, resumed)

    def remove(self, path: str) -> None:
        remove_file(path, self._confine_root)


class ObjectTarget:
    """The objects of an ``s3://bucket/prefix`` root: named by the template, confined to the prefix as keys,
    written by ``storage.object_files`` (conditional create, ``-N``, overwrite). Paths are ``s3://`` URLs."""

    def __init__(self, template: PathTemplate, objects: ObjectFiles) -> None:
        self._template = template
        self.objects = objects

    def name(self, context: Mapping[str, Any]) -> str:
        """The ``s3://bucket/key`` of the object for ``context``."""
        return self.objects.name(self._template.render_text(context), self._template.source)

    def write(self, path: str, content: Content, on_exists: OnExists, resumed: bool) -> str | None:
        return self.objects.write(path, content, on_exists, resumed)

    def remove(self, path: str) -> None:
        self.objects.remove(path)


class FileWriter:
    """Render, check and write the file(s) of one payload: all of them or none.

    ``store``: the object store of an ``s3://bucket/prefix`` root (the archiver's, or the one replay opens from
    the state directory's record); a local root takes none.
    """

    def __init__(self, settings: WriterSettings, writeback_window: int = 0, store: ObjectStore | None = None) -> None:
        if not isinstance(settings.format, str):
            raise ConfigurationError(f"file_format: expected the name of a format, got {settings.format!r}")
        self._format = make_format(settings.format)  # registered by entry point (plugins.py): ours and plugins'
        check_choice("on_exists", settings.on_exists, ON_EXISTS_CHOICES)
        check_choice("fsync", settings.fsync, FSYNC_CHOICES)
        self.settings = settings
        self._window = WritebackWindow(writeback_window)
        self._target: LocalFiles | ObjectTarget
        if is_object_url(settings.root):
            if store is None:
                raise ConfigurationError(f"root {settings.root!r}: an object-store root needs its ObjectStore")
            # keys are confined by naming.keys; the template's root (/) is only where the renders start
            self.template = PathTemplate(settings.save_template, os.sep)
            self.root = self.template.root
            self.confine_root: str | None = None
            self._target = ObjectTarget(self.template, ObjectFiles(store, ObjectLocation.parse(settings.root)))
            return
        self.template = PathTemplate(settings.save_template, settings.root)
        self.root = self.template.root
        #: the root writes are confined to (None for a root of ``/``, where nothing is confined)
        self.confine_root = None if self.root == Path(self.root.anchor) else str(self.root)
        self._target = LocalFiles(self.template, settings.fsync, self._window, self.confine_root)

    @property
    def window(self) -> WritebackWindow:
        """Large files on their way to disk and out of the page cache (``writeback_window`` bytes; 0 = off)."""
        return self._window

    @window.setter
    def window(self, window: WritebackWindow) -> None:
        """Replace the window (of the local files written from now on; a test's fault-injecting one)."""
        self._window = window
        if isinstance(self._target, LocalFiles):
            self._target.window = window

    @property
    def objects(self) -> ObjectFiles | None:
        """The objects written to, for an ``s3://`` root (None: a local root)."""
        return self._target.objects if isinstance(self._target, ObjectTarget) else None

    def _parts(self, payload: Any) -> list[tuple[int | None, Any]]:
        if not self.settings.split_data_array:
            return [(None, payload)]
        array = as_array(payload)
        if array.ndim == 0:
            raise PayloadError(f"split_data_array needs an array with at least one dimension, got a scalar {array!r}")
        return [(index, array[index]) for index in range(array.shape[0])]

    def plan(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> list[tuple[Path, Content]]:
        """The files one payload becomes, with everything input-related checked before anything is written."""
        return [(Path(path), content) for path, content in self.plan_text(source_name, payload, metadata)]

    def plan_text(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> list[tuple[str, Content]]:
        """``plan`` with paths as text (the per-event hot path)."""
        planned: list[tuple[str, Content]] = []
        seen: dict[str, int | None] = {}
        for index, part in self._parts(payload):
            context = {**metadata, "source_name": source_name}
            if index is not None:
                context["_split_index"] = index
            path = self._target.name(context)
            if path in seen:
                raise TemplateRenderError(
                    f"template {self.template.source!r} renders {path!r} for split indices {seen[path]} and "
                    f"{index}; use {{{{ _split_index }}}} in it"
                )
            seen[path] = index
            if self.settings.merge_metadata and isinstance(part, Mapping):
                part = _with_merged_metadata(part, metadata)
            planned.append((path, self._format.prepare(part)))
        return planned

    def write(
        self,
        source_name: str,
        payload: Any,
        metadata: dict[str, Any],
        resumed: bool = False,
        planned: list[tuple[str, Content]] | None = None,
    ) -> list[str]:
        """Write every file of one payload; on a failure midway remove this attempt's files and re-raise.
        Returns the files written (not those found holding the same bytes already).

        A target that already holds exactly the bytes we would write counts as written, so replaying an
        item or resuming after a crash between writing and bookkeeping never duplicates a file. With
        ``on_exists="unique"`` that check needs ``resumed`` (the item may have been written before):
        otherwise two events with identical bytes are two files, as that policy promises. ``planned``: what
        ``plan_text`` returned for this payload earlier (it is not planned again).
        """
        return self._write(source_name, payload, metadata, resumed, None, planned=planned)

    def write_located(
        self,
        source_name: str,
        payload: Any,
        metadata: dict[str, Any],
        resumed: bool = False,
        before: Callable[[list[str]], None] | None = None,
        planned: list[tuple[str, Content]] | None = None,
    ) -> tuple[Location, ...]:
        """``write``, returning where every file of the payload is (written now or found identical), with its
        size and checksum (``observe.outcomes``). An identical file found under ``on_exists="unique"`` is
        reported under the name planned, which may differ by its ``-N``. ``before`` is told the paths planned,
        once all are named and encoded, before the first is written (the catalog's intent records); not called
        with ``planned`` (as for ``write``: told when it was planned)."""
        locations: list[Location] = []
        self._write(source_name, payload, metadata, resumed, locations, before, planned)
        return tuple(locations)

    def _write(
        self,
        source_name: str,
        payload: Any,
        metadata: dict[str, Any],
        resumed: bool,
        locations: list[Location] | None,
        before: Callable[[list[str]], None] | None = None,
        planned: list[tuple[str, Content]] | None = None,
    ) -> list[str]:
        written: list[str] = []
        target = self._target
        on_exists = self.settings.on_exists
        try:
            if planned is None:
                planned = self.plan_text(source_name, payload, metadata)
                if before is not None:
                    before([path for path, _ in planned])
            for path, content in planned:
                final = target.write(path, content, on_exists, resumed)
                if final is not None:
                    written.append(final)
                if locations is not None:
                    locations.append(locate_file(final or path, content))
        except BaseException:
            for done in written:
                with contextlib.suppress(OSError, ArchiverError):
                    target.remove(done)
            raise
        return written

    def close(self) -> None:
        """Finish the files still in the writeback window (at shutdown)."""
        self.window.close()


def locate_file(path: str, content: Content) -> Location:
    """Where a file of ``content`` written at ``path`` is, with its size and checksum."""
    if len(content) == 1:  # a small file's one buffer (every JSON file): no generator on the writer thread
        size = content[0].nbytes if isinstance(content[0], memoryview) else len(content[0])
    else:
        size = sum(buffer.nbytes if isinstance(buffer, memoryview) else len(buffer) for buffer in content)
    return Location(path, size, checksum(content, keep_gil=True))


def _with_merged_metadata(payload: Mapping[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with the merged metadata under the key ``metadata`` (``merge_metadata=True``).

    A payload that has a ``metadata`` key of its own is refused: replacing it would lose that value
    silently, and renaming either one would surprise every reader of the file.
    """
    if MERGED_METADATA_KEY in payload:
        raise PayloadError(
            f"merge_metadata=True writes the merged metadata under the key {MERGED_METADATA_KEY!r}, but the payload "
            f"has that key itself (value {safe_repr(payload[MERGED_METADATA_KEY], 80)}); neither is replaced: the item "
            "is dead-lettered"
        )
    return {**payload, MERGED_METADATA_KEY: metadata}


def _refuse_reserved(path: str, root: str, template: str) -> None:
    """Event metadata must not reach the archiver's own state (spool, dead letters) or mimic a temporary."""
    relative = path[len(root) :].lstrip(os.sep)
    if relative.split(os.sep, 1)[0] == STATE_DIR_NAME or is_temporary(os.path.basename(path)):
        raise PathConfinementError(
            f"rendered path {path!r} (template {template!r}) is reserved for the archiver's own files "
            f"({STATE_DIR_NAME}/ under the root, or a temporary's name)"
        )
