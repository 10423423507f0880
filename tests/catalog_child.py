"""Child process of tests/test_catalog.py: an archiver that archives items until it is killed (SIGKILL).

    python catalog_child.py KIND ROOT [URL]   KIND: npy (ArrayArchiver, small frames created by its helper
                                              process; npy-unique: all named x.npy, on_exists="unique"),
                                              npy-big (1 MiB frames written by the writer
                                              thread), json
                                              (JsonArchiver, files created by its helper process) or hdf5
                                              (Hdf5Archiver, frames committed to one file), tiff-stack (TiffArchiver,
                                              pages committed to one stack), parquet (ParquetArchiver, rows
                                              journaled for one file) or zarr (ZarrArchiver, an array
                                              published per frame); URL: a PostgreSQL
                                              catalog_url (tests/test_catalog_postgres.py)

Prints ``@@ PIDS p1 p2 ...`` (its catalog applier and helper processes, which a kill of this process's group
does not reach: the test stops them by PID if they outlive it), then feeds items 0, 1, 2, ... as fast as the
archiver takes them (``feed``, no Zenoh sender; npy-big at ~100 a second) and prints ``@@ ARCHIVED n`` every 100
items (10 of npy-big) once the archiver counts n archived, so the test can kill it in the middle of a run. It
never stops by itself. With ``HEROS_TEST_UNJOURNALED=N`` it archives 2N items (20 at least), journals the commit
lines of the first N only, prints ``@@ DONE`` and waits to be killed. With ``HEROS_TEST_OBJECT_ROOT=s3://...`` (its
store's credentials and endpoint in the environment) the archiver's root is that location and ROOT its state
directory (zarr-append only: the one container archiver that writes to an object store).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import numpy as np

from heros_archiver import (
    ArrayArchiver,
    Hdf5Archiver,
    JsonArchiver,
    ParquetArchiver,
    TiffArchiver,
    ZarrAppendArchiver,
    ZarrArchiver,
)
from heros_archiver.testing import free_port, session_manager, unique_realm

TEMPLATES = {
    "npy": (ArrayArchiver, {"save_template": "{{ file_path }}/{{ '%05d' % frame }}.npy"}),
    "npy-big": (ArrayArchiver, {"save_template": "{{ file_path }}/{{ '%05d' % frame }}.npy"}),
    # every item named alike: on_exists="unique" makes x.npy, x-1.npy, ... (the names differ from the intents')
    "npy-unique": (ArrayArchiver, {"save_template": "{{ file_path }}/x.npy", "on_exists": "unique"}),
    "json": (JsonArchiver, {"save_template": "{{ file_path }}/{{ '%05d' % frame }}.json"}),
    "hdf5": (Hdf5Archiver, {"file_template": "{{ file_path }}/run.h5", "flush_frames": 25}),
    "tiff-stack": (TiffArchiver, {"save_template": "{{ file_path }}/run.tif", "stack": True, "flush_frames": 25}),
    "parquet": (ParquetArchiver, {"file_template": "{{ file_path }}/run.parquet", "flush_items": 25}),
    "zarr-append": (ZarrAppendArchiver, {"store_template": "{{ file_path }}/run.zarr", "flush_frames": 25}),
    "zarr": (
        ZarrArchiver,
        {"store_template": "{{ file_path }}/run.zarr", "array_path_template": "cam/{{ '%05d' % frame }}"},
    ),
}


def payload(kind: str, index: int) -> object:
    """Item ``index``'s data."""
    if kind in ("json", "parquet"):
        return {"value": index * 0.5, "index": index}
    if kind == "npy-big":  # 1 MiB: written by the writer thread through the writeback window, not by a helper
        return np.full((512, 1024), index, dtype=np.uint16)
    return np.full((16, 16), index, dtype=np.uint16)


def drop_commit_lines_from(first: int) -> None:
    """Journal no commit line for items whose ``frame`` is ``first`` or more, as a kill right after their files
    were made and before their commit line would leave them (``HEROS_TEST_UNJOURNALED``): deterministic."""
    from heros_archiver.observe.catalog import CatalogListener

    handle = CatalogListener.handle

    def handle_earlier(self: CatalogListener, outcomes: Any) -> None:
        handle(self, [outcome for outcome in outcomes if outcome.metadata.get("frame", 0) < first])

    CatalogListener.handle = handle_earlier  # type: ignore[method-assign]


def arguments(kind: str, root: str) -> tuple[type[Any], dict[str, Any]]:
    """The archiver class of ``kind`` and its arguments for ``root`` (an object-store root and ``root`` its state
    directory with ``HEROS_TEST_OBJECT_ROOT``), as this child and the restart after its kill make it."""
    cls, template = TEMPLATES[kind]
    location = os.environ.get("HEROS_TEST_OBJECT_ROOT")
    if location is None:
        return cls, {"default_metadata": {"file_path": root}, **template}
    if kind != "zarr-append":
        raise SystemExit(f"HEROS_TEST_OBJECT_ROOT: expected the kind zarr-append, got {kind!r}")
    return cls, {**template, "store_template": "run.zarr", "root": location, "state_dir": root}


def main(kind: str, root: str, url: str | None = None) -> None:
    unjournaled = os.environ.get("HEROS_TEST_UNJOURNALED")
    if unjournaled:
        drop_commit_lines_from(int(unjournaled))
    cls, kwargs = arguments(kind, root)
    archiver = cls(
        object_selector="crash-sender",
        event_name="acquisition_data",
        realm=unique_realm(),
        session_manager=session_manager(listen_port=free_port()),
        sequence_key="frame",
        catalog_url=url,
        **kwargs,
    )
    stats = archiver.stats()
    print("@@ PIDS", stats["catalog"]["applier_pid"], *stats["helper_processes"], flush=True)
    index = 0
    if unjournaled:  # twice as many items as journaled (20 at least), then wait to be killed
        total = max(2 * int(unjournaled), 20)
        for index in range(total):
            archiver.feed("cam", (payload(kind, index), {"frame": index, "run": "crash"}))
        while archiver.stats()["total"]["archived"] < total:
            threading.Event().wait(0.01)
        print("@@ DONE", flush=True)
        threading.Event().wait()
    while True:
        archiver.feed("cam", (payload(kind, index), {"frame": index, "run": "crash"}))
        index += 1
        if kind == "npy-big":
            threading.Event().wait(0.01)  # ~100 MiB/s: the test kills it after a few dozen, not a GiB
        if index % (10 if kind == "npy-big" else 100) == 0:
            print(f"@@ ARCHIVED {archiver.stats()['total']['archived']}", flush=True)
            threading.Event().wait(0.001)


if __name__ == "__main__":
    main(*sys.argv[1:4])
