#!/usr/bin/env python3
"""Row-group size of the Parquet archiver: cost of writing and of reading back, per rows per row group.

Writes the same table of readings (the archiver's own columns and a sensor's: a float, an integer, a unit)
through ``ParquetWriter`` as the archiver does (batches of ``--batch`` rows journaled, written as row groups
of N rows), then reads it back whole with pyarrow, and runs a DuckDB aggregate and a polars filter over it.
Per N: rows/s written, file bytes per row, read times (the best of ``--repeat``: the least disturbed run on
a shared machine), relative to the best N.

    python benchmarks/parquet_row_groups.py [--rows 1000000] [--repeat 3] [--compression zstd]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SIZES = (256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576)


def readings(rows: int) -> pa.Table:
    rng = np.random.default_rng(1)
    index = np.arange(rows, dtype=np.int64)
    return pa.table(
        {
            "source_name": pa.array([f"sensor-{k % 50:02d}" for k in range(rows)]),
            "sequence": pa.array(index),
            "received": pa.array(1_700_000_000_000_000 + index * 1000, pa.timestamp("us", tz="UTC")),
            "item_key": pa.array([rng.bytes(16) for _ in range(rows)], pa.binary(16)),
            "temperature": pa.array(20.0 + rng.normal(0, 0.1, rows)),
            "i": pa.array(index),
            "unit": pa.array(["degC"] * rows),
        }
    )


def write(table: pa.Table, path: Path, group: int, batch: int, compression: str) -> float:
    """Seconds to write ``table`` as the sink does: batches buffered until ``group`` rows, then one row group."""
    batches = table.to_batches(max_chunksize=batch)
    start = time.perf_counter()
    with open(path, "wb") as handle, pq.ParquetWriter(handle, table.schema, compression=compression) as writer:
        waiting: list[pa.RecordBatch] = []
        count = 0
        for b in batches:
            waiting.append(b)
            count += b.num_rows
            if count >= group:
                writer.write_table(pa.Table.from_batches(waiting, table.schema), row_group_size=group)
                waiting, count = [], 0
        if waiting:
            writer.write_table(pa.Table.from_batches(waiting, table.schema), row_group_size=group)
    return time.perf_counter() - start


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000, help="rows per journal commit (the archiver's flush_items)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compression", default="zstd")
    args = ap.parse_args()
    import duckdb
    import polars as pl

    table = readings(args.rows)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for group in SIZES:
            path = Path(tmp, f"g{group}.parquet")
            w, r, d, p = [], [], [], []
            query = f"SELECT source_name, avg(temperature) FROM '{path}' WHERE i % 7 = 0 GROUP BY 1"
            half = args.rows // 2
            for _ in range(args.repeat):
                w.append(write(table, path, group, args.batch, args.compression))
                r.append(timed(partial(pq.read_table, path)))
                d.append(timed(partial(lambda q: duckdb.sql(q).fetchall(), query)))
                p.append(timed(partial(lambda f, h: pl.scan_parquet(f).filter(pl.col("i") > h).collect(), path, half)))
            size = os.path.getsize(path) / args.rows
            results.append((group, args.rows / min(w), size, min(r), min(d), min(p)))
    best_write = max(x[1] for x in results)
    best = [min(x[i] for x in results) for i in (3, 4, 5)]
    print(f"{args.rows} rows, batches of {args.batch}, {args.compression}, best of {args.repeat} (a shared machine)")
    print(f"{'rows/group':>10} {'write rows/s':>13} {'rel':>5} {'B/row':>6} {'pyarrow s':>9} {'rel':>5} "
          f"{'duckdb s':>9} {'rel':>5} {'polars s':>9} {'rel':>5}")  # fmt: skip
    for group, rate, size, read, duck, polar in results:
        print(
            f"{group:>10} {rate:>13,.0f} {rate / best_write:>5.2f} {size:>6.1f} {read:>9.4f} {best[0] / read:>5.2f} "
            f"{duck:>9.4f} {best[1] / duck:>5.2f} {polar:>9.4f} {best[2] / polar:>5.2f}"
        )


if __name__ == "__main__":
    main()
