"""Every constructor argument of the archivers, in frozen objects checked when they are made.

An archiver's ``__init__`` only gathers its arguments into one of these and reads from it; all refusals
of a bad argument are raised here, before a thread, a file or a Zenoh session exists, and are worded the
same way for every archiver (``checks``). The object is kept as ``archiver.options``: one frozen record of
how the archiver was configured (what ``stats()`` callers and later the status view read).

``ArchiverOptions`` holds what every archiver takes (the reference API's arguments and the pipeline's);
``FileOptions``, ``Hdf5Options``, ``ZarrOptions``, ``ZarrAppendOptions``, ``TiffOptions``,
``ParquetOptions`` and ``PostgresOptions`` add what their archivers take (``archiver.sink_options``). The
pipeline's own part is the ``PipelineOptions`` inside, which the pipeline checks itself because it is also
built without an archiver.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from ..checks import check_choice, check_integer, check_seconds
from ..errors import ConfigurationError
from ..formats.zarr_v3 import CHUNKINGS as ZARR_CHUNKINGS
from ..formats.zarr_v3 import COMPRESSIONS as ZARR_COMPRESSIONS
from ..observe.catalog_backend import redact_url
from ..observe.diskspace import DEFAULT_LOW_DISK_SPACE, check_threshold
from ..observe.listeners import Listener
from ..pipeline.options import PipelineOptions
from ..sinks.base import Sink
from ..sinks.containers.hdf5 import COMPRESSIONS, DEFAULT_COMPRESSION
from ..sinks.containers.hdf5 import OnExists as ContainerOnExists
from ..sinks.containers.tiff import OnExists as StackOnExists
from ..sinks.containers.zarr_shards import COMPRESSIONS as ZARR_APPEND_COMPRESSIONS
from ..sinks.containers.zarr_shards import DEFAULT_COMPRESSION as ZARR_APPEND_DEFAULT_COMPRESSION
from ..storage.atomic import FSYNC_CHOICES, ON_EXISTS_CHOICES, Fsync, OnExists
from .object_root import ObjectRoot, ObjectRootOptions, object_root_of

if TYPE_CHECKING:
    from ..sinks.hdf5 import Hdf5SinkSettings
    from ..sinks.parquet import ParquetSinkSettings
    from ..sinks.postgres import PostgresSinkSettings
    from ..sinks.tiff_stack import TiffStackSettings
    from ..sinks.zarr_append import ZarrAppendSinkSettings

__all__ = [
    "ArchiverOptions",
    "FileOptions",
    "Hdf5Options",
    "ParquetOptions",
    "PostgresOptions",
    "TiffOptions",
    "ZarrAppendOptions",
    "ZarrOptions",
]

#: Default ``writeback_window``: 16 camera frames of 2 MiB in flight to disk.
DEFAULT_WRITEBACK_WINDOW = 32 * 2**20

#: ``fsync`` choices of the HDF5 archiver: a commit survives the process (``none``) or a power loss too.
HDF5_FSYNC_CHOICES: tuple[str, ...] = ("none", "file")
#: ``intake_buffer`` of an archiver appending frames to stacks (HDF5, Zarr append, TIFF), unless given
#: (decision 0044)
STACK_INTAKE_BUFFER = 1024
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


def _check_flush_idle(value: object) -> None:
    """``flush_idle`` of a container archiver: None (no idle commits) or seconds."""
    if value is not None:
        check_seconds("flush_idle", value, "None or a non-negative number of seconds")


def _check_optional_text(name: str, value: object, expected: str) -> None:
    if value is not None and not isinstance(value, str | os.PathLike):
        raise ConfigurationError(f"{name}: expected {expected}, got {type(value).__name__} {value!r:.200}")


def _refuse_object_root(archiver: str, template: str, root: object) -> None:
    """A container archiver writes local files: an ``s3://`` root or template would otherwise become a local
    directory named ``s3:``, so it is refused, naming the archivers that write objects."""
    for value in (template, root):
        if isinstance(value, str) and value.startswith("s3://"):
            raise ConfigurationError(
                f"{archiver}: expected a local root, got the object-store location {value!r}; object storage is "
                "written by the file-per-item archivers (ArrayArchiver, JsonArchiver, TiffArchiver without stack) "
                "and by ZarrAppendArchiver"
            )


def _check_template(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{name}: expected a Jinja2 template (text), got {type(value).__name__} {value!r:.100}"
        )


def _check_optional_bool(name: str, value: object, expected: str = "true, false or None") -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"{name}: expected {expected}, got {value!r:.200}")


_CATALOG_SCHEMES = ("postgresql://", "postgres://")


def _check_catalog_url(url: object, catalog: bool) -> None:
    """A libpq URL of the shared catalog's database (or None: the root's SQLite file)."""
    if url is None:
        return
    if not isinstance(url, str) or not url.startswith(_CATALOG_SCHEMES):
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise ConfigurationError(
            f"catalog_url: expected a PostgreSQL URL (postgresql://user@host:port/database) or None, got {shown:.200}"
        )
    if not catalog:
        raise ConfigurationError(
            f"catalog_url: expected no URL with catalog=False (no catalog is kept), got {redact_url(url):.200}"
        )


@dataclass(frozen=True)
class ArchiverOptions:
    """What every archiver takes (see ``HERODataArchiver`` for each); the rest goes to ``heros.EventObserver``."""

    object_selector: str
    event_name: str
    default_metadata: Mapping[str, Any] = field(default_factory=dict)
    max_retries: int = 5
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    #: samples Zenoh may hold in front of the queue (the archiver class's default already applied)
    intake_buffer: int = 0
    sequence_key: str | None = None
    dead_letter_dir: str | os.PathLike[str] | None = None
    spool_dir: str | os.PathLike[str] | None = None
    zenoh_shared_memory: bool | None = None
    #: for tests and instrumentation: given each sink the pipeline makes, returns the one to use
    sink_wrapper: Callable[[Sink], Sink] | None = None
    #: for tests and instrumentation: told of every item's outcome, beside the archiver's own (``observe``)
    listeners: tuple[Listener, ...] = ()
    #: keep the catalog of the archive root (archivers with a root; decision 0031)
    catalog: bool = True
    #: keep it in this PostgreSQL database (``postgresql://...``), shared with other archivers (decision 0037)
    catalog_url: str | None = None
    #: the host name the rows of a shared catalog say they are of (default: this machine's host name)
    catalog_host: str | None = None
    #: send the ``archived``, ``failed`` and ``low_disk_space`` events (an archiver that is a HERO only)
    events: bool = True
    #: free bytes (>= 1) or fraction of the file system (in (0, 1)) below which ``low_disk_space`` is sent
    low_disk_space: int | float | None = DEFAULT_LOW_DISK_SPACE

    def __post_init__(self) -> None:
        for name in ("object_selector", "event_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"{name}: expected a non-empty text, got {value!r:.200}")
        if not isinstance(self.default_metadata, Mapping):
            raise ConfigurationError(f"default_metadata: expected a dict, got {type(self.default_metadata).__name__}")
        check_integer("max_retries", self.max_retries, "a non-negative integer", 0)
        check_integer("intake_buffer", self.intake_buffer, "a number of samples >= 0", 0)
        if self.sequence_key is not None and not isinstance(self.sequence_key, str):
            raise ConfigurationError(
                f"sequence_key: expected a metadata key (text) or None, got {self.sequence_key!r:.200}"
            )
        _check_optional_text("dead_letter_dir", self.dead_letter_dir, "a directory path or None")
        _check_optional_text("spool_dir", self.spool_dir, "a directory path or None")
        _check_optional_bool("zenoh_shared_memory", self.zenoh_shared_memory)
        if self.sink_wrapper is not None and not callable(self.sink_wrapper):
            raise ConfigurationError(
                f"sink_wrapper: expected a callable (sink -> sink) or None, got {self.sink_wrapper!r:.200}"
            )
        if not isinstance(self.catalog, bool):
            raise ConfigurationError(f"catalog: expected true or false, got {self.catalog!r:.200}")
        _check_catalog_url(self.catalog_url, self.catalog)
        if self.catalog_host is not None and (not isinstance(self.catalog_host, str) or not self.catalog_host.strip()):
            raise ConfigurationError(
                f"catalog_host: expected a host name (non-empty text) or None, got {self.catalog_host!r:.200}"
            )
        if not isinstance(self.listeners, tuple) or not all(isinstance(one, Listener) for one in self.listeners):
            raise ConfigurationError(
                "listeners: expected a sequence of heros_archiver.observe.listeners.Listener, "
                f"got {self.listeners!r:.200}"
            )
        if not isinstance(self.events, bool):
            raise ConfigurationError(f"events: expected true or false, got {self.events!r:.200}")
        check_threshold(self.low_disk_space)


@dataclass(frozen=True)
class FileOptions:
    """What the file-per-item archivers take (see ``FileArchiver``); the format is checked by the writer,
    which knows which formats exist."""

    save_template: str
    file_format: str
    root: str | os.PathLike[str] | None = None
    on_exists: OnExists = "error"
    fsync: Fsync = "none"
    writeback_window: int = DEFAULT_WRITEBACK_WINDOW
    split_data_array: bool = False
    merge_metadata: bool = False
    #: the archiver class's default already applied
    helper_process: bool = False
    #: what only an ``s3://`` root takes (``storage_options``, ``state_dir``, ``stale_uploads_after``)
    objects: ObjectRootOptions = field(default_factory=ObjectRootOptions)
    #: the ``s3://bucket/prefix`` root (from ``root`` or the template), None for a local root
    object_root: str | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        _check_template("save_template", self.save_template)
        _check_optional_text("root", self.root, "a directory path or None, or an s3://bucket/prefix URL")
        object.__setattr__(self, "object_root", object_root_of(self.save_template, self.root))
        self.objects.check(self.object_root)
        check_choice("on_exists", self.on_exists, ON_EXISTS_CHOICES)
        check_choice("fsync", self.fsync, FSYNC_CHOICES)
        check_integer("writeback_window", self.writeback_window, "a number of bytes >= 0", 0)
        if not isinstance(self.helper_process, bool):
            raise ConfigurationError(f"helper_process: expected true or false, got {self.helper_process!r}")


@dataclass(frozen=True)
class Hdf5Options:
    """What ``Hdf5Archiver`` takes (see its docstring for each)."""

    file_template: str
    dataset_template: str = "{{ source_name }}/data"
    compression: str = DEFAULT_COMPRESSION
    frames_per_chunk: int | None = None
    flush_frames: int = DEFAULT_FLUSH_FRAMES
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    flush_idle: float | None = DEFAULT_FLUSH_IDLE
    max_frames: int | None = None
    max_bytes: int | None = None
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    on_exists: ContainerOnExists = "error"
    root: str | os.PathLike[str] | None = None
    fsync: str = "none"
    acquisitions: bool = False

    def __post_init__(self) -> None:
        _check_template("file_template", self.file_template)
        _check_template("dataset_template", self.dataset_template)
        check_choice("compression", self.compression, COMPRESSIONS)
        check_choice("on_exists", self.on_exists, get_args(ContainerOnExists))
        check_choice("fsync", self.fsync, HDF5_FSYNC_CHOICES)
        check_integer("flush_frames", self.flush_frames, "a positive integer", 1)
        check_integer("max_open_files", self.max_open_files, "a positive integer", 1)
        for name in ("frames_per_chunk", "max_frames", "max_bytes"):
            value = getattr(self, name)
            if value is not None:
                check_integer(name, value, "None or a positive integer", 1)
        check_seconds("flush_seconds", self.flush_seconds)
        _check_flush_idle(self.flush_idle)
        check_seconds("idle_timeout", self.idle_timeout)
        _check_optional_text("root", self.root, "a directory path or None")
        _refuse_object_root("Hdf5Archiver", self.file_template, self.root)
        if not isinstance(self.acquisitions, bool):
            raise ConfigurationError(f"acquisitions: expected True or False, got {self.acquisitions!r:.200}")

    def check_with(self, intake_buffer: object, overflow: object) -> None:
        """What the options need of the archiver's common arguments (checked by ``ArchiverOptions``)."""
        check_acquisitions_with(self.acquisitions, intake_buffer, overflow)

    def sink_settings(self, root: str, sequence_key: str | None) -> Hdf5SinkSettings:
        """The settings of the archiver's container sink under ``root`` (the archiver's, and replay's)."""
        from ..sinks.hdf5 import Hdf5SinkSettings

        return Hdf5SinkSettings(
            root=root, compression=self.compression, frames_per_chunk=self.frames_per_chunk,
            on_exists=self.on_exists, fsync=self.fsync != "none", flush_frames=self.flush_frames,
            flush_seconds=float(self.flush_seconds), flush_bytes=DEFAULT_FLUSH_BYTES, flush_idle=self.flush_idle,
            max_frames=self.max_frames, max_bytes=self.max_bytes, idle_timeout=float(self.idle_timeout),
            max_open_files=self.max_open_files, sequence_key=sequence_key,
        )  # fmt: skip


