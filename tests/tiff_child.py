"""Child processes of tests/test_tiff_stack.py and tests/test_tiff_archiver.py: a stack writer to SIGKILL,
and a reader that watches a stack grow.

    python tiff_child.py writer PATH COMMIT_EVERY   appends frames 0, 1, ... forever to a TiffStackContainer,
        committing every COMMIT_EVERY frames; prints "@@ COMMITTED n" after each commit returned
    python tiff_child.py watch PATH STOP            waits for the file, opens it with tifffile again and again,
        prints "@@ SEEN n" when more pages appear and "@@ BAD i" for a page whose pixels are not frame ``i``
        of tests/procs.py's kind (first element = index), and once it saw STOP pages "@@ FRAMES i,j,..." and
        "@@ SHA hex" (SHA-256 of their bytes)

Neither imports heros nor Zenoh (fast to start).
"""

from __future__ import annotations

import hashlib
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


def writer(path: str, commit_every: int) -> None:
    from heros_archiver.sinks.containers import ItemKey
    from heros_archiver.sinks.containers.tiff import TiffStackContainer

    container = TiffStackContainer(path, on_exists="append")
    index = container.committed_length
    while True:
        frame, metadata = expected_frame(index), expected_metadata(index)
        container.append(ItemKey.of("cam", frame, metadata, index), frame, metadata)
        index += 1
        if index % commit_every == 0:
            report = container.commit()
            print(f"@@ COMMITTED {report.stop}", flush=True)


def watch(path: str, stop: int) -> None:
    import tifffile

    seen = 0
    pages: list[np.ndarray] = []
    while seen < stop:
        try:
            with tifffile.TiffFile(path) as handle:
                pages = [page.asarray() for page in handle.pages]
        except (OSError, ValueError, tifffile.TiffFileError):  # not there yet, or before its first commit
            time.sleep(0.005)
            continue
        for index, page in enumerate(pages[seen:], seen):
            if int(page.flat[0]) != index:
                print(f"@@ BAD {index}", flush=True)
        if len(pages) > seen:
            seen = len(pages)
            print(f"@@ SEEN {seen}", flush=True)
        time.sleep(0.005)
    stack = np.stack(pages[:stop])
    print("@@ FRAMES " + ",".join(str(int(f.flat[0])) for f in stack), flush=True)
    print(f"@@ SHA {hashlib.sha256(np.ascontiguousarray(stack).tobytes()).hexdigest()}", flush=True)


if __name__ == "__main__":
    role, target, number = sys.argv[1:4]
    {"writer": writer, "watch": watch}[role](target, int(number))
