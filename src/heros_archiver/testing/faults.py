"""Fault wrappers around an archiver's sinks: slow storage and storage that fails, without patching ``os``.

Modelled on zarr-python v3's wrapper stores (``WrapperStore``, ``LatencyStore``): a wrapper passes every
call on to the sink it wraps and adds one fault around it. The pipeline makes the sinks (one container sink
per writer lane), so a wrapper here is what the archiver's ``sink_wrapper`` argument takes: a callable that
is given each sink the pipeline makes and returns the sink to use instead, of the same kind (file per item
or container). One wrapper instance serves every lane, so its counters (and ``FailingSink``'s ``times``) are
totals over all of them::

    slow = SlowSink(0.05)                                 # every write call takes 50 ms longer
    archiver = ArrayArchiver(..., sink_wrapper=slow)
    failing = FailingSink(3, calls=("commit",))           # the first 3 commits that archive items fail
    archiver = Hdf5Archiver(..., sink_wrapper=failing)

The calls a fault can target are ``store`` (a file sink writes an item), ``append`` and ``commit`` (a
container sink; ``commit`` is every call that commits: ``commit``, ``expire``, ``close`` and ``rollover``). A
subclass of :class:`SinkWrapper` overrides ``store``, ``append`` and ``commit`` to add a fault of its own.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterable

from ..errors import ConfigurationError, StorageError
from ..pipeline.queueing import Item
from ..sinks.base import CommitFailure, ContainerSink, FileSink, Settled, Sink

__all__ = ["CALLS", "FailingSink", "SinkWrapper", "SlowSink"]

#: The sink calls a fault may target.
CALLS = ("store", "append", "commit")


class SinkWrapper:
    """Wraps each sink the pipeline makes; passes every call on unchanged (subclasses add a fault).

    ``wrapped`` lists the sinks it was given, so that a test can see which kind the archiver uses.
    """

    def __init__(self) -> None:
        self.wrapped: list[Sink] = []
        self._lock = threading.Lock()

    def __call__(self, inner: Sink) -> Sink:
        """The sink to use instead of ``inner``: the same kind, each call through this wrapper."""
        with self._lock:
            self.wrapped.append(inner)
        if isinstance(inner, ContainerSink):
            kind: type[_WrappedContainerSink] = _WrappedContainerSink
            if inner.capabilities != kind.capabilities:  # the pipeline reads the flags of the class
                kind = type(kind.__name__, (kind,), {"capabilities": inner.capabilities})
            return kind(inner, self)
        if isinstance(inner, FileSink):
            return _WrappedFileSink(inner, self)
        raise ConfigurationError(f"sink_wrapper: expected a FileSink or a ContainerSink to wrap, got {type(inner)!r}")

    @property
    def containers(self) -> bool:
        """True when the archiver's sinks are container sinks (it has commit points)."""
        return any(isinstance(sink, ContainerSink) for sink in self.wrapped)

    def store(self, inner: FileSink, item: Item) -> None:
        """A file sink writes ``item``."""
        inner.store(item)

    def append(self, inner: ContainerSink, item: Item) -> Settled:
        """A container sink appends ``item``."""
        return inner.append(item)

    def commit(self, inner: ContainerSink, call: Callable[[], Settled]) -> Settled:
        """A container sink commits: ``call`` is its ``commit``, ``close`` or ``expire`` (with the time)."""
        return call()


class SlowSink(SinkWrapper):
    """Slow storage: each targeted call takes ``seconds`` longer (after the first ``after`` calls at full speed).

    ``calls`` counts the targeted calls made so far (over all lanes).
    """

    def __init__(self, seconds: float, *, after: int = 0, calls: Iterable[str] = CALLS) -> None:
        super().__init__()
        self.seconds = float(seconds)
        self.after = after
        self.targets = _targets(calls)
        self.calls = 0

    def _delay(self, call: str) -> None:
        if call not in self.targets:
            return
        with self._lock:
            self.calls += 1
            slow = self.calls > self.after
        if slow:
            time.sleep(self.seconds)

    def store(self, inner: FileSink, item: Item) -> None:
        self._delay("store")
        inner.store(item)

    def append(self, inner: ContainerSink, item: Item) -> Settled:
        self._delay("append")
        return inner.append(item)

    def commit(self, inner: ContainerSink, call: Callable[[], Settled]) -> Settled:
        if inner.pending:  # a commit with nothing to commit (an idle check, every tick) is not slowed
            self._delay("commit")
        return call()