def check_acquisitions_with(acquisitions: bool, intake_buffer: object, overflow: object) -> None:
    """What ``acquisitions=True`` needs of the archiver's common arguments (HDF5 and TIFF stack alike)."""
    if acquisitions and intake_buffer:
        raise ConfigurationError(
            f"acquisitions=True with intake_buffer={intake_buffer!r}: expected intake_buffer=0 (the "
            "default): the acquisition events arrive on subscriptions of their own, and only direct callbacks "
            "keep them in order with the frames"
        )
    if acquisitions and overflow == "drop":
        raise ConfigurationError(
            "acquisitions=True with overflow='drop': expected 'block' or 'spill', under which the acquisition "
            "events are never dropped (a lost start or stop would put frames in the wrong file, unchecked)"
        )


@dataclass(frozen=True)
class ZarrOptions:
    """What ``ZarrArchiver`` (the reference's drop-in) takes (see its docstring for each)."""

    store_template: str
    array_path_template: str
    root: str | os.PathLike[str] | None = None
    on_exists: OnExists = "error"
    fsync: Fsync = "none"
    compression: str = "zstd"
    compression_level: int = 0
    writeback_window: int = DEFAULT_WRITEBACK_WINDOW
    chunks: str = "auto"

    def __post_init__(self) -> None:
        _check_template("store_template", self.store_template)
        _check_template("array_path_template", self.array_path_template)
        _check_optional_text("root", self.root, "a directory path or None")
        _refuse_object_root("ZarrArchiver", self.store_template, self.root)
        check_choice("on_exists", self.on_exists, ON_EXISTS_CHOICES)
        check_choice("fsync", self.fsync, FSYNC_CHOICES)
        check_choice("compression", self.compression, ZARR_COMPRESSIONS)
        check_integer("compression_level", self.compression_level, "a zstd level (an integer up to 22)", -131072, 22)
        check_integer("writeback_window", self.writeback_window, "a number of bytes >= 0", 0)
        check_choice("chunks", self.chunks, ZARR_CHUNKINGS)


