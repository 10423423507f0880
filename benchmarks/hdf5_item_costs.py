#!/usr/bin/env python3
"""What each frame costs on Hdf5Archiver's own path, without Zenoh: where bench.py's hdf5 rows spend their CPU.

Times, per frame, the item key (``ItemKey.of``: XXH3-128 over the pixels and the metadata, for frames with a
sequence value; ``ItemKey.of_arrival``: the receive time, for frames without), the two template renders of an
item (file path at receipt, dataset path at append; the archiver caches both per run) and the container's
append + commit
(commit every 1000 frames of 8 KiB, every 16 of 2 MiB: the archiver's flush_frames / flush_bytes defaults):

    python benchmarks/hdf5_item_costs.py [--dir /data/scratch] [--n-small 20000] [--n-big 500]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from heros_archiver.naming.templates import PathTemplate
from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.hdf5 import Hdf5Container


def per_call_us(call: Callable[[int], object], n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - t0) / n * 1e6


def append_commit_us(path: Path, frame: np.ndarray, n: int, every: int) -> float:
    """Microseconds per frame of appending n frames to a fresh container, committing every ``every``."""
    container = Hdf5Container(path, "cam1/data")
    keys = [ItemKey("cam1", i, f"{i:032x}") for i in range(n)]
    t0 = time.perf_counter()
    for i in range(n):
        container.append(keys[i], frame, {"frame": i, "t_send": 1.5}, received=1.0)
        if (i + 1) % every == 0:
            container.commit()
    container.close()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="scratch folder (default: a new one under the system's temporary folder)")
    ap.add_argument("--n-small", type=int, default=20000)
    ap.add_argument("--n-big", type=int, default=500)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        small, big = np.zeros((64, 64), np.uint16), np.zeros((1024, 1024), np.uint16)
        meta = {"frame": 1, "t_send": 1.5, "file_path": str(scratch)}
        context = {**meta, "source_name": "cam1"}
        file_path = PathTemplate(f"{scratch}/run.h5", scratch)
        dataset = PathTemplate("{{ source_name }}/data", scratch)
        rows = [
            ("ItemKey.of, 8 KiB frame", per_call_us(lambda i: ItemKey.of("cam1", small, meta, i), args.n_small)),
            ("ItemKey.of, 2 MiB frame", per_call_us(lambda i: ItemKey.of("cam1", big, meta, i), args.n_big)),
            ("ItemKey.of_arrival", per_call_us(lambda i: ItemKey.of_arrival("cam1", None, 1.7e9 + i), args.n_small)),
            ("file template render + confine", per_call_us(lambda i: file_path.render_confined(context), args.n_small)),
            ("dataset template render", per_call_us(lambda i: dataset.render_text(context), args.n_small)),
            ("append + commit, 8 KiB, every 1000", append_commit_us(scratch / "s.h5", small, args.n_small, 1000)),
            ("append + commit, 2 MiB, every 16", append_commit_us(scratch / "b.h5", big, args.n_big, 16)),
        ]
        for what, us in rows:
            print(f"{what:<45} {us:9.1f} us per frame")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
