#!/usr/bin/env python3
"""Which checksum the catalog records (decision 0030): speed per item size, and whether it frees the GIL.

For each algorithm (xxh3-64, xxh3-128, BLAKE3 single- and multi-threaded, SHA-256) and item size (8 KiB readings,
2 MiB frames) prints GiB/s and microseconds per item; then, for 64 MiB buffers, how fast a pure-Python
loop in another thread runs while hashing, relative to idle (1.0: the hash releases the GIL, ~0.5: it holds it)::

    python benchmarks/checksums.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
import time
from collections.abc import Callable

import blake3
import xxhash

Hash = Callable[[bytes], str]

ALGORITHMS: dict[str, Hash] = {
    "xxh3-64": xxhash.xxh3_64_hexdigest,
    "xxh3-128": xxhash.xxh3_128_hexdigest,
    "blake3": lambda data: blake3.blake3(data).hexdigest(),
    "blake3 (threads)": lambda data: blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest(),
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
}


def speed(hash_: Hash, data: bytes, seconds: float) -> float:
    """Seconds per call, over about ``seconds`` of calls."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        hash_(data)
        calls += 1
    return elapsed / calls


def spin_rate(work: Callable[[], None] | None, seconds: float) -> float:
    """Iterations per second of a Python loop in another thread while ``work`` runs (or while idle)."""
    stop = threading.Event()
    count = [0]

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.05)
    before, start = count[0], time.perf_counter()
    while time.perf_counter() - start < seconds:
        if work is None:
            time.sleep(0.01)
        else:
            work()
    rate = (count[0] - before) / (time.perf_counter() - start)
    stop.set()
    thread.join()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    print(f"{'algorithm':18} {'item':>8} {'GiB/s':>8} {'us/item':>10}")
    for size, label in ((8192, "8 KiB"), (2 * 2**20, "2 MiB")):
        data = os.urandom(size)
        for name, hash_ in ALGORITHMS.items():
            per_call = speed(hash_, data, args.seconds)
            print(f"{name:18} {label:>8} {size / per_call / 2**30:8.2f} {per_call * 1e6:10.2f}")
    big = os.urandom(64 * 2**20)
    idle = spin_rate(None, args.seconds)
    print("\nanother thread's Python loop while hashing 64 MiB, relative to idle (1.0: the GIL is released)")
    for name, hash_ in ALGORITHMS.items():
        print(f"{name:18} {spin_rate(lambda h=hash_: (h(big), None)[1], args.seconds) / idle:5.2f}")


if __name__ == "__main__":
    main()
