"""Child processes of tests/test_hdf5_container.py: an HDF5 writer to SIGKILL, a SWMR reader to watch it.

    python hdf5_child.py writer PATH DATASET COMMIT_EVERY   appends frames 0, 1, ... forever, committing
        every COMMIT_EVERY frames; prints "@@ COMMITTED n" after each commit returned
    python hdf5_child.py reader PATH DATASET STOP            polls the file as a SWMR reader, checks every
        frame it sees against ``expected_frame``; prints "@@ SEEN n" when more appear, "@@ BAD i" for a
        frame that differs, "@@ DONE n" once it saw STOP frames
    python hdf5_child.py watch PATH DATASET STOP             waits for the file and its dataset (an archiver
        makes them), polls it as a SWMR reader, prints "@@ SEEN n" when more frames appear, and once it saw
        STOP frames "@@ FRAMES i,j,..." (each frame's first element) and "@@ SHA hex" (SHA-256 of their bytes)

Both import neither heros nor Zenoh (fast to start), only the container and h5py.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

SHAPE = (24, 40)


def expected_frame(index: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Frame ``index``: random uint16 content (every byte matters for bit-identity) seeded by the index."""
    return np.random.default_rng(index).integers(0, 1 << 16, size=shape, dtype=np.uint16)


def expected_metadata(index: int) -> dict[str, Any]:
    """The metadata the writer sends with frame ``index``."""
    return {"frame": index, "exposure": 0.001 * index, "label": f"f{index}"}


def writer(path: str, dataset: str, commit_every: int) -> None:
    from heros_archiver.sinks.containers import ItemKey
    from heros_archiver.sinks.containers.hdf5 import Hdf5Container

    container = Hdf5Container(path, dataset, on_exists="append")
    index = container.committed_length
    while True:
        frame, metadata = expected_frame(index), expected_metadata(index)
        container.append(ItemKey.of("cam", frame, metadata, index), frame, metadata)
        index += 1
        if index % commit_every == 0:
            report = container.commit()
            print(f"@@ COMMITTED {report.stop}", flush=True)


def reader(path: str, dataset: str, stop: int) -> None:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the compression filters, as every reader of such files must)

    seen = 0
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        frames = handle[dataset]
        while seen < stop:
            frames.refresh()
            length = frames.shape[0]
            for index in range(seen, length):
                if not np.array_equal(frames[index], expected_frame(index)):
                    print(f"@@ BAD {index}", flush=True)
            if length > seen:
                seen = length
                print(f"@@ SEEN {seen}", flush=True)
            time.sleep(0.01)
    print(f"@@ DONE {seen}", flush=True)


def watch(path: str, dataset: str, stop: int) -> None:
    import hashlib
    import os

    import h5py

    while True:
        try:
            if os.path.exists(path):
                with h5py.File(path, "r", libver="latest", swmr=True) as handle:
                    if dataset in handle:
                        break
        except OSError:
            pass  # created, not yet in SWMR mode (HDF5's own lock): look again
        time.sleep(0.01)
    seen = 0
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        frames = handle[dataset]
        while seen < stop:
            frames.refresh()
            if frames.shape[0] > seen:
                seen = frames.shape[0]
                print(f"@@ SEEN {seen}", flush=True)
            time.sleep(0.005)
        stack = frames[:seen]
    print("@@ FRAMES " + ",".join(str(int(f.flat[0])) for f in stack), flush=True)
    print(f"@@ SHA {hashlib.sha256(np.ascontiguousarray(stack).tobytes()).hexdigest()}", flush=True)


if __name__ == "__main__":
    role, target, name, number = sys.argv[1:5]
    {"writer": writer, "reader": reader, "watch": watch}[role](target, name, int(number))
