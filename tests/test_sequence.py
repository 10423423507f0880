"""sequence_key: gaps and repeats of a running number are counted per source and logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import RigFactory
from procs import check_frame_file, npy_files, send_frames, settled, wait_until

pytestmark = pytest.mark.timeout(60)

SHAPE = (8, 8)


def test_gaps_and_repeats_are_counted_and_logged(
    make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="heros_archiver")
    rig = make_rig(sequence_key="frame")
    sent = [0, 1, 2, 5, 6, 10, 6]  # two gaps (3-4, 7-9) and frame 6 again

    send_frames(rig.camera, sent, SHAPE)
    wait_until(lambda: settled(rig.archiver.stats()) >= len(sent), what="every frame settled")

    stats = rig.archiver.stats()
    cam = stats["sources"]["cam"]
    assert cam["received"] == len(sent), cam
    assert cam["gaps"] == 2 and cam["missing"] == 5, cam
    assert cam["missing_ranges"] == [[3, 4], [7, 9]], cam
    assert cam["duplicates"] == 1 and cam["last_sequence"] == 10, cam
    assert stats["total"]["gaps"] == 2 and stats["total"]["missing"] == 5, stats["total"]
    # the repeat holds the same bytes as the file already written: counted as archived, not duplicated
    assert cam["archived"] == len(sent) and cam["dead_lettered"] == 0, cam
    assert [check_frame_file(p, SHAPE) for p in npy_files(tmp_path)] == sorted(set(sent))

    messages = [r.getMessage() for r in caplog.records if r.name == "heros_archiver" and r.levelno >= logging.WARNING]
    assert any("frame 3-4 never arrived from cam" in m for m in messages), messages
    assert any("frame 7-9 never arrived from cam" in m for m in messages), messages
    assert any("frame 6 from cam" in m and "again" in m for m in messages), messages


def test_without_sequence_key_nothing_is_counted(make_rig: RigFactory) -> None:
    rig = make_rig()
    send_frames(rig.camera, [0, 5], SHAPE)
    wait_until(lambda: settled(rig.archiver.stats()) >= 2, what="both frames settled")
    cam = rig.archiver.stats()["sources"]["cam"]
    assert cam["gaps"] == 0 and cam["missing"] == 0 and cam["missing_ranges"] == [] and cam["duplicates"] == 0, cam