@dataclass(frozen=True)
class ZarrAppendOptions:
    """What ``ZarrAppendArchiver`` takes (see its docstring for each)."""

    store_template: str
    array_template: str = "{{ source_name }}/data"
    compression: str = ZARR_APPEND_DEFAULT_COMPRESSION
    frames_per_chunk: int = 1
    frames_per_shard: int | None = None
    flush_frames: int = DEFAULT_FLUSH_FRAMES
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    max_frames: int | None = None
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    on_exists: str = "error"
    root: str | os.PathLike[str] | None = None
    fsync: str = "none"
    #: commit once no frame has arrived for this many seconds (None: only by size, ``flush_seconds`` and drain)
    flush_idle: float | None = DEFAULT_FLUSH_IDLE
    #: what only an ``s3://`` root takes (``storage_options``, ``state_dir``, ``stale_uploads_after``)
    objects: ObjectRootOptions = field(default_factory=ObjectRootOptions)
    #: the ``s3://bucket/prefix`` root (from ``root`` or the template), None for a local root
    object_root: str | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        _check_template("store_template", self.store_template)
        _check_template("array_template", self.array_template)
        _check_optional_text("root", self.root, "a directory path, an s3://bucket/prefix URL or None")
        object.__setattr__(self, "object_root", object_root_of(self.store_template, self.root))
        self.objects.check(self.object_root)
        check_choice("compression", self.compression, ZARR_APPEND_COMPRESSIONS)
        check_choice("on_exists", self.on_exists, get_args(ContainerOnExists))
        check_choice("fsync", self.fsync, HDF5_FSYNC_CHOICES)
        check_integer("flush_frames", self.flush_frames, "a positive integer", 1)
        check_integer("frames_per_chunk", self.frames_per_chunk, "a positive integer", 1)
        for name in ("frames_per_shard", "max_frames"):
            value = getattr(self, name)
            if value is not None:
                check_integer(name, value, "None or a positive integer", 1)
        check_seconds("flush_seconds", self.flush_seconds)
        _check_flush_idle(self.flush_idle)
        check_seconds("idle_timeout", self.idle_timeout)

    def sink_settings(
        self, root: str, sequence_key: str | None, objects: ObjectRoot | None = None
    ) -> ZarrAppendSinkSettings:
        """The settings of the archiver's container sink under ``root`` (the archiver's, and replay's); with
        ``objects``, the stores are prefixes in that object store and ``root`` is the local state directory."""
        from ..sinks.zarr_append import ZarrAppendSinkSettings

        return ZarrAppendSinkSettings(
            objects=objects,
            root=root, compression=self.compression, frames_per_chunk=self.frames_per_chunk,  # type: ignore[arg-type]
            frames_per_shard=self.frames_per_shard, on_exists=self.on_exists, fsync=self.fsync != "none",  # type: ignore[arg-type]
            flush_frames=self.flush_frames, flush_seconds=float(self.flush_seconds),
            flush_bytes=DEFAULT_FLUSH_BYTES, max_frames=self.max_frames, flush_idle=self.flush_idle,
            idle_timeout=float(self.idle_timeout), sequence_key=sequence_key,
        )  # fmt: skip


