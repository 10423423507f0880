"""TiffArchiver: array payloads as TIFF, one file per item or the frames of a run as one BigTIFF stack.

* ``stack=False`` (default): a file-per-item archiver like ``ArrayArchiver`` (the same ``save_template``,
  confinement, ``on_exists``, atomic files, nothing lost), writing ``formats.tiff`` files that keep the
  array's dtype, shape and byte order.
* ``stack=True``: a container archiver like ``Hdf5Archiver``: the template names a stack, rendered once per
  item on receipt (the item's route, so one writer has each stack); frames are appended as pages of a
  BigTIFF with an ImageJ hyperstack description (``sinks.tiff_stack``, ``sinks.containers.tiff``) and count
  as archived only once a commit linked their pages. Decision 0024. With ``acquisitions=True`` each camera
  acquisition is a stack of its own (``AcquisitionMarkers``, ``sinks.tiff_acquisitions``), as in
  ``Hdf5Archiver``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..observe.catalog_recovery import Adoption
from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from ..sinks.batching import BatchWriter
from ..sinks.writer import _refuse_reserved
from ..state.replay_tiff import TIFF_STACK_KIND, TiffStackWriterSettings
from ..storage.atomic import OnExists
from ..transport.intake import FRAME_FIFO_SAMPLES
from .acquisitions import (
    AcquisitionMarkers,
    AcquisitionTracker,
    check_templates,
    default_stack_intake,
    recorded_defaults,
)
from .files import FileArchiver
from .object_root import DEFAULT_STALE_UPLOADS_AFTER, ObjectRootOptions
from .options import DEFAULT_WRITEBACK_WINDOW, TiffOptions


class TiffArchiver(AcquisitionMarkers, FileArchiver):
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
        intake_buffer: as ``HERODataArchiver``; a stack's default is 1024 (0 with ``acquisitions``), as
            ``Hdf5Archiver``'s (decision 0044), files' 0.
        storage_options, state_dir, stale_uploads_after: as ``FileArchiver``, for ``root="s3://bucket/prefix"``
            (files only: a stack is appended to in place, which an object cannot be).
        acquisitions: (stack) also receive the cameras' ``acquisition_started`` and ``acquisition_stopped``
            and write each acquisition into a stack of its own, as ``Hdf5Archiver(acquisitions=True)``: the
            start's configuration in the record of the stack's first page (``acquisition``), the stop's count
            of frames emitted checked against the frames the stack holds (a shortfall is logged and counted in
            ``acquisition_gaps``). The template sees ``acquisition``, ``acquisition_start`` and
            ``acquisition_start_seen`` and may use only those, ``source_name`` and the default metadata.
            Needs ``stack=True``, ``intake_buffer=0`` and ``overflow`` ``block`` or ``spill`` (default False).
    """

    sink_options: TiffOptions  # type: ignore[assignment]  # its file part, a FileOptions, is ``sink_options.files``
    INTAKE_FIFO_SAMPLES = FRAME_FIFO_SAMPLES

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
        acquisitions: bool = False,
        **kwargs: Any,
    ) -> None:
        helper_process = kwargs.pop("helper_process", None)
        objects = ObjectRootOptions(
            kwargs.pop("storage_options", None), kwargs.pop("state_dir", None),
            kwargs.pop("stale_uploads_after", DEFAULT_STALE_UPLOADS_AFTER),
        )  # fmt: skip
        self.sink_options = TiffOptions(
            save_template, stack, split_data_array, on_exists, fsync, flush_frames, flush_seconds, max_frames,
            max_bytes, idle_timeout, max_open_files, writeback_window, kwargs.pop("root", None),
            self.DEFAULT_HELPER_PROCESS if helper_process is None else helper_process, acquisitions, objects,
        )  # fmt: skip
        self.sink_options.check_with(kwargs.get("intake_buffer"), kwargs.get("overflow", "block"))
        if self.sink_options.stack:
            from ..sinks.tiff_stack import load_blake3

            load_blake3()  # a missing extra fails here, at start
        if self.sink_options.stack:
            default_stack_intake(kwargs, acquisitions)
        self._tracker = AcquisitionTracker()
        self._init_files(self.sink_options.files, *args, **kwargs)
        if self.sink_options.acquisitions:
            self._subscribe_markers()

    # ------------------------------------------------------------------ hooks of HERODataArchiver
    def _setup_storage(self) -> None:
        if self.sink_options.acquisitions:
            check_templates((("save_template", self.sink_options.save_template),), self.metadata)
        super()._setup_storage()

    def _item_router(self) -> Callable[[Item], None] | None:
        return self._route if self.sink_options.stack else None

    def _route(self, item: Item) -> None:
        """Render and confine the item's stack path (once, on receipt): it is the item's route to its writer.
        With ``acquisitions``, a frame is first given the acquisition it belongs to."""
        if self.sink_options.acquisitions:
            self._give_acquisition(item)
        context = self._acquisition_context(item)
        path = self.name_template.render_confined(context)
        _refuse_reserved(path, str(self.root), self.name_template.source)
        item.route = path

    def _container_sink_factory(self) -> Callable[[], ContainerSink] | None:
        if not self.sink_options.stack:
            return None
        from ..sinks.tiff_acquisitions import TiffAcquisitionSink
        from ..sinks.tiff_stack import TiffStackSink

        settings = self.sink_options.stack_settings(str(self.root), self.options.sequence_key)
        sink = TiffAcquisitionSink if self.sink_options.acquisitions else TiffStackSink
        return lambda: sink(settings)

    def _catalog_adoption(self) -> Adoption | None:
        """A stack's pages committed and not yet journaled when a kill came are read back from it at the next
        start (``observe.catalog_recovery``); single files are adopted as every file archiver's are."""
        if not self.sink_options.stack:
            return super()._catalog_adoption()
        return Adoption(frames=True)

    def _batch_writer_factory(self) -> Callable[[int], BatchWriter] | None:
        return None if self.sink_options.stack else super()._batch_writer_factory()

    def _writer_settings(self) -> dict[str, Any] | None:
        """Recorded with each dead letter, so that ``heros-archiver replay`` writes it as this archiver would:
        a stack's frames appended to their stack (``state.replay_tiff``), files as the file archivers'."""
        options = self.sink_options
        if not options.stack:
            return super()._writer_settings()
        return TiffStackWriterSettings(
            kind=TIFF_STACK_KIND, save_template=self.name_template.source, root=str(self.root),
            on_exists=options.on_exists, fsync=options.fsync, max_frames=options.max_frames,
            max_bytes=options.max_bytes, writeback_window=options.writeback_window,
            acquisitions=options.acquisitions,
            default_metadata=recorded_defaults(self.metadata) if options.acquisitions else None,
            sequence_key=self.options.sequence_key,
        ).to_dict()  # fmt: skip

    @property
    def on_exists(self) -> OnExists:
        """What happens when a target exists (files: ``error``, ``overwrite``, ``unique``; stack: ``error``,
        ``append``, ``unique``)."""
        return self.sink_options.on_exists  # type: ignore[return-value]

    @property
    def split_data_array(self) -> bool:
        """(files) One file per index along axis 0."""
        return bool(self.sink_options.split_data_array)
