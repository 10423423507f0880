"""The benchmark harness's check of TIFF stacks (benchmarks/bench.py verify_tiff_stack), on real stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heros_archiver.sinks.containers import ItemKey
from heros_archiver.sinks.containers.tiff import TiffStackContainer
from test_bench_harness import bench


def _committed_stack(path: Path, frames: list[np.ndarray]) -> None:
    """A stack as TiffArchiver(stack=True) writes it (the real container), every frame committed."""
    with TiffStackContainer(path) as container:
        for k, frame in enumerate(frames):
            container.append(ItemKey.of("cam1", frame, None, k), frame, {"frame": k}, received=100.0 + k)


def _frames(indices: list[int], shape: tuple[int, int], pixels: str = "random") -> list[np.ndarray]:
    out = []
    for i in indices:
        frame = bench.base_frame(shape, pixels)
        bench.stamp(frame, i)
        out.append(frame)
    return out


@pytest.mark.parametrize("pixels", bench.PIXELS)
def test_verify_tiff_stack_loads_every_page_and_times_it_by_its_commit(tmp_path: Path, pixels: str) -> None:
    shape = (8, 6)
    frames = _frames([0, 1, 2, 2, 4, 5], shape, pixels)  # frame 2 twice (a duplicate), frame 3 never (lost)
    frames[5][3, 3] ^= 1  # frame 5 arrives with one pixel changed
    _committed_stack(tmp_path / "run.tif", frames)
    commits = [[10.0, 0], [11.0, 4], [12.0, 6]]  # pages 0-3 committed by t=11, pages 4-5 by t=12

    good, bad, dup, partial, by_received = bench.verify_tiff_stack(tmp_path, 6, shape, {"commits": commits}, pixels)

    assert sorted(good) == [0, 1, 2, 4]
    assert (bad, dup, partial, by_received) == (1, 1, None, 0)
    assert good[0] == good[1] == 11.0 and good[4] == 12.0


def test_verify_tiff_stack_times_pages_committed_after_the_last_poll_by_their_receipt(tmp_path: Path) -> None:
    shape = (4, 4)
    _committed_stack(tmp_path / "run.tif", _frames([0, 1, 2], shape))

    good, bad, dup, _partial, by_received = bench.verify_tiff_stack(
        tmp_path, 3, shape, {"commits": [[10.0, 0], [11.0, 2]]}
    )

    assert (bad, dup, by_received) == (0, 0, 1)
    assert good == {0: 11.0, 1: 11.0, 2: 102.0}
