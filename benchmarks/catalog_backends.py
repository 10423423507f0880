"""The catalog applier's cost per item: SQLite (the root's file) against PostgreSQL (a shared catalog), one run.

    python benchmarks/catalog_backends.py [--items 20000] [--per-commit 25] [--url postgresql://...]

Writes a journal of ``--items`` archived items (``--per-commit`` per line, metadata like a camera's) as an
archiver's writer thread does (``catalog_journal``), then applies it as the applier process does
(``catalog_apply.apply_journal`` in this process), twice per backend:

* ``bulk``: the journal whole, in the applier's 1 MiB transactions (an applier catching up after a burst);
* ``live``: one transaction per journal line (a quiet archiver: its applier applies each commit ~50 ms later).

Each row gives, per item: wall time, the applier's CPU (this process) and, for PostgreSQL started here, the
server's CPU (all its processes, from /proc): on one machine both compete with the archiver for the cores. The
PostgreSQL server is started here (``testing.servers.PostgresServer``: fsync off, as in the tests) unless
``--url`` names one. The writer thread's cost is the same for both backends (the journal line).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from heros_archiver.observe.catalog_apply import apply_journal
from heros_archiver.observe.catalog_backend import CatalogBackend, CatalogTarget
from heros_archiver.observe.catalog_journal import JournalWriter, encode_outcomes
from heros_archiver.observe.catalog_schema import journal_directory
from heros_archiver.observe.outcomes import Archived, Location
from heros_archiver.testing.servers import PostgresServer

_TICKS = os.sysconf("SC_CLK_TCK")


def _journal(root: Path, items: int, per_commit: int) -> Path:
    """A journal of ``items`` archived npy files under ``root``, ``per_commit`` per line."""
    directory = journal_directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    writer = JournalWriter(directory, {"archiver": "ArrayArchiver:acquisition_data", "root": str(root)})
    now = time.time()
    for start in range(0, items, per_commit):
        outcomes = [
            Archived(
                "cam", "acquisition_data", n,
                {"frame": n, "t_send": now + n * 1e-3, "exposure": 0.01, "shape": [1024, 1024], "run": "r1"},
                now, 1, (Location(f"{root}/{n:07d}.npy", 2 * 2**20 + 128, f"xxh3-128:{n:032x}"),),
            )
            for n in range(start, min(items, start + per_commit))
        ]  # fmt: skip
        writer.append(encode_outcomes(outcomes))
    writer.close()
    return directory / writer.name


def _server_cpu(postmaster: int | None) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster and its children (backends, writers)."""
    if postmaster is None:
        return 0.0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def _measure(apply: Callable[[], object], postmaster: int | None) -> tuple[float, float, float]:
    wall, cpu, server = time.perf_counter(), time.process_time(), _server_cpu(postmaster)
    apply()
    return time.perf_counter() - wall, time.process_time() - cpu, _server_cpu(postmaster) - server


def _apply_live(catalog: CatalogBackend, path: Path, root: Path) -> None:
    """The journal's lines appended one at a time to a new journal, each applied in a transaction of its own (as
    the applier applies a quiet archiver's commits); the appends cost a few microseconds per line."""
    lines = path.read_bytes().splitlines(keepends=True)
    live = path.with_name(path.name.replace("-000001", "-000002"))
    with open(live, "ab", buffering=0) as journal:
        for line in lines:
            journal.write(line)
            apply_journal(catalog, live, str(root))


def _run(name: str, target: CatalogTarget, base: Path, items: int, per_commit: int, postmaster: int | None) -> None:
    for mode in ("bulk", "live"):
        root = base / f"{name}-{mode}"
        path = _journal(root, items, per_commit)
        with target.open_writer(root) as catalog:
            apply = (
                partial(apply_journal, catalog, path, str(root))
                if mode == "bulk"
                else partial(_apply_live, catalog, path, root)
            )
            wall, cpu, server = _measure(apply, postmaster)
            clauses, parameters = catalog.scope(None, str(root) if catalog.shared else None)
            where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
            count = int(catalog.execute(f"SELECT count(*) FROM items{where}", parameters).fetchone()[0])
        per = 1e6 / items
        print(
            f"{name:10s} {mode:4s} items={count:6d}  wall {wall * per:6.1f} us/item  applier CPU {cpu * per:6.1f}"
            f" us/item  server CPU {server * per:5.1f} us/item  total CPU {(cpu + server) * per:6.1f} us/item"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--per-commit", type=int, default=25)
    parser.add_argument("--url", help="a PostgreSQL server to use instead of one started here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="catalog-backends-") as directory:
        base = Path(directory)
        _run("sqlite", CatalogTarget(), base, args.items, args.per_commit, None)
        if args.url:
            _run("postgresql", CatalogTarget(args.url, "bench"), base, args.items, args.per_commit, None)
            return
        with PostgresServer(base / "pg") as server:
            url = server.create_database("bench")
            _run("postgresql", CatalogTarget(url, "bench"), base, args.items, args.per_commit, server.pid)


if __name__ == "__main__":
    main()
