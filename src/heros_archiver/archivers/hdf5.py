"""Hdf5Archiver: the frames of a run stacked in one HDF5 file, readable while it grows and after a crash.

Built on the container sink (``sinks.ContainerSink``, ``hdf5_sink.Hdf5Sink``) and the HDF5 container
(``containers.hdf5``): the file path is rendered from ``file_template`` once, when the event arrives, and
becomes the item's route, so every frame of one file is written by one writer, in arrival order; frames
count as archived only once a commit (an HDF5 flush) made them durable and visible to SWMR readers.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..naming.templates import PathTemplate, derive_root
from ..observe.catalog_recovery import Adoption
from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from ..sinks.containers.hdf5 import DEFAULT_COMPRESSION, OnExists
from ..sinks.containers.hdf5_files import load_h5py
from ..sinks.writer import _refuse_reserved
from ..state.replay_hdf5 import HDF5_KIND, Hdf5WriterSettings
from ..state.statedir import DEAD_LETTER_SUBDIR
from ..transport.intake import FRAME_FIFO_SAMPLES
from .acquisitions import AcquisitionMarkers, AcquisitionTracker, check_templates, default_stack_intake
from .base import HERODataArchiver
from .files import check_root
from .options import (
    DEFAULT_FLUSH_FRAMES,
    DEFAULT_FLUSH_IDLE,
    DEFAULT_FLUSH_SECONDS,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_OPEN_FILES,
    STACK_INTAKE_BUFFER,
    Hdf5Options,
)

log = logging.getLogger("heros_archiver")


class Hdf5Archiver(AcquisitionMarkers, HERODataArchiver):
    """Append array payloads as frames of a chunked HDF5 dataset, one file per ``file_template`` path.

    Args:
        file_template: Jinja2 template of the file path (as ``save_template``: the merged metadata and
            ``source_name``; strict sandbox; confined to the archive root).
        dataset_template: Jinja2 template of the frames' dataset inside the file (at least ``group/name``;
            the group becomes the NeXus NXdata group). Default ``{{ source_name }}/data``.
        compression: ``none`` (default), ``lz4``, ``bitshuffle-lz4``, ``zstd``, ``blosc``, ``gzip`` (slow).
        frames_per_chunk: frames per HDF5 chunk (default: as many as make 64 KiB, at least one).
        flush_frames, flush_seconds: commit (flush; frames become archived and visible to SWMR readers)
            every this many frames or seconds after the oldest waiting frame, whichever first, and at drain.
        flush_idle: also commit once no frame has arrived for this many seconds (default 0.05; None: only
            by ``flush_frames``, ``flush_seconds`` and at drain).
        max_frames, max_bytes: roll over to ``name-1.h5``, ``name-2.h5``, ... once a file holds this many
            frames or bytes (None: no limit).
        idle_timeout: seconds after which a file nothing was appended to is closed (reopened when needed).
        max_open_files: files open at once per writer; the least recently used is closed first.
        on_exists: an existing file at start: ``error`` (default; its frames are dead-lettered), ``append``
            (continue after its committed frames, also after a crash; frames whose key it holds are not
            written again), ``unique`` (``name-1.h5``, ...).
        root: archive root (default: derived from ``file_template`` as for the file archivers).
        fsync: ``none`` (default: a commit survives the archiver's process being killed) or ``file`` (an
            fsync per commit: it survives a power loss too).
        acquisitions: also receive the cameras' ``acquisition_started`` and ``acquisition_stopped`` (HEROS
            cameras of herosdevices) and write each acquisition into a file of its own: the start's
            configuration as attributes, the stop's count of frames emitted checked against the frames the
            file holds (a shortfall is logged and counted in ``acquisition_gaps``). The templates see
            ``acquisition`` (1, 2, ... per camera since the archiver started), ``acquisition_start`` (UTC,
            ``20261201T221803.123Z``) and ``acquisition_start_seen``, and may use only those, ``source_name``
            and the default metadata; a template that renders the same path again gets ``name-1.h5``, ...
            (default False). Needs ``intake_buffer=0`` (its default then), which keeps the events in order,
            and ``overflow`` ``block`` or ``spill``, under which the two events are never dropped.

    Without ``acquisitions`` the default ``intake_buffer`` is 1024 samples (at most 8 MiB, and 4 samples
    held by Zenoh in front of them): appending a frame costs so little that handing each sample over on
    Zenoh's receive thread, against the writer for the GIL, was most of the work (decision 0044). The Zarr
    append and TIFF stack archivers do the same.
    """

    sink_options: Hdf5Options
    DEFAULT_INTAKE_BUFFER = STACK_INTAKE_BUFFER  # 0 with ``acquisitions`` (``default_stack_intake``)
    INTAKE_FIFO_SAMPLES = FRAME_FIFO_SAMPLES

    def _catalog_adoption(self) -> Adoption | None:
        """The frames committed and not yet journaled when a kill came: a later start reads them back from their
        stacks (``observe.catalog_recovery``)."""
        return Adoption(frames=True)

    def __init__(
        self,
        file_template: str,
        dataset_template: str = "{{ source_name }}/data",
        *args: Any,
        compression: str = DEFAULT_COMPRESSION,
        frames_per_chunk: int | None = None,
        flush_frames: int = DEFAULT_FLUSH_FRAMES,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        flush_idle: float | None = DEFAULT_FLUSH_IDLE,
        max_frames: int | None = None,
        max_bytes: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
        on_exists: OnExists = "error",
        root: str | None = None,
        fsync: str = "none",
        acquisitions: bool = False,
        **kwargs: Any,
    ) -> None:
        self.sink_options = Hdf5Options(
            file_template, dataset_template, compression=compression, frames_per_chunk=frames_per_chunk,
            flush_frames=flush_frames, flush_seconds=flush_seconds, flush_idle=flush_idle, max_frames=max_frames,
            max_bytes=max_bytes, idle_timeout=idle_timeout, max_open_files=max_open_files, on_exists=on_exists,
            root=root, fsync=fsync, acquisitions=acquisitions,
        )  # fmt: skip
        self.sink_options.check_with(kwargs.get("intake_buffer"), kwargs.get("overflow", "block"))
        load_h5py()  # a missing extra fails here, at start
        self._tracker = AcquisitionTracker()
        default_stack_intake(kwargs, acquisitions)
        HERODataArchiver.__init__(self, *args, **kwargs)
        if acquisitions:
            self._subscribe_markers()

    # ------------------------------------------------------------------ hooks of HERODataArchiver
    def _setup_storage(self) -> None:
        """Compile both templates (syntax errors fail here) under the root, and check the state directory."""
        options = self.sink_options
        if self.sink_options.acquisitions:
            templates = (("file_template", options.file_template), ("dataset_template", options.dataset_template))
            check_templates(templates, self.metadata)
        root = Path(options.root) if options.root else derive_root(options.file_template, self.metadata)
        self.name_template = PathTemplate(options.file_template, root)
        self.root = self.name_template.root
        self._dataset = PathTemplate(options.dataset_template, self.root)
        self._file_paths = RenderCache(self.name_template)
        self._datasets = RenderCache(self._dataset)
        self._receive_times = DistinctReceiveTimes()
        check_root(self.root)

    def _default_dead_letter_dir(self) -> Path:
        return self.root / DEAD_LETTER_SUBDIR

    def _state_is_durable(self) -> bool:
        return self.sink_options.fsync != "none"

    def _writer_settings(self) -> dict[str, Any]:
        """Recorded with each dead letter, so that ``heros-archiver replay`` appends it where it belongs."""
        options = self.sink_options
        return Hdf5WriterSettings(
            kind=HDF5_KIND, file_template=self.name_template.source, dataset_template=self._dataset.source,
            root=str(self.root), compression=options.compression, frames_per_chunk=options.frames_per_chunk,
            on_exists=options.on_exists, fsync=options.fsync != "none", max_frames=options.max_frames,
            max_bytes=options.max_bytes, sequence_key=self.options.sequence_key,
        ).to_dict()  # fmt: skip

    def _item_router(self) -> Callable[[Item], None]:
        return self._route

    def _route(self, item: Item) -> None:
        """Render and confine the item's file path (once, on receipt): it is the item's route to its writer.

        With ``acquisitions``, a frame received now (not read back from the spool, which kept its context)
        is first given the acquisition it belongs to. An item just received also gets a receive time later
        than any earlier one of its source (its item key, decision 0020); one read back from the spool keeps
        the time it was spooled with."""
        if item.spool_entry is None:
            self._receive_times.make_distinct(item)
        if self.sink_options.acquisitions:
            self._give_acquisition(item)
        item.route = self._file_paths.render(self._acquisition_context(item), self._render_route)

    def _render_route(self, context: Mapping[str, Any]) -> str:
        path = self.name_template.render_confined(context)
        _refuse_reserved(path, str(self.root), self.sink_options.file_template)
        return path

    def _dataset_of(self, item: Item) -> str:
        return self._datasets.render(self._acquisition_context(item), self._dataset.render_text)

    def _container_sink_factory(self) -> Callable[[], ContainerSink]:
        from ..sinks.hdf5 import Hdf5Sink
        from ..sinks.hdf5_acquisitions import Hdf5AcquisitionSink

        settings = self.sink_options.sink_settings(str(self.root), self.options.sequence_key)
        sink = Hdf5AcquisitionSink if self.sink_options.acquisitions else Hdf5Sink
        return lambda: sink(settings, self._dataset_of)

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Not used: items go to the container sink (the reference API's hook, kept for subclasses' sake)."""
        raise ConfigurationError(
            f"Hdf5Archiver writes items through its container sink, not _store (item from {source_name!r})"
        )


