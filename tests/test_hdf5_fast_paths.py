"""The per-item shortcuts of Hdf5Archiver's path: cached renders, distinct receive times, held queue bytes.

Each must give what the slow path gives (the renders, the keys, the bounds); these tests pin that down
without Zenoh, where the shortcut itself is the unit (the archiver tests in test_hdf5_archiver.py run them
end to end over Zenoh).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import wait_until
from heros_archiver.archivers.hdf5 import DistinctReceiveTimes, RenderCache
from heros_archiver.errors import PathConfinementError, TemplateRenderError
from heros_archiver.naming.templates import PathTemplate
from heros_archiver.pipeline.queueing import Item, LaneQueue
from heros_archiver.sinks.containers import ItemKey


def item(source: str = "cam", received: float = 1.0, nbytes: int = 100) -> Item:
    return Item(source, np.zeros(2), {}, nbytes, received=received)


# ------------------------------------------------------------------------------------------ render cache
def test_render_key_depends_on_the_variables_and_their_types(tmp_path: Path) -> None:
    template = PathTemplate("{{ file_path }}/run-{{ run }}.h5", tmp_path)
    assert template.variables == ("file_path", "run")
    key = template.render_key({"file_path": "a", "run": 1, "frame": 7})
    assert key == template.render_key({"file_path": "a", "run": 1, "frame": 8})  # frame is not used
    assert key != template.render_key({"file_path": "a", "run": True})  # True == 1, but renders "True"
    assert key != template.render_key({"file_path": "a", "run": "1"})


def test_no_render_key_for_globals_floats_containers_or_missing_values(tmp_path: Path) -> None:
    assert PathTemplate("{{ lipsum(1) }}.h5", tmp_path).render_key({}) is None  # a global may differ per call
    template = PathTemplate("{{ run }}.h5", tmp_path)
    for value in (0.0, -0.0, [1], {"a": 1}, object()):
        assert template.render_key({"run": value}) is None
    assert template.render_key({}) is None


def test_a_cached_render_is_what_the_template_renders(tmp_path: Path) -> None:
    template = PathTemplate("{{ file_path }}/run-{{ run }}.h5", tmp_path)
    cache = RenderCache(template)
    calls: list[object] = []

    def render(context: object) -> str:
        calls.append(context)
        return template.render_confined(context)  # type: ignore[arg-type]

    for frame in range(5):
        assert cache.render({"file_path": str(tmp_path), "run": 1, "frame": frame}, render) == str(
            tmp_path / "run-1.h5"
        )
    assert len(calls) == 1
    assert cache.render({"file_path": str(tmp_path), "run": 2}, render) == str(tmp_path / "run-2.h5")
    assert cache.render({"file_path": str(tmp_path), "run": 1.5}, render) == str(tmp_path / "run-1.5.h5")
    assert len(calls) == 3


def test_a_render_that_fails_is_not_cached_and_fails_again(tmp_path: Path) -> None:
    template = PathTemplate("{{ file_path }}/run.h5", tmp_path)
    cache = RenderCache(template)
    for _ in range(2):
        with pytest.raises(PathConfinementError):
            cache.render({"file_path": "/elsewhere"}, template.render_confined)
    with pytest.raises(TemplateRenderError):
        cache.render({}, template.render_confined)


def test_the_cache_starts_over_when_full(tmp_path: Path) -> None:
    template = PathTemplate("{{ frame }}.h5", tmp_path)
    cache = RenderCache(template)
    for frame in range(RenderCache.MAX_ENTRIES + 10):
        assert cache.render({"frame": frame}, template.render_confined) == str(tmp_path / f"{frame}.h5")
    assert len(cache._renders) <= RenderCache.MAX_ENTRIES


contexts = st.lists(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]), st.one_of(st.text(max_size=3), st.integers(-3, 3), st.booleans())
    ),
    max_size=30,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(contexts)
def test_a_cache_shared_by_many_contexts_renders_what_the_template_renders(batch: list[dict[str, object]]) -> None:
    template = PathTemplate("x/{{ a | default('-') }}-{{ b | default('-') }}.h5", "/tmp")
    cache = RenderCache(template)
    for context in batch:
        assert cache.render(context, template.render_text) == template.render_text(context)


# ------------------------------------------------------------------------------------------ receive times and keys
def test_receive_times_of_one_source_become_strictly_increasing() -> None:
    times = DistinctReceiveTimes()
    items = [item(received=5.0), item(received=5.0), item(received=4.0), item(received=6.0), item("other", 5.0)]
    for one in items:
        times.make_distinct(one)
    received = [one.received for one in items]
    assert received[0] == 5.0 and 5.0 < received[1] < received[2] < 6.0 and received[3] == 6.0
    assert received[4] == 5.0  # another source keeps its own times
    keys = {ItemKey.of_arrival(one.source, None, one.received).key_id() for one in items}
    assert len(keys) == len(items)


def test_receive_times_stay_distinct_from_several_threads() -> None:
    times = DistinctReceiveTimes()
    items = [item(received=7.0) for _ in range(4000)]

    def stamp(part: list[Item]) -> None:
        for one in part:
            times.make_distinct(one)

    threads = [threading.Thread(target=stamp, args=(items[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({one.received for one in items}) == len(items)


def test_an_arrival_key_is_a_pure_function_of_source_sequence_and_receive_time() -> None:
    now = time.time()
    assert ItemKey.of_arrival("cam", 3, now) == ItemKey.of_arrival("cam", 3, float(now))
    assert (
        ItemKey.of_arrival("cam", 3, now).key_id() != ItemKey.of_arrival("cam", 3, np.nextafter(now, 2 * now)).key_id()
    )
    assert ItemKey.of_arrival("cam", 3, now).key_id() != ItemKey.of_arrival("cam", None, now).key_id()
    assert ItemKey.of_arrival("cam", 3, now).key_id() != ItemKey.of_arrival("cam2", 3, now).key_id()


# ------------------------------------------------------------------------------------------ held items
def test_items_a_writer_holds_count_against_the_bounds_until_released() -> None:
    queue = LaneQueue(1, max_items=10, max_bytes=1000)
    for _ in range(4):
        assert queue.put(item(nbytes=200), block=False)
    taken = queue.get_many(0, 10, 10_000, 0.0, hold=True)
    assert len(taken) == 4 and queue.depth() == (4, 800)  # taken, but held: still counted
    assert queue.put(item(nbytes=200), block=False)  # 1000 of 1000
    assert not queue.put(item(nbytes=200), block=False)
    queue.hold(0, 0, 0)  # committed
    assert queue.depth() == (1, 200)
    assert queue.put(item(nbytes=200), block=False)


def test_a_producer_waiting_for_room_wakes_when_the_writer_releases() -> None:
    queue = LaneQueue(1, max_items=10, max_bytes=500)
    queue.put(item(nbytes=400), block=False)
    queue.get_many(0, 10, 10_000, 0.0, hold=True)
    queue.put(item(nbytes=50), block=False)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(queue.put(item(nbytes=300), block=True, timeout=30)))
    waiter.start()
    time.sleep(0.1)
    assert result == []  # 400 held + 50 queued + 300 > 500
    queue.hold(0, 0, 0)
    waiter.join(10)
    assert result == [True]


def test_a_producer_waiting_on_held_items_asks_the_writer_to_commit() -> None:
    """Held items fill the bound and nothing is queued: the item waits (the bounds hold for queued and held
    items together), and its wait raises ``room_wanted``, on which the container writer commits at once."""
    queue = LaneQueue(1, max_items=10, max_bytes=500)
    queue.put(item(nbytes=500), block=False)
    queue.get_many(0, 10, 10_000, 0.0, hold=True)
    assert not queue.put(item(nbytes=300), block=False) and not queue.room_wanted
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(queue.put(item(nbytes=300), block=True, timeout=30)))
    waiter.start()
    wait_until(lambda: queue.room_wanted, what="the waiting producer to ask for room")
    queue.hold(0, 0, 0)  # committed
    waiter.join(10)
    assert result == [True] and not queue.room_wanted and queue.depth() == (1, 300)
