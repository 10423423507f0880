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
from typing import Any, get_args

from ..checks import check_choice, check_integer, check_seconds
from ..errors import ConfigurationError
from ..naming.templates import PathTemplate, derive_root
from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink
from ..sinks.containers.hdf5 import COMPRESSIONS, DEFAULT_COMPRESSION, OnExists
from ..sinks.containers.hdf5_files import load_h5py
from ..sinks.writer import _refuse_reserved
from ..state.statedir import DEAD_LETTER_SUBDIR
from .base import HERODataArchiver
from .files import _refuse_linked_state_directory

log = logging.getLogger("heros_archiver")

#: Commit every this many frames by default: measured (benchmarks/hdf5_commit_interval.py, decision 0018),
#: 8 KiB frames reach 0.94x the rate of a single commit at the end with 1000, 0.81x with 100.
DEFAULT_FLUSH_FRAMES = 1000
#: ... or once this many bytes wait (held in memory, counted within the queue's byte bound, decision 0020):
#: 16 frames of 2 MiB, where committing every 10 already runs at 0.93-1.0x.
DEFAULT_FLUSH_BYTES = 32 * 2**20
#: ... or this many seconds after the oldest waiting frame: what a SWMR reader (or a crash) may lag behind.
DEFAULT_FLUSH_SECONDS = 1.0
#: ... or once no frame has arrived for this long: the end of a burst (or of a run) is committed at once, not
#: flush_seconds later; short enough to be 2-3 % of a 2 s run, long enough that frames 20 ms apart (50 fps)
#: are not committed one by one (decision 0020).
DEFAULT_FLUSH_IDLE = 0.05
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_OPEN_FILES = 16
FSYNC_CHOICES: tuple[str, ...] = ("none", "file")


class Hdf5Archiver(HERODataArchiver):
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
    """

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
        **kwargs: Any,
    ) -> None:
        check_choice("compression", compression, COMPRESSIONS)
        check_choice("on_exists", on_exists, get_args(OnExists))
        check_choice("fsync", fsync, FSYNC_CHOICES)
        check_integer("flush_frames", flush_frames, "a positive integer", 1)
        check_integer("max_open_files", max_open_files, "a positive integer", 1)
        if frames_per_chunk is not None:
            check_integer("frames_per_chunk", frames_per_chunk, "None or a positive integer", 1)
        for name, value in (("max_frames", max_frames), ("max_bytes", max_bytes)):
            if value is not None:
                check_integer(name, value, "None or a positive integer", 1)
        check_seconds("flush_seconds", flush_seconds)
        if flush_idle is not None:
            check_seconds("flush_idle", flush_idle, "None or a non-negative number of seconds")
        check_seconds("idle_timeout", idle_timeout)
        load_h5py()  # a missing extra fails here, at start
        self.file_template = file_template
        self.dataset_template = dataset_template
        self.compression = compression
        self.frames_per_chunk = frames_per_chunk
        self.flush_frames = flush_frames
        self.flush_seconds = float(flush_seconds)
        self.flush_idle = None if flush_idle is None else float(flush_idle)
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.idle_timeout = float(idle_timeout)
        self.max_open_files = max_open_files
        self.on_exists = on_exists
        self.fsync = fsync
        self._root_argument = root
        self._sequence_key = kwargs.get("sequence_key")
        HERODataArchiver.__init__(self, *args, **kwargs)

    # ------------------------------------------------------------------ hooks of HERODataArchiver
    def _setup_storage(self) -> None:
        """Compile both templates (syntax errors fail here) under the root, and check the state directory."""
        root = Path(self._root_argument) if self._root_argument else derive_root(self.file_template, self.metadata)
        self.name_template = PathTemplate(self.file_template, root)
        self.root = self.name_template.root
        self._dataset = PathTemplate(self.dataset_template, self.root)
        self._file_paths = RenderCache(self.name_template)
        self._datasets = RenderCache(self._dataset)
        self._receive_times = DistinctReceiveTimes()
        if self.root == Path(self.root.anchor):
            log.warning("archive root is %s: paths are not confined; pass root=... to confine them", self.root)
        else:
            _refuse_linked_state_directory(self.root)

    def _default_dead_letter_dir(self) -> Path:
        return self.root / DEAD_LETTER_SUBDIR

    def _state_is_durable(self) -> bool:
        return self.fsync != "none"

    def _item_router(self) -> Callable[[Item], None]:
        return self._route

    def _route(self, item: Item) -> None:
        """Render and confine the item's file path (once, on receipt): it is the item's route to its writer.

        An item just received also gets a receive time later than any earlier one of its source (its item
        key, decision 0020); one read back from the spool keeps the time it was spooled with."""
        if item.spool_entry is None:
            self._receive_times.make_distinct(item)
        context = {**item.metadata, "source_name": item.source}
        item.route = self._file_paths.render(context, self._render_route)

    def _render_route(self, context: Mapping[str, Any]) -> str:
        path = self.name_template.render_confined(context)
        _refuse_reserved(path, str(self.root), self.file_template)
        return path

    def _dataset_of(self, item: Item) -> str:
        return self._datasets.render({**item.metadata, "source_name": item.source}, self._dataset.render_text)

    def _container_sink_factory(self) -> Callable[[], ContainerSink]:
        from ..sinks.hdf5 import Hdf5Sink, Hdf5SinkSettings

        settings = Hdf5SinkSettings(
            root=str(self.root), compression=self.compression, frames_per_chunk=self.frames_per_chunk,
            on_exists=self.on_exists, fsync=self.fsync != "none", flush_frames=self.flush_frames,
            flush_seconds=self.flush_seconds, flush_bytes=DEFAULT_FLUSH_BYTES, flush_idle=self.flush_idle,
            max_frames=self.max_frames, max_bytes=self.max_bytes, idle_timeout=self.idle_timeout,
            max_open_files=self.max_open_files,
            sequence_key=self._sequence_key,
        )  # fmt: skip
        return lambda: Hdf5Sink(settings, self._dataset_of)

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