class RenderCache:
    """Renders of one template, kept per ``PathTemplate.render_key``: a file path that stays the same for a
    run is rendered (and checked) once, not per frame. Bounded: it starts over after ``MAX_ENTRIES``
    distinct keys (a template of the frame number renders anew each time, as without the cache)."""

    MAX_ENTRIES = 1024

    def __init__(self, template: PathTemplate) -> None:
        self._template = template
        self._renders: dict[tuple[Any, ...], str] = {}

    def render(self, context: Mapping[str, Any], render: Callable[[Mapping[str, Any]], str]) -> str:
        """``render(context)``, or what it gave for an equal key before (errors are raised, never kept)."""
        key = self._template.render_key(context)
        if key is None:
            return render(context)
        text = self._renders.get(key)
        if text is None:
            text = render(context)
            if len(self._renders) >= self.MAX_ENTRIES:
                self._renders.clear()
            self._renders[key] = text
        return text


class DistinctReceiveTimes:
    """Makes the receive times of one source strictly increasing (the next float when two are equal), so
    that the item key (source, sequence value, receive time) of two items never coincides, even for equal
    frames without a sequence value that arrived within the clock's resolution (~0.24 us)."""

    MAX_SOURCES = 1024

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def make_distinct(self, item: Item) -> None:
        with self._lock:
            last = self._last.get(item.source)
            if last is not None and item.received <= last:
                item.received = math.nextafter(last, math.inf)
            elif len(self._last) >= self.MAX_SOURCES:
                self._last.clear()
            self._last[item.source] = item.received