class FailingSink(SinkWrapper):
    """Storage that fails ``times`` times (in total), then works: each failure is ``error`` (default: an
    ``EIO`` StorageError, which the pipeline retries).

    * ``store`` and ``append`` fail before the item reaches the sink: nothing of it was written.
    * ``commit`` fails *after* the sink committed: the items are in the container, durable, but the commit
      is reported failed (as a crash between the flush and its acknowledgement would leave them) and the
      sink is released (closed; its containers reopen at the next append). The pipeline appends the items
      again, and the container must find them by their item key instead of writing them twice. Only a
      commit that archived items counts as one of the ``times``.

    ``failures`` counts the failures so far.
    """

    def __init__(
        self, times: int, error: BaseException | None = None, *, calls: Iterable[str] = ("store", "append")
    ) -> None:
        super().__init__()
        self.times = times
        self.error = error
        self.targets = _targets(calls)
        self.failures = 0

    def _fail_now(self, call: str) -> BaseException | None:
        """The error to fail this call with, or None (counted as a failure when returned)."""
        if call not in self.targets:
            return None
        with self._lock:
            if self.failures >= self.times:
                return None
            self.failures += 1
            number = self.failures
        if self.error is not None:
            return self.error
        return StorageError(errno.EIO, f"FailingSink: {call} failure {number} of {self.times} (a simulated fault)")

    def store(self, inner: FileSink, item: Item) -> None:
        error = self._fail_now("store")
        if error is not None:
            raise error
        inner.store(item)

    def append(self, inner: ContainerSink, item: Item) -> Settled:
        error = self._fail_now("append")
        if error is not None:
            raise error
        return inner.append(item)

    def commit(self, inner: ContainerSink, call: Callable[[], Settled]) -> Settled:
        settled = call()
        if not settled.archived:
            return settled
        error = self._fail_now("commit")
        if error is None:
            return settled
        released = inner.close()  # everything was just committed: closing commits nothing new
        failed = [*settled.archived, *released.archived]
        return Settled(failed=[CommitFailure("FailingSink", failed, error), *settled.failed, *released.failed])


def _targets(calls: Iterable[str]) -> frozenset[str]:
    targets = frozenset(calls)
    unknown = sorted(targets - set(CALLS))
    if unknown or not targets:
        raise ConfigurationError(f"calls: expected one or more of {list(CALLS)}, got {sorted(targets)}")
    return targets


class _WrappedFileSink(FileSink):
    """A file sink whose ``store`` goes through a wrapper."""

    def __init__(self, inner: FileSink, wrapper: SinkWrapper) -> None:
        super().__init__(lambda item: wrapper.store(inner, item))
        self.inner = inner


class _WrappedContainerSink(ContainerSink):
    """A container sink whose calls go through a wrapper; flush settings and pending state are the inner's."""

    def __init__(self, inner: ContainerSink, wrapper: SinkWrapper) -> None:
        self.inner = inner
        self._wrapper = wrapper
        self.flush_frames = inner.flush_frames
        self.flush_bytes = inner.flush_bytes
        self.flush_seconds = inner.flush_seconds

    def append(self, item: Item) -> Settled:
        return self._wrapper.append(self.inner, item)

    def commit(self) -> Settled:
        return self._wrapper.commit(self.inner, self.inner.commit)

    def expire(self, now: float) -> Settled:
        return self._wrapper.commit(self.inner, lambda: self.inner.expire(now))

    def rollover(self) -> Settled | None:
        supported: list[bool] = []

        def call() -> Settled:
            settled = self.inner.rollover()
            supported.append(settled is not None)
            return Settled() if settled is None else settled

        settled = self._wrapper.commit(self.inner, call)
        return settled if all(supported) else None

    def close(self) -> Settled:
        return self._wrapper.commit(self.inner, self.inner.close)

    @property
    def locate(self) -> bool:
        """The inner sink's: the pipeline sets it on the sink it holds (this one), the inner one locates."""
        return self.inner.locate

    @locate.setter
    def locate(self, value: bool) -> None:
        self.inner.locate = value

    @property
    def pending(self) -> int:
        return self.inner.pending

    @property
    def pending_bytes(self) -> int:
        return self.inner.pending_bytes

    @property
    def oldest_pending(self) -> float | None:
        return self.inner.oldest_pending
