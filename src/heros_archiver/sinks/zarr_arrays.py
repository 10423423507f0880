"""Naming + Zarr encoding + atomic publishing for one payload: the file-per-item sink of ``ZarrArchiver``.

Layout as the reference's ``group[key] = payload``: the store template renders the path of a Zarr v3 group
(made with an empty ``zarr.json`` when missing), the array template renders a key inside it (``a/b/name``:
the groups between are made too), and the payload becomes one array there. What differs is how it gets
there. The templates run in the bounded sandbox, strict; the store is confined to the archive root, the key
to the store. The array is built whole in the staging directory and published in one rename
(``storage.staged_trees``): complete or absent, never replacing an existing array unless asked. The groups
this writer made or checked are remembered (at most ``_MAX_GROUPS``), so an event costs no group opening,
only the directory handles every write opens beneath the root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ..checks import check_choice
from ..errors import PathConfinementError, TargetExistsError, TemplateRenderError, storage_error
from ..formats.zarr_v3 import EncodedArray, ZarrArrayEncoder
from ..naming.templates import PathTemplate, confine_text
from ..observe.outcomes import Location, array_location
from ..storage.atomic import FSYNC_CHOICES, ON_EXISTS_CHOICES, Fsync, OnExists, is_temporary, write_atomic
from ..storage.confinement import open_directory
from ..storage.staged_trees import publish_tree
from ..storage.writeback import WritebackWindow
from .writer import _refuse_reserved

#: Group directories known to hold a group's ``zarr.json`` (made or checked by this writer) before it starts over
_MAX_GROUPS = 10_000
#: The metadata objects of Zarr v3 and v2: no part of an array's key may take one of their names
_ZARR_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
#: A ``zarr.json`` larger than this is no group document of ours to check (read no further)
_MAX_DOCUMENT = 1 << 20


class ZarrArrayWriter:
    """Render, check and publish the array of one payload.

    Args:
        store_template: template of the group's path (confined to ``root``).
        array_path_template: template of the array's key in the group (confined to the group).
        root: the archive root.
        on_exists: an existing array at the key: ``error`` (keep it; the item is dead-lettered), ``overwrite``
            (replace it, atomically), ``unique`` (``key-1``, ``key-2``, ...).
        fsync: ``none``, ``file`` (every object), ``file+directory`` (and the directories).
        compression, compression_level, chunks: see ``formats.zarr_v3.ZarrArrayEncoder``.
        writeback_window: bytes of arrays that may be between "written" and "on the device" (0: off).
    """

    def __init__(
        self,
        store_template: str,
        array_path_template: str,
        root: str,
        on_exists: OnExists = "error",
        fsync: Fsync = "none",
        compression: str = "zstd",
        compression_level: int = 0,
        writeback_window: int = 0,
        chunks: str = "auto",
    ) -> None:
        check_choice("on_exists", on_exists, ON_EXISTS_CHOICES)
        check_choice("fsync", fsync, FSYNC_CHOICES)
        self.store = PathTemplate(store_template, root)
        self.key = PathTemplate(array_path_template, root)
        self.root = self.store.root
        self._root_text = str(self.root)
        self.confine_root: str | None = None if self._root_text == "/" else self._root_text
        self.on_exists: OnExists = on_exists
        self.fsync: Fsync = fsync
        self.encoder = ZarrArrayEncoder(compression, compression_level, chunks)
        self.window = WritebackWindow(writeback_window)
        self._groups: set[str] = set()

    def target(self, source_name: str, metadata: dict[str, Any]) -> tuple[str, str]:
        """``(group path, array path)`` for an item, both checked (the store under the root, the key under it)."""
        context = {**metadata, "source_name": source_name}
        group = self.store.render_confined(context)
        _refuse_reserved(group, self._root_text, self.store.source)
        key = self.key.render_text(context)
        if key.startswith("/"):
            raise PathConfinementError(
                f"array key {key!r} (template {self.key.source!r}) is absolute; expected a key inside the group "
                f"{group!r}"
            )
        array = confine_text(key, group, self.key.source)
        for part in array[len(group) + 1 :].split("/"):
            if part.startswith("__") or part in _ZARR_NAMES or is_temporary(part) or part.strip(".") == "":
                raise TemplateRenderError(
                    f"array key {key!r} (template {self.key.source!r}) has the part {part!r}: Zarr reserves names "
                    "starting with '__', names of only dots and its metadata files' names, the archiver its "
                    "temporaries' names"
                )
        return group, array

    def write(self, source_name: str, payload: Any, metadata: dict[str, Any], resumed: bool = False) -> str | None:
        """Write the array of one payload; the path written, or None when an identical array was there already
        (an item resumed after a crash, or replayed). Raises PayloadError, TemplateRenderError,
        PathConfinementError, TargetExistsError or StorageError (retried unless permanent)."""
        return self._write(source_name, payload, metadata, resumed)[0]

    def write_located(
        self,
        source_name: str,
        payload: Any,
        metadata: dict[str, Any],
        resumed: bool = False,
        before: Callable[[list[str]], None] | None = None,
    ) -> tuple[Location, ...]:
        """``write``, returning where the array is (``observe.outcomes``): ``path`` the group's directory (the
        store), ``member`` the array's key in it, no index (the array is the item), the checksum of its raw
        bytes as stored (C order, little-endian: the ``bytes`` codec's order, whatever order arrived). An
        identical array found under ``on_exists="unique"`` for a resumed item is reported under the key
        planned, which may differ by its ``-N`` (as ``FileWriter.write_located`` reports such a file). ``before``
        is told the array's directory once it is encoded, before anything is made (the catalog's intents)."""
        written, group, array, encoded = self._write(source_name, payload, metadata, resumed, before)
        key = (written or array)[len(group) + 1 :]
        return (array_location(os.path.abspath(group), key, None, encoded.data),)

    def _write(
        self,
        source_name: str,
        payload: Any,
        metadata: dict[str, Any],
        resumed: bool,
        before: Callable[[list[str]], None] | None = None,
    ) -> tuple[str | None, str, str, EncodedArray]:
        """``write``; also the group, the array's planned path and its encoding."""
        group, array = self.target(source_name, metadata)
        encoded = self.encoder.encode(payload)  # the payload's faults before anything is made
        if before is not None:
            before([array])
        self._ensure_groups(group, os.path.dirname(array))
        written = publish_tree(
            self._root_text,
            self.confine_root,
            array,
            encoded.directories,
            encoded.objects,
            encoded.nbytes,
            self.on_exists,
            self.fsync,
            self.window,
            resumed,
        )
        return written, group, array, encoded

    def close(self) -> None:
        """Finish the arrays still in the writeback window (at shutdown)."""
        self.window.close()

    # ------------------------------------------------------------------ groups
    def _ensure_groups(self, group: str, parent: str) -> None:
        """The store's group and every group between it and the array's parent hold a group ``zarr.json``."""
        if parent in self._groups:
            return
        path = group
        self._ensure_group(path)
        for part in parent[len(group) + 1 :].split("/") if parent != group else ():
            path = f"{path}/{part}"
            self._ensure_group(path)

    def _ensure_group(self, directory: str) -> None:
        if directory in self._groups:
            return
        document = self.encoder.group_document
        try:
            write_atomic(f"{directory}/zarr.json", [document], "error", self.fsync, None, self.confine_root)
        except TargetExistsError:
            self._check_group(directory)
        else:
            self._refuse_version_2(directory)
        if len(self._groups) >= _MAX_GROUPS:
            self._groups.clear()
        self._groups.add(directory)

    def _check_group(self, directory: str) -> None:
        """An existing ``zarr.json`` must be a Zarr v3 group's (an array cannot hold arrays)."""
        try:
            handle = open_directory(self.confine_root, directory, create=False)
            try:
                fd = os.open("zarr.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=handle)
            finally:
                os.close(handle)
            with open(fd, "rb") as file:
                text = file.read(_MAX_DOCUMENT)
        except OSError as exc:
            raise storage_error(exc.errno or 5, f"reading {directory}/zarr.json failed: {exc.strerror}") from exc
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if not isinstance(document, dict) or document.get("zarr_format") != 3 or document.get("node_type") != "group":
            kind = document.get("node_type") if isinstance(document, dict) else "no JSON object"
            raise TargetExistsError(
                f"{directory}/zarr.json is {kind!r}, expected a Zarr v3 group to put the array in; it is kept and "
                "the item was not written"
            )

    def _refuse_version_2(self, directory: str) -> None:
        """A directory that was a Zarr v2 node (``.zgroup``/``.zarray``) gets no v3 document: undo ours."""
        found = None
        try:
            handle = open_directory(self.confine_root, directory, create=False)
            try:
                for name in (".zgroup", ".zarray"):
                    try:
                        os.lstat(name, dir_fd=handle)
                    except FileNotFoundError:
                        continue
                    found = name
                    os.unlink("zarr.json", dir_fd=handle)
                    break
            finally:
                os.close(handle)
        except OSError as exc:
            raise storage_error(exc.errno or 5, f"checking {directory} failed: {exc.strerror}") from exc
        if found is not None:
            raise TargetExistsError(
                f"{directory} holds a Zarr v2 node ({found}); expected a Zarr v3 group or a new directory: it is "
                "kept and the item was not written"
            )
