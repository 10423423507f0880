#!/usr/bin/env python3
"""The Zarr append container's compressions on camera-like frames, next to zarr-python's own sharded append.

Writes N frames of 1024x1024 uint16 (a beam spot on an offset with shot noise: ``hdf5_compression``'s
``camera_frames``) into a fresh store on the file system under test, round-robin over repeats (order
rotated), committing every ``--commit-every`` frames into shards of ``--shard`` frames, one frame per inner
chunk, and prints MiB/s (raw frame bytes over the time from construction to close), the size on disk and
compression ratio (raw bytes / bytes of every file in the store), and the ratio to ``zarr-python``: the
same sharded array written by zarr-python 3.1 itself (``array[a:b] = frames`` per commit, LocalStore, no
metadata arrays, no item keys), with its default codec pipeline and with the zarrs (Rust) pipeline.
Two more rows for scale: ``disk:files`` (the frame bytes as one plain file per shard) and
``hdf5-container`` (the HDF5 archiver's container, uncompressed, same commits):

    python benchmarks/zarr_compression.py [--dir /data/scratch] [--n 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from hdf5_compression import camera_frames

from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.zarr_append import ZarrAppendContainer
from heros_archiver.sinks.containers.zarr_shards import COMPRESSIONS, zarr_compressors

ARRAY = "cam/data"


def zarr_python(path: Path, frames: list[np.ndarray], compression: str, shard: int, commit_every: int) -> None:
    """The baseline: a sharded array grown and written by zarr-python per commit."""
    shape = frames[0].shape
    array = zarr.create_array(
        str(path), name=ARRAY, shape=(0, *shape), dtype=frames[0].dtype, chunks=(1, *shape),
        shards=(shard, *shape), compressors=zarr_compressors(zarr, compression, frames[0].dtype),  # type: ignore[arg-type]
        fill_value=0,
    )  # fmt: skip
    for start in range(0, len(frames), commit_every):
        block = np.stack(frames[start : start + commit_every])
        array.resize((start + len(block), *shape))
        array[start : start + len(block)] = block


def container(path: Path, frames: list[np.ndarray], keys: list[ItemKey], compression: str, shard: int,
              commit_every: int) -> None:  # fmt: skip
    """The container with per-frame metadata and keys, committing every ``commit_every`` frames."""
    with ZarrAppendContainer(path, ARRAY, compression=compression, frames_per_shard=shard) as sink:  # type: ignore[arg-type]
        for i, (frame, key) in enumerate(zip(frames, keys, strict=True)):
            sink.append(key, frame, {"frame": i, "exposure_s": 0.01, "mode": "continuous"}, received=time.time())
            if (i + 1) % commit_every == 0:
                sink.commit()


def plain_files(path: Path, frames: list[np.ndarray], shard: int) -> None:
    """The disk's part: the same frame bytes as one file per shard, written in place (no index, no
    temporary, no rename, no metadata arrays)."""
    path.mkdir()
    for start in range(0, len(frames), shard):
        fd = os.open(path / f"c.{start // shard}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for frame in frames[start : start + shard]:
                os.write(fd, frame.data.cast("B"))
        finally:
            os.close(fd)


def hdf5_container(path: Path, frames: list[np.ndarray], keys: list[ItemKey], commit_every: int) -> None:
    """The HDF5 archiver's container on the same frames (one frame per chunk, no compression)."""
    from heros_archiver.sinks.containers.hdf5 import Hdf5Container

    with Hdf5Container(path, ARRAY) as sink:
        for i, (frame, key) in enumerate(zip(frames, keys, strict=True)):
            sink.append(key, frame, {"frame": i, "exposure_s": 0.01, "mode": "continuous"}, received=time.time())
            if (i + 1) % commit_every == 0:
                sink.commit()


def store_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="file system under test")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--shape", default="1024x1024", help="uint16 frame HxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard", type=int, default=16, help="frames per shard (the archiver's default for 2 MiB)")
    parser.add_argument("--commit-every", type=int, default=16)
    parser.add_argument("--compressions", default=",".join(COMPRESSIONS))
    args = parser.parse_args()
    height, width = (int(x) for x in args.shape.lower().split("x"))
    frames = camera_frames(args.n, (height, width))
    keys = [ItemKey.of("cam", frame, None, i) for i, frame in enumerate(frames)]
    mib = sum(f.nbytes for f in frames) / 2**20
    rows: list[tuple[str, str]] = [("disk:files", "none"), ("hdf5-container", "none")]
    for compression in args.compressions.split(","):
        rows += [("zarr-python", compression), ("zarr-python+zarrs", compression), ("container", compression)]
    seconds: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    sizes: dict[tuple[str, str], int] = {}
    scratch = Path(tempfile.mkdtemp(dir=args.dir, prefix="zarr-bench-"))
    try:
        for repeat in range(args.repeats):
            shift = repeat % len(rows)  # rotated, so that no row always follows the same one's writeback
            for row in rows[shift:] + rows[:shift]:
                path = scratch / "run.zarr"
                pipeline = "zarrs.ZarrsCodecPipeline" if row[0] == "zarr-python+zarrs" else None
                with zarr.config.set({"codec_pipeline.path": pipeline} if pipeline else {}):
                    start = time.perf_counter()
                    if row[0] == "container":
                        container(path, frames, keys, row[1], args.shard, args.commit_every)
                    elif row[0] == "disk:files":
                        plain_files(path, frames, args.shard)
                    elif row[0] == "hdf5-container":
                        hdf5_container(path, frames, keys, args.commit_every)
                    else:
                        zarr_python(path, frames, row[1], args.shard, args.commit_every)
                    seconds[row].append(time.perf_counter() - start)
                if path.is_dir():
                    sizes[row] = store_bytes(path)
                    shutil.rmtree(path)
                else:  # the HDF5 file
                    sizes[row] = path.stat().st_size
                    path.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"{args.n} frames of {height}x{width} uint16 ({mib:.0f} MiB), shards of {args.shard}, commit every "
        f"{args.commit_every}, {args.repeats} repeats, in {args.dir}"
    )
    print("| row | compression | MiB/s (median [min-max]) | MiB on disk | ratio | vs zarr-python |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        rates = sorted(mib / s for s in seconds[row])
        median = statistics.median(rates)
        baseline = statistics.median(mib / s for s in seconds[("zarr-python", row[1])])
        print(
            f"| {row[0]} | {row[1]} | {median:,.0f} [{rates[0]:,.0f}-{rates[-1]:,.0f}] | {sizes[row] / 2**20:,.1f} "
            f"| {mib * 2**20 / sizes[row]:.2f} | {median / baseline:.2f}x |"
        )


if __name__ == "__main__":
    main()
