"""HERODataArchiver: subscribe to a HERO event and hand every payload to ``_store``, losing nothing silently.

The path of one event: Zenoh delivers a sample on its receive thread, straight into our subscriber
callback (no 256-sample buffer in front of it, see docs/decisions/0002) or, with ``intake_buffer``, into
a FIFO of that many samples that a thread of ours empties (``intake.py``); heros deserialises it and calls
``feed``; ``feed`` merges the metadata and submits the item to the pipeline (``pipeline.py``): a queue
bounded in items and bytes, writer threads that call ``_store`` with retries, a spool and a dead-letter
store. At shutdown intake stops, the queue drains within ``drain_timeout`` and the rest is set aside.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import zenoh
from heros import EventObserver, LocalHERO, event
from heros.event import reliable

from ..errors import ArchiverError, ConfigurationError, PayloadError
from ..observe.catalog import CatalogListener
from ..observe.catalog_backend import CatalogTarget, this_host
from ..observe.catalog_recovery import Adoption
from ..observe.diskspace import DEFAULT_LOW_DISK_SPACE
from ..observe.intents import Intents
from ..observe.listeners import Listener
from ..observe.logs import log_fields
from ..observe.status import StatusListener
from ..pipeline.accounting import Accounting
from ..pipeline.core import Pipeline
from ..pipeline.options import DEFAULT_BLOCK_LIMIT, DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_ITEMS, PipelineOptions
from ..pipeline.payload import estimate_nbytes, item_nbytes, split_event
from ..pipeline.queueing import Item
from ..sinks.base import ContainerSink, Sink
from ..sinks.batching import BatchWriter
from ..state.deadletter import DeadLetterStore
from ..state.spool import Spool
from ..state.statedir import DEAD_LETTER_SUBDIR, SPOOL_DIR_NAME
from ..storage.writeback import WritebackWindow
from ..transport import heros_compat
from ..transport.fastdecode import decode_frame_event
from ..transport.hero_builder import configured_class, is_hero
from ..transport.intake import FIFO_SAMPLES, BufferedIntake
from ..transport.links import RouterWatch
from ..transport.sharedmemory import configure_shared_memory, installed_zenoh_version, shared_memory_is_safe
from .control import config_of, event_listeners
from .options import ArchiverOptions

log = logging.getLogger("heros_archiver")

#: Seconds a buffered intake may take, after the drain, to set aside the samples it still holds.
_SET_ASIDE_TIMEOUT = 30.0
#: Key expression -> sender name entries kept before the cache starts over (senders come and go).
_MAX_SOURCE_NAMES = 1024


def close_all(archivers: Iterable[HERODataArchiver], teardown_only: bool = False) -> None:
    """``close()`` (or, with ``teardown_only``, ``_teardown()``) every archiver, all at once, each in a thread
    of its own: stopping takes about as long as the longest drain, not the sum of them."""
    threads = [
        threading.Thread(
            target=archiver._teardown if teardown_only else archiver.close, name=f"heros-archiver-close-{index}"
        )
        for index, archiver in enumerate(archivers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


#: Archivers constructed and not yet closed: drained at interpreter exit (decision 0016).
_OPEN: weakref.WeakSet[HERODataArchiver] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    """A script that ends without ``close()`` or ``_teardown()`` still gets its queue written: the writer
    threads are daemons (a non-daemon writer would keep the interpreter from ever exiting), so without this
    the queue would vanish with them. Registered at import, so it runs after heros closed its sessions."""
    close_all(list(_OPEN), teardown_only=True)


class HERODataArchiver(EventObserver):
    """Archive the payloads of ``event_name`` from the HEROs matching ``object_selector``.

    Subclasses implement ``_store(source_name, payload, metadata)``. Arguments after ``max_retries``
    are keyword-only extensions of the reference API; the rest (``realm``, ``session_manager``)
    go to ``heros.EventObserver``.

    Args:
        object_selector: Zenoh selector of the HEROs to observe: a name, or a Zenoh wildcard like
            ``cam-$*`` (``*`` alone matches every HERO).
        event_name: the event to archive, e.g. ``acquisition_data``.
        default_metadata: merged under each payload's metadata (the payload's keys win).
        max_retries: retries of a failed store before the item goes to the dead-letter store.
        max_queue_bytes: bound of the queue in payload bytes (default 64 MiB: 32 frames of 2 MiB).
        max_queue_items: bound of the queue in items (default 10,000).
        overflow: what a full queue does: ``block`` (default; back-pressure to the sender, for up to
            ``block_limit`` seconds, then the spool), ``spill`` (to an on-disk spool, archived from there
            in order, also after a restart) or ``drop`` (counted and logged).
        block_limit: with ``block``, seconds a full queue holds the sender back before items go to the
            spool (default 2; None: as long as it takes). Zenoh closes the link of a reliable sender that
            waited 5 s and loses what waited, so keep it below that.
        writers: number of writer threads; the items of one source are written by one writer, in order.
        drain_timeout: seconds ``_teardown`` waits for the queue to drain before dead-lettering the rest.
        retry_delay: first retry delay in seconds; doubles per attempt, with jitter.
        retry_max_delay: upper bound of one retry delay in seconds.
        intake_buffer: samples that may wait for the archiver in front of its queue (default: the
            class's ``DEFAULT_INTAKE_BUFFER``; 0 for files of frames, 1024 for the JSON archiver and the
            archivers of stacks, HDF5, Zarr append and TIFF, without ``acquisitions``). 0 hands every
            sample over on Zenoh's receive thread, so a full queue pushes back at once; a buffer lets
            Zenoh receive while a writer holds the GIL, at the cost of up to that many payloads (at most
            8 MiB) more in memory, and of the few samples Zenoh holds in front of it (docs/decisions/0011,
            0043, 0044).
        writer_nice: niceness added to the writer threads (Linux; default 0 = none). Raising it lets
            receiving win the CPU over writing on a busy machine: bursts of small best-effort events
            are queued instead of dropped by the sender, at the cost of slower writing when the CPU is
            short for long (docs/decisions/0008).
        sequence_key: metadata key holding a running number (e.g. ``frame``); gaps and repeats per
            source are counted and logged.
        dead_letter_dir: where failed items are kept (default: ``.heros-archiver/dead-letter`` under
            the archive root, or the working directory for archivers without one).
        spool_dir: where ``overflow="spill"`` keeps items (default: ``.heros-archiver/spool`` beside
            the dead letters). Entries found there at start are archived first.
        zenoh_shared_memory: use Zenoh's shared-memory transport for the archiver's session. ``None``
            (default): only with eclipse-zenoh 1.10.2 or later, because earlier releases drop messages
            silently when the receiver pushes back (eclipse-zenoh/zenoh#2628); see docs/decisions/0003.
        sink_wrapper: for tests and instrumentation (not for BOSS configs): given each sink the pipeline
            makes, returns the sink to use instead, of the same kind, e.g. the fault wrappers of
            ``heros_archiver.testing.faults`` (slow storage, storage that fails). The JSON archiver's helper
            processes are not used then, so that every item passes the wrapper (decision 0021).
        listeners: for tests and instrumentation (not for BOSS configs): ``heros_archiver.observe.listeners.Listener``
            objects told of every item's outcome (archived, with where it went; dead-lettered; dropped).
        catalog: keep the catalog of the archive root (``<root>/.heros-archiver/catalog.sqlite``: every archived
            item with its location, bytes, checksum and metadata, and every failure; ``heros-archiver ls``,
            ``export``, ``verify`` read it). Default True; only archivers with an archive root have one. False
            saves the per-item journal line (decision 0031).
        catalog_url: keep the catalog in this PostgreSQL database (``postgresql://user@host:port/db``; the
            ``[postgres]`` extra) instead of the root's SQLite file: one catalog for all the archivers of a
            facility, each row saying its host and root (decision 0037). Default None.
        catalog_host: the host name a shared catalog's rows are written as (default: this machine's host name;
            ``verify`` checks the files of its own host).
        events: send the ``archived``, ``failed`` and ``low_disk_space`` events (default True). Only an archiver
            that is a HERO sends them (under BOSS, or ``heros-archiver run`` of a config entry with an ``_id``);
            a plain ``EventObserver`` has no name and no event publishers, and sends nothing (decision 0032).
        low_disk_space: send ``low_disk_space`` (and log a warning) when the archive root's file system has fewer
            free bytes than this (default 1 GiB), or, for a number in (0, 1), less than that fraction of its
            size free; checked every 2 s; once again only after the free space rose back above it. None: off.
    """

    metadata: dict[str, Any]
    max_retries: int
    #: what heros' discovery says a HERO of this class implements: ``heros-archiver status`` finds archivers by it
    _hero_implements: list[str] = ["heros_archiver.Archiver"]  # noqa: RUF012 - heros reads it, nobody changes it
    #: ``intake_buffer`` when not given: archivers of unknown payloads hand samples over directly
    DEFAULT_INTAKE_BUFFER = 0
    #: samples Zenoh may hold in front of a buffered intake: few for camera frames (Zenoh counts samples,
    #: not bytes; decision 0044), more for small events
    INTAKE_FIFO_SAMPLES = FIFO_SAMPLES

    def __init__(
        self,
        object_selector: str,
        event_name: str,
        default_metadata: dict[str, Any] | None = None,
        max_retries: int = 5,
        *args: Any,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_queue_items: int = DEFAULT_MAX_QUEUE_ITEMS,
        overflow: str = "block",
        writers: int = 1,
        drain_timeout: float = 30.0,
        retry_delay: float = 0.5,
        retry_max_delay: float = 10.0,
        writer_nice: int = 0,
        block_limit: float | None = DEFAULT_BLOCK_LIMIT,
        intake_buffer: int | None = None,
        sequence_key: str | None = None,
        dead_letter_dir: str | None = None,
        spool_dir: str | None = None,
        zenoh_shared_memory: bool | None = None,
        sink_wrapper: Callable[[Sink], Sink] | None = None,
        listeners: Sequence[Listener] = (),
        catalog: bool = True,
        catalog_url: str | None = None,
        catalog_host: str | None = None,
        events: bool = True,
        low_disk_space: int | float | None = DEFAULT_LOW_DISK_SPACE,
        **kwargs: Any,
    ) -> None:
        self._close_lock = threading.Lock()
        self._closed = False
        self.options = ArchiverOptions(
            object_selector,
            event_name,
            {} if default_metadata is None else default_metadata,
            max_retries,
            PipelineOptions(
                max_queue_bytes,
                max_queue_items,
                overflow,
                writers,
                drain_timeout,
                retry_delay,
                retry_max_delay,
                writer_nice,
                block_limit,
            ),
            self.DEFAULT_INTAKE_BUFFER if intake_buffer is None else intake_buffer,
            sequence_key,
            dead_letter_dir,
            spool_dir,
            zenoh_shared_memory,
            sink_wrapper,
            tuple(listeners) if isinstance(listeners, (list, tuple)) else listeners,  # type: ignore[arg-type]
            catalog,
            catalog_url,
            catalog_host,
            events,
            low_disk_space,
        )
        self._buffered_intakes: list[BufferedIntake] = []
        #: the event each buffered intake receives (to name the senders of its samples)
        self._intake_events: dict[BufferedIntake, str] = {}
        #: subscriptions to more events of the same HEROs (``_subscribe_event``), undeclared with the first
        self._more_subscriptions: list[Any] = []
        #: the subscriptions ``_undeclare_subscription`` has undeclared (each once)
        self._undeclared: list[Any] = []
        self._source_names: dict[str, str] = {}
        self.metadata = dict(self.options.default_metadata)
        self.max_retries = max_retries
        self._event = event_name
        self._selector = object_selector
        self._accounting = Accounting(event_name, sequence_key)
        self._setup_storage()
        durable = self._state_is_durable()
        dead_letters = DeadLetterStore(dead_letter_dir or self._default_dead_letter_dir(), durable)
        spool_path = Path(spool_dir) if spool_dir else dead_letters.directory.parent / SPOOL_DIR_NAME
        spool = Spool(spool_path, event_name, durable)
        self._router = self._item_router()
        self._status = StatusListener()
        #: the catalog of the archive root (None: no root, or ``catalog=False``; made by ``_listeners``)
        self._catalog: CatalogListener | None = None
        listeners = self._listeners()
        #: the intent records journaled before files, arrays and new container members are made (None: no catalog)
        self._intents = None if self._catalog is None else Intents(self._catalog, sequence_key, self._event)
        try:
            self._pipeline = Pipeline(
                event_name,
                self._store_item,
                self.options.pipeline,
                self._accounting,
                dead_letters,
                spool,
                lambda: self.max_retries,
                self._writer_settings,
                self._batch_writer_factory(),
                self._writeback_tracker(),
                self._container_sinks(),
                self._router,
                self.options.sink_wrapper,
                sequence_key,
                listeners,
                self._plan_ahead(),
            )
        except BaseException:
            for listener in listeners:  # a pipeline that could not be made never closes them
                listener.close()
            raise
        if self._catalog is not None and self._pipeline.helper_pids:
            self._catalog.note_helpers(self._pipeline.helper_pids)
        if zenoh_shared_memory is None:
            zenoh_shared_memory = shared_memory_is_safe(installed_zenoh_version())
        self._shared_memory = zenoh_shared_memory
        realm = kwargs.get("realm", args[0] if args else "heros")
        configure_shared_memory(kwargs.get("session_manager"), realm, zenoh_shared_memory)
        try:
            EventObserver.__init__(self, object_selector, event_name, *args, **kwargs)
        except BaseException as exc:
            self._pipeline.stop()
            manager = heros_compat.session_manager(self)
            if manager is not None:
                manager.release_session(self)
            if isinstance(exc, zenoh.ZError):
                raise ConfigurationError(
                    f"object_selector {object_selector!r} / event_name {event_name!r}: Zenoh refused the "
                    f"subscription ({exc}); a selector is a Zenoh key expression such as 'cam-1', "
                    "'cam-$*' (a wildcard inside a name) or '*'"
                ) from exc
            raise
        heros_compat.check_observer(self)
        self._router_watch = RouterWatch(heros_compat.session(self), object_selector, event_name)
        _OPEN.add(self)
        log.info(
            "archiving event %r of %r (queue %d items / %d MiB, overflow=%s, %d writer(s), dead letters in %s)",
            event_name,
            object_selector,
            max_queue_items,
            max_queue_bytes // 2**20,
            overflow,
            writers,
            dead_letters.directory,
        )

    # ------------------------------------------------------------------ hooks for subclasses
    def _setup_storage(self) -> None:
        """Prepare and check the storage side before any event can arrive (subclasses compile templates here)."""

    def _default_dead_letter_dir(self) -> Path:
        """Where failed items go unless ``dead_letter_dir`` is given."""
        return Path.cwd() / DEAD_LETTER_SUBDIR

    def _state_is_durable(self) -> bool:
        """Whether spool and dead-letter entries are fsynced (archivers with an ``fsync`` setting follow it)."""
        return False

    def _writer_settings(self) -> dict[str, Any] | None:
        """How this archiver names and writes items, recorded with dead letters so they can be replayed.

        None for archivers whose ``_store`` is their own (their dead letters are re-driven by their code).
        """
        return None

    def _batch_writer_factory(self) -> Callable[[int], BatchWriter] | None:
        """How to make the helpers that write this archiver's items in batches (None: ``_store`` per item)."""
        return None

    def _writeback_tracker(self) -> WritebackWindow | None:
        """The window ``_store`` hands large files to (None: none); its items count as archived once on disk."""
        return None

    def _container_sink_factory(self) -> Callable[[], ContainerSink] | None:
        """Makes one container sink per writer (None: items go to ``_store_item``, one file per item)."""
        return None

    def _item_router(self) -> Callable[[Item], None] | None:
        """Sets ``item.route`` (the container an item goes to) on receipt, once (None: lanes by source)."""
        return None

    def _listeners(self) -> list[Listener]:
        """The listeners of every item's outcome (``observe``), made before the pipeline starts: those given as
        ``listeners`` here, the events listener of an archiver that is a HERO, the status (``status()``), and the
        catalog of the archive root; subclasses add their own."""
        dead_letters = self.options.dead_letter_dir
        directory = Path(dead_letters) if dead_letters else self._default_dead_letter_dir()
        listeners = [*self.options.listeners, *event_listeners(self, directory), self._status]
        root = self._catalog_root()
        if self.options.catalog and root is not None:
            target = CatalogTarget(self.options.catalog_url, self.options.catalog_host or this_host())
            self._catalog = CatalogListener(root, self._event, self._catalog_name, self._catalog_adoption(), target)
            listeners.append(self._catalog)
        return listeners

    def _catalog_root(self) -> Path | None:
        """The archive root whose catalog this archiver keeps: ``self.root``, which every archiver with a root
        sets in ``_setup_storage`` (None: no root, or ``/``, under which nothing is confined)."""
        root = getattr(self, "root", None)
        return root if isinstance(root, Path) and root != Path(root.anchor) else None

    def _catalog_adoption(self) -> Adoption | None:
        """What a later start adopts after a kill of this archiver, of what it had written and not yet journaled:
        the files of an archiver of one file per item that reports them (by the ending of their names), a
        ZarrArchiver's arrays, a container archiver's frames (None: nothing, e.g. a subclass's own ``_store``)."""
        return None

    def _catalog_name(self) -> str | None:
        """Who writes the items, in the catalog (before ``:<event>``): the HERO's name, or for an archiver that is
        no HERO its class's name; None while its HERO is being made (the name is given after the pipeline)."""
        if not is_hero(self):
            return configured_class(type(self)).__name__
        name = getattr(self, "_name", None)
        return name if isinstance(name, str) and name else None

    def _container_sinks(self) -> Callable[[], ContainerSink] | None:
        """``_container_sink_factory``, its sinks journaling new container members when there is a catalog."""
        factory = self._container_sink_factory()
        return factory if factory is None or self._intents is None else self._intents.sinks(factory)

    def _plan_ahead(self) -> Callable[[list[Item]], None] | None:
        """What names and encodes the files of items waiting to be written (``FileSink.plan_ahead``); None here."""
        return None

    def _store_item(self, item: Item) -> None:
        """Write one queued item (the pipeline's entry point); subclasses may use what the item knows."""
        self._store(item.source, item.payload, item.metadata)

    @abstractmethod
    def _store(self, source_name: str, payload: Any, metadata: dict[str, Any]) -> None:
        """Store one payload. Must be implemented by subclasses.

        Args:
            source_name: name of the HERO that sent the event.
            payload: the data part of the event.
            metadata: the default metadata merged with the event's metadata (a fresh dict).
        """

    # ------------------------------------------------------------------ intake
    def _subscribe_selector(
        self, selector: str, callback: Any, *args: Any, event_name: str | None = None, **kwargs: Any
    ) -> Any:
        """Subscribe with a direct callback on Zenoh's receive thread, or through a bounded buffer
        (``event_name``: the event of the selector, when not the archiver's own).

        heros gives Zenoh a plain function, in front of which zenoh-python buffers up to 256 samples
        (about 1 GiB of camera frames) before back-pressure can reach the sender. A direct callback
        (``indirect=False``, ``intake_buffer=0``) lets a full queue slow the sender at once; a buffer of
        ``intake_buffer`` samples (``intake.py``) keeps receiving while a writer holds the GIL.
        """

        def on_raw(key_expr: Any, raw: bytes) -> None:
            try:
                data = decode_frame_event(raw)  # camera frames without the decoder's extra copy
                if data is None:
                    data = heros_compat.deserialize(self, raw)
            except Exception as exc:  # noqa: BLE001 - one undecodable sample must not stop the subscription
                self._reject_undecodable(str(key_expr), raw, exc)
                return
            callback(key_expr, data)

        def on_sample(sample: zenoh.Sample) -> None:
            on_raw(sample.key_expr, sample.payload.to_bytes())

        # EventObserver registers callbacks only after subscribing; an event arriving in between would
        # reach no callback and vanish, so ``feed`` is registered before the subscription exists.
        self.register_callback(self.feed)
        if self.options.intake_buffer:
            intake = BufferedIntake(
                heros_compat.session(self),
                selector,
                self.options.intake_buffer,
                on_raw,
                f"heros-archiver-intake-{self._event}",
                fifo_samples=self.INTAKE_FIFO_SAMPLES,
            )
            self._buffered_intakes.append(intake)
            self._intake_events[intake] = event_name or self._event
            sub = intake.subscriber
        else:
            sub = heros_compat.session(self).declare_subscriber(
                selector, zenoh.handlers.Callback(on_sample, indirect=False)
            )
        heros_compat.subscriptions(self).append(sub)  # heros undeclares it with the others
        return sub

    def _reject_undecodable(self, key: str, raw: bytes, error: Exception) -> None:
        """Bytes on the event's key expression that are no HEROS event: counted, and kept as they arrived
        in the dead-letter store (base64), so a foreign or broken publisher is seen, not silently ignored."""
        source_name = self._source_name(key)
        self._accounting.received(source_name, {})
        problem = PayloadError(
            f"payload could not be decoded: expected a CBOR-encoded HEROS event on {key}, got {len(raw)} bytes "
            f"starting {raw[:16]!r} ({type(error).__name__}: {error})"
        )
        self._pipeline.reject(Item(source_name, raw, {}, len(raw)), problem)

    def _subscribe_event(self, event_name: str, callback: Callable[[str, Any], None]) -> None:
        """Also receive ``event_name`` of the HEROs the archiver observes: ``callback(source_name, data)`` on the
        same path as its own event (decoded alike; a direct callback on Zenoh's receive thread, so that the
        events of one sender reach the archiver in the order they were sent). Undeclared before the drain."""
        selector = heros_compat.event_key(heros_compat.realm(self), self._selector, event_name)

        def handle(key_expr: Any, data: Any) -> None:
            callback(self._source_name(str(key_expr), event_name), data)

        self._more_subscriptions.append(self._subscribe_selector(selector, handle, event_name=event_name))

    def _source_name(self, key: str, event_name: str | None = None) -> str:
        """The HERO that sends on ``key``, found once per sender instead of by a regular expression per event."""
        try:
            return self._source_names[key]
        except KeyError:
            source_name = heros_compat.sender_name(self, key, event_name or self._event) or key
            if len(self._source_names) >= _MAX_SOURCE_NAMES:
                self._source_names.clear()
            self._source_names[key] = source_name
            return source_name

    def _handle_event(self, key_expr: Any, data: Any) -> None:
        """heros' event dispatch (every registered callback gets ``(source_name, data)``), with the
        sender's name cached per key expression (``_source_name``; ~1.4 us per event, a fifth of the
        receive path's Python)."""
        source_name = self._source_name(str(key_expr))
        for uid, callback in list(heros_compat.event_callbacks(self).items()):  # a callback may remove itself
            try:
                callback(source_name, data)
            except Exception as exc:  # noqa: BLE001 - one failing callback must not keep the others from the event
                log.error(
                    "%s (event %s): callback %s failed: %s",
                    source_name,
                    self._event,
                    uid,
                    exc,
                    extra=log_fields(source_name, self._event, error=exc),
                )

    def feed(self, source_name: str, data: Any, retry_count: int = 0) -> None:
        """Event callback: take ``(payload, metadata)`` from ``source_name`` and queue it. Never raises.

        Args:
            source_name: name of the HERO that sent the event.
            data: the event payload, ``(data, metadata_dict)`` (or a plain dict, used as both).
            retry_count: attempts already made for this item.
        """
        try:
            payload, event_metadata = split_event(data)
        except ArchiverError as exc:
            self._accounting.received(source_name, {})
            self._pipeline.reject(Item(source_name, data, {}, estimate_nbytes(data), attempts=retry_count), exc)
            return
        metadata = {**self.metadata, **event_metadata}
        self._accounting.received(source_name, metadata)
        nbytes = item_nbytes(payload, metadata)
        item = Item(source_name, payload, metadata, nbytes, attempts=retry_count)
        if self._router is not None:
            try:
                self._router(item)
            except ArchiverError as exc:  # e.g. a file template that cannot render: the item's own fault
                self._pipeline.reject(item, exc)
                return
        self._pipeline.submit(item)

    # ------------------------------------------------------------------ status and shutdown
    def stats(self) -> dict[str, Any]:
        """Counters per source and in total, and the queue's fill (a remote capability under BOSS)."""
        # before the counters: a sample still waiting then is not yet counted as received
        intake_by_source = self._intake_waiting_by_source()
        snapshot = self._accounting.snapshot()
        snapshot["queue"] = self._pipeline.queue_status()
        snapshot["queue"]["intake_waiting"] = sum(samples for samples, _ in intake_by_source.values())
        snapshot["queue"]["intake_waiting_bytes"] = sum(nbytes for _, nbytes in intake_by_source.values())
        snapshot["queue"]["intake_by_source"] = {
            source: {"samples": samples, "bytes": nbytes} for source, (samples, nbytes) in intake_by_source.items()
        }
        snapshot["event"] = self._event
        snapshot["intake_buffer"] = self.options.intake_buffer
        snapshot["zenoh_shared_memory"] = self._shared_memory
        snapshot["helper_processes"] = self._pipeline.helper_pids
        snapshot["object_selector"] = self._selector
        snapshot["dead_letter_dir"] = str(self._pipeline.dead_letters.directory)
        snapshot["spool_dir"] = str(self._pipeline.spool.directory)
        snapshot["paused"] = self._pipeline.paused
        snapshot["pause"] = self._pipeline.pause_status()
        snapshot["catalog"] = self._catalog.status() if self._catalog is not None else None
        return snapshot

    def _intake_waiting_by_source(self) -> dict[str, tuple[int, int]]:
        """Samples (and their bytes) waiting in the buffered intakes, per sender (``_source_name``)."""
        waiting: dict[str, tuple[int, int]] = {}
        for intake in self._buffered_intakes:
            event = self._intake_events.get(intake, self._event)
            for key, (samples, nbytes) in intake.waiting_by_key().items():
                source = self._source_name(key, event)
                before = waiting.get(source, (0, 0))
                waiting[source] = (before[0] + samples, before[1] + nbytes)
        return waiting

    def status(self) -> dict[str, Any]:
        """What the archiver does now, for ``heros-archiver status`` and the metrics (a remote capability under
        BOSS): per source the counters, the archive rate and the last error; the queue and its oldest item's
        age, the spool, the disk's free space, the listeners (``observe.status``, decision 0033)."""
        cls = next(c for c in type(self).__mro__ if issubclass(c, HERODataArchiver) and not issubclass(c, LocalHERO))
        root = getattr(self, "root", None)
        identity = {
            "name": getattr(self, "_name", None),  # a HERO's (BOSS, heros-archiver run); None for a plain observer
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "event": self._event,
            "selector": self._selector,
            "root": None if root is None else str(root),
        }
        stats = self.stats()
        paused = stats.get("paused")  # an archiver that can pause says so in its stats
        return self._status.report(
            identity,
            stats,
            self._accounting.last_retries(),
            self._pipeline.hub.stats(),
            Path(root) if root is not None else self._pipeline.dead_letters.directory,
            paused if isinstance(paused, bool) else None,
        )

    # ------------------------------------------------------------------ control and events (decision 0032)
    def config(self) -> dict[str, Any]:
        """The archiver's configuration as plain data (a remote capability): its class, HERO name, root, and its
        options (``options``: what every archiver takes; ``sink_options``: its storage's), callables by name."""
        return config_of(self)

    def pause(self, drop: bool = False, timeout: float = 2.0) -> dict[str, Any]:
        """Stop archiving until ``resume()``: the writers commit and close what they hold, then take nothing.
        What arrives meanwhile is counted and kept in the spool (on disk), archived in order after ``resume()``;
        with ``drop=True`` it is dropped instead, counted as ``dropped_paused``. Returns once the writers have
        stopped (``done``), or after ``timeout`` seconds; ``committed``: items the pause committed."""
        return self._pipeline.pause(drop, timeout)

    def resume(self) -> dict[str, Any]:
        """Archive again after ``pause()``: what was queued first, then what the pause spooled, in order."""
        return self._pipeline.resume()

    def flush(self, timeout: float = 2.0) -> dict[str, Any]:
        """Commit every container now (HDF5, Zarr, TIFF stacks, Parquet): its items are archived and readable at
        once. Returns the items committed, once every writer did it (``done``), or after ``timeout`` seconds."""
        return self._pipeline.flush(timeout)

    def rollover(self, timeout: float = 2.0) -> dict[str, Any]:
        """Start new files now: every container written now is committed and closed, and the next item of each
        opens its next part (``run-1.h5``, ``run-2.h5``, ...). For an archiver of a file per item, nothing to do
        (``rolled_over`` False, and why)."""
        return self._pipeline.rollover(timeout)

    @reliable
    @event
    def archived(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Sent after each commit: where its items went (``observe.events``: paths, index ranges, checksums)."""
        return payload

    @reliable
    @event
    def failed(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Sent for each item dead-lettered or dropped, with the error or why (``observe.events``)."""
        return payload

    @reliable
    @event
    def low_disk_space(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Sent when the archive's file system has less free space than ``low_disk_space`` (``observe.diskspace``)."""
        return payload

    def is_queue_drained(self) -> bool:
        """True when no received item waits in memory: all archived, dead-lettered, dropped, or (once
        stopped) parked in the spool for the next start."""
        stats = self.stats()
        parked = stats["queue"]["spooled"] if self._pipeline.stopped else 0
        return bool(stats["total"]["in_flight"] == parked)

    def _stop(self, *_boss: Any) -> None:
        """Stop intake, drain the queue within ``drain_timeout``, set aside what is left. Idempotent."""
        self._pipeline.stop(before_close=self._close_buffered_intakes, before_drain=self._undeclare_subscription)
        watch = getattr(self, "_router_watch", None)
        if watch is not None:
            watch.close()
        for intake in self._buffered_intakes:  # past the deadline: what it still hands on is set aside
            intake.join(time.monotonic() + _SET_ASIDE_TIMEOUT)
            if intake.alive:
                log.warning("event %s: the intake thread did not finish setting samples aside", self._event)

    def _close_buffered_intakes(self, deadline: float) -> None:
        """Undeclare buffered subscriptions and let the samples still buffered reach the queue, which
        still takes items, until ``deadline``."""
        for intake in self._buffered_intakes:
            intake.close(deadline)
            subscriptions = heros_compat.subscriptions(self)
            if intake.subscriber in subscriptions:
                subscriptions.remove(intake.subscriber)

    def _undeclare_subscription(self) -> None:
        """Undeclare the archiver's own subscriptions, before the drain. Whether heros still lists them does not
        decide it: under BOSS, ``LocalHERO.__init__`` runs after ours and starts heros' list anew, so heros would
        never undeclare them, and samples would keep reaching a stopped archiver."""
        subscriptions = heros_compat.subscriptions(self)
        buffered = [intake.subscriber for intake in self._buffered_intakes]  # closed before the drain
        for subscription in [heros_compat.primary_subscription(self), *self._more_subscriptions]:
            if subscription is None or any(subscription is other for other in buffered):
                continue
            if any(subscription is done for done in self._undeclared):
                continue
            self._undeclared.append(subscription)
            try:
                subscription.undeclare()
            except Exception as exc:  # noqa: BLE001 - the session may already be closed
                log.debug("undeclaring the subscription failed: %s", exc)
            if subscription in subscriptions:
                subscriptions.remove(subscription)

    def close(self) -> None:
        """Stop intake, drain the queue within ``drain_timeout``, set aside what is left, log the final
        figures and release the Zenoh session: ``_teardown()`` followed by ``_destroy_hero()``, BOSS's two
        steps, in one. Idempotent; a second caller waits until the first one has finished. ``with
        ArrayArchiver(...) as archiver:`` calls it at the end of the block. An archiver a script never
        closes is drained (not destroyed) at interpreter exit (decision 0016)."""
        with self._close_lock:
            if self._closed:
                return
            self._teardown()
            self._destroy_hero()
            self._closed = True

    def __enter__(self) -> HERODataArchiver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _teardown(self) -> None:
        """Called by BOSS at shutdown: drain, then log the final figures (``close`` also releases Zenoh)."""
        _OPEN.discard(self)
        self._stop()
        total = self.stats()["total"]
        log.info(
            "event %s: received %d, archived %d, retried %d, dead-lettered %d, dropped %d, "
            "gaps %d (%d missing), %d bytes",
            self._event,
            total["received"],
            total["archived"],
            total["retried"],
            total["dead_lettered"],
            total["dropped"],
            total["gaps"],
            total["missing"],
            total["bytes"],
        )

    def _destroy_hero(self) -> None:
        """Drain before the Zenoh session goes away, so that nothing queued is discarded. Idempotent."""
        _OPEN.discard(self)
        self._stop()
        if not getattr(self, "_hero_destroyed", False):
            super()._destroy_hero()
