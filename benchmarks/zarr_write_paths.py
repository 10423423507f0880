#!/usr/bin/env python3
"""Cost of writing one frame as one Zarr v3 array, by four paths, without Zenoh (decision 0022).

* ``reference``: what herostools' ZarrArchiver does per event: ``zarr.open_group(store, mode="a")`` and
  ``group[key] = frame`` (in place: a crash leaves a partial array);
* ``zarr-cached``: the same through zarr's API with the group opened once;
* ``zarr-staged``: zarr's API writing into a staging directory, then one rename (atomic, as ours);
* ``ours``: ``ZarrArrayWriter`` (zarr.json made once per shape by zarr, chunks written directly, staged, one
  ``renameat2``), with its writeback window and without, and with ``chunks="array"`` (one chunk per frame).

The paths run round-robin, ``--repeats`` times each, on the same file system; medians of ms per frame.
Run: ``PYTHONPATH=src .venv/bin/python benchmarks/zarr_write_paths.py --out /tmp/zarr-paths``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from heros_archiver.sinks.zarr_arrays import ZarrArrayWriter


def reference(root: Path) -> Callable[[int, np.ndarray], None]:
    store = root / "frames.zarr"

    def write(index: int, frame: np.ndarray) -> None:
        store.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(store), mode="a")
        group[f"{index:06d}"] = frame

    return write


def zarr_cached(root: Path) -> Callable[[int, np.ndarray], None]:
    group = zarr.open_group(str(root / "frames.zarr"), mode="a")

    def write(index: int, frame: np.ndarray) -> None:
        group[f"{index:06d}"] = frame

    return write


def zarr_staged(root: Path) -> Callable[[int, np.ndarray], None]:
    store = root / "frames.zarr"
    zarr.open_group(str(store), mode="a")
    staging = root / "staging"
    staging.mkdir()

    def write(index: int, frame: np.ndarray) -> None:
        tmp = staging / f"{index}.tmp"
        zarr.save_array(str(tmp), frame, zarr_format=3)
        os.rename(tmp, store / f"{index:06d}")

    return write


def ours(window: int, chunks: str = "auto") -> Callable[[Path], Callable[[int, np.ndarray], None]]:
    def make(root: Path) -> Callable[[int, np.ndarray], None]:
        writer = ZarrArrayWriter(
            "{{ file_path }}/frames.zarr", "{{ '%06d' % frame }}", str(root), writeback_window=window, chunks=chunks
        )
        metadata = {"file_path": str(root)}

        def write(index: int, frame: np.ndarray) -> None:
            writer.write("cam", frame, {**metadata, "frame": index})

        write.close = writer.close  # type: ignore[attr-defined]
        return write

    return make


PATHS = {
    "reference": reference,
    "zarr-cached": zarr_cached,
    "zarr-staged": zarr_staged,
    "ours": ours(32 << 20),
    "ours-no-window": ours(0),
    "ours-one-chunk": ours(32 << 20, "array"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/zarr-write-paths")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", default="1024x1024")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split("x"))
    frame = np.random.default_rng(1).integers(0, 1 << 16, size=shape, dtype=np.uint16)
    results: dict[str, list[float]] = {name: [] for name in PATHS}
    for repeat in range(args.repeats):
        for name, make in PATHS.items():
            root = Path(args.out, f"{name}-{repeat}")
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            write = make(root)
            write(-1, frame)  # warm: metadata, imports, directories
            start = time.perf_counter()
            for index in range(args.frames):
                write(index, frame)
            getattr(write, "close", lambda: None)()
            results[name].append((time.perf_counter() - start) / args.frames * 1e3)
            shutil.rmtree(root, ignore_errors=True)
    print(f"{args.frames} frames {args.shape} uint16 per path and repeat, ms per frame: median [min-max]")
    base = statistics.median(results["reference"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<16} {median:7.2f} [{min(values):.2f}-{max(values):.2f}]  {base / median:5.2f}x the reference")


if __name__ == "__main__":
    main()
