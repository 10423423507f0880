"""TiffArchiver: array payloads as TIFF, one file per item or the frames of a run as one BigTIFF stack.

* ``stack=False`` (default): a file-per-item archiver like ``ArrayArchiver`` (the same ``save_template``,
  confinement, ``on_exists``, atomic files, nothing lost), writing ``formats.tiff`` files that keep the
  array's dtype, shape and byte order.
* ``stack=True``: a container archiver like ``Hdf5Archiver``: the template names a stack, rendered once per
  item on receipt (the item's route, so one writer has each stack); frames are appended as pages of a
  BigTIFF with an ImageJ hyperstack description (``sinks.tiff_stack``, ``sinks.containers.tiff``) and count
  as archived only once a commit linked their pages. Decision 0024.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

from ..checks import check_choice, check_integer, check_seconds
from ..errors import ConfigurationError
from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from ..sinks.batching import BatchWriter
from ..sinks.containers.tiff import OnExists as StackOnExists
from ..sinks.writer import _refuse_reserved
from ..storage.atomic import OnExists
from .files import DEFAULT_WRITEBACK_WINDOW, FileArchiver
from .hdf5 import DEFAULT_FLUSH_BYTES, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_OPEN_FILES

#: Commit a stack every this many frames by default (or ``DEFAULT_FLUSH_BYTES``, 32 MiB, whichever first) ...
DEFAULT_FLUSH_FRAMES = 1000
#: ... or this many seconds after the oldest waiting frame: what a reader (or a crash) may lag behind. Shorter
#: than the HDF5 archiver's 1 s because a TIFF commit costs two small writes beyond the pages themselves
#: (the link and the ImageJ count: ~10 us, benchmarks/tiff_commit_interval.py, decision 0024).
DEFAULT_STACK_FLUSH_SECONDS = 0.1
_STACK_FSYNC: tuple[str, ...] = ("none", "file")


class TiffArchiver(FileArchiver):
    """Save array payloads as TIFF: one file per item, or (``stack=True``) the pages of a BigTIFF stack.

    Args:
        save_template: Jinja2 template of the file path (the merged metadata and ``source_name``; strict
            sandbox; confined to the archive root). With ``stack=True`` it names the stack, e.g.
            ``{{ file_path }}/{{ run }}/{{ source_name }}.tif``.
        stack: append 2-D frames as pages of one BigTIFF per rendered path (ImageJ hyperstack metadata:
            Fiji, napari and ``tifffile`` open it as a ``(frames, height, width)`` stack).
        split_data_array: (files) one file per index along axis 0; the template gets ``_split_index``.
        on_exists: files: ``error`` (default), ``overwrite``, ``unique``; stack: ``error`` (default; its
            frames are dead-lettered), ``append`` (continue after its committed pages, also after a crash;
            frames whose key it holds are not written again), ``unique`` (``name-1.tif``, ...).
        fsync: files: ``none``, ``file``, ``file+directory``; stack: ``none`` (a commit survives the process
            being killed) or ``file`` (two fdatasyncs per commit: it survives a power loss too).
        flush_frames, flush_seconds: (stack) commit every this many frames (or 32 MiB) or seconds after the
            oldest waiting frame, whichever first, and at drain (defaults 1000 frames, 0.1 s).
        max_frames, max_bytes: (stack) roll over to ``name-1.tif``, ``name-2.tif``, ... once a stack holds
            this many frames or bytes (None: no limit; BigTIFF has no 4 GiB limit).
        idle_timeout, max_open_files: (stack) close a stack unused this many seconds (default 60); at most
            this many open per writer (default 16), the least recently used closed first.
        writeback_window: bytes of large files (files) or of committed pages (stack) that may be in the page
            cache before the oldest are waited for on the device and dropped from the cache (default 32 MiB;
            0: the kernel decides); keeps the cache small and latency flat over long runs (decision 0009).
        root, helper_process: as ``FileArchiver`` (the last for files only).
    """

    def __init__(
        self,
        save_template: str,
        *args: Any,
        stack: bool = False,
        split_data_array: bool = False,
        on_exists: str = "error",
        fsync: str = "none",
        flush_frames: int | None = None,
        flush_seconds: float | None = None,
        max_frames: int | None = None,
        max_bytes: int | None = None,
        idle_timeout: float | None = None,
        max_open_files: int | None = None,
        writeback_window: int = DEFAULT_WRITEBACK_WINDOW,
        **kwargs: Any,
    ) -> None:
        if not isinstance(stack, bool):
            raise ConfigurationError(f"stack: expected true or false, got {stack!r}")
        self.stack = stack
        stack_only = {
            "flush_frames": flush_frames, "flush_seconds": flush_seconds, "max_frames": max_frames,
            "max_bytes": max_bytes, "idle_timeout": idle_timeout, "max_open_files": max_open_files,
        }  # fmt: skip
        given = {name: value for name, value in stack_only.items() if value is not None}
        if stack:
            self._check_stack_arguments(on_exists, fsync, split_data_array, given)
            from ..sinks.tiff_stack import load_blake3

            load_blake3()  # a missing extra fails here, at start
            self.flush_frames = DEFAULT_FLUSH_FRAMES if flush_frames is None else flush_frames
            self.flush_seconds = DEFAULT_STACK_FLUSH_SECONDS if flush_seconds is None else float(flush_seconds)
            self.idle_timeout = DEFAULT_IDLE_TIMEOUT if idle_timeout is None else float(idle_timeout)
            self.max_open_files = DEFAULT_MAX_OPEN_FILES if max_open_files is None else max_open_files
            self.max_frames, self.max_bytes = max_frames, max_bytes
            self._stack_on_exists: StackOnExists = on_exists  # type: ignore[assignment]
            file_on_exists: str = "error"  # the per-file writer is not used for a stack
            self._stack_writeback_window, writeback_window = writeback_window, 0
        elif given:
            raise ConfigurationError(
                f"{', '.join(sorted(given))}: expected only with stack=True (they shape a stack's commits and "
                "rollover); one file per item needs none of them"
            )
        else:
            file_on_exists = on_exists
        self._sequence_key = kwargs.get("sequence_key")
        FileArchiver.__init__(
            self, save_template, "tiff", *args, on_exists=file_on_exists, fsync=fsync,  # type: ignore[arg-type]
            writeback_window=writeback_window, split_data_array=split_data_array, **kwargs,
        )  # fmt: skip

    @staticmethod
    def _check_stack_arguments(on_exists: str, fsync: str, split: bool, given: dict[str, Any]) -> None:
        check_choice("on_exists", on_exists, get_args(StackOnExists))
        check_choice("fsync", fsync, _STACK_FSYNC)
        if split:
            raise ConfigurationError("split_data_array: expected false with stack=True (each frame is one page)")
        for name in ("flush_frames", "max_open_files"):
            if name in given:
                check_integer(name, given[name], "a positive integer", 1)
        for name in ("max_frames", "max_bytes"):
            if name in given:
                check_integer(name, given[name], "None or a positive integer", 1)
        for name in ("flush_seconds", "idle_timeout"):
            if name in given:
                check_seconds(name, given[name])

    # ------------------------------------------------------------------ hooks of HERODataArchiver
    def _item_router(self) -> Callable[[Item], None] | None:
        return self._route if self.stack else None

    def _route(self, item: Item) -> None:
        """Render and confine the item's stack path (once, on receipt): it is the item's route to its writer."""
        context = {**item.metadata, "source_name": item.source}
        path = self.name_template.render_confined(context)
        _refuse_reserved(path, str(self.root), self.name_template.source)
        item.route = path

    def _container_sink_factory(self) -> Callable[[], ContainerSink] | None:
        if not self.stack:
            return None
        from ..sinks.tiff_stack import TiffStackSettings, TiffStackSink

        settings = TiffStackSettings(
            root=str(self.root), on_exists=self._stack_on_exists, fsync=self.fsync != "none",
            flush_frames=self.flush_frames, flush_seconds=self.flush_seconds, flush_bytes=DEFAULT_FLUSH_BYTES,
            max_frames=self.max_frames, max_bytes=self.max_bytes, idle_timeout=self.idle_timeout,
            max_open_files=self.max_open_files, sequence_key=self._sequence_key,
            writeback_window=self._stack_writeback_window,
        )  # fmt: skip
        return lambda: TiffStackSink(settings)

    def _batch_writer_factory(self) -> Callable[[int], BatchWriter] | None:
        return None if self.stack else super()._batch_writer_factory()

    def _writer_settings(self) -> dict[str, Any] | None:
        """Dead letters of a stack are not replayed as single files (None); those of files are."""
        return None if self.stack else super()._writer_settings()

    @property
    def on_exists(self) -> OnExists:
        """What happens when a target exists (files: ``error``, ``overwrite``, ``unique``; stack: ``error``,
        ``append``, ``unique``)."""
        return self._stack_on_exists if self.stack else self._settings.on_exists  # type: ignore[return-value]

    @property
    def split_data_array(self) -> bool:
        """(files) One file per index along axis 0."""
        return self._settings.split_data_array
