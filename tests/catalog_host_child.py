"""Child process of tests/test_catalog_postgres.py: one "host" (a network namespace) with its own camera and an
archiver that keeps its catalog in the shared PostgreSQL database of another host.

    python catalog_host_child.py KIND ROOT URL HOST FRAMES     KIND: npy (ArrayArchiver) or hdf5 (Hdf5Archiver)

The camera and the archiver talk Zenoh over the namespace's own loopback; the catalog goes over the namespace
network to URL. Sends FRAMES frames, waits until all are archived, stops the archiver (its catalog applied) and
prints ``@@ DONE n`` with the archived count; then exits.
"""

from __future__ import annotations

import sys
import time

from heros_archiver import ArrayArchiver, Hdf5Archiver
from heros_archiver.testing import (
    ReliableSimulatedCamera,
    free_port,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)


def main(kind: str, root: str, url: str, host: str, frames: str) -> None:
    realm, port = unique_realm(), free_port()
    camera = ReliableSimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    common = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "realm": realm,
        "session_manager": session_manager(connect_port=port),
        "sequence_key": "frame",
        "catalog_url": url,
        "catalog_host": host,
        "root": root,
        "default_metadata": {"host": host},
    }
    if kind == "hdf5":
        archiver = Hdf5Archiver(file_template=f"{root}/run.h5", flush_frames=10, **common)
    else:
        archiver = ArrayArchiver(save_template=f"{root}/{{{{ '%03d' % frame }}}}.npy", **common)
    try:
        wait_for_subscriber(camera, "acquisition_data")
        sent = camera.acquire(int(frames), shape=(32, 32), dtype="uint16")
        deadline = time.monotonic() + 60
        while archiver.stats()["total"]["archived"] < sent and time.monotonic() < deadline:
            time.sleep(0.02)
        archived = archiver.stats()["total"]["archived"]
    finally:
        archiver.close()
        camera._destroy_hero()
    print(f"@@ DONE {archived}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
