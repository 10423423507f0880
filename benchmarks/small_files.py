#!/usr/bin/env python3
"""Small files per second from the archiver's writer: one thread, two threads, or with its helper process.

No Zenoh: N small JSON items are named, encoded and published by the archiver's own code into fresh
subfolders of a scratch folder, round-robin over repeats; prints files/s (median [min-max]):

    python benchmarks/small_files.py [--dir /data/scratch] [--n 5000] [--repeats 3]

Variants: ``1 thread`` (``FileWriter.write`` per item, as the in-process writer does), ``2 threads``
(the same split over two threads: they convoy on the GIL), ``helper`` (the ``BatchWriter`` of decision
0012: batches of 256 named here and created by the helper process while the next batch is named; the
helper is started before the clock runs, as an archiver's is at construction). Where the kernel's
file creation is the limit (ext4 when it is slow) the helper cannot help much; where naming and
encoding weigh (tmpfs, a fast disk) it does.
Files are kept until the end and then removed: on ext4, mass deletions slow file creation for minutes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks.batching import BATCH_ITEMS, BatchWriter
from heros_archiver.sinks.writer import FileWriter, WriterSettings

Variant = Callable[[FileWriter, list[Item]], None]


def _items(n: int) -> list[Item]:
    return [Item("bench", {"i": i, "value": i * 0.5, "unit": "V"}, {"i": i}, 100) for i in range(n)]


def threads(count: int) -> Variant:
    def run(writer: FileWriter, items: list[Item]) -> None:
        def work(part: list[Item]) -> None:
            for item in part:
                writer.write(item.source, item.payload, item.metadata)

        workers = [threading.Thread(target=work, args=(items[k::count],)) for k in range(count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return run


class Helper:
    """The writer with its helper process, started (and its interpreter warmed up) before the clock runs,
    as an archiver's is at construction."""

    def __init__(self, writer: FileWriter, warm_up: list[Item]) -> None:
        self.batch_writer = BatchWriter(writer, 1)
        self._write(warm_up)

    def _write(self, items: list[Item]) -> None:
        pending = None
        for start in range(0, len(items) + BATCH_ITEMS, BATCH_ITEMS):
            chunk = items[start : start + BATCH_ITEMS]
            batch = self.batch_writer.send(0, chunk) if chunk else None
            if pending is not None:
                outcomes = self.batch_writer.collect(pending)
                assert all(outcome is None for _, outcome in outcomes), outcomes[:3]
            pending = batch

    def __call__(self, writer: FileWriter, items: list[Item]) -> None:
        try:
            self._write(items)
        finally:
            self.batch_writer.close()


VARIANTS: dict[str, Callable[[FileWriter, list[Item]], Variant]] = {
    "1 thread": lambda writer, warm_up: threads(1),
    "2 threads": lambda writer, warm_up: threads(2),
    "helper": Helper,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="scratch folder on the file system under test (default: /tmp)")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="heros-archiver-small-", dir=args.dir))
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for repeat in range(args.repeats):
            for name, make in VARIANTS.items():
                folder = scratch / f"{name.replace(' ', '-')}-{repeat}"
                folder.mkdir()
                writer = FileWriter(WriterSettings("json", str(folder) + "/ev-{{ '%06d' % i }}.json", str(folder)))
                items = _items(args.n + BATCH_ITEMS)
                variant = make(writer, items[args.n :])  # warm-up files (other names), not timed
                items = items[: args.n]
                started = time.perf_counter()
                variant(writer, items)
                rates[name].append(args.n / (time.perf_counter() - started))
        print(f"{args.n} files per run, {args.repeats} repeats, in {scratch}")
        for name, values in rates.items():
            print(f"{name:10s} {statistics.median(values):8.0f} files/s [{min(values):.0f}-{max(values):.0f}]")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
