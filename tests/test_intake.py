"""The two intakes: samples handed over on Zenoh's receive thread, or through a bounded Zenoh FIFO."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zenoh

from conftest import RigFactory
from helpers import RawCamera, assert_refused_before_zenoh, wait_for_items, wait_until
from heros_archiver import ArrayArchiver, Hdf5Archiver, JsonArchiver, TiffArchiver, ZarrAppendArchiver
from heros_archiver.pipeline.queueing import Item
from heros_archiver.state.deadletter import DeadLetterStore
from heros_archiver.testing import free_port, loopback_config_json
from heros_archiver.transport import heros_compat
from heros_archiver.transport.intake import BufferedIntake

pytestmark = pytest.mark.timeout(60)

TEMPLATE = "{{ file_path }}/{{ '%04d' % i }}.json"


@pytest.mark.parametrize("bad", [-1, True, 2.5, "64"])
def test_intake_buffer_must_be_a_count(tmp_path: Path, bad: Any) -> None:
    assert_refused_before_zenoh(tmp_path, "intake_buffer: expected a number of samples >= 0", intake_buffer=bad)


def test_defaults_per_class_and_override(make_rig: RigFactory) -> None:
    """Files of frames are handed over directly (tight memory bound); small JSON events get a burst buffer,
    and so do the frames of an HDF5 stack, behind a Zenoh FIFO of a few samples (decision 0044)."""
    frames = make_rig()
    events = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera)
    direct_events = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera, intake_buffer=0)
    stack = make_rig(None, archiver_cls=Hdf5Archiver, file_template="{{ file_path }}/run.h5")
    zarr_stack = make_rig(None, archiver_cls=ZarrAppendArchiver, store_template="{{ file_path }}/run.zarr")
    tiff_stack = make_rig("{{ file_path }}/run.tif", archiver_cls=TiffArchiver, stack=True)
    tiff_files = make_rig("{{ file_path }}/{{ frame }}.tif", archiver_cls=TiffArchiver)
    assert isinstance(frames.archiver, ArrayArchiver)
    assert frames.archiver.stats()["intake_buffer"] == 0
    assert events.archiver.stats()["intake_buffer"] == 1024
    assert direct_events.archiver.stats()["intake_buffer"] == 0
    assert stack.archiver.stats()["intake_buffer"] == 1024
    assert zarr_stack.archiver.stats()["intake_buffer"] == tiff_stack.archiver.stats()["intake_buffer"] == 1024
    assert tiff_files.archiver.stats()["intake_buffer"] == 0
    assert [intake.subscriber.handler for intake in stack.archiver._buffered_intakes]
    assert Hdf5Archiver.INTAKE_FIFO_SAMPLES == 4 < JsonArchiver.INTAKE_FIFO_SAMPLES


@pytest.mark.parametrize("intake_buffer", [0, 16])
def test_a_burst_of_events_is_archived_whole(make_rig: RigFactory, tmp_path: Path, intake_buffer: int) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera, intake_buffer=intake_buffer)
    count = 300
    for i in range(count):
        rig.camera.acquisition_data({"i": i, "value": i * 0.5})

    total = wait_for_items(rig.archiver, count)

    assert total["archived"] == count and total["dead_lettered"] == 0, total
    files = sorted(tmp_path.glob("*.json"))
    assert [json.loads(p.read_text()) for p in files] == [{"i": i, "value": i * 0.5} for i in range(count)]


class SlowJsonArchiver(JsonArchiver):
    """Takes 50 ms per item, so that a small queue fills and samples wait in the intake's FIFO."""

    def _store_item(self, item: Item) -> None:
        time.sleep(0.05)
        super()._store_item(item)


