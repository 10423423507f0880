"""The archiver's events (decision 0032): ``archived`` for every item with where it went and its checksum, seen by
a subscriber in another process; ``failed`` for dead-lettered and dropped items; ``low_disk_space`` on a real
small file system; none from an archiver that is no HERO or was told ``events=False``."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xxhash
from heros import RemoteHERO

import procs
from conftest import RigFactory
from helpers import assert_refused_before_zenoh, remote_hero, tiny_file_system, wait_for_items, wait_until
from heros_archiver import ArrayArchiver, Hdf5Archiver, HERODataArchiver
from heros_archiver.observe.events import MAX_EVENT_ITEMS, archived_payloads, failed_payload
from heros_archiver.observe.listeners import Listener, ListenerHub
from heros_archiver.observe.outcomes import Archived, DeadLettered, Dropped, Location, Outcome, checksum
from heros_archiver.testing import free_port, unique_realm
from heros_archiver.transport import heros_compat
from heros_archiver.transport.hero_builder import hero_class

pytestmark = pytest.mark.timeout(120)

SHAPE = (16, 16)


def _file_checksum(path: Path) -> str:
    return f"xxh3-128:{xxhash.xxh3_128_hexdigest(path.read_bytes())}"


class Received:
    """The payloads of one event of a RemoteHERO, collected on Zenoh's thread."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self.payloads.append(payload)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return [item for payload in self.payloads for item in payload["items"]]


@contextlib.contextmanager
def remote(name: str, realm: str, manager: Any) -> Iterator[RemoteHERO]:
    hero = remote_hero(name, realm, manager)
    try:
        yield hero
    finally:
        hero._destroy_hero()


def hero_archiver(name: str, cls: type[HERODataArchiver] = ArrayArchiver) -> Callable[..., HERODataArchiver]:
    """``make_rig``'s ``archiver_cls``: ``cls`` made a HERO named ``name`` (as BOSS and ``heros-archiver run`` do)."""
    return functools.partial(hero_class(cls), name)


def wait_for_event_subscriber(archiver: HERODataArchiver, event: str) -> None:
    """Until the archiver's ``event`` publisher sees the test's subscription (nothing is sent into the void)."""
    publisher = getattr(archiver, event).publisher
    wait_until(lambda: publisher.matching_status.matching, 30, f"a subscriber of {event!r}")


def test_archived_reaches_a_subscriber_in_another_process_for_every_item_with_the_files_checksum(
    tmp_path: Path,
) -> None:
    """``heros-archiver run`` of a config with an ``_id`` runs the archiver as a HERO of that name; a RemoteHERO
    of it in this process, connected to ``archived`` with heros' usual API, hears of every frame, with a path
    relative to the root it names, and the size and xxh3-128 checksum of the file on disk."""
    archive = tmp_path / "archive"
    arguments = procs.camera_archiver_arguments(archive, sequence_key="frame")
    config = procs.write_config(tmp_path / "config.json", arguments)
    port, realm = free_port(), unique_realm()
    sent = list(range(40))
    with procs.camera(port, realm) as cam, procs.run_archiver(config, realm, port, tmp_path / "run.log") as child:
        procs.wait_for_archiver(cam, child)
        received = Received()
        with remote("archiver", realm, heros_compat.session_manager(cam)) as archiver:
            archiver.archived.connect(received)
            assert archiver.stats()["total"]["received"] == 0  # a round trip: the subscription has reached it
            procs.send_frames(cam, sent, SHAPE)
            wait_until(lambda: len(received.items()) == len(sent), 60, f"{len(sent)} archived items")
            stats = archiver.stats()
        code, output = child.terminate()
    assert code == 0, output
    assert stats["total"]["archived"] == len(sent), stats["total"]

    payloads = received.payloads
    assert {p["archiver"] for p in payloads} == {"archiver"} and {p["event"] for p in payloads} == {"acquisition_data"}
    assert {p["root"] for p in payloads} == {str(archive)} and all(p["ranges"] == [] for p in payloads)
    items = received.items()
    assert sorted(item["sequence"] for item in items) == sent
    for item in items:
        path = archive / item["path"]
        assert item["path"] == f"{item['sequence']:03d}.npy", item
        assert item["checksum"] == _file_checksum(path), item
        assert item["nbytes"] == path.stat().st_size
        assert item["source"] == "cam" and item["event"] == "acquisition_data"
        assert item["committed"] >= item["received"] > 0
        assert procs.check_frame_file(path, SHAPE) == item["sequence"]


