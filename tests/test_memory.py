"""Bounded memory: a fast reliable camera, slow storage, 4 MiB frames; the archiver's private memory stays bounded.

The archiver runs as ``heros-archiver run`` in a child process; a thread samples its RssAnon every ~20 ms (the
design notes: judge memory by sampling RssAnon during the run, not by VmHWM or RSS afterwards).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from heros_archiver import Hdf5Archiver
from heros_archiver.testing import free_port, unique_realm
from heros_archiver.transport.intake import WAITING_BYTES
from procs import (
    SLOW_ARCHIVER,
    camera,
    camera_archiver_arguments,
    check_frame_file,
    frame,
    npy_files,
    parse_stats_table,
    rss_anon_kib,
    run_archiver,
    send_frames,
    wait_for_archiver,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

SHAPE = (1024, 2048)  # 4 MiB of uint16
FRAMES = 70
MAX_QUEUE_BYTES = 64 * 2**20
SLACK = 200 * 2**20
#: 600 MiB sent: more than the bound, were every frame let wait
STACK_FRAMES = 150


class RssSampler(threading.Thread):
    """Samples RssAnon of ``pid`` every ``interval`` seconds until stopped or the process is gone."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            value = rss_anon_kib(self.pid)
            if value is None:
                return
            self.peak_kib = max(self.peak_kib, value)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _stable_file_count(directory: Path, quiet: float = 1.5) -> int:
    """Wait until no new file appeared for ``quiet`` seconds (the queue is empty); return the count."""
    last, since = -1, time.monotonic()
    while True:
        count = len(npy_files(directory))
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return count
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("overflow", "intake_buffer"), [("block", 0), ("spill", 0), ("drop", 0), ("block", 8)], ids=lambda v: str(v)
)
def test_memory_stays_bounded_under_a_fast_sender(tmp_path: Path, overflow: str, intake_buffer: int) -> None:
    """The bound is the queue's bytes plus, with a buffered intake, that many frames waiting in Zenoh."""
    archive = tmp_path / "archive"
    port, realm = free_port(), unique_realm()
    arguments = camera_archiver_arguments(
        archive, overflow=overflow, max_queue_bytes=MAX_QUEUE_BYTES, store_delay=0.05, intake_buffer=intake_buffer
    )
    config = write_config(tmp_path / "config.json", arguments, classname=SLOW_ARCHIVER)
    sent = list(range(FRAMES))

    def written() -> None:
        if overflow == "drop":
            _stable_file_count(archive)
        else:
            wait_until(lambda: len(npy_files(archive)) >= FRAMES, what="every frame written")

    output, growth, sampler = _send_while_sampling(config, realm, port, tmp_path, sent, written)
    print(
        f"\noverflow={overflow} intake_buffer={intake_buffer}: RssAnon peak {sampler.peak_kib / 1024:.0f} MiB, "
        f"growth {growth / 2**20:.0f} MiB ({sampler.samples} samples)"
    )
    assert sampler.samples > 10
    frame_bytes = SHAPE[0] * SHAPE[1] * 2
    assert growth <= MAX_QUEUE_BYTES + intake_buffer * frame_bytes + SLACK, f"RssAnon grew by {growth / 2**20:.0f} MiB"

    total = parse_stats_table(output)
    files = npy_files(archive)
    indices = [check_frame_file(p, SHAPE) for p in files]
    assert all(int(p.stem) == i for p, i in zip(files, indices, strict=True))
    assert total["received"] == FRAMES, output  # reliable events: nothing lost on the way
    assert total["dead_lettered"] == 0, output
    if overflow == "drop":
        assert total["received"] == total["archived"] + total["dropped"], output
        assert total["archived"] == len(files) and total["dropped"] > 0, output
    else:
        assert total["archived"] == FRAMES and total["dropped"] == 0, output
        assert indices == sent


def test_memory_of_a_stack_stays_bounded_with_its_buffered_intake(tmp_path: Path) -> None:
    """The HDF5 archiver's default intake (decision 0044): besides the queue's bytes, at most ``WAITING_BYTES``
    and one frame wait in the intake and ``INTAKE_FIFO_SAMPLES`` frames in Zenoh, however many samples
    ``intake_buffer`` allows; every frame of a reliable camera reaches the file, in order."""
    archive = tmp_path / "archive"
    port, realm = free_port(), unique_realm()
    arguments = camera_archiver_arguments(archive, max_queue_bytes=MAX_QUEUE_BYTES, store_delay=0.05)
    del arguments["save_template"]
    arguments["file_template"] = "{{ file_path }}/run.h5"
    config = write_config(tmp_path / "config.json", arguments, classname="fixtures_pkg.slow.SlowHdf5Archiver")
    sent = list(range(STACK_FRAMES))

    def committed() -> None:
        wait_until(lambda: _committed_frames(archive / "run.h5") >= STACK_FRAMES, what="every frame committed")

    output, growth, sampler = _send_while_sampling(config, realm, port, tmp_path, sent, committed)
    frame_bytes = SHAPE[0] * SHAPE[1] * 2
    print(f"\nhdf5, buffered intake: RssAnon growth {growth / 2**20:.0f} MiB ({sampler.samples} samples)")
    assert sampler.samples > 10
    bound = MAX_QUEUE_BYTES + WAITING_BYTES + (Hdf5Archiver.INTAKE_FIFO_SAMPLES + 1) * frame_bytes + SLACK
    assert growth <= bound, f"RssAnon grew by {growth / 2**20:.0f} MiB"
    assert Hdf5Archiver.DEFAULT_INTAKE_BUFFER * frame_bytes > 4 * bound  # the byte bound is what held

    total = parse_stats_table(output)
    assert total["received"] == total["archived"] == STACK_FRAMES and total["dead_lettered"] == 0, output
    with h5py.File(archive / "run.h5", "r") as handle:
        frames = handle["cam/data"]
        assert frames.shape == (STACK_FRAMES, *SHAPE)
        for index in (0, STACK_FRAMES // 2, STACK_FRAMES - 1):
            np.testing.assert_array_equal(frames[index], frame(index, SHAPE, "uint16"))
        assert list(handle["cam/metadata/frame"][()]) == sent


def _send_while_sampling(
    config: Path, realm: str, port: int, tmp_path: Path, sent: list[int], done: Callable[[], None]
) -> tuple[str, int, RssSampler]:
    """Run the archiver of ``config``, send the frames ``sent`` while its RssAnon is sampled, wait for
    ``done``, stop it; returns its output, the growth of RssAnon over the baseline (bytes) and the sampler."""
    with camera(port, realm) as cam, run_archiver(config, realm, port, tmp_path / "run.log") as proc:
        wait_for_archiver(cam, proc)
        baseline = rss_anon_kib(proc.pid)
        assert baseline is not None
        sampler = RssSampler(proc.pid)
        sampler.start()
        try:
            send_frames(cam, sent, SHAPE)
            done()
            code, output = proc.terminate()
        finally:
            sampler.stop()
    assert code == 0, output
    return output, (sampler.peak_kib - baseline) * 1024, sampler


def _committed_frames(path: Path) -> int:
    """Frames a SWMR reader sees in the stack of ``cam`` (0 before the file and the stack exist)."""
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as handle:
            return int(handle["cam/data"].shape[0])
    except (OSError, KeyError):
        return 0
