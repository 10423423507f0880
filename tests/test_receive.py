"""The receive path: raw samples go through the inbox to a decoder thread; writers run at lower priority."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import archived_files, wait_for_items
from heros_archiver import ArrayArchiver, ConfigurationError
from heros_archiver.inbox import Inbox

pytestmark = pytest.mark.timeout(60)


def _thread_nice(thread: threading.Thread) -> int:
    """Niceness of one thread, from the kernel's view (/proc/self/task/TID/stat, field 19)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is read from Linux /proc")
def test_writers_run_nicer_than_receiving(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/f-{{ frame }}.npy", writers=2, writer_nice=7)
    rig.camera.acquisition_data(np.arange(4), {"frame": 0})
    wait_for_items(rig.archiver, 1)
    writers = [t for t in threading.enumerate() if t.name.startswith("heros-archiver-writer-")]
    decoder = next(t for t in threading.enumerate() if t.name == "heros-archiver-decoder")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert len(writers) >= 2
    assert all(_thread_nice(t) == min(19, base + 7) for t in writers)
    assert _thread_nice(decoder) == base  # decoding (and Zenoh's receive thread) keep the process's priority


@pytest.mark.parametrize("bad", [-1, 20, 1.5, True])
def test_writer_nice_is_checked(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="writer_nice: expected an integer from 0 to 19"):
        ArrayArchiver(
            "{{ file_path }}/x.npy",
            object_selector="cam",
            event_name="acquisition_data",
            default_metadata={"file_path": str(tmp_path)},
            writer_nice=bad,
        )


def test_inbox_hands_over_in_order_and_after_close() -> None:
    handled: list[tuple[str, bytes]] = []
    gate = threading.Event()

    def handle(key: str, raw: bytes) -> None:
        gate.wait(10)
        handled.append((key, raw))

    inbox = Inbox(handle, max_items=100, max_bytes=1 << 20, name="test-decoder")
    for i in range(20):
        inbox.put(f"src/{i % 3}", bytes([i]))
    assert inbox.depth()[0] >= 19  # the decoder holds at most one while the gate is shut
    gate.set()
    assert inbox.close(timeout=10)
    inbox.put("late", b"x")  # a callback still running after close: handled on the caller's thread
    assert handled == [(f"src/{i % 3}", bytes([i])) for i in range(20)] + [("late", b"x")]
    assert inbox.depth() == (0, 0)


def test_inbox_bounds_bytes_and_blocks_the_receiver() -> None:
    release = threading.Event()
    handled: list[bytes] = []
    inbox = Inbox(lambda _k, raw: (release.wait(10), handled.append(raw)), max_items=100, max_bytes=1000, name="t")
    inbox.put("k", b"a" * 10)  # taken by the decoder, which then waits
    inbox.put("k", b"b" * 500)  # queued: 500 + overhead bytes
    blocked = threading.Thread(target=inbox.put, args=("k", b"c" * 500))
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive()  # would exceed max_bytes: the receiving thread waits (back-pressure)
    release.set()
    blocked.join(10)
    assert not blocked.is_alive()
    assert inbox.close(timeout=10)
    assert [len(raw) for raw in handled] == [10, 500, 500]


def test_stats_report_the_inbox(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/f-{{ frame }}.npy")
    for i in range(5):
        rig.camera.acquisition_data(np.full(3, i), {"frame": i})
    wait_for_items(rig.archiver, 5)
    queue = rig.archiver.stats()["queue"]
    assert queue["inbox_items"] == 0 and queue["inbox_bytes"] == 0
    assert rig.archiver.is_queue_drained()
    assert archived_files(rig.root) == [f"f-{i}.npy" for i in range(5)]