def test_failed_tells_a_dead_lettered_item_and_one_dropped_while_paused(make_rig: RigFactory) -> None:
    rig = make_rig(archiver_cls=hero_archiver("failing"), sequence_key="frame")
    archiver = rig.archiver
    received = Received()
    with remote("failing", rig.realm, heros_compat.session_manager(rig.camera)) as subscriber:
        subscriber.failed.connect(received)
        wait_for_event_subscriber(archiver, "failed")
        rig.camera.acquisition_data(np.zeros(SHAPE, np.uint16), {"run": 1})  # no "frame": the template fails
        wait_until(lambda: len(received.payloads) == 1, what="the failed event of the dead letter")
        archiver.pause(drop=True)
        rig.camera.acquisition_data(np.zeros(SHAPE, np.uint16), {"frame": 5})
        wait_until(lambda: len(received.payloads) == 2, what="the failed event of the dropped item")
        archiver.resume()

    dead, dropped = received.payloads
    assert dead["kind"] == "dead_lettered" and dead["source"] == "cam" and dead["sequence"] is None
    assert "frame" in dead["error"] and Path(dead["entry"]).is_dir(), dead
    assert Path(dead["entry"]).is_relative_to(rig.root / ".heros-archiver" / "dead-letter")
    assert dead["archiver"] == "failing" and dead["item_event"] == "acquisition_data"
    assert dropped["kind"] == "dropped" and dropped["error"] == "paused" and dropped["entry"] is None
    assert dropped["sequence"] == 5
    total = archiver.stats()["total"]
    assert total["dead_lettered"] == 1 and total["dropped"] == total["dropped_paused"] == 1, total