def test_samples_still_buffered_at_stop_are_archived(make_rig: RigFactory, tmp_path: Path) -> None:
    """Stopping undeclares the subscription first and lets the FIFO empty into the queue, which still takes
    items; only then the queue closes and drains. Nothing that reached the archiver is dead-lettered."""
    rig = make_rig(TEMPLATE, archiver_cls=SlowJsonArchiver, camera_cls=RawCamera, intake_buffer=64, max_queue_items=2)
    count = 30
    for i in range(count):
        rig.camera.acquisition_data({"i": i})
    wait_until(lambda: rig.archiver.stats()["total"]["received"] >= 3, what="the queue to fill")
    time.sleep(0.3)  # the remaining events reach the FIFO meanwhile (reliable, one loopback hop)
    stats = rig.archiver.stats()
    queued_before_stop = stats["total"]["received"]
    assert stats["queue"]["intake_waiting"] >= count - queued_before_stop > 0, stats["queue"]
    assert stats["queue"]["intake_waiting_bytes"] >= stats["queue"]["intake_waiting"]  # a CBOR map each
    # per source, the same samples (one camera here); its items received and not yet written are in flight
    (name,) = stats["sources"]
    source = stats["queue"]["intake_by_source"][name]
    assert source == {"samples": stats["queue"]["intake_waiting"], "bytes": stats["queue"]["intake_waiting_bytes"]}
    cam = stats["sources"][name]
    assert cam["in_flight"] == cam["received"] - cam["archived"] > 0, cam
    status = rig.archiver.status()["sources"][name]
    assert status["intake_waiting"] > 0 and status["intake_waiting_bytes"] >= status["intake_waiting"], status
    assert status["in_flight"] > 0, status

    rig.archiver._stop()

    stats = rig.archiver.stats()
    total = stats["total"]
    assert stats["queue"]["intake_waiting"] == stats["queue"]["intake_waiting_bytes"] == 0
    assert stats["queue"]["intake_by_source"] == {} and stats["sources"][name]["in_flight"] == 0
    assert total["received"] == count and total["archived"] == count, total
    assert total["dead_lettered"] == 0 and total["dropped"] == 0, total
    assert len(list(tmp_path.glob("*.json"))) == count


def test_an_exception_from_the_handler_does_not_end_the_intake(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    session = zenoh.open(zenoh.Config.from_json5(loopback_config_json(listen_port=port)))
    seen: list[bytes] = []
    done = threading.Event()

    def on_raw(key_expr: Any, payload: bytes) -> None:
        if payload == b"bad":
            raise RuntimeError("a registered callback failed")
        seen.append(payload)
        if len(seen) == 2:
            done.set()

    intake = BufferedIntake(session, "test/intake", 8, on_raw, "test-intake")
    try:
        with caplog.at_level(logging.ERROR, logger="heros_archiver"):
            for payload in (b"first", b"bad", b"second"):
                session.put("test/intake", payload)
            assert done.wait(10), seen
        assert seen == [b"first", b"second"]
        assert "event callback failed" in caplog.text and "test/intake" in caplog.text
    finally:
        assert intake.close(time.monotonic() + 10)
        session.close()


@pytest.mark.parametrize("intake_buffer", [0, 16])
def test_bad_bytes_on_the_wire_are_dead_lettered_and_the_next_event_is_archived(
    make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, intake_buffer: int
) -> None:
    """A foreign or corrupt publisher on the event's key expression: bytes that are no CBOR are counted and
    kept as they arrived (base64 in the dead-letter store), the key expression in the error; bytes that
    decode to something other than a payload are dead-lettered as decoded. Both intakes do the same."""
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera, intake_buffer=intake_buffer)
    key = heros_compat.event_key(rig.realm, "cam", "acquisition_data")
    not_cbor = b"\x1c reserved CBOR head"  # no CBOR item starts with 0x1c
    with caplog.at_level(logging.ERROR, logger="heros_archiver"):
        heros_compat.session(rig.camera).put(key, not_cbor)
        heros_compat.session(rig.camera).put(key, b"\xff")  # CBOR's "break" marker: decodes, but is no (data, metadata)
        rig.camera.acquisition_data({"i": 1})
        total = wait_for_items(rig.archiver, 3)

    assert total["received"] == 3 and total["archived"] == 1 and total["dead_lettered"] == 2, total
    assert json.loads((tmp_path / "0001.json").read_text()) == {"i": 1}
    assert "payload could not be decoded" in caplog.text and key in caplog.text
    assert "PayloadError: expected a payload (data, metadata dict)" in caplog.text
    store = DeadLetterStore(rig.archiver.stats()["dead_letter_dir"])
    undecodable = [
        store.load(entry)
        for entry in store.entries()
        if "could not be decoded" in json.loads((entry / "entry.json").read_text())["error"]
    ]
    assert [letter.payload for letter in undecodable] == [not_cbor]  # the faithful copy: the bytes themselves
    readable = json.loads((undecodable[0].path / "payload.json").read_text())
    assert readable == {"base64": base64.b64encode(not_cbor).decode()}
    assert undecodable[0].source == "cam" and key in undecodable[0].error


