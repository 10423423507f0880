"""The demo: a simulated camera and an ArrayArchiver on loopback Zenoh, end to end, with a check of every file."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..archivers.files import ArrayArchiver
from ..testing import (
    FRAME_EVENT,
    ReliableSimulatedCamera,
    frame_index,
    free_port,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)

DEMO_TEMPLATE = "{{ file_path }}/{{ source_name }}/frame-{{ '%06d' % frame }}.npy"


@dataclass
class DemoResult:
    """What the demo sent, what the archiver reports, and what was found on disk."""

    sent: int
    stats: dict[str, Any]
    verified: int
    bad_files: list[str]
    seconds: float
    folder: Path
    frame_bytes: int
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every sent frame archived and verified, nothing else on disk."""
        return self.verified == self.sent and not self.bad_files and not self.errors

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) rows for the summary table."""
        total = self.stats["total"]
        mib_s = self.verified * self.frame_bytes / 2**20 / self.seconds if self.seconds > 0 else 0.0
        rows = [
            ("sent", str(self.sent)),
            ("archived", f"{total['archived']} of {self.sent}"),
            ("failed (dead-lettered / dropped)", f"{total['dead_lettered']} / {total['dropped']}"),
            ("retried", str(total["retried"])),
            ("verified on disk (np.load, content)", f"{self.verified} of {self.sent}"),
            ("time", f"{self.seconds:.2f} s"),
            ("throughput", f"{mib_s:.1f} MiB/s ({self.verified / self.seconds if self.seconds else 0:.0f} frames/s)"),
            ("files", str(self.folder / "demo-camera")),
        ]
        if self.bad_files:
            rows.append(("bad files", ", ".join(self.bad_files[:5])))
        rows += [("error", e) for e in self.errors]
        return rows


def run_demo(
    frames: int,
    shape: tuple[int, int],
    dtype: str,
    folder: Path,
    rate: float | None,
    timeout: float,
    progress: Callable[[int, Callable[[], tuple[int, bool]]], None],
) -> DemoResult:
    """Send ``frames`` frames from a camera HERO to an ArrayArchiver in a fresh realm and check the files."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    realm, port = unique_realm("demo"), free_port()
    camera = ReliableSimulatedCamera("demo-camera", realm=realm, session_manager=session_manager(listen_port=port))
    archiver = None
    errors: list[str] = []
    try:
        archiver = ArrayArchiver(
            DEMO_TEMPLATE,
            object_selector="demo-camera",
            event_name=FRAME_EVENT,
            default_metadata={"file_path": str(folder)},
            sequence_key="frame",
            realm=realm,
            session_manager=session_manager(connect_port=port),
        )
        wait_for_subscriber(camera)
        t0 = time.monotonic()
        sender = threading.Thread(target=camera.acquire, args=(frames, shape, dtype, rate), daemon=True)
        sender.start()
        last_change = [time.monotonic(), -1]

        def status() -> tuple[int, bool]:
            """(frames archived so far, whether waiting is over)."""
            total = archiver.stats()["total"]
            done = total["archived"] + total["dead_lettered"] + total["dropped"]
            if done != last_change[1]:
                last_change[:] = [time.monotonic(), done]
            if done >= frames and not sender.is_alive():
                return int(total["archived"]), True
            if time.monotonic() - last_change[0] > timeout:
                errors.append(f"nothing new for {timeout:.0f} s; stopped waiting")
                return int(total["archived"]), True
            return int(total["archived"]), False

        progress(frames, status)
        seconds = time.monotonic() - t0
        archiver._teardown()
        stats = archiver.stats()
    finally:
        if archiver is not None:
            archiver._destroy_hero()
        camera._destroy_hero()
    verified, bad = _verify(folder / "demo-camera", frames, shape, dtype)
    return DemoResult(
        frames, stats, verified, bad, seconds, folder, int(np.prod(shape)) * np.dtype(dtype).itemsize, errors
    )


def _verify(directory: Path, frames: int, shape: tuple[int, int], dtype: str) -> tuple[int, list[str]]:
    """Load every file; count those holding the frame their name says, with the right shape and dtype."""
    verified, bad = 0, []
    names = sorted(os.listdir(directory)) if directory.is_dir() else []
    for name in names:
        try:
            array = np.load(directory / name)
            expected = int(name.removeprefix("frame-").removesuffix(".npy"))
            ok = (
                array.shape == shape
                and array.dtype == np.dtype(dtype)
                and frame_index(array) == expected % (1 << 8 * array.dtype.itemsize)
            )
        except (OSError, ValueError):
            ok = False
        if ok:
            verified += 1
        else:
            bad.append(name)
    return verified, bad