#: Commit a TIFF stack every this many frames by default (or ``DEFAULT_FLUSH_BYTES``, whichever first) ...
DEFAULT_STACK_FLUSH_FRAMES = 1000
#: ... or this many seconds after the oldest waiting frame: what a reader (or a crash) may lag behind. Shorter
#: than the HDF5 archiver's 1 s because a TIFF commit costs two small writes beyond the pages themselves
#: (the link and the ImageJ count: ~10 us, benchmarks/tiff_commit_interval.py, decision 0024).
DEFAULT_STACK_FLUSH_SECONDS = 0.1
#: Arguments of ``TiffArchiver`` that shape a stack's commits and rollover (None: not given).
TIFF_STACK_ONLY: tuple[str, ...] = (
    "flush_frames", "flush_seconds", "max_frames", "max_bytes", "idle_timeout", "max_open_files",
)  # fmt: skip


@dataclass(frozen=True)
class TiffOptions:
    """What ``TiffArchiver`` takes (see its docstring for each), in both of its modes.

    Not a ``FileOptions``: with ``stack=True`` the same arguments mean other things (``on_exists`` takes
    ``append``, ``fsync`` has two choices, ``writeback_window`` bounds committed pages), so a stack's options
    would not be valid ones of a file archiver; ``files`` holds the ``FileOptions`` the file archiver part
    is built on. The stack-only arguments are None when not given; with ``stack=True`` their defaults are filled
    in here, so the options record what the stack uses.
    """

    save_template: str
    stack: bool = False
    split_data_array: bool = False
    on_exists: str = "error"
    fsync: str = "none"
    flush_frames: int | None = None
    flush_seconds: float | None = None
    max_frames: int | None = None
    max_bytes: int | None = None
    idle_timeout: float | None = None
    max_open_files: int | None = None
    writeback_window: int = DEFAULT_WRITEBACK_WINDOW
    root: str | os.PathLike[str] | None = None
    helper_process: bool = False
    acquisitions: bool = False
    #: what only an ``s3://`` root takes (files only)
    objects: ObjectRootOptions = field(default_factory=ObjectRootOptions)

    #: the options of the file archiver ``TiffArchiver`` is built on (made here, which checks them)
    files: FileOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.stack, bool):
            raise ConfigurationError(f"stack: expected true or false, got {self.stack!r}")
        if not isinstance(self.acquisitions, bool):
            raise ConfigurationError(f"acquisitions: expected True or False, got {self.acquisitions!r:.200}")
        if self.acquisitions and not self.stack:
            raise ConfigurationError(
                "acquisitions=True with stack=False: expected stack=True (an acquisition is written as one stack; "
                "one file per item has no file to start or close at its markers)"
            )
        given = [name for name in TIFF_STACK_ONLY if getattr(self, name) is not None]
        if self.stack and isinstance(self.root, str | None) and object_root_of(self.save_template, self.root):
            raise ConfigurationError(
                f"stack=True with an object-store root ({object_root_of(self.save_template, self.root)}): expected a "
                "local root (a stack is appended to in place, which an object cannot be); one file per item "
                "(stack=False) writes objects"
            )
        if self.stack:
            self._check_stack(given)
        elif given:
            raise ConfigurationError(
                f"{', '.join(sorted(given))}: expected only with stack=True (they shape a stack's commits and "
                "rollover); one file per item needs none of them"
            )
        object.__setattr__(self, "files", self._file_options())

    def _check_stack(self, given: list[str]) -> None:
        """Check what only a stack takes, and fill in the defaults of what was not given."""
        check_choice("on_exists", self.on_exists, get_args(StackOnExists))
        check_choice("fsync", self.fsync, HDF5_FSYNC_CHOICES)
        if self.split_data_array:
            raise ConfigurationError(
                "split_data_array: expected false with stack=True (each frame is one page), "
                f"got {self.split_data_array!r}"
            )
        for name in ("flush_frames", "max_open_files"):
            if name in given:
                check_integer(name, getattr(self, name), "a positive integer", 1)
        for name in ("max_frames", "max_bytes"):
            if name in given:
                check_integer(name, getattr(self, name), "None or a positive integer", 1)
        for name in ("flush_seconds", "idle_timeout"):
            if name in given:
                check_seconds(name, getattr(self, name))
        check_integer("writeback_window", self.writeback_window, "a number of bytes >= 0", 0)
        defaults: dict[str, int | float] = {
            "flush_frames": DEFAULT_STACK_FLUSH_FRAMES, "flush_seconds": DEFAULT_STACK_FLUSH_SECONDS,
            "idle_timeout": DEFAULT_IDLE_TIMEOUT, "max_open_files": DEFAULT_MAX_OPEN_FILES,
        }  # fmt: skip
        for name, default in defaults.items():
            value = default if getattr(self, name) is None else getattr(self, name)
            object.__setattr__(self, name, float(value) if name in ("flush_seconds", "idle_timeout") else value)

    def _file_options(self) -> FileOptions:
        """One file per item: the arguments as given. A stack: only the template, root and ``fsync`` (of the
        spool and dead letters); its per-file writer names stacks and never writes, so no writeback window."""
        stack = self.stack
        return FileOptions(
            self.save_template,
            "tiff",
            self.root,
            "error" if stack else self.on_exists,  # type: ignore[arg-type]  # checked by FileOptions
            self.fsync,  # type: ignore[arg-type]
            0 if stack else self.writeback_window,
            not stack and bool(self.split_data_array),
            False,
            self.helper_process,
            self.objects,
        )

    def check_with(self, intake_buffer: object, overflow: object) -> None:
        """What the options need of the archiver's common arguments (checked by ``ArchiverOptions``)."""
        check_acquisitions_with(self.acquisitions, intake_buffer, overflow)

    def stack_settings(self, root: str, sequence_key: str | None) -> TiffStackSettings:
        """The settings of the stack's container sink under ``root`` (the archiver's, and replay's; stack only)."""
        from ..sinks.tiff_stack import TiffStackSettings

        return TiffStackSettings(
            root=root, on_exists=self.on_exists, fsync=self.fsync != "none",  # type: ignore[arg-type]
            flush_frames=self.flush_frames, flush_seconds=self.flush_seconds,  # type: ignore[arg-type]
            flush_bytes=DEFAULT_FLUSH_BYTES, max_frames=self.max_frames, max_bytes=self.max_bytes,
            idle_timeout=self.idle_timeout, max_open_files=self.max_open_files,  # type: ignore[arg-type]
            sequence_key=sequence_key, writeback_window=self.writeback_window,
        )  # fmt: skip


