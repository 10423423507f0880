"""ParquetArchiver: readings (dicts of scalars) as rows of Parquet tables, a journal keeping every accepted row.

Built on the container sink as ``Hdf5Archiver`` is (``sinks.parquet.ParquetSink``): the file path is
rendered from ``file_template`` when the event arrives and becomes the item's route, so every row of one
file is written by one writer, in arrival order. Rows count as archived once journaled (an Arrow IPC
stream under ``.heros-archiver/parquet-journal/``, decision 0027); the Parquet file is published under its
name, whole, when it is closed, and a start rebuilds the files of journals a killed run left.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import meta

from ..errors import ConfigurationError, PayloadError
from ..naming.templates import PathTemplate, derive_root
from ..observe.catalog_recovery import Adoption
from ..pipeline.queueing import Item
from ..saferepr import safe_repr
from ..sinks.base import ContainerSink
from ..sinks.writer import _refuse_reserved
from ..state.replay_parquet import PARQUET_KIND, READING_ROWS, ParquetWriterSettings
from ..state.statedir import DEAD_LETTER_SUBDIR
from .base import HERODataArchiver
from .files import check_root, clean_stale_temporaries
from .options import (
    DEFAULT_FLUSH_IDLE,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_PARQUET_FLUSH_ITEMS,
    DEFAULT_PARQUET_FLUSH_SECONDS,
    DEFAULT_PARQUET_MAX_OPEN_FILES,
    DEFAULT_ROW_GROUP_ROWS,
    DEFAULT_ROW_GROUP_SECONDS,
    ParquetOptions,
)

log = logging.getLogger("heros_archiver")

#: Names the file template gets from the receive time (UTC), for files per day or hour and Hive partitions.
TIME_NAMES = frozenset({"received", "date", "hour"})
#: Rendered paths kept before the cache starts over (a path per run, hour or source: few at a time).
_MAX_ROUTES = 4096
_MISSING = object()  # a key the metadata lacks: never found, so the render says what is missing


def load_pyarrow() -> Any:
    """Import pyarrow, or say which extra installs it, and warm it up: at the archiver's start, not at its first
    reading. The first writers load their code (tens of ms); on the writer thread, at the first commit, that held
    the GIL long enough for Zenoh to drop best-effort events in front of the archiver (seen in 2 of 5 benchmark
    repeats). The arrays are made as the sink makes them (``to_array``), so that pandas stays unimported."""
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError as exc:
        raise ConfigurationError(
            f"ParquetArchiver needs pyarrow: pip install 'heros-archiver[parquet]' (import failed: {exc})"
        ) from exc
    from ..sinks.containers.arrow_arrays import to_array

    columns = [to_array([1.5], pyarrow.float64()), to_array(["x"], pyarrow.string())]
    table = pyarrow.Table.from_batches([pyarrow.RecordBatch.from_arrays(columns, names=["warm", "up"])])
    with pyarrow.ipc.new_stream(pyarrow.BufferOutputStream(), table.schema) as stream:
        stream.write_table(table)
    pyarrow.parquet.write_table(table, pyarrow.BufferOutputStream(), compression="zstd")
    return pyarrow


def time_names(received: dt.datetime) -> dict[str, Any]:
    """What the file template gets from the receive time (UTC): ``received``, ``date`` and ``hour``."""
    return {"received": received, "date": received.strftime("%Y-%m-%d"), "hour": received.strftime("%H")}


def reading_rows(item: Item) -> Sequence[Mapping[str, Any]]:
    """The rows of a ``ParquetArchiver`` item: its payload dict, one row (PayloadError for anything else)."""
    if not isinstance(item.payload, Mapping):
        raise PayloadError(
            f"item from {item.source!r} for {item.lane_key}: expected a dict of values (a reading), "
            f"got {type(item.payload).__name__} {safe_repr(item.payload, 80)}"
        )
    return (item.payload,)


class ParquetArchiver(HERODataArchiver):
    """Archive dict payloads (readings) as rows of Parquet files, one file per ``file_template`` path.

    Each key of a reading is a column (numbers, booleans, strings, bytes, datetimes, numpy scalars as their
    dtype; lists and nested dicts as Arrow lists and structs); every row also gets ``source_name``,
    ``sequence`` (the ``sequence_key`` value, else null), ``received`` (UTC) and ``item_key``.

    Args:
        file_template: Jinja2 template of the file path (the metadata, ``source_name``, and from the receive
            time in UTC ``received`` (a datetime), ``date`` (``2026-12-01``) and ``hour`` (``07``); e.g.
            ``/data/source={{ source_name }}/date={{ date }}/{{ hour }}.parquet`` for Hive partitions).
        on_schema_change: a reading with a key its file's schema lacks or a value of another type:
            ``new_file`` (default; the file is closed and the next part gets the wider schema) or
            ``dead_letter`` (the reading is dead-lettered, the message names the key and both types).
        row_group_rows, row_group_seconds: write a row group every this many rows, or once its first row
            waited this long, whichever first.
        flush_items, flush_seconds: journal (commit: the readings become archived) every this many readings
            or seconds after the oldest waiting one, whichever first, and at drain.
        flush_idle: also journal once no reading has arrived for this many seconds (default 0.05: the end of a
            burst is archived at once, not ``flush_seconds`` later; None: never).
        max_rows, max_bytes: roll over to ``name-1.parquet``, ... once a file has this many rows or bytes.
        idle_timeout: seconds after which a file nothing was appended to is closed (published).
        max_open_files: files open at once per writer (default 128: a file per source of a lab); the least
            recently used is closed (published) first. The rows waiting for their row groups are bounded by
            64 MiB over all open files (the largest are written early).
        on_exists: a file already there when its path is first used: ``append`` (default; the series goes on
            in the next free part ``name-N.parquet``) or ``error`` (its readings are dead-lettered).
        compression: ``zstd`` (default), ``snappy``, ``lz4``, ``gzip`` or ``none``.
        root: archive root (default: derived from ``file_template`` as for the file archivers).
        fsync: ``none`` (default: a journaled reading survives the archiver's process being killed) or
            ``file`` (an fsync per journal write and file: it survives a power loss too).
    """

    sink_options: ParquetOptions
    #: samples Zenoh may hold in front of the queue (decision 0011): the writer thread is Python that competes
    #: with the intake for the GIL (the JSON archiver's writes are in a helper process); with 1024 a burst of
    #: 5,000 best-effort events lost 300-2,400 at the receiver in 4 of 13 repeats, with 4096 and 8192 none in
    #: 3 and 8; a held sample keeps Zenoh's receive batch alive, so 8192 peaked at 292-534 MiB under a 20,000/s
    #: overload where 4096 stayed at 282-343 and 1024 at 224-249 (docs/benchmarks.md, E7)
    DEFAULT_INTAKE_BUFFER = 4096

    def __init__(
        self,
        file_template: str,
        *args: Any,
        on_schema_change: str = "new_file",
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        row_group_seconds: float = DEFAULT_ROW_GROUP_SECONDS,
        flush_items: int = DEFAULT_PARQUET_FLUSH_ITEMS,
        flush_seconds: float = DEFAULT_PARQUET_FLUSH_SECONDS,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_open_files: int = DEFAULT_PARQUET_MAX_OPEN_FILES,
        on_exists: str = "append",
        compression: str = "zstd",
        root: str | None = None,
        fsync: str = "none",
        flush_idle: float | None = DEFAULT_FLUSH_IDLE,
        **kwargs: Any,
    ) -> None:
        self.sink_options = ParquetOptions(
            file_template, on_schema_change, row_group_rows, row_group_seconds, flush_items, flush_seconds,
            max_rows, max_bytes, idle_timeout, max_open_files, on_exists, compression, root, fsync, flush_idle,
        )  # fmt: skip
        load_pyarrow()  # a missing extra fails here, at start
        HERODataArchiver.__init__(self, *args, **kwargs)

    # ------------------------------------------------------------------ hooks of HERODataArchiver
    def _setup_storage(self) -> None:
        """Compile the template under the root, check the state directory, rebuild the files of the journals
        a killed run left (their keys de-duplicate the spool's items) and remove stale temporaries."""
        from ..sinks.containers.parquet import recovered_spans

        options = self.sink_options
        root = Path(options.root) if options.root else derive_root(options.file_template, self.metadata)
        self.name_template = PathTemplate(options.file_template, root)
        self.root = self.name_template.root
        source = self.name_template._template.environment.parse(options.file_template)
        names = meta.find_undeclared_variables(source)
        self._needs_time = bool(TIME_NAMES & names)
        #: the metadata the template reads: the same values render the same path (kept, not rendered again),
        #: unless the template draws at random
        self._route_names = tuple(sorted(names - TIME_NAMES - {"source_name"}))
        keep = "random" not in options.file_template and "received" not in names  # a date and an hour: keyed
        self._routes: dict[tuple[Any, ...], str] | None = {} if keep else None
        #: per route, where the rows of each item of the files rebuilt from journals are (key -> RowSpan)
        self._recovered: dict[str, dict[bytes, Any]] = {}
        if not check_root(self.root):
            return
        self._recovered = recovered_spans(str(self.root))
        clean_stale_temporaries(self.root)

    def _catalog_adoption(self) -> Adoption | None:
        """The rows flushed to a file's journal and not yet to the catalog's when a kill came: the next start
        rebuilds the file (``_setup_storage``, before the catalog starts), then reads their items back from it."""
        return Adoption(frames=True)

    def _default_dead_letter_dir(self) -> Path:
        return self.root / DEAD_LETTER_SUBDIR

    def _state_is_durable(self) -> bool:
        return self.sink_options.fsync != "none"

    def _item_router(self) -> Callable[[Item], None]:
        return self._route

    def _route(self, item: Item) -> None:
        """Render and confine the item's file path (once, on receipt): it is the item's route to its writer.

        Readings come thousands a second and most render a path already rendered (one file per run, hour or
        source): a path is kept per the values the template reads (~0.5 us instead of ~4 us a render)."""
        metadata = item.metadata
        routes, key = self._routes, ()
        if routes is not None:
            values = [metadata.get(name, _MISSING) for name in self._route_names]
            # the hours since the epoch (UTC) name the date and the hour: no datetime made unless rendered
            hour = int(item.received // 3600) if self._needs_time else None
            key = (item.source, hour, *values, *map(type, values))  # types too: 1, 1.0 and True render apart
            try:
                item.route = routes[key]
                return
            except (KeyError, TypeError):  # not rendered yet, or a value that is no key (a list)
                pass
        context = {**metadata, "source_name": item.source}
        if self._needs_time:
            context.update(time_names(dt.datetime.fromtimestamp(item.received, dt.UTC)))
        path = self.name_template.render_confined(context)
        _refuse_reserved(path, str(self.root), self.sink_options.file_template)
        item.route = path
        if routes is not None:
            with contextlib.suppress(TypeError):
                if len(routes) >= _MAX_ROUTES:
                    routes.clear()
                routes[key] = path

    def _rows_of(self, item: Item) -> Sequence[Mapping[str, Any]]:
        """One row: the payload dict (subclasses make other rows)."""
        return reading_rows(item)

    def _base_types(self) -> dict[str, Any]:
        """Column types fixed before the first rows (none: the first rows fix them all)."""
        return {}

    def _replay_rows(self) -> str | None:
        """How replay makes this archiver's rows (``state.replay_parquet``): ``"reading"``; None for a subclass
        with rows or column types of its own (its code re-feeds its dead letters)."""
        own = type(self)._rows_of is ParquetArchiver._rows_of and type(self)._base_types is ParquetArchiver._base_types
        return READING_ROWS if own else None

    def _writer_settings(self) -> dict[str, Any] | None:
        """Recorded with each dead letter, so that ``heros-archiver replay`` appends its rows where they belong."""
        rows = self._replay_rows()
        if rows is None:
            return None
        options = self.sink_options
        return ParquetWriterSettings(
            kind=PARQUET_KIND, file_template=self.name_template.source, root=str(self.root), rows=rows,
            on_schema_change=options.on_schema_change, row_group_rows=options.row_group_rows,
            max_rows=options.max_rows, max_bytes=options.max_bytes, on_exists=options.on_exists,
            compression=options.compression, fsync=options.fsync, sequence_key=self.options.sequence_key,
        ).to_dict()  # fmt: skip

    def _container_sink_factory(self) -> Callable[[], ContainerSink]:
        from ..sinks.parquet import ParquetSink

        settings = self.sink_options.sink_settings(str(self.root), self.options.sequence_key, self._base_types())
        return lambda: ParquetSink(settings, self._rows_of, self._recovered)

    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Not used: items go to the container sink (the reference API's hook, kept for subclasses' sake)."""
        raise ConfigurationError(
            f"ParquetArchiver writes items through its container sink, not _store (item from {source_name!r})"
        )
