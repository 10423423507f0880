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
``close()`` drains what is queued, several sources at once stay apart and in order, a storage fault that
passes (a directory that refuses new entries for a while: a real fault, not a patched function) is retried
until the item is archived, and items resumed from the spool after a crash are not written twice. Needs
pytest (and numpy); it runs nothing at import.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from ..archivers.base import HERODataArchiver
from ..pipeline.queueing import Item
from ..state.spool import Spool
from ..state.statedir import DEAD_LETTER_SUBDIR, SPOOL_DIR_NAME
from . import free_port, session_manager, unique_realm

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
    """Subclass, set ``archiver_class`` (and ``payloads`` for dict sinks), implement the two methods."""

    #: the archiver whose sink is tested
    archiver_class: ClassVar[type[HERODataArchiver]]
    #: ``"arrays"`` or ``"dicts"``: what kind of payload the sink stores
    payloads: ClassVar[str] = "arrays"

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