#: ``on_exists`` of the Parquet archiver: refuse a file that is there at start, or go on after its parts.
PARQUET_ON_EXISTS: tuple[str, ...] = ("append", "error")
#: ``on_schema_change``: a reading that does not fit its file's schema starts a new part, or is dead-lettered.
PARQUET_ON_SCHEMA_CHANGE: tuple[str, ...] = ("new_file", "dead_letter")
#: Parquet compressions every reader (pandas, polars, DuckDB, Spark) opens without anything more.
PARQUET_COMPRESSIONS: tuple[str, ...] = ("zstd", "snappy", "lz4", "gzip", "none")
#: Rows per row group by default (benchmarks/parquet_row_groups.py, decision 0027).
DEFAULT_ROW_GROUP_ROWS = 65_536
#: ... or a row group once its first row waited this long (decision 0027).
DEFAULT_ROW_GROUP_SECONDS = 300.0
#: Journal (commit) every this many readings or seconds after the oldest waiting one (decision 0027).
DEFAULT_PARQUET_FLUSH_ITEMS = 1000
#: Files open at once per writer: one per source of a lab (50 datasources into per-source files closed and
#: reopened files at every reading with 16); each buffers at most a row group, all together DEFAULT_ROW_GROUP_BYTES.
DEFAULT_PARQUET_MAX_OPEN_FILES = 128
#: Journaled rows all open files may buffer for their row groups (beyond: the largest are written early).
DEFAULT_ROW_GROUP_BYTES = 64 * 2**20
DEFAULT_PARQUET_FLUSH_SECONDS = 0.5


