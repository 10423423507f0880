"""Write the small files of a writer's items in batches through a helper process (``publisher.py``).

A writer thread takes every item waiting in its lane, names and encodes them here (``send``), hands the
files to its helper process and, while the helper creates them, names the next batch; ``collect`` then
tells it, item by item, what happened. What the helper cannot take goes the writer's own way (``INLINE``):
items split into several files, files of 1 MiB and more (they go through the writeback window), items
resumed from an earlier run's spool, and everything once a helper is gone. Decision 0012.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..pipeline.queueing import Item
from ..storage.writeback import MIN_FILE_BYTES
from .publisher import HelperGone, PublishHelper, Request, result_error
from .writer import FileWriter, locate_file

log = logging.getLogger("heros_archiver")

#: A batch takes at most this many items ...
BATCH_ITEMS = 256
#: ... and stops growing at this many payload bytes.
BATCH_BYTES = 4 * 2**20
#: A lane whose helper died this often writes its items itself from then on.
MAX_HELPER_STARTS = 3


class Inline:
    """Outcome of an item the writer must write itself (the helper did not take it, or is gone)."""


INLINE = Inline()
#: What happened to one item of a batch: None (written), INLINE, or the error of this attempt.
Outcome = None | Inline | Exception


@dataclass
class Batch:
    """Items handed to one lane's helper, and what is known of them before its answer."""

    lane: int
    items: list[Item]
    outcomes: list[Outcome]
    #: the helper the files went to (only its answer belongs to this batch)
    helper: PublishHelper | None = None
    #: index into ``items`` of each file sent to the helper, in the order it answers
    sent: list[int] = field(default_factory=list)
    #: with ``locate``: the content of each file sent, for its location (size and checksum)
    contents: list[bytes] = field(default_factory=list)


class BatchWriter:
    """One helper process per writer lane, started when the archiver starts, and the batches sent to them."""

    def __init__(self, writer: FileWriter, lanes: int) -> None:
        self._writer = writer
        #: set items' locations (``Item.locations``) as they are written: someone listens (``observe``)
        self.locate = False
        #: told of the files of each batch, ``(item, path)`` each, before the helper gets them (the catalog's
        #: intent records: after a kill the helper finishes the batch, and a later start adopts those files);
        #: it must not raise
        self.intend: Callable[[list[tuple[Item, str]]], None] | None = None
        self._helpers: list[PublishHelper | None] = []
        self._starts = [0] * lanes
        try:
            for lane in range(lanes):
                self._helpers.append(self._start(lane))
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """Process ids of the running helpers."""
        return [helper.pid for helper in self._helpers if helper is not None]

    def _start(self, lane: int) -> PublishHelper | None:
        self._starts[lane] += 1
        try:
            return PublishHelper()
        except Exception as exc:  # noqa: BLE001 - e.g. no fork/exec here: writing in process is always correct
            log.error("cannot start a publishing helper (%s); writer %d writes its files itself", exc, lane)
            self._starts[lane] = MAX_HELPER_STARTS
            return None

    def send(self, lane: int, items: list[Item]) -> Batch:
        """Name and encode ``items``, and hand the small files among them to the lane's helper."""
        batch = Batch(lane, items, [INLINE] * len(items))
        helper = self._helpers[lane]
        if helper is None:
            return batch
        settings = self._writer.settings
        requests: list[Request] = []
        for index, item in enumerate(items):
            if item.resumed or settings.split_data_array:
                continue  # several files, or maybe written already by an earlier run: the writer's own way
            try:
                ((path, content),) = self._writer.plan_text(item.source, item.payload, item.metadata)
                data = b"".join(content)  # one bytes object: itself, not a copy
                if len(data) >= MIN_FILE_BYTES:
                    continue  # named again by the writer: rare, and not worth a second way of writing
            except Exception as exc:  # noqa: BLE001 - this attempt's failure, retried or dead-lettered as in process
                batch.outcomes[index] = exc
                continue
            requests.append((self._writer.confine_root, path, data, settings.on_exists, settings.fsync))
            batch.sent.append(index)
            if self.locate:
                batch.contents.append(data)
        if requests and self.intend is not None:
            self.intend([(items[index], request[1]) for index, request in zip(batch.sent, requests, strict=True)])
        if requests:
            try:
                helper.send(requests)
                batch.helper = helper
            except HelperGone as exc:
                self._lost(lane, helper, exc)
                self._give_back(batch)
        return batch

    def collect(self, batch: Batch) -> list[tuple[Item, Outcome]]:
        """Wait for the helper's answer to ``batch``; each item with its outcome, in order."""
        if batch.sent and batch.helper is not self._helpers[batch.lane]:
            self._give_back(batch)  # its helper is gone (and maybe replaced): no answer will come
        elif batch.sent and batch.helper is not None:
            try:
                results = batch.helper.receive()
            except HelperGone as exc:
                self._lost(batch.lane, batch.helper, exc)
                self._give_back(batch)
            else:
                for number, (index, result) in enumerate(zip(batch.sent, results, strict=True)):
                    batch.outcomes[index] = error = result_error(result)
                    if error is None and batch.contents:
                        batch.items[index].locations = (locate_file(result[1], [batch.contents[number]]),)
        return list(zip(batch.items, batch.outcomes, strict=True))

    def _lost(self, lane: int, helper: PublishHelper, error: HelperGone) -> None:
        """``helper`` is gone: stop using it and start its replacement now, so that it is ready for the
        lane's next batch (a few times; then the writer writes its files itself)."""
        log.warning("%s; writer %d writes that helper's files itself", error, lane)
        helper.close(timeout=1.0)
        if self._helpers[lane] is not helper:
            return  # replaced already
        if self._starts[lane] < MAX_HELPER_STARTS:
            self._helpers[lane] = self._start(lane)
            return
        self._helpers[lane] = None
        log.error(
            "the publishing helper of writer %d failed %d times; the writer writes its files itself",
            lane,
            self._starts[lane],
        )

    @staticmethod
    def _give_back(batch: Batch) -> None:
        """The files of ``batch`` are written again by the writer, which finds those the helper completed
        (same bytes under the name: counted as written, not duplicated; ``unique`` looks for the copy)."""
        for index in batch.sent:
            batch.items[index].resumed = True
            batch.outcomes[index] = INLINE
        batch.sent = []
        batch.contents = []

    def close(self) -> None:
        """Stop the helpers (each finishes what it was given first)."""
        for lane, helper in enumerate(self._helpers):
            if helper is not None:
                helper.close()
                self._helpers[lane] = None
