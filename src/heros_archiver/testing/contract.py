"""The contract every sink passes: a test class to subclass, as zarr-python's ``StoreTests`` is.

A sink (file per item, or a container) is only as good as what comes back from it. This suite feeds items
through a real archiver (its pipeline, spool and dead-letter store; a Zenoh session of its own on loopback,
no sender needed: items come in through ``feed``), closes it, and reads the archive back the way a user
would. A package that adds a sink subclasses :class:`SinkContract` in its own tests::

    class TestMySink(SinkContract):
        archiver_class = MyArchiver

        def archiver_kwargs(self, root):
            return {"save_template": "{{ file_path }}/{{ source_name }}/{{ '%04d' % frame }}.my"}

        def read_back(self, root):
            return {source: [payload, ...] for source in ...}  # per source, in arrival order

Each test says one promise: payloads come back as sent (dtypes, byte orders, shapes), a bad item is
dead-lettered and the others go on, an existing target is never replaced under ``on_exists="error"``,
``close()`` drains what is queued, several sources at once stay apart and in order, every archived item
says where it went and reads back there with its checksum (``observe.readers``), a storage fault that
passes (a directory that refuses new entries for a while: a real fault, not a patched function) is retried
until the item is archived, and items resumed from the spool after a crash are not written twice.

With the fault wrappers of ``heros_archiver.testing.faults`` around the archiver's sink (its ``sink_wrapper``
argument, no patched function): slow storage under a fast producer loses and duplicates nothing and keeps
the queue within its bounds; ``close()`` with slow storage drains what it can within ``drain_timeout`` and
sets aside, counted, what it cannot; storage that fails a few times is retried until every item is archived
once; a container whose commit is reported failed after it wrote finds the items again by their key instead
of writing them twice; and an archiver killed with SIGKILL in a child process (``crash_child``) keeps every
item it committed, once, after the restart resumed its spool. Needs pytest (and numpy); it runs nothing at
import.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from ..archivers.base import HERODataArchiver
from ..observe.outcomes import Archived
from ..observe.readers import ContainerReader
from ..pipeline.payload import item_nbytes
from ..pipeline.queueing import Item
from ..state.deadletter import DeadLetterStore
from ..state.spool import Spool
from ..state.statedir import DEAD_LETTER_SUBDIR, SPOOL_DIR_NAME
from . import free_port, session_manager, unique_realm
from .collect import CollectOutcomes
from .crash_child import QUEUE_ITEMS
from .faults import FailingSink, SlowSink

#: Payloads every array sink must give back exactly: dtypes, byte orders, shapes and layouts.
ARRAY_CASES: tuple[np.ndarray, ...] = (
    np.arange(12, dtype=np.uint16).reshape(3, 4),
    np.arange(6, dtype=">i4").reshape(2, 3),
    np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 2, 2),
    np.array([[True, False], [False, True]]),
    np.arange(20, dtype=np.float64).reshape(4, 5).T,  # not C-contiguous
    np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    np.zeros((0, 3), dtype=np.int8),
)
#: The same for sinks of dict payloads (JSON).
DICT_CASES: tuple[dict[str, Any], ...] = (
    {"temperature": 21.5, "unit": "C", "ok": True},
    {"counts": [1, 2, 3], "nested": {"a": None, "b": [0.25]}},
    {"big": 2**70, "text": "ünïcödé"},
)

Factory = Callable[..., HERODataArchiver]


class SinkContract:
    """Subclass, set ``archiver_class`` (and ``payloads`` for dict sinks), implement the two methods.

    The crash test runs the archiver in a child process: it needs ``archiver_class`` importable by its module
    and name, and ``archiver_kwargs`` that JSON can carry (it is skipped otherwise).
    """

    #: the archiver whose sink is tested
    archiver_class: ClassVar[type[HERODataArchiver]]
    #: ``"arrays"`` or ``"dicts"``: what kind of payload the sink stores
    payloads: ClassVar[str] = "arrays"
    #: False for a sink whose committed items sit in a journal until a restart (or ``close()``) writes them
    #: into its files (Parquet): the crash test then checks them after the restart, not right after the kill
    readable_before_recovery: ClassVar[bool] = True

    def archiver_kwargs(self, root: Path) -> dict[str, Any]:
        """Arguments that name the archive under ``root`` (``file_path`` is ``root`` in the default metadata).

        The files of one source must be told apart by the ``frame`` metadata value and ``source_name``.
        """
        raise NotImplementedError

    def read_back(self, root: Path) -> dict[str, list[Any]]:
        """Every archived payload under ``root``, per source, in the order the source sent them."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @pytest.fixture
    def make_archiver(self, tmp_path: Path) -> Iterator[Factory]:
        """Archivers of this sink on ``tmp_path``, each with a Zenoh session of its own; all closed at the end."""
        made: list[HERODataArchiver] = []

        def make(**overrides: Any) -> HERODataArchiver:
            kwargs: dict[str, Any] = {
                "object_selector": "contract-sender",
                "event_name": "acquisition_data",
                "default_metadata": {"file_path": str(tmp_path)},
                "retry_delay": 0.01,
                "realm": unique_realm("contract"),
                "session_manager": session_manager(listen_port=free_port()),
                **self.archiver_kwargs(tmp_path),
                **overrides,
            }
            archiver = self.archiver_class(**kwargs)
            made.append(archiver)
            return archiver

        yield make
        for archiver in made:
            archiver.close()

    def cases(self) -> list[Any]:
        """The payloads of the round trip."""
        return list(ARRAY_CASES if self.payloads == "arrays" else DICT_CASES)

    def bad_payload(self) -> Any:
        """A payload this kind of sink cannot store."""
        return {"not": "an array"} if self.payloads == "arrays" else [1, 2, 3]

    def varied(self, payload: Any, index: int) -> Any:
        """``payload`` made different from itself by ``index`` (so that a collision is a real one)."""
        if self.payloads == "arrays":
            return (payload + np.asarray(index + 1).astype(payload.dtype)).astype(payload.dtype)  # same byte order
        return {**payload, "variant": index}

    @staticmethod
    def feed_all(archiver: HERODataArchiver, items: list[tuple[str, Any, int]]) -> None:
        for source, payload, frame in items:
            archiver.feed(source, (payload, {"frame": frame}))

    @staticmethod
    def totals(archiver: HERODataArchiver) -> dict[str, int]:
        return {key: int(value) for key, value in archiver.stats()["total"].items()}

    def assert_same(self, got: list[Any], sent: list[Any]) -> None:
        assert len(got) == len(sent), f"{len(got)} payloads read back, {len(sent)} sent"
        for back, payload in zip(got, sent, strict=True):
            if self.payloads == "arrays":
                assert isinstance(back, np.ndarray), type(back)
                assert back.dtype == payload.dtype and back.shape == payload.shape, (back.dtype, back.shape)
                np.testing.assert_array_equal(back, payload)
            else:
                assert back == payload

    # ------------------------------------------------------------------ the contract
    def test_payloads_come_back_as_sent(self, make_archiver: Factory, tmp_path: Path) -> None:
        archiver = make_archiver()
        sent = {f"src-{n}": [payload, self.varied(payload, 0)] for n, payload in enumerate(self.cases())}
        self.feed_all(archiver, [(s, p, i) for s, payloads in sent.items() for i, p in enumerate(payloads)])
        archiver.close()

        total = self.totals(archiver)
        count = sum(map(len, sent.values()))
        assert total["archived"] == count and total["dead_lettered"] == total["dropped"] == 0, total
        back = self.read_back(tmp_path)
        assert sorted(back) == sorted(sent)
        for source, payloads in sent.items():
            self.assert_same(back[source], payloads)

    def test_a_bad_item_is_dead_lettered_and_the_others_go_on(self, make_archiver: Factory, tmp_path: Path) -> None:
        archiver = make_archiver()
        good = self.cases()[0]
        self.feed_all(archiver, [("cam", good, 0), ("cam", self.bad_payload(), 1), ("cam", self.varied(good, 2), 2)])
        archiver.close()

        total = self.totals(archiver)
        assert total["archived"] == 2 and total["dead_lettered"] == 1 and total["dropped"] == 0, total
        assert len(list((tmp_path / DEAD_LETTER_SUBDIR).iterdir())) == 1
        self.assert_same(self.read_back(tmp_path)["cam"], [good, self.varied(good, 2)])

    def test_an_existing_target_is_never_replaced(self, make_archiver: Factory, tmp_path: Path) -> None:
        first = [("cam", self.varied(self.cases()[0], i), i) for i in range(3)]
        archiver = make_archiver(on_exists="error")
        self.feed_all(archiver, first)
        archiver.close()
        again = make_archiver(on_exists="error")
        self.feed_all(again, [(s, self.varied(p, 10 + i), i) for i, (s, p, _) in enumerate(first)])
        again.close()

        total = self.totals(again)
        assert total["archived"] == 0 and total["dead_lettered"] == len(first), total
        self.assert_same(self.read_back(tmp_path)["cam"], [p for _, p, _ in first])

    def test_close_drains_what_is_queued(self, make_archiver: Factory, tmp_path: Path) -> None:
        archiver = make_archiver()
        sent = [self.varied(self.cases()[0], i) for i in range(60)]
        self.feed_all(archiver, [("cam", p, i) for i, p in enumerate(sent)])
        archiver.close()  # at once: what is still queued is written before close returns

        assert self.totals(archiver)["archived"] == len(sent)
        self.assert_same(self.read_back(tmp_path)["cam"], sent)

    def test_several_sources_at_once_stay_apart_and_in_order(self, make_archiver: Factory, tmp_path: Path) -> None:
        archiver = make_archiver(writers=2)
        sources = ("cam-a", "cam-b", "cam-c")
        sent: dict[str, list[Any]] = {s: [] for s in sources}
        items = []
        for i in range(10):
            for n, source in enumerate(sources):
                payload = self.varied(self.cases()[0], 100 * n + i)
                sent[source].append(payload)
                items.append((source, payload, i))
        self.feed_all(archiver, items)
        archiver.close()

        assert self.totals(archiver)["archived"] == len(items)
        back = self.read_back(tmp_path)
        for source in sources:
            self.assert_same(back[source], sent[source])

    def test_a_storage_fault_that_passes_is_retried_until_the_item_is_archived(
        self, make_archiver: Factory, tmp_path: Path
    ) -> None:
        archiver = make_archiver(max_retries=1000, retry_max_delay=0.05)
        payload = self.cases()[0]
        with refusing_new_entries(tmp_path):
            self.feed_all(archiver, [("cam", payload, 0)])
            wait_until(lambda: self.totals(archiver)["retried"] >= 2, "two retries while the root refuses")
        archiver.close()

        total = self.totals(archiver)
        assert total["archived"] == 1 and total["dead_lettered"] == total["dropped"] == 0, total
        self.assert_same(self.read_back(tmp_path)["cam"], [payload])

    def test_items_resumed_from_the_spool_are_not_written_twice(self, make_archiver: Factory, tmp_path: Path) -> None:
        """A crash after an item was written but before its spool entry was removed: the next start finds it
        in the spool again, and must count it as archived without a second copy."""
        sent = [self.varied(self.cases()[0], i) for i in range(5)]
        archiver = make_archiver()
        self.feed_all(archiver, [("cam", p, i) for i, p in enumerate(sent)])
        archiver.close()
        spool = Spool(tmp_path / DEAD_LETTER_SUBDIR.parent / SPOOL_DIR_NAME, "acquisition_data")
        for i, payload in enumerate(sent):  # what the crashed run still had in its spool: all five, and a sixth
            metadata = {"file_path": str(tmp_path), "frame": i}
            spool.put(Item("cam", payload, metadata, payload_size(payload)))
        extra = self.varied(self.cases()[0], 5)
        spool.put(Item("cam", extra, {"file_path": str(tmp_path), "frame": 5}, payload_size(extra)))

        resumed = make_archiver()
        wait_until_drained(resumed)
        resumed.close()

        total = self.totals(resumed)
        assert total["dead_lettered"] == total["dropped"] == 0, total
        assert len(spool.store) == 0, "the spool keeps entries of archived items"
        self.assert_same(self.read_back(tmp_path)["cam"], [*sent, extra])

    def test_every_archived_item_is_located_and_reads_back_with_its_checksum(
        self, make_archiver: Factory, tmp_path: Path
    ) -> None:
        """With a listener (``locate`` on), every archived item says where it went (``observe``), and reading it
        back there (``observe.readers``, as verify does) gives the checksum it was archived with."""
        listener = CollectOutcomes()
        archiver = make_archiver(listeners=[listener])
        sent = [self.varied(self.cases()[0], i) for i in range(12)]
        self.feed_all(archiver, [("cam", p, i) for i, p in enumerate(sent)])
        archiver.close()

        archived = [outcome for outcome in listener.outcomes if isinstance(outcome, Archived)]
        assert len(archived) == len(sent) == self.totals(archiver)["archived"], listener.outcomes
        places = set()
        with ContainerReader(tmp_path) as reader:
            for outcome in archived:
                assert outcome.locations, f"item {outcome.sequence} archived without a location"
                for location in outcome.locations:
                    assert os.path.isabs(location.path), location
                    reading = reader.read(location.path, location.member, location.index, location.count)
                    assert reading.checksum == location.checksum, (location, reading)
                    if reading.nbytes is not None:
                        assert reading.nbytes == location.nbytes, (location, reading)
                    places.add((location.path, location.member, location.index))
        assert len(places) == sum(len(outcome.locations) for outcome in archived), "two items at one place"

    # ------------------------------------------------------------------ faults (testing.faults)
    @pytest.mark.parametrize("overflow", ["block", "spill"])
    def test_slow_storage_loses_and_duplicates_nothing_within_the_queue_bounds(
        self, make_archiver: Factory, tmp_path: Path, overflow: str
    ) -> None:
        """A producer faster than storage: the queue never holds more than its bounds (the sender is held
        back, or the rest waits in the spool), and every item is archived once, in order."""
        sent = [self.varied(self.cases()[0], i) for i in range(30)]
        # room for two items as the queue counts them (payload and metadata); a container writer's items that
        # wait for their commit count too (decision 0020)
        max_bytes = 2 * item_nbytes(sent[0], {"file_path": str(tmp_path), "frame": 10})
        slow = SlowSink(0.01)
        archiver = make_archiver(
            sink_wrapper=slow, overflow=overflow, max_queue_items=3, max_queue_bytes=max_bytes, block_limit=0.05
        )
        depths = []
        for i, payload in enumerate(sent):
            archiver.feed("cam", (payload, {"frame": i}))
            queue = archiver.stats()["queue"]
            depths.append((queue["items"], queue["bytes"]))
        wait_until_drained(archiver)
        archiver.close()

        assert all(items <= 3 and (nbytes <= max_bytes or items == 1) for items, nbytes in depths), depths
        total = self.totals(archiver)
        assert total["archived"] == len(sent) and total["dead_lettered"] == total["dropped"] == 0, total
        assert slow.calls >= len(sent), "the slow wrapper did not see every item"
        self.assert_same(self.read_back(tmp_path)["cam"], sent)

    def test_close_with_slow_storage_sets_aside_what_drain_timeout_leaves(
        self, make_archiver: Factory, tmp_path: Path
    ) -> None:
        """``close()`` waits ``drain_timeout``, not for slow storage: what is not archived by then is
        dead-lettered, counted, and every item is in exactly one place (archive or dead-letter store)."""
        sent = [self.varied(self.cases()[0], i) for i in range(8)]
        archiver = make_archiver(sink_wrapper=SlowSink(0.3), drain_timeout=0.4)
        self.feed_all(archiver, [("cam", p, i) for i, p in enumerate(sent)])
        archiver.close()

        total = self.totals(archiver)
        assert total["dropped"] == 0 and total["in_flight"] == 0, total
        assert total["dead_lettered"] > 0, f"slow storage drained everything in time: {total}"
        assert total["archived"] + total["dead_lettered"] == len(sent), total
        store = DeadLetterStore(tmp_path / DEAD_LETTER_SUBDIR)
        kept = [store.load(entry).payload for entry in store.entries()]
        archived = self.read_back(tmp_path).get("cam", [])
        assert len(archived) == total["archived"], (len(archived), total)
        assert sorted(map(fingerprint, [*archived, *kept])) == sorted(map(fingerprint, sent))

    def test_close_with_slow_storage_drains_within_drain_timeout(self, make_archiver: Factory, tmp_path: Path) -> None:
        sent = [self.varied(self.cases()[0], i) for i in range(10)]
        archiver = make_archiver(sink_wrapper=SlowSink(0.02))
        self.feed_all(archiver, [("cam", p, i) for i, p in enumerate(sent)])
        archiver.close()  # at once: slow storage, but drain_timeout (30 s) is long enough for all of it

        total = self.totals(archiver)
        assert total["archived"] == len(sent) and total["dead_lettered"] == total["dropped"] == 0, total
        self.assert_same(self.read_back(tmp_path)["cam"], sent)

    def test_storage_failing_n_times_is_retried_and_every_item_archived_once(
        self, make_archiver: Factory, tmp_path: Path
    ) -> None:
        """The store (file sink) or append (container) raises a StorageError three times, then works."""
        sent = [self.varied(self.cases()[0], i) for i in range(5)]
        failing = FailingSink(3)
        archiver = make_archiver(sink_wrapper=failing, max_retries=10, retry_max_delay=0.05)
        self.feed_all(archiver, [("cam", p, i) for i, p in enumerate(sent)])
        archiver.close()

        total = self.totals(archiver)
        assert failing.failures == 3 and total["retried"] == 3, (failing.failures, total)
        assert total["archived"] == len(sent) and total["dead_lettered"] == total["dropped"] == 0, total
        self.assert_same(self.read_back(tmp_path)["cam"], sent)

    def test_a_commit_reported_failed_after_it_wrote_is_not_written_twice(
        self, make_archiver: Factory, tmp_path: Path
    ) -> None:
        """Container sinks: a commit that wrote its items but was reported failed (twice): the items are
        appended again, and the container must know them by their item key."""
        failing = FailingSink(2, calls=("commit",))
        archiver = make_archiver(sink_wrapper=failing, max_retries=10, retry_max_delay=0.05)
        if not failing.containers:
            pytest.skip(f"{self.archiver_class.__name__} writes a file per item: it has no commit point")
        sent = [self.varied(self.cases()[0], i) for i in range(10)]
        self.feed_all(archiver, [("cam", p, i) for i, p in enumerate(sent[:5])])
        wait_until(lambda: failing.failures >= 1 and self.totals(archiver)["archived"] >= 5, "the first commit")
        self.feed_all(archiver, [("cam", p, 5 + i) for i, p in enumerate(sent[5:])])
        archiver.close()

        total = self.totals(archiver)
        assert failing.failures == 2, failing.failures
        assert total["archived"] == len(sent) and total["dead_lettered"] == total["dropped"] == 0, total
        self.assert_same(self.read_back(tmp_path)["cam"], sent)

    def test_committed_items_survive_sigkill_once(self, tmp_path: Path) -> None:
        """The archiver in a child process (``crash_child``) commits some items, then its storage hangs
        and it is killed with SIGKILL while the rest wait in its spool. What it committed reads back; the
        restarted archiver resumes the spool; at the end every item archived is one that was sent, none twice,
        and every item committed before the kill is among them, unchanged. Only the items held in the killed
        process's memory alone (its queue, two items, and the one in the hung write) may be missing: the
        design keeps the queue in memory."""
        cls = self.archiver_class
        kwargs = self.archiver_kwargs(tmp_path)
        try:
            json.dumps(kwargs)
        except TypeError:
            pytest.skip("archiver_kwargs must be JSON for the child process")
        sent = [self.varied(self.cases()[0], i) for i in range(40)]
        scratch = tmp_path / ".contract-crash"  # a dot: not part of the archive a read_back reads
        scratch.mkdir()
        spec = {
            "archiver": f"{cls.__module__}:{cls.__qualname__}",
            "kwargs": kwargs,
            "default_metadata": {"file_path": str(tmp_path)},
            "items": str(scratch / "items.pickle"),
            "commit_after": 5,
            "realm": unique_realm("contract-crash"),
            "listen_port": free_port(),
        }
        (scratch / "items.pickle").write_bytes(pickle.dumps([("cam", p, {"frame": i}) for i, p in enumerate(sent)]))
        log = scratch / "child.log"
        with open(log, "wb") as output:
            child = subprocess.Popen(
                [sys.executable, "-m", "heros_archiver.testing.crash_child", json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            seen = reported(log, {"@@ FED", "@@ STALLED"}, child)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        archived_before = int(seen["@@ STALLED"])
        before = self.read_back(tmp_path).get("cam", [])
        spool = Spool(tmp_path / DEAD_LETTER_SUBDIR.parent / SPOOL_DIR_NAME, "acquisition_data")
        spooled = [spool.store.load(entry).payload for entry in spool.store.entries()]
        assert archived_before >= 5, archived_before
        if self.readable_before_recovery:
            assert len(before) >= archived_before, (len(before), archived_before)
        assert len(spooled) >= len(sent) - archived_before - QUEUE_ITEMS - 1, (len(spooled), archived_before)

        with contextlib.ExitStack() as stack:
            resumed = self.archiver_class(
                object_selector="contract-sender",
                event_name="acquisition_data",
                default_metadata={"file_path": str(tmp_path)},
                retry_delay=0.01,
                realm=unique_realm("contract"),
                session_manager=session_manager(listen_port=free_port()),
                **kwargs,
            )
            stack.callback(resumed.close)
            wait_until_drained(resumed)
        total = self.totals(resumed)
        assert total["dead_lettered"] == total["dropped"] == 0, total
        after = list(map(fingerprint, self.read_back(tmp_path)["cam"]))
        assert len(after) == len(set(after)), "an item was archived twice"
        assert set(after) <= set(map(fingerprint, sent)), "an item was archived that was never sent"
        assert set(map(fingerprint, before)) <= set(after), "an item committed before the kill is gone or changed"
        assert len(after) >= archived_before, f"{archived_before} items committed before the kill, {len(after)} after"
        assert set(map(fingerprint, spooled)) <= set(after), "an item of the spool was not resumed"
        assert len(after) >= len(sent) - QUEUE_ITEMS - 1, f"{len(sent) - len(after)} items lost, more than in memory"


@contextlib.contextmanager
def refusing_new_entries(directory: Path) -> Iterator[None]:
    """``directory`` refuses new entries until the block ends: a real, passing storage fault (``chattr +i``:
    EPERM, also for root), not a patched function. Skips the test where the file system or tool cannot."""
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make {directory} refuse new entries here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def wait_until_drained(archiver: HERODataArchiver, timeout: float = 60.0) -> None:
    """Wait until the spool is empty and nothing is in flight (a start resumes its spool in the background)."""
    wait_until(
        lambda: not archiver.stats()["queue"]["spooled"] and archiver.is_queue_drained(),
        "the spool to drain and nothing in flight",
        timeout,
    )


def payload_size(payload: Any) -> int:
    """Bytes a payload holds, for an item put straight into a spool."""
    return int(payload.nbytes) if isinstance(payload, np.ndarray) else 1024


def fingerprint(payload: Any) -> str:
    """What tells two payloads apart, as text: an array's dtype, shape and bytes; anything else its JSON."""
    if isinstance(payload, np.ndarray):
        return f"{payload.dtype.str}{payload.shape}{np.ascontiguousarray(payload).tobytes().hex()}"
    return json.dumps(payload, sort_keys=True, default=repr)


def reported(log: Path, wanted: set[str], child: subprocess.Popen[bytes], timeout: float = 60.0) -> dict[str, str]:
    """Wait until the child wrote a line ``@@ WORD value`` to ``log`` for every ``@@ WORD`` in ``wanted``;
    their values. Fails if the child ends first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {}
        for line in log.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and f"{words[0]} {words[1]}" in wanted:
                seen[f"{words[0]} {words[1]}"] = " ".join(words[2:])
        if wanted <= seen.keys():
            return seen
        if child.poll() is not None:
            missing = sorted(wanted - seen.keys())
            raise AssertionError(f"the child ended (exit code {child.returncode}) before {missing}: {log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {sorted(wanted - seen.keys())}")
        time.sleep(0.02)
