#!/usr/bin/env python3
"""The HDF5 container's compressions and chunkings on camera-like frames, next to plain h5py.

Writes N frames of 1024x1024 uint16 (a beam spot on an offset, shot noise, ``make_frame``'s index in
the first pixel) into a fresh file on the file system under test, with each compression and
frames-per-chunk, round-robin over repeats (order rotated), committing every ``--commit-every`` frames, and prints
MiB/s (raw frame bytes over the time from construction to close), the compression ratio (raw bytes /
file size) and the ratio to ``disk:h5py``: the plain h5py append of the same frames (no SWMR, no
metadata, no item keys, one chunk per frame, resized and written frame by frame, closed at the end):

    python benchmarks/hdf5_compression.py [--dir /data/scratch] [--n 100] [--repeats 3] [--chunks 1,4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.hdf5 import COMPRESSIONS, Hdf5Container
from heros_archiver.testing import make_frame

DATASET = "entry/cam/data"


def camera_frames(n: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """``n`` frames of one beam spot with shot noise; up to 256 MiB of distinct ones, then they repeat.

    No chunk may hold two equal frames: a compressor would find the copy and report a ratio no camera gives.
    """
    distinct = min(n, max(8, (256 << 20) // (2 * shape[0] * shape[1])))
    rng = np.random.default_rng(5)
    y, x = np.indices(shape)
    spot = 3000.0 * np.exp(-(((y - shape[0] / 2) ** 2 + (x - shape[1] / 2) ** 2) / (2 * (shape[0] / 8) ** 2)))
    exposures = []
    for _ in range(distinct):
        counts = rng.poisson(spot + 100.0) + rng.normal(0, 3.0, shape)
        exposures.append(np.clip(counts, 0, 65535).astype(np.uint16))
    frames = []
    for i in range(n):
        frame = exposures[i % distinct].copy()
        frame.flat[0] = make_frame(i, (1, 1)).flat[0]
        frames.append(frame)
    return frames


def plain_h5py(path: Path, frames: list[np.ndarray]) -> None:
    """The baseline: what a driver's own h5py code does to append frames."""
    with h5py.File(path, "w") as handle:
        shape = frames[0].shape
        dataset = handle.create_dataset(
            "data", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape), dtype=frames[0].dtype
        )
        for i, frame in enumerate(frames):
            dataset.resize(i + 1, axis=0)
            dataset[i] = frame


def container(path: Path, frames: list[np.ndarray], keys: list[ItemKey], compression: str, per_chunk: int,
              commit_every: int) -> None:  # fmt: skip
    """The container with per-frame metadata and keys, SWMR on, committing every ``commit_every`` frames."""
    with Hdf5Container(path, DATASET, compression=compression, frames_per_chunk=per_chunk) as sink:  # type: ignore[arg-type]
        for i, (frame, key) in enumerate(zip(frames, keys, strict=True)):
            sink.append(key, frame, {"frame": i, "exposure_s": 0.01, "mode": "continuous"}, received=time.time())
            if (i + 1) % commit_every == 0:
                sink.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="file system under test")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--shape", default="1024x1024", help="uint16 frame HxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", default="1,4", help="frames per chunk to try, comma-separated")
    parser.add_argument("--commit-every", type=int, default=10)
    parser.add_argument("--compressions", default=",".join(COMPRESSIONS))
    args = parser.parse_args()
    height, width = (int(x) for x in args.shape.lower().split("x"))
    frames = camera_frames(args.n, (height, width))
    keys = [ItemKey.of("cam", frame, None, i) for i, frame in enumerate(frames)]
    mib = sum(f.nbytes for f in frames) / 2**20
    rows: list[tuple[str, str, int]] = [("disk:h5py", "none", 1)]
    for compression in args.compressions.split(","):
        rows += [("container", compression, int(c)) for c in args.chunks.split(",")]
    seconds: dict[tuple[str, str, int], list[float]] = {row: [] for row in rows}
    sizes: dict[tuple[str, str, int], int] = {}
    scratch = Path(tempfile.mkdtemp(dir=args.dir, prefix="hdf5-bench-"))
    try:
        for repeat in range(args.repeats):
            shift = repeat % len(rows)  # rotated, so that no row always follows the same one's writeback
            for row in rows[shift:] + rows[:shift]:
                path = scratch / "run.h5"
                start = time.perf_counter()
                if row[0] == "disk:h5py":
                    plain_h5py(path, frames)
                else:
                    container(path, frames, keys, row[1], row[2], args.commit_every)
                seconds[row].append(time.perf_counter() - start)
                sizes[row] = path.stat().st_size
                path.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    baseline = mib / statistics.median(seconds[rows[0]])
    print(f"{args.n} frames of {height}x{width} uint16 ({mib:.0f} MiB), {args.repeats} repeats, in {args.dir}")
    print("| row | compression | frames/chunk | MiB/s (median [min-max]) | ratio | vs disk:h5py |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        rates = sorted(mib / s for s in seconds[row])
        median = statistics.median(rates)
        ratio = mib * 2**20 / sizes[row]
        print(
            f"| {row[0]} | {row[1]} | {row[2]} | {median:,.0f} [{rates[0]:,.0f}-{rates[-1]:,.0f}] | {ratio:.2f} "
            f"| {median / baseline:.2f}x |"
        )


if __name__ == "__main__":
    main()
