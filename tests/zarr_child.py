"""A reader of a growing Zarr array in another process, for tests/test_zarr_append_archiver.py.

    python zarr_child.py watch STORE ARRAY STOP   waits for the array (an archiver makes it), then polls it:
        each poll opens it afresh with zarr.open_array and reads every frame its shape says; it also re-reads
        the frames of the array object opened at the poll before (the old shape, the old shard index) and
        prints "@@ BAD ..." if they changed or if any read failed. Prints "@@ SEEN n" when the shape grows,
        and once it saw STOP frames "@@ FRAMES i,j,..." (each frame's first element) and "@@ SHA hex"
        (SHA-256 of their bytes).

Imports neither heros nor Zenoh (fast to start), only zarr and numpy.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np


def watch(store: str, array_path: str, stop: int) -> None:
    import zarr

    while not os.path.exists(os.path.join(store, array_path, "zarr.json")):
        time.sleep(0.01)
    seen, old, old_sha = 0, None, ""
    while seen < stop:
        try:
            frames = zarr.open_array(store, path=array_path, mode="r")
            length = frames.shape[0]
            stack = frames[:length]
            if old is not None:  # the previous poll's array object: its old shape, read again now
                again = old[: old.shape[0]]
                if hashlib.sha256(np.ascontiguousarray(again).tobytes()).hexdigest() != old_sha:
                    print(f"@@ BAD frames 0..{old.shape[0] - 1} changed while the array grew", flush=True)
            if [int(f.flat[0]) for f in stack] != list(range(length)):
                print(f"@@ BAD frames of a shape-{length} array: {[int(f.flat[0]) for f in stack]}", flush=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read is what the test looks for
            print(f"@@ BAD read failed: {exc!r}", flush=True)
            time.sleep(0.01)
            continue
        old, old_sha = frames, hashlib.sha256(np.ascontiguousarray(stack).tobytes()).hexdigest()
        if length > seen:
            seen = length
            print(f"@@ SEEN {seen}", flush=True)
        time.sleep(0.005)
    stack = zarr.open_array(store, path=array_path, mode="r")[:seen]
    print("@@ FRAMES " + ",".join(str(int(f.flat[0])) for f in stack), flush=True)
    print(f"@@ SHA {hashlib.sha256(np.ascontiguousarray(stack).tobytes()).hexdigest()}", flush=True)


if __name__ == "__main__":
    role, target, name, number = sys.argv[1:5]
    {"watch": watch}[role](target, name, int(number))