def test_archived_tells_an_hdf5_commit_as_index_ranges_with_the_frames_checksums(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """Frames committed together into one stack are one range (first index, count, a sequence value and a
    checksum per frame: xxh3-128 of its raw bytes, as read back from the file)."""
    rig = make_rig(
        None,
        archiver_cls=hero_archiver("stacker", Hdf5Archiver),
        file_template="{{ file_path }}/run.h5",
        dataset_template="cam/data",
        sequence_key="frame",
        flush_frames=10_000,
        flush_seconds=3600.0,
        flush_idle=None,
    )
    received = Received()
    with remote("stacker", rig.realm, heros_compat.session_manager(rig.camera)) as subscriber:
        subscriber.archived.connect(received)
        wait_for_event_subscriber(rig.archiver, "archived")
        procs.send_frames(rig.camera, list(range(6)), SHAPE)
        wait_until(lambda: rig.archiver.stats()["total"]["received"] == 6, what="6 frames received")
        wait_until(lambda: rig.archiver.flush()["done"] and rig.archiver.stats()["total"]["archived"] == 6)
        wait_until(lambda: sum(p["count"] for p in received.payloads) == 6, what="the archived events")
    ranges = [r for payload in received.payloads for r in payload["ranges"]]
    assert all(payload["items"] == [] and payload["root"] == str(tmp_path) for payload in received.payloads)
    # one range per commit: all six in one, or split where a flush found some still queued (under load)
    assert [value for r in ranges for value in r["sequences"]] == list(range(6)), ranges
    assert [r["first"] for r in ranges] == [sum(r["count"] for r in ranges[:n]) for n in range(len(ranges))], ranges
    with h5py.File(tmp_path / "run.h5", "r") as handle:
        stack = handle["cam/data"][()]
    for found in ranges:
        assert found["path"] == "run.h5" and found["member"] == "cam/data" and found["source"] == "cam"
        assert found["count"] == len(found["sequences"]) and found["nbytes"] == found["count"] * stack[0].nbytes
        indices = range(found["first"], found["first"] + found["count"])
        assert [int(stack[i].flat[0]) for i in indices] == found["sequences"]
        assert found["checksums"] == [checksum([np.ascontiguousarray(stack[i]).data]) for i in indices]


def test_events_nobody_hears_are_not_made_but_counted_and_a_callback_or_subscriber_gets_them(
    make_rig: RigFactory,
) -> None:
    """With no subscriber and no callback the outcomes are counted as ``unheard`` and no payload is made or sent
    (decision 0046); a callback connected in this process hears the next ones, and so does a subscriber in
    another session once its subscription has reached the archiver's publisher."""
    rig = make_rig(archiver_cls=hero_archiver("unheard"), sequence_key="frame")
    archiver = rig.archiver

    def events_counts() -> dict[str, int]:
        counts: dict[str, int] = archiver.status()["listeners"]["events"]
        return counts

    procs.send_frames(rig.camera, list(range(4)), SHAPE)
    wait_for_items(archiver, 4)
    wait_until(lambda: events_counts()["unheard"] == 4, what="4 outcomes nobody heard")
    assert events_counts()["handled"] == 4

    local = Received()
    archiver.archived.connect(local)
    procs.send_frames(rig.camera, [4, 5], SHAPE)
    wait_until(lambda: len(local.items()) == 2, what="the archived events of a local callback")
    archiver.archived.disconnect(local)

    remote_received = Received()
    with remote("unheard", rig.realm, heros_compat.session_manager(rig.camera)) as subscriber:
        subscriber.archived.connect(remote_received)
        wait_for_event_subscriber(archiver, "archived")
        procs.send_frames(rig.camera, [6, 7, 8], SHAPE)
        wait_until(lambda: len(remote_received.items()) == 3, what="the archived events of a subscriber")
    assert sorted(item["sequence"] for item in local.items()) == [4, 5]
    assert sorted(item["sequence"] for item in remote_received.items()) == [6, 7, 8]
    assert events_counts()["unheard"] == 4 and archiver.stats()["total"]["archived"] == 9


def test_an_event_is_taken_as_heard_when_heros_handler_is_not_as_expected() -> None:
    """``event_listened`` falls back to sending when heros' event handler lacks what it looks at."""

    class Odd:
        archived = object()  # no callbacks, no publisher

    assert heros_compat.event_listened(Odd(), "archived") is True
    assert heros_compat.event_listened(Odd(), "no_such_event") is True


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (needs root; skips otherwise), unmounted at the end, also on failure."""
    disk = tmp_path / "disk"
    with tiny_file_system(disk, "8m"):
        yield disk


def test_low_disk_space_is_sent_once_when_the_disk_fills_and_again_after_it_was_freed(
    make_rig: RigFactory, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real 8 MiB file system and a threshold of 4 MiB: frames of 1 MiB take the free space below it (one
    event, however many frames follow), files removed take it back above, more frames below again (a second)."""
    rig = make_rig(
        archiver_cls=hero_archiver("disk-watcher"),
        default_metadata={"file_path": str(small_disk)},
        low_disk_space=4 * 2**20,
    )
    archiver = rig.archiver
    received = Received()
    frame = np.ones((1024, 1024), np.uint8)
    with remote("disk-watcher", rig.realm, heros_compat.session_manager(rig.camera)) as subscriber:
        subscriber.low_disk_space.connect(received)
        wait_for_event_subscriber(archiver, "low_disk_space")
        for index in range(5):
            rig.camera.acquisition_data(frame, {"frame": index})
        wait_for_items(archiver, 5)
        wait_until(lambda: len(received.payloads) == 1, what="low_disk_space")
        time.sleep(2 * 2.0 + 0.5)  # two more checks: still low, nothing more is sent
        assert len(received.payloads) == 1
        caplog.set_level(logging.INFO, logger="heros_archiver")
        for path in small_disk.glob("*.npy"):
            path.unlink()
        wait_until(lambda: "free again" in caplog.text, what="a check to see the space free again")
        for index in range(5, 10):
            rig.camera.acquisition_data(frame, {"frame": index})
        wait_for_items(archiver, 10)
        wait_until(lambda: len(received.payloads) == 2, what="the second low_disk_space")

    first = received.payloads[0]
    assert first["archiver"] == "disk-watcher" and first["root"] == str(small_disk)
    assert first["threshold"] == 4 * 2**20 and first["free"] < first["threshold"]
    assert 7 * 2**20 <= first["total"] <= 9 * 2**20, first


def test_a_fraction_of_the_file_system_is_a_threshold_too(make_rig: RigFactory, small_disk: Path) -> None:
    rig = make_rig(
        archiver_cls=hero_archiver("fraction"), default_metadata={"file_path": str(small_disk)}, low_disk_space=0.99
    )
    received = Received()
    with remote("fraction", rig.realm, heros_compat.session_manager(rig.camera)) as subscriber:
        subscriber.low_disk_space.connect(received)
        wait_for_event_subscriber(rig.archiver, "low_disk_space")
        rig.camera.acquisition_data(np.ones((512, 512), np.uint8), {"frame": 0})
        wait_until(lambda: len(received.payloads) == 1, what="low_disk_space")
    report = received.payloads[0]
    assert report["threshold"] == int(0.99 * report["total"]) and report["free"] < report["threshold"]


def test_no_events_from_a_plain_observer_nor_with_events_off(make_rig: RigFactory) -> None:
    """An archiver that is no HERO has no name and no publishers: no events listener at all (so no checksums
    either); a HERO told ``events=False`` neither."""
    plain = make_rig().archiver
    off = make_rig(archiver_cls=hero_archiver("quiet"), events=False).archiver
    on = make_rig(archiver_cls=hero_archiver("talkative")).archiver
    assert "events" not in plain._pipeline.hub.stats()
    assert "events" not in off._pipeline.hub.stats()
    assert "events" in on._pipeline.hub.stats()
    assert plain.archived is None  # heros' event descriptor needs a HERO
    assert {"archived", "failed", "low_disk_space"} <= {c.name for c in off.capabilities}


@pytest.mark.parametrize("value", [0, -1, 1.0, 1.5, True, "1G"])
def test_a_bad_low_disk_space_is_refused_before_zenoh(tmp_path: Path, value: object) -> None:
    assert_refused_before_zenoh(tmp_path, "low_disk_space", low_disk_space=value)


def test_events_must_be_true_or_false(tmp_path: Path) -> None:
    assert_refused_before_zenoh(tmp_path, "events: expected true or false", events="yes")


# ------------------------------------------------------------------------------------------------ payloads
def _archived(sequence: int, *locations: Location, source: str = "cam", received: float = 1.0) -> Archived:
    return Archived(source, "acquisition_data", sequence, {}, received, 100, tuple(locations), committed=2.0)


def test_consecutive_indices_of_one_member_become_one_range_and_anything_else_starts_another() -> None:
    root = "/data/run"
    outcomes = [
        _archived(0, Location("/data/run/a.h5", 10, "c0", "cam/data", 0), received=1.0),
        _archived(1, Location("/data/run/a.h5", 10, "c1", "cam/data", 1), received=1.5),
        _archived(2, Location("/data/run/a.h5", 20, "c2", "cam/data", 2, count=2)),
        _archived(3, Location("/data/run/a.h5", 10, "c3", "cam/data", 5)),  # a gap: 4 is not there
        _archived(4, Location("/data/run/a.h5", 10, "c4", "cam2/data", 6)),  # another member
        _archived(5, Location("/data/run/a.h5", 10, "c5", "cam2/data", 7), source="cam2"),  # another source
        _archived(6, Location("/elsewhere/b.npy", 7, "c6")),  # a file, outside the root
        _archived(7),  # no location (an acquisition marker)
    ]
    (payload,) = archived_payloads(outcomes, "arch", "acquisition_data", root)
    assert payload["count"] == 8 and payload["root"] == "/data/run" and payload["archiver"] == "arch"
    first, *others = payload["ranges"]
    assert first == {
        "source": "cam", "event": "acquisition_data", "path": "a.h5", "member": "cam/data", "first": 0, "count": 4,
        "sequences": [0, 1, 2], "checksums": ["c0", "c1", "c2"], "nbytes": 40, "received": [1.0, 1.0],
        "committed": 2.0,
    }  # fmt: skip
    assert [(r["first"], r["count"], r["member"], r["source"]) for r in others] == [
        (5, 1, "cam/data", "cam"),
        (6, 1, "cam2/data", "cam"),
        (7, 1, "cam2/data", "cam2"),
    ]
    file, marker = payload["items"]
    assert file["path"] == "/elsewhere/b.npy" and file["checksum"] == "c6" and file["nbytes"] == 7
    assert marker["path"] is None and marker["sequence"] == 7 and marker["nbytes"] == 100


def test_a_long_commit_is_told_in_events_of_at_most_max_event_items() -> None:
    outcomes = [_archived(i, Location(f"/r/{i}.npy", 1, "c")) for i in range(2 * MAX_EVENT_ITEMS + 1)]
    payloads = list(archived_payloads(outcomes, "arch", "e", "/r"))
    assert [p["count"] for p in payloads] == [MAX_EVENT_ITEMS, MAX_EVENT_ITEMS, 1]
    assert [item["sequence"] for p in payloads for item in p["items"]] == list(range(2 * MAX_EVENT_ITEMS + 1))


def test_failed_payloads_name_the_entry_or_why() -> None:
    dead = DeadLettered("cam", "e", 3, {}, 1.0, 10, "/r/.heros-archiver/dead-letter/x", "PayloadError: bad", 2.0)
    dropped = Dropped("cam", "e", None, {}, 1.0, 10, "queue full, overflow='drop'", 2.0)
    assert failed_payload(dead, "arch", "e", None) | {"time": 0} == {
        "archiver": "arch", "event": "e", "root": None, "source": "cam", "item_event": "e", "sequence": 3,
        "kind": "dead_lettered", "error": "PayloadError: bad", "entry": "/r/.heros-archiver/dead-letter/x",
        "nbytes": 10, "received": 1.0, "time": 0,
    }  # fmt: skip
    assert failed_payload(dropped, "arch", "e", None)["error"] == "queue full, overflow='drop'"
    assert failed_payload(dropped, "arch", "e", None)["kind"] == "dropped"


class _Gated(Listener):
    """A queued listener held at its first batch until ``gate`` is set; keeps what it was handed, call by call."""

    coalesce = True

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[Outcome]] = []

    def handle(self, outcomes: Sequence[Outcome]) -> None:
        self.gate.wait(30)
        self.calls.append(list(outcomes))


def test_a_coalescing_listener_that_is_behind_gets_the_waiting_batches_as_one() -> None:
    """The events listener under load sends one message for many commits, not one each (Listener.coalesce)."""
    hub = ListenerHub("e")
    listener = _Gated()
    hub.add(listener)
    outcomes = [_archived(i, Location(f"/r/{i}.npy", 1, "c")) for i in range(4)]
    for outcome in outcomes:
        hub.publish([outcome])
    listener.gate.set()
    hub.close()
    assert [len(call) for call in listener.calls] in ([1, 3], [4]), listener.calls  # the first may be taken alone
    assert [o for call in listener.calls for o in call] == outcomes
