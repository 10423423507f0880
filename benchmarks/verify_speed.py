#!/usr/bin/env python3
"""How fast ``heros-archiver verify`` checks an archive, against ``sha256sum`` and ``b3sum`` of the same files.

Writes ``--frames`` frames (default 10,000) of ``--frame-mib`` MiB (default 2: a 1024 x 1024 uint16 frame, so
about 20 GiB by default) as ``.npy`` files with the archiver's own file writer (``sinks.writer.FileWriter``,
the path an ``ArrayArchiver`` takes) and catalogs each with the location that writer reports (in the archiver's
own catalog, ``observe.catalog_schema``); then times, each with a cold page cache when this process may drop
it (``/proc/sys/vm/drop_caches``, as root; otherwise warm, and the output says so):

* ``heros-archiver verify ROOT`` (the command as a user runs it: catalog, every checksum, the orphan walk);
* ``sha256sum`` of the same files (one process, as ``sha256sum -c`` checks a list);
* ``b3sum`` of the same files (the BLAKE3 team's command, multi-threaded; Debian's package ``b3sum``, none on
  PyPI). Without it, Python's ``blake3`` with ``max_threads=AUTO`` reading the files, and the output says so.

Everything it wrote is removed at the end, also on failure or Ctrl-C. It needs ``frames x frame-mib`` free in
``--dir`` (and refuses to start without it, plus 10 %)::

    python benchmarks/verify_speed.py [--frames 10000] [--frame-mib 2] [--dir /var/tmp] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from heros_archiver.observe.catalog_schema import open_for_writing
from heros_archiver.observe.verify import DEFAULT_WORKERS
from heros_archiver.sinks.writer import FileWriter, WriterSettings

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def write_archive(root: Path, frames: int, frame_bytes: int) -> int:
    """``frames`` .npy files of ``frame_bytes`` of data under ``root`` and their catalog; returns the bytes written."""
    writer = FileWriter(WriterSettings("npy", "{{ root }}/cam/{{ '%06d' % frame }}.npy", str(root)))
    catalog = open_for_writing(root)  # the archiver's own catalog (autocommit: transactions opened here)
    catalog.execute("BEGIN")
    frame = np.random.default_rng(0).integers(0, 4096, size=frame_bytes // 2, dtype=np.uint16)
    total = 0
    try:
        for index in range(frames):
            frame[0] = index  # every file differs
            metadata = {"root": str(root), "frame": index}
            received = time.time()
            (location,) = writer.write_located("cam", frame, metadata)
            catalog.execute(
                "INSERT INTO items (archiver, source, event, sequence, path, member, idx, count, nbytes, checksum,"
                " metadata, received, committed) VALUES (?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?, ?, ?, ?)",
                (
                    "cam:acquisition_data",
                    "cam",
                    "acquisition_data",
                    index,
                    Path(location.path).relative_to(root).as_posix(),
                    location.nbytes,
                    location.checksum,
                    json.dumps(metadata),
                    received,
                    time.time(),
                ),
            )
            total += location.nbytes
            if index % 500 == 499:
                catalog.execute("COMMIT")
                catalog.execute("BEGIN")
        catalog.execute("COMMIT")
    finally:
        catalog.close()
        writer.close()
    return total


def drop_caches() -> bool:
    """Write dirty pages and drop the page cache; False when this process may not."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def timed(command: list[str], cold: bool, stdin: bytes | None = None) -> float:
    """Seconds ``command`` took (after dropping the cache when ``cold``); fails when it fails."""
    if cold:
        drop_caches()
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, input=stdin)
    return time.perf_counter() - start


def python_blake3(files: list[str], cold: bool) -> float:
    """Seconds Python's blake3 (all cores) takes over ``files``, when there is no ``b3sum``."""
    code = (
        "import sys, blake3\n"
        "for path in sys.stdin.read().split('\\0'):\n"
        "    blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(path).hexdigest()\n"
    )
    return timed([sys.executable, "-c", code], cold, stdin="\0".join(files).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000, help="files to write and check (default 10,000)")
    parser.add_argument("--frame-mib", type=float, default=2.0, help="MiB of data per file (default 2)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the archive (a scratch folder)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="verify's --workers")
    args = parser.parse_args()
    frame_bytes = int(args.frame_mib * (1 << 20)) // 2 * 2
    needed = int(args.frames * (frame_bytes + 4096) * 1.1)
    free = shutil.disk_usage(args.dir).free
    if free < needed:
        sys.exit(f"needs {needed / 2**30:.1f} GiB free in {args.dir}, has {free / 2**30:.1f} GiB")
    scratch = Path(tempfile.mkdtemp(dir=args.dir, prefix="verify-bench-"))
    try:
        start = time.perf_counter()
        total = write_archive(scratch, args.frames, frame_bytes)
        print(f"# wrote {args.frames:,} files, {total / 2**30:.2f} GiB, in {time.perf_counter() - start:.1f} s")
        cold = drop_caches()
        print(f"# page cache: {'cold (dropped before each run)' if cold else 'WARM: cannot drop it here (not root)'}")
        files = sorted(str(path) for path in (scratch / "cam").iterdir())
        file_list = "\0".join(files).encode()
        verify = [sys.executable, "-m", "heros_archiver.cli", "verify", str(scratch), "--workers", str(args.workers)]
        runs: list[tuple[str, float]] = [("heros-archiver verify (xxh3-128)", timed(verify, cold))]
        runs.append(("sha256sum", timed(["xargs", "-0", "sha256sum"], cold, file_list)))
        if shutil.which("b3sum"):
            runs.append(("b3sum (BLAKE3, all cores)", timed(["xargs", "-0", "b3sum"], cold, file_list)))
        else:
            runs.append(("Python blake3, max_threads=AUTO (no b3sum here)", python_blake3(files, cold)))
        mib = total / (1 << 20)
        for name, seconds in runs:
            print(f"{name:<50} {seconds:7.1f} s  {mib / seconds:8,.0f} MiB/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