def test_samples_wait_as_bytes_in_order_and_within_the_capacity() -> None:
    """A handler slower than the publisher: every sample is handed on once, in order, and at most ``capacity``
    of them wait in the intake (Zenoh's FIFO in front of it is what holds the rest, then its sender)."""
    port = free_port()
    session = zenoh.open(zenoh.Config.from_json5(loopback_config_json(listen_port=port)))
    seen: list[bytes] = []
    most_waiting = 0
    count, capacity = 600, 16
    done = threading.Event()
    intake: BufferedIntake | None = None

    def on_raw(key_expr: Any, payload: bytes) -> None:
        nonlocal most_waiting
        assert intake is not None and str(key_expr) == "test/intake/order"
        most_waiting = max(most_waiting, intake.waiting)
        seen.append(payload)
        if len(seen) % 50 == 0:
            time.sleep(0.02)  # now and then slow, as a writer holding the GIL makes it
        if len(seen) == count:
            done.set()

    intake = BufferedIntake(session, "test/intake/**", capacity, on_raw, "test-intake-order")
    try:
        publisher = _reliable_publisher(session, "test/intake/order")
        for i in range(count):
            publisher.put(i.to_bytes(4, "big"))
        assert done.wait(30), len(seen)
        assert [int.from_bytes(p, "big") for p in seen] == list(range(count))
        assert 0 < most_waiting <= capacity
    finally:
        assert intake.close(time.monotonic() + 10)
        session.close()
    assert not intake.alive


def test_what_waits_stays_within_the_byte_bound_whatever_the_sample_count() -> None:
    """Large samples: the bytes waiting stay within ``max_bytes`` and one sample more, although the sample
    capacity would let many more wait, and a FIFO of ``fifo_samples`` holds the rest back in Zenoh."""
    port = free_port()
    session = zenoh.open(zenoh.Config.from_json5(loopback_config_json(listen_port=port)))
    size, max_bytes, count = 64 << 10, 256 << 10, 60
    seen: list[int] = []
    most_bytes = 0
    done = threading.Event()
    intake: BufferedIntake | None = None

    def on_raw(key_expr: Any, payload: bytes) -> None:
        nonlocal most_bytes
        assert intake is not None and len(payload) == size
        most_bytes = max(most_bytes, intake.waiting_bytes)
        seen.append(int.from_bytes(payload[:4], "big"))
        time.sleep(0.005)  # slower than the publisher: the intake fills up
        if len(seen) == count:
            done.set()

    intake = BufferedIntake(
        session, "test/intake/**", 1000, on_raw, "test-intake-bytes", max_bytes=max_bytes, fifo_samples=2
    )
    try:
        publisher = _reliable_publisher(session, "test/intake/bytes")
        for i in range(count):
            publisher.put(i.to_bytes(4, "big") + bytes(size - 4))
        assert done.wait(30), len(seen)
        assert seen == list(range(count))
        assert max_bytes // 2 <= most_bytes <= max_bytes + size, most_bytes
    finally:
        assert intake.close(time.monotonic() + 10)
        session.close()
    assert intake.waiting == 0 and intake.waiting_bytes == 0


def _reliable_publisher(session: zenoh.Session, key: str) -> Any:
    """A publisher that waits for room instead of dropping (the intake's back-pressure reaches it)."""
    return session.declare_publisher(
        key, reliability=zenoh.Reliability.RELIABLE, congestion_control=zenoh.CongestionControl.BLOCK
    )
