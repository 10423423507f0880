#!/usr/bin/env python3
"""What a rename over an existing file costs next to a rename to a new name (decision 0023, ``zarr_trash``).

Writes ``--n`` rounds of: a 32 MiB file (dirty data, as a shard), then a 4 KB temporary renamed over an
existing file and another renamed to a new name, in alternating order; prints median, p90 and total per
kind. On a file system that frees blocks slowly (ext4 with ``discard``), the first is the slow one:

    python benchmarks/replace_cost.py [--dir /data/scratch] [--n 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="file system under test")
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(dir=args.dir, prefix="replace-bench-")
    big = np.random.default_rng(0).integers(0, 255, size=32 << 20, dtype=np.uint8)
    small = os.urandom(4000)
    seconds: dict[str, list[float]] = {"replace an existing file": [], "rename to a new name": []}
    try:
        with open(f"{scratch}/target", "wb") as handle:
            handle.write(small)
        for i in range(args.n):
            fd = os.open(f"{scratch}/big{i}", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, big.data)
            os.close(fd)
            kinds = list(seconds) if i % 2 else list(reversed(seconds))
            for kind in kinds:
                fd = os.open(f"{scratch}/tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, small)
                os.close(fd)
                target = f"{scratch}/target" if kind.startswith("replace") else f"{scratch}/new{i}"
                start = time.perf_counter()
                os.replace(f"{scratch}/tmp", target)
                seconds[kind].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for kind, values in seconds.items():
        values.sort()
        median, p90 = statistics.median(values) * 1e3, values[int(0.9 * len(values))] * 1e3
        print(f"{kind}: median {median:.2f} ms, p90 {p90:.2f} ms, mean {statistics.mean(values) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
