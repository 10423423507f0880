#!/usr/bin/env python3
"""What creating one small file costs, by way of publishing, and what the archiver's writer adds.

Writes N small JSON files per variant into fresh subfolders of a scratch folder on the file system
under test, round-robin over repeats, and prints files/s and us/file (median over repeats):

    python benchmarks/file_creation.py [--dir /data/scratch] [--n 5000] [--repeats 3] [--watch]

Variants: ``in-place`` (open, write, close: what ``json.dump`` to the final name costs), ``rename``
(temporary + ``renameat2``), ``unnamed`` (``O_TMPFILE`` + ``linkat``) and the archiver's ``FileWriter``
with each of its two ways of publishing. ``--watch`` adds an inotify watcher on the scratch folder in a
separate process, as a consumer (or the benchmark harness) would have; it changes the figures a lot.
Files are kept until the end and then removed: on ext4, mass deletions slow file creation for minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from heros_archiver.sinks.writer import FileWriter, WriterSettings
from heros_archiver.storage import atomic as storage

Variant = Callable[[str, int], None]


def _payload(index: int) -> dict[str, object]:
    return {"i": index, "value": index * 0.5, "name": "sensor", "unit": "V", "ok": True}


def in_place(folder: str, index: int) -> None:
    """The reference's way: the final name exists from the first byte."""
    fd = os.open(f"{folder}/ev-{index:06d}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, json.dumps(_payload(index)).encode())
    os.close(fd)


def writer_variant(anonymous: bool) -> Callable[[str], Variant]:
    """The archiver's FileWriter (render, check, encode, write, publish) with one way of publishing."""

    def make(folder: str) -> Variant:
        writer = FileWriter(WriterSettings("json", folder + "/ev-{{ '%06d' % i }}.json", folder))
        link = storage._LINK_ANONYMOUS if anonymous else None

        def write(_folder: str, index: int) -> None:
            storage._LINK_ANONYMOUS = link
            writer.write("bench", _payload(index), {"i": index})

        return write

    return make


def raw_variant(anonymous: bool) -> Callable[[str], Variant]:
    """``storage.write_atomic`` alone with one way of publishing (no rendering; confined to the folder by
    directory handles, as the writer's files are)."""

    def make(_folder: str) -> Variant:
        link = storage._LINK_ANONYMOUS if anonymous else None

        def write(folder: str, index: int) -> None:
            storage._LINK_ANONYMOUS = link
            storage.write_atomic(f"{folder}/ev-{index:06d}.json", [json.dumps(_payload(index)).encode()], root=folder)

        return write

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="scratch folder on the file system under test (default: TMPDIR)")
    parser.add_argument("--n", type=int, default=5000, help="files per variant and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--watch", action="store_true", help="watch the scratch folder with inotify meanwhile")
    args = parser.parse_args()

    variants: dict[str, Callable[[str], Variant]] = {"in-place": lambda _folder: in_place}
    variants["rename"] = raw_variant(anonymous=False)
    if storage._LINK_ANONYMOUS is not None:
        variants["unnamed"] = raw_variant(anonymous=True)
    variants["FileWriter/rename"] = writer_variant(anonymous=False)
    if storage._LINK_ANONYMOUS is not None:
        variants["FileWriter/unnamed"] = writer_variant(anonymous=True)

    scratch = Path(tempfile.mkdtemp(prefix="file-creation-", dir=args.dir))
    folders = {
        (repeat, name): scratch / f"{repeat}-{name.replace('/', '-')}"
        for repeat in range(args.repeats)
        for name in variants
    }
    for folder in folders.values():
        folder.mkdir()
    watcher = _start_watcher(list(folders.values())) if args.watch else None
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    original = storage._LINK_ANONYMOUS
    try:
        for repeat in range(args.repeats):
            for name, make in variants.items():
                folder = folders[repeat, name]
                write = make(str(folder))
                start = time.perf_counter()
                for index in range(args.n):
                    write(str(folder), index)
                seconds[name].append(time.perf_counter() - start)
    finally:
        storage._LINK_ANONYMOUS = original
        if watcher is not None:
            watcher.kill()
            watcher.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"# {args.n} files x {args.repeats} repeats in {scratch.parent}{' (watched)' if args.watch else ''}")
    print(f"{'variant':20s} {'files/s':>9s} {'us/file':>8s}")
    for name, runs in seconds.items():
        median = statistics.median(runs)
        print(f"{name:20s} {args.n / median:9.0f} {median / args.n * 1e6:8.1f}")


_WATCHER = """
import ctypes, os, select, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
for folder in sys.argv[1:]:  # IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
    assert libc.inotify_add_watch(fd, os.fsencode(folder), 0x2 | 0x8 | 0x80 | 0x100) >= 0
poller = select.poll()
poller.register(fd, select.POLLIN)
print("ready", flush=True)
while True:
    poller.poll()
    try:
        os.read(fd, 1 << 18)
    except BlockingIOError:
        pass
"""


def _start_watcher(folders: list[Path]) -> subprocess.Popen[str]:
    """A separate process that reads the inotify events of ``folders`` as they come."""
    process = subprocess.Popen([sys.executable, "-c", _WATCHER, *map(str, folders)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


if __name__ == "__main__":
    main()
