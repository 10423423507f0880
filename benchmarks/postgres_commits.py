"""Records per commit: items/s of a PostgresArchiver committing every N items, readings and small arrays.

    PYTHONPATH=src python benchmarks/postgres_commits.py [--repeats 3]

Starts a PostgreSQL server (fsync off, as the tests run it: per-item commits cost more with fsync on, so the
ratios are a lower bound) and a SeaweedFS S3 server in a temporary directory, feeds items straight into the
archiver's pipeline (``feed``: no Zenoh, so the figure is the archiver's, not the transport's) and times until
all are archived. Prints a markdown table: workload, items per commit (``flush_items``), median items/s, and
the ratio to one item per commit. Used to choose ``flush_items`` (decision 0036).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from heros_archiver import PostgresArchiver
from heros_archiver.testing import free_port, session_manager, unique_realm
from heros_archiver.testing.servers import PostgresServer, S3Server

FLUSH_ITEMS = (1, 10, 100, 500)


def readings(count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Readings of 300 samples (so that records are merged), eight values each."""
    return [
        ({f"value{k}": i * 0.5 + k for k in range(8)}, {"identifier": f"sample-{i % 300}", "step": i})
        for i in range(count)
    ]


def arrays(count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Frames of 64x64 uint16 (8 KiB), one record each."""
    frame = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    return [({"image": frame + i}, {"identifier": f"shot-{i}", "step": i}) for i in range(count)]


WORKLOADS = {"readings": (readings, 3000), "arrays 8 KiB": (arrays, 600)}


def run(db_url: str, storage: dict[str, Any], items: list[Any], flush_items: int) -> float:
    """Items archived per second, from the first ``feed`` until all are archived."""
    archiver = PostgresArchiver(
        db_url,
        artifact_storage_kwargs={**storage, "bucket": f"b{uuid.uuid4().hex[:12]}"},
        flush_items=flush_items,
        object_selector="bench",
        event_name="e",
        realm=unique_realm(),
        session_manager=session_manager(connect_port=free_port()),
    )
    try:
        start = time.perf_counter()
        for item in items:
            archiver.feed("bench", item)
        while archiver.stats()["total"]["archived"] < len(items):
            if archiver.stats()["total"]["dead_lettered"]:
                raise RuntimeError(f"items dead-lettered: {archiver.stats()['total']}")
            time.sleep(0.005)
        return len(items) / (time.perf_counter() - start)
    finally:
        archiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PostgresServer(Path(tmp) / "pg") as pg, S3Server(Path(tmp) / "s3") as s3:
        storage = {"endpoint_url": s3.endpoint, "access_key": s3.access_key, "secret_key": s3.secret_key}
        print("| workload | items per commit | items/s (median) | vs 1 per commit |")
        print("|---|---|---|---|")
        for name, (make, count) in WORKLOADS.items():
            items = make(count)
            rates = {}
            for flush in FLUSH_ITEMS:
                figures = []
                for repeat in range(args.repeats):
                    url = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}_{repeat}")
                    figures.append(run(url, storage, items, flush))
                rates[flush] = statistics.median(figures)
                print(f"| {name} | {flush} | {rates[flush]:,.0f} | {rates[flush] / rates[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