@dataclass(frozen=True)
class ParquetOptions:
    """What ``ParquetArchiver`` (and ``DatasourceArchiver``) take (see its docstring for each)."""

    file_template: str
    on_schema_change: str = "new_file"
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS
    row_group_seconds: float = DEFAULT_ROW_GROUP_SECONDS
    flush_items: int = DEFAULT_PARQUET_FLUSH_ITEMS
    flush_seconds: float = DEFAULT_PARQUET_FLUSH_SECONDS
    max_rows: int | None = None
    max_bytes: int | None = None
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_open_files: int = DEFAULT_PARQUET_MAX_OPEN_FILES
    on_exists: str = "append"
    compression: str = "zstd"
    root: str | os.PathLike[str] | None = None
    fsync: str = "none"
    #: also journal once no reading has arrived for this many seconds (None: only by count, time and drain)
    flush_idle: float | None = DEFAULT_FLUSH_IDLE

    def __post_init__(self) -> None:
        _check_template("file_template", self.file_template)
        check_choice("on_schema_change", self.on_schema_change, PARQUET_ON_SCHEMA_CHANGE)
        check_choice("on_exists", self.on_exists, PARQUET_ON_EXISTS)
        check_choice("compression", self.compression, PARQUET_COMPRESSIONS)
        check_choice("fsync", self.fsync, HDF5_FSYNC_CHOICES)
        for name in ("row_group_rows", "flush_items", "max_open_files"):
            check_integer(name, getattr(self, name), "a positive integer", 1)
        for name in ("max_rows", "max_bytes"):
            value = getattr(self, name)
            if value is not None:
                check_integer(name, value, "None or a positive integer", 1)
        for name in ("row_group_seconds", "flush_seconds", "idle_timeout"):
            check_seconds(name, getattr(self, name))
        _check_flush_idle(self.flush_idle)
        _check_optional_text("root", self.root, "a directory path or None")
        _refuse_object_root("ParquetArchiver", self.file_template, self.root)

    def sink_settings(self, root: str, sequence_key: str | None, base_types: Mapping[str, Any]) -> ParquetSinkSettings:
        """The settings of the archiver's container sink under ``root``, with the column types fixed before
        the first rows (``base_types``: the datasource fields); the archiver's, and replay's."""
        from ..sinks.parquet import ParquetSinkSettings

        return ParquetSinkSettings(
            root=root, on_exists=self.on_exists, on_schema_change=self.on_schema_change,
            compression=self.compression, fsync=self.fsync != "none", flush_frames=self.flush_items,
            flush_seconds=float(self.flush_seconds), flush_bytes=DEFAULT_FLUSH_BYTES, flush_idle=self.flush_idle,
            row_group_rows=self.row_group_rows, row_group_seconds=float(self.row_group_seconds),
            row_group_bytes=DEFAULT_ROW_GROUP_BYTES,
            max_rows=self.max_rows, max_bytes=self.max_bytes, idle_timeout=float(self.idle_timeout),
            max_open_files=self.max_open_files, sequence_key=sequence_key, base_types=base_types,
        )  # fmt: skip


