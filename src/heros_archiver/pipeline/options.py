"""What a pipeline buffers, does when full, retries and drains: one frozen object, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import check_choice, check_integer, check_seconds

OVERFLOW_CHOICES: tuple[str, ...] = ("block", "spill", "drop")
DEFAULT_MAX_QUEUE_BYTES = 64 * 2**20
DEFAULT_MAX_QUEUE_ITEMS = 10_000
DEFAULT_BLOCK_LIMIT = 2.0


@dataclass(frozen=True)
class PipelineOptions:
    """How much to buffer, what to do when full, how to retry and how long to drain (checked on creation)."""

    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_queue_items: int = DEFAULT_MAX_QUEUE_ITEMS
    overflow: str = "block"
    writers: int = 1
    drain_timeout: float = 30.0
    retry_delay: float = 0.5
    retry_max_delay: float = 10.0
    writer_nice: int = 0
    #: ``block``: seconds a full queue may hold the sender's messages back before items go to the spool
    #: (None: as long as it takes). Zenoh closes a link whose reliable sender waited 5 s
    #: (``congestion_control/block/wait_before_close``), losing what waited, so this stays well below.
    block_limit: float | None = DEFAULT_BLOCK_LIMIT

    def __post_init__(self) -> None:
        check_choice("overflow", self.overflow, OVERFLOW_CHOICES)
        for name in ("max_queue_bytes", "max_queue_items", "writers"):
            check_integer(name, getattr(self, name), "a positive integer", 1)
        for name in ("drain_timeout", "retry_delay", "retry_max_delay"):
            check_seconds(name, getattr(self, name), "a non-negative number of seconds")
        check_integer("writer_nice", self.writer_nice, "an integer from 0 to 19", 0, 19)
        if self.block_limit is not None:
            check_seconds("block_limit", self.block_limit, "None or a non-negative number of seconds")
