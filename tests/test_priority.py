"""writer_nice: the writer threads can be made nicer than the threads that receive."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import archived_files, assert_refused_before_zenoh, wait_for_items

pytestmark = pytest.mark.timeout(60)


def _thread_nice(thread: threading.Thread) -> int:
    """Niceness of one thread, from the kernel's view (/proc/self/task/TID/stat, field 19)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("heros-archiver-writer-")]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is read from Linux /proc")
@pytest.mark.parametrize("nice", [0, 7])
def test_writer_threads_get_writer_nice(make_rig: RigFactory, nice: int) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    rig = make_rig("{{ file_path }}/f-{{ frame }}.npy", writers=2, writer_nice=nice)
    for i in range(3):
        rig.camera.acquisition_data(np.full(4, i), {"frame": i})
    wait_for_items(rig.archiver, 3)
    writers = _writers()
    assert len(writers) == 2
    assert [_thread_nice(t) for t in writers] == [min(19, base + nice)] * 2
    assert _thread_nice(threading.current_thread()) == base  # only the writers, not the process
    assert archived_files(rig.root) == ["f-0.npy", "f-1.npy", "f-2.npy"]


@pytest.mark.parametrize("bad", [-1, 20, 1.5, True])
def test_writer_nice_is_checked(tmp_path: Path, bad: object) -> None:
    assert_refused_before_zenoh(tmp_path, "writer_nice: expected an integer from 0 to 19", writer_nice=bad)