class _DefaultStorage:
    """``artifact_storage_kwargs`` not given: the reference's default store (S3 at ``http://localhost:9000``)."""

    def __repr__(self) -> str:
        return "DEFAULT_STORAGE"


#: The value of an omitted ``artifact_storage_kwargs`` (None means something else: artifacts in memory).
DEFAULT_STORAGE: Any = _DefaultStorage()
#: Commit the records of this many items at once, or this many seconds after the oldest (decision 0036) ...
DEFAULT_POSTGRES_FLUSH_ITEMS = 500
DEFAULT_POSTGRES_FLUSH_SECONDS = 0.2
#: ... or once no item came for this long: the end of a burst is committed at once
DEFAULT_POSTGRES_FLUSH_IDLE = 0.01


@dataclass(frozen=True)
class PostgresOptions:
    """What ``PostgresArchiver`` (the reference's drop-in) takes (see its docstring for each)."""

    db_url: str
    identifier_key: str = "identifier"
    allow_purge: bool = False
    artifact_storage_kwargs: Mapping[str, Any] | None = DEFAULT_STORAGE
    array_key_template: str = "{{ source_name }}"
    use_single_bucket: bool = False
    retention_days: int = 0
    artifact_storage: Any = None
    flush_items: int = DEFAULT_POSTGRES_FLUSH_ITEMS
    flush_seconds: float = DEFAULT_POSTGRES_FLUSH_SECONDS

    def __post_init__(self) -> None:
        from ..sinks.artifact_store import STORAGE_KEYS, ArtifactStore

        if not isinstance(self.db_url, str) or not self.db_url.strip():
            raise ConfigurationError(
                f"db_url: expected a libpq connection string or URL (postgresql://...), got {self.db_url!r:.100}"
            )
        if not isinstance(self.identifier_key, str) or not self.identifier_key:
            raise ConfigurationError(f"identifier_key: expected a non-empty text, got {self.identifier_key!r:.100}")
        for name in ("allow_purge", "use_single_bucket"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"{name}: expected true or false, got {getattr(self, name)!r:.100}")
        _check_template("array_key_template", self.array_key_template)
        check_integer("retention_days", self.retention_days, "a number of days >= 0 (0: keep forever)", 0)
        check_integer("flush_items", self.flush_items, "a positive integer", 1)
        check_seconds("flush_seconds", self.flush_seconds)
        kwargs = self.artifact_storage_kwargs
        if self.artifact_storage is not None:
            if kwargs is not DEFAULT_STORAGE:
                raise ConfigurationError("artifact_storage and artifact_storage_kwargs: expected one of them, got both")
            if not isinstance(self.artifact_storage, ArtifactStore):
                raise ConfigurationError(
                    "artifact_storage: expected an artifact store (heros_archiver.sinks.artifact_store: "
                    f"S3ArtifactStore, MemoryArtifactStore, or one with their methods), got "
                    f"{type(self.artifact_storage).__name__}"
                )
        elif kwargs is not None and kwargs is not DEFAULT_STORAGE:
            if not isinstance(kwargs, Mapping):
                raise ConfigurationError(
                    f"artifact_storage_kwargs: expected a dict, None or nothing, got {type(kwargs).__name__}"
                )
            unknown = sorted(set(map(str, kwargs)) - STORAGE_KEYS)
            if unknown:
                raise ConfigurationError(
                    f"artifact_storage_kwargs: expected keys among {', '.join(sorted(STORAGE_KEYS))}, "
                    f"got {', '.join(unknown)}"
                )
            for name in ("max_workers", "max_artifacts_per_batch"):
                if name in kwargs:
                    check_integer(f"artifact_storage_kwargs.{name}", kwargs[name], "a positive integer", 1)
            for name in ("bucket", "access_key", "secret_key", "region"):
                if name in kwargs and not isinstance(kwargs[name], str):
                    raise ConfigurationError(
                        f"artifact_storage_kwargs.{name}: expected text, got {type(kwargs[name]).__name__}"
                    )
            bucket = kwargs.get("bucket", "artifacts")
            if len(bucket) > 52:  # a daily bucket adds 11 characters; S3 allows 63
                raise ConfigurationError(
                    f"artifact_storage_kwargs.bucket: expected at most 52 characters (daily buckets add "
                    f"'-YYYY-MM-DD'), got {len(bucket)}: {bucket!r:.80}"
                )
            from ..storage.objectstore import ObjectLocation

            ObjectLocation.parse(f"s3://{bucket}")  # S3's naming rules, refused with what arrived

    def sink_settings(self) -> PostgresSinkSettings:
        """How the archiver's container sink commits (the archiver's, and its replay's)."""
        from ..sinks.postgres import PostgresSinkSettings

        return PostgresSinkSettings(
            db_url=self.db_url,
            flush_items=self.flush_items,
            flush_bytes=DEFAULT_FLUSH_BYTES,
            flush_seconds=float(self.flush_seconds),
            flush_idle=DEFAULT_POSTGRES_FLUSH_IDLE,
        )
