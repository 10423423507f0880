"""Outcomes and listeners (decision 0030): every item's end is told, with where it went, off the writer thread."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import xxhash

from conftest import RigFactory
from helpers import wait_for_items, wait_until
from heros_archiver import JsonArchiver
from heros_archiver.observe.listeners import ListenerHub
from heros_archiver.observe.outcomes import Archived, DeadLettered, Dropped, Location, Outcome, checksum
from heros_archiver.pipeline.writers import OUTCOME_BATCH, OUTCOME_DELAY
from heros_archiver.testing.collect import CollectOutcomes
from heros_archiver.testing.faults import SlowSink

pytestmark = pytest.mark.timeout(60)


def _file_checksum(path: str) -> str:
    return f"xxh3-128:{xxhash.xxh3_128_hexdigest(Path(path).read_bytes())}"


def test_checksum_is_xxh3_128_of_the_buffers_in_order() -> None:
    assert checksum([b"ab", memoryview(b"cd")]) == f"xxh3-128:{xxhash.xxh3_128_hexdigest(b'abcd')}"


def test_every_npy_file_is_told_with_its_path_size_and_checksum(make_rig: RigFactory) -> None:
    listener = CollectOutcomes(inline=False)
    rig = make_rig("{{ file_path }}/{{ '%03d' % frame }}.npy", listeners=[listener], sequence_key="frame")
    sent = rig.camera.acquire(20, shape=(32, 32), dtype="uint16")
    wait_for_items(rig.archiver, sent)
    wait_until(lambda: len(listener.outcomes) == sent, what="all outcomes told")

    assert all(isinstance(o, Archived) for o in listener.outcomes)
    archived = [o for o in listener.outcomes if isinstance(o, Archived)]
    assert [o.sequence for o in archived] == list(range(sent))
    for outcome in archived:
        (location,) = outcome.locations
        assert location.path == str(rig.root / f"{outcome.sequence:03d}.npy")
        assert location.nbytes == Path(location.path).stat().st_size
        assert location.checksum == _file_checksum(location.path)
        assert location.member is None and outcome.source == "cam" and outcome.event == "acquisition_data"
        assert outcome.committed >= outcome.received
    assert not any(name.startswith("heros-archiver-writer") for name in listener.threads)


def test_json_files_written_by_the_helper_process_are_located_too(make_rig: RigFactory) -> None:
    listener = CollectOutcomes(inline=False)
    rig = make_rig("{{ file_path }}/{{ frame }}.json", archiver_cls=JsonArchiver, listeners=[listener], matched=())
    assert rig.archiver.stats()["helper_processes"], "the batch path is what this test is about"
    for frame in range(50):
        rig.archiver.feed("cam", ({"t": frame * 0.5}, {"frame": frame}))
    wait_for_items(rig.archiver, 50)
    wait_until(lambda: len(listener.outcomes) == 50, what="all outcomes told")
    for outcome in listener.outcomes:
        assert isinstance(outcome, Archived)
        (location,) = outcome.locations
        assert location.checksum == _file_checksum(location.path)


def test_dead_lettered_and_dropped_items_are_told(make_rig: RigFactory) -> None:
    listener = CollectOutcomes()
    rig = make_rig("{{ file_path }}/{{ frame }}.npy", listeners=[listener])
    rig.archiver.feed("cam", (np.zeros(3), {}))  # no 'frame': the template cannot render
    wait_for_items(rig.archiver, 1)
    (outcome,) = listener.outcomes
    assert isinstance(outcome, DeadLettered)
    assert Path(outcome.entry).is_dir() and "frame" in outcome.error


def test_a_slow_listener_falls_behind_counted_and_never_slows_the_others() -> None:
    class Slow(CollectOutcomes):
        max_queued = 10

        def handle(self, outcomes: Sequence[Outcome]) -> None:
            time.sleep(0.05)
            super().handle(outcomes)

    slow, fast, inline = Slow(inline=False), CollectOutcomes(inline=False), CollectOutcomes()
    hub = ListenerHub("ev")
    for listener in (slow, fast, inline):
        hub.add(listener)
    outcomes = [Dropped("s", "ev", n, {}, 0.0, 1, "test") for n in range(100)]
    started = time.monotonic()
    for outcome in outcomes:
        hub.publish([outcome])
    assert time.monotonic() - started < 1.0, "publishing waited for the slow listener"
    hub.close(timeout=10)
    stats = hub.stats()
    assert stats["Slow"]["lagged"] > 0 and stats["Slow"]["handled"] + stats["Slow"]["lagged"] == 100
    assert stats["CollectOutcomes"]["handled"] == 100 and [o.sequence for o in fast.outcomes] == list(range(100))
    assert len(inline.outcomes) == 100 and slow.closed and fast.closed and inline.closed


def test_a_failing_listener_is_counted_and_the_others_go_on() -> None:
    class Broken(CollectOutcomes):
        def handle(self, outcomes: Sequence[Outcome]) -> None:
            raise RuntimeError("boom")

    broken, fine = Broken(inline=True), CollectOutcomes(inline=False)
    hub = ListenerHub("ev")
    hub.add(broken)
    hub.add(fine)
    hub.publish([Archived("s", "ev", 1, {}, 0.0, 1, (Location("/x", 1, None),))])
    hub.close()
    assert hub.stats()["Broken"]["failed"] == 1 and len(fine.outcomes) == 1


class _Batches(CollectOutcomes):
    """Records the size of each batch it is told (inline: on the writer thread, as the catalog)."""

    def __init__(self) -> None:
        super().__init__(inline=True)
        self.sizes: list[int] = []

    def handle(self, outcomes: Sequence[Outcome]) -> None:
        self.sizes.append(len(outcomes))
        super().handle(outcomes)


def test_items_written_while_more_wait_are_told_in_batches_and_the_last_at_once(make_rig: RigFactory) -> None:
    """A file writer with a full lane tells its outcomes a batch at a time (``OUTCOME_BATCH``), and the lane
    running empty tells what was written at once: every item once, in order, none left waiting for the next."""
    listener = _Batches()
    rig = make_rig("{{ file_path }}/{{ '%04d' % frame }}.npy", listeners=[listener], sequence_key="frame")
    frame = np.zeros((16, 16), np.uint16)
    for index in range(300):  # fed faster than written (a file takes longer than a feed): they gather in the lane
        rig.archiver.feed("cam", (frame, {"frame": index}))
    wait_for_items(rig.archiver, 300)
    assert [o.sequence for o in listener.archived] == list(range(300))
    assert max(listener.sizes) > 1 and len(listener.sizes) < 300, listener.sizes
    assert max(listener.sizes) <= OUTCOME_BATCH
    rig.archiver.feed("cam", (frame, {"frame": 300}))  # alone in the lane: told as soon as it is written
    wait_until(lambda: len(listener.archived) == 301, timeout=2.0, what="the last item told")
    assert listener.sizes[-1] == 1


def test_an_item_slower_to_write_than_the_batch_delay_is_told_at_once(make_rig: RigFactory) -> None:
    """With slow storage the outcome of each item is told when it is written, not with the next one's."""
    listener = _Batches()
    rig = make_rig(
        "{{ file_path }}/{{ '%04d' % frame }}.npy", listeners=[listener], sequence_key="frame",
        sink_wrapper=SlowSink(2 * OUTCOME_DELAY),
    )  # fmt: skip
    frame = np.zeros((16, 16), np.uint16)
    for index in range(6):
        rig.archiver.feed("cam", (frame, {"frame": index}))
    wait_for_items(rig.archiver, 6)
    assert listener.sizes == [1] * 6
