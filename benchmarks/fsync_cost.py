#!/usr/bin/env python3
"""What durability costs: the archiver's own writer with fsync none / file / file+directory.

Writes the same N items with each policy into a scratch folder on the file system under test,
round-robin over repeats, and prints items/s and MiB/s with the ratio to ``none``:

    python benchmarks/fsync_cost.py [--dir /data/scratch] [--n 200] [--shape 1024x1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from heros_archiver.sinks.writer import FileWriter, WriterSettings

POLICIES = ("none", "file", "file+directory")


def one_run(folder: Path, fsync: str, frames: list[np.ndarray]) -> float:
    """Seconds to write every frame with policy ``fsync`` into a fresh subfolder of ``folder``."""
    root = Path(tempfile.mkdtemp(dir=folder))
    writer = FileWriter(WriterSettings("npy", "{{ '%06d' % frame }}.npy", str(root), fsync=fsync))  # type: ignore[arg-type]
    try:
        start = time.perf_counter()
        for index, frame in enumerate(frames):
            writer.write("bench", frame, {"frame": index})
        return time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="file system under test")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--shape", default="1024x1024", help="uint16 frame HxW")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.shape.lower().split("x"))
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 1 << 16, size=shape, dtype=np.uint16) for _ in range(min(args.n, 16))]
    frames = [frames[i % len(frames)] for i in range(args.n)]
    mib = frames[0].nbytes / 2**20
    seconds: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    for _ in range(args.repeats):
        for policy in POLICIES:
            seconds[policy].append(one_run(args.dir, policy, frames))
    base = statistics.median(seconds["none"])
    print(f"{args.n} frames of {args.shape} uint16 ({mib:.1f} MiB) in {args.dir}, median of {args.repeats}")
    print(f"{'fsync':<16}{'items/s':>10}{'MiB/s':>10}{'time vs none':>14}")
    for policy in POLICIES:
        median = statistics.median(seconds[policy])
        print(f"{policy:<16}{args.n / median:>10.0f}{args.n * mib / median:>10.0f}{median / base:>13.2f}x")


if __name__ == "__main__":
    main()
