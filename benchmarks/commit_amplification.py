#!/usr/bin/env python3
"""What a commit every N frames costs the HDF5 and Zarr-append containers, without Zenoh: ms per frame and bytes
written per byte of frames (``wchar`` of ``/proc/self/io``).

The Zarr container writes a shard whole at each commit (temporary + rename), so a shard that is not full is
written again at the next commit: committing every frame of a 16-frame shard writes each frame ~8.5 times.
The HDF5 container appends in place. Frames of 2 MiB (1024x1024 uint16, random pixels), a shard of 16 frames
(the Zarr default for that size), the containers round-robin:

    PYTHONPATH=src .venv/bin/python benchmarks/commit_amplification.py [--dir /dev/shm] [--n 320]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.hdf5 import Hdf5Container
from heros_archiver.sinks.containers.zarr_append import ZarrAppendContainer


def written_bytes() -> int:
    """Bytes this process passed to write calls so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def run(kind: str, frames: list[np.ndarray], n: int, every: int, scratch: Path) -> tuple[float, float]:
    """ms per frame and write amplification of appending ``n`` frames, committing every ``every``."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        if kind == "hdf5":
            container: Hdf5Container | ZarrAppendContainer = Hdf5Container(folder / "run.h5", "cam1/data")
        else:
            container = ZarrAppendContainer(folder / "run.zarr", "cam1/data", root=folder)
        before, t0 = written_bytes(), time.perf_counter()
        for i in range(n):
            container.append(ItemKey("cam1", i, f"{i:032x}"), frames[i % len(frames)], {"frame": i}, received=1.0)
            if (i + 1) % every == 0:
                container.commit()
        container.close()
        seconds = time.perf_counter() - t0
        return seconds / n * 1e3, (written_bytes() - before) / (n * frames[0].nbytes)
    finally:
        shutil.rmtree(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="scratch folder (default: the system's temporary folder)")
    ap.add_argument("--n", type=int, default=320, help="frames per run")
    ap.add_argument("--every", default="16,4,1", help="commit intervals, in frames")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 4000, (1024, 1024), dtype=np.uint16) for _ in range(32)]
    scratch = Path(args.dir or tempfile.gettempdir())
    print("container  commit every  ms/frame  bytes written / frame bytes")
    for every in (int(text) for text in args.every.split(",")):
        for kind in ("hdf5", "zarr"):
            ms, amplification = run(kind, frames, args.n, every, scratch)
            print(f"{kind:9}  {every:12}  {ms:8.2f}  {amplification:6.2f}")


if __name__ == "__main__":
    main()
