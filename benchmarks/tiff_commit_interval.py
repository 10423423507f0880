"""How often to commit: frames/s of the TIFF stack container committing every N frames, small and big frames.

    PYTHONPATH=src python benchmarks/tiff_commit_interval.py [--dir DIR] [--repeats 3]

Prints a markdown table: frame size, frames per commit, median frames/s and MiB/s over the repeats, and
the ratio to committing only once at the end (the container's best case). Used to choose the defaults of
``TiffArchiver(stack=True, flush_frames=..., flush_seconds=...)`` (docs/decisions/0024-tiff-stack.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.tiff import TiffStackContainer

CASES = {"64x64": ((64, 64), 20_000), "1024x1024": ((1024, 1024), 300)}
INTERVALS = (1, 10, 100, 1000, 0)  # 0: one commit at the end


def run(directory: Path, shape: tuple[int, int], count: int, every: int, repeat: int) -> float:
    """Seconds to append and commit ``count`` frames committing every ``every`` (keys computed beforehand)."""
    rng = np.random.default_rng(repeat)
    frames = [rng.integers(0, 4096, size=shape, dtype=np.uint16) for _ in range(min(count, 64))]
    keys = [ItemKey("cam", i, f"{i:032x}") for i in range(count)]
    path = directory / f"c-{shape[0]}-{every}-{repeat}.tif"
    start = time.perf_counter()
    with TiffStackContainer(path) as container:
        for i in range(count):
            container.append(keys[i], frames[i % len(frames)], {"frame": i, "exposure": 0.01})
            if every and (i + 1) % every == 0:
                container.commit()
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print("| frames | frames per commit | frames/s (median) | MiB/s | vs one commit |")
        print("| --- | --- | --- | --- | --- |")
        for name, (shape, count) in CASES.items():
            rates = {}
            for every in INTERVALS:
                times = [run(Path(tmp), shape, count, every, r) for r in range(args.repeats)]
                rates[every] = count / statistics.median(times)
            for every in INTERVALS:
                mib = rates[every] * shape[0] * shape[1] * 2 / 2**20
                label = every or "end"
                print(f"| {name} | {label} | {rates[every]:,.0f} | {mib:,.0f} | {rates[every] / rates[0]:.2f} |")


if __name__ == "__main__":
    main()
