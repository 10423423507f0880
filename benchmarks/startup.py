#!/usr/bin/env python3
"""How long constructing an archiver takes on a root that already holds many files (item 8 of issue 13).

Creates N files (default 200,000, in directories of 1,000 as an archive of runs would be) under a
scratch root, then times, round-robin over repeats, in the same run:

* ``archiver``: constructing an ``ArrayArchiver`` on that root (the real one, with a loopback Zenoh
  session manager as the tests use; its stale-temporary clean-up reads only the records of dead
  processes), and, for comparison, on an empty root (what the Zenoh session itself costs);
* ``old walk``: ``os.walk`` of the root with the name check per file, which is what the constructor did
  before (``remove_stale_temporaries`` walked the whole root).

    python benchmarks/startup.py [--dir /data/scratch] [--files 200000] [--repeats 3] [--cold]

The page cache is warm (the files were just made) unless ``--cold`` drops it before every timing
(``/proc/sys/vm/drop_caches``, needs root; it affects the whole machine for a moment): a start after a
reboot, or on a root too large for the cache, is the cold case. Run it with an older checkout on
``PYTHONPATH`` to time that version's constructor the same way.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from heros_archiver import ArrayArchiver
from heros_archiver.testing import free_port, loopback_config_json, session_manager, unique_realm

_OLD_TMP_NAME = re.compile(r"\.~heros-archiver\.(\d+)\.([0-9a-f]{8})\.[0-9a-f]+\.tmp$")


def make_archive(root: Path, files: int, per_directory: int = 1000) -> None:
    """``files`` small files under ``root``, ``per_directory`` to a directory."""
    for index in range(files):
        directory = root / f"run-{index // per_directory:04d}"
        if index % per_directory == 0:
            directory.mkdir(parents=True)
        fd = os.open(directory / f"frame-{index:07d}.npy", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x")
        os.close(fd)


def time_archiver(root: Path) -> float:
    """Seconds to construct an ArrayArchiver on ``root`` (torn down afterwards, not timed)."""
    manager = session_manager(connect_port=free_port())  # nothing listens there: no traffic at all
    start = time.perf_counter()
    archiver = ArrayArchiver(
        "{{ file_path }}/{{ run }}/{{ frame }}.npy",
        object_selector="cam",
        event_name="acquisition_data",
        default_metadata={"file_path": str(root)},
        realm=unique_realm("startup"),
        session_manager=manager,
    )
    elapsed = time.perf_counter() - start
    archiver._teardown()
    archiver._destroy_hero()
    manager.force_close()
    return elapsed


def time_old_walk(root: Path) -> float:
    """Seconds the old start spent walking ``root`` for stale temporaries (the walk and the name check)."""
    start = time.perf_counter()
    for _directory, _dirs, names in os.walk(root):
        for name in names:
            _OLD_TMP_NAME.match(name)
    return time.perf_counter() - start


def drop_caches() -> None:
    """Write dirty pages out and empty the page, dentry and inode caches (Linux, root)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="scratch folder on the file system under test (default: TMPDIR)")
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every timing (root)")
    args = parser.parse_args()
    os.environ["HEROS_ZENOH_CONFIG"] = loopback_config_json()

    scratch = Path(tempfile.mkdtemp(prefix="startup-", dir=args.dir))
    try:
        full, empty = scratch / "archive", scratch / "empty"
        empty.mkdir()
        start = time.perf_counter()
        make_archive(full, args.files)
        print(f"# {args.files} files under {full} made in {time.perf_counter() - start:.1f} s")
        seconds: dict[str, list[float]] = {"archiver, empty root": [], "archiver": [], "old walk": []}
        timings = {"archiver, empty root": (time_archiver, empty), "archiver": (time_archiver, full)}
        timings["old walk"] = (time_old_walk, full)
        for _ in range(args.repeats):
            for name, (timing, root) in timings.items():
                if args.cold:
                    drop_caches()
                seconds[name].append(timing(root))
        cache = "cold" if args.cold else "warm"
        print(f"{'':24s} {'median s':>9s}  [min-max]  ({args.repeats} repeats, {cache} cache)")
        for name, values in seconds.items():
            print(f"{name:24s} {statistics.median(values):9.3f}  [{min(values):.3f}-{max(values):.3f}]")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
