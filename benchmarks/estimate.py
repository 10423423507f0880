#!/usr/bin/env python3
"""Per-call cost of the queue's size estimate on the receive path (issue 13 item 15).

    PYTHONPATH=src python benchmarks/estimate.py

Prints the best of 7 repeats, in ns per call, for a camera frame, a typical 10-key metadata dict, and
``item_nbytes`` of the two together (what ``feed`` calls per event).
"""

from __future__ import annotations

import timeit

import numpy as np

from heros_archiver.pipeline.payload import estimate_nbytes, item_nbytes

METADATA = {
    "frame": 1,
    "t_send": 1.5,
    "file_path": "/data/run42",
    "exposure": 0.01,
    "gain": 2,
    "name": "cam",
    "mode": "fast",
    "ok": True,
    "temperature": 21.5,
    "roi": None,
}
FRAME = np.zeros((1024, 1024), np.uint16)
CASES = {
    "frame (2 MiB uint16)": lambda: estimate_nbytes(FRAME),
    "metadata (10 plain values)": lambda: estimate_nbytes(METADATA),
    "item_nbytes(frame, metadata)": lambda: item_nbytes(FRAME, METADATA),
}


def main(number: int = 200_000) -> None:
    for name, call in CASES.items():
        best = min(timeit.repeat(call, number=number, repeat=7)) / number
        print(f"{name:32s} {best * 1e9:8.0f} ns")


if __name__ == "__main__":
    main()
