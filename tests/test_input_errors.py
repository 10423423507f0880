"""Errors that come from the item are not retried (item 16 of issue 13): dead-lettered after one attempt.

A rendered name too long for the file system and a path component that is an existing file, on the real
file system, through the in-process writer (both ways of publishing) and through the helper process.
Retrying them gave the same answer five times over ~10 s of backoff, stalling the lane for every such
event; now the writer goes on with the next item at once (asserted on counters, not on time).
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import RawCamera, archived_files, dead_letter_entries, read_entry, wait_for_items
from heros_archiver import JsonArchiver, StorageError
from heros_archiver.errors import InvalidTargetError, storage_error
from heros_archiver.storage.atomic import write_atomic

pytestmark = pytest.mark.timeout(60)

LONG_NAME = "n" * 300  # ext4, XFS, btrfs and tmpfs allow 255 bytes per name


def _check_dead_letters(root: Path, count: int) -> None:
    entries = dead_letter_entries(root)
    assert len(entries) == count
    for entry in entries:
        info = read_entry(entry)
        assert info["attempts"] == 1, info


def test_input_errors_are_dead_lettered_at_once_in_process(
    make_rig: RigFactory, tmp_path: Path, publishing: str
) -> None:
    (tmp_path / "plain").write_text("a file where a directory would be")
    rig = make_rig("{{ file_path }}/{{ folder }}/{{ name }}.npy", retry_delay=5.0)  # a retry would show
    rig.camera.acquisition_data(np.arange(3), {"folder": "ok", "name": LONG_NAME})
    rig.camera.acquisition_data(np.arange(3), {"folder": "plain", "name": "x"})
    rig.camera.acquisition_data(np.arange(3), {"folder": "ok", "name": "good"})

    total = wait_for_items(rig.archiver, 3)

    assert total["dead_lettered"] == 2 and total["archived"] == 1 and total["retried"] == 0, total
    assert archived_files(tmp_path) == ["ok/good.npy", "plain"]
    _check_dead_letters(tmp_path, 2)


def test_input_errors_are_dead_lettered_at_once_by_the_helper(make_rig: RigFactory, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file where a directory would be")
    rig = make_rig(
        "{{ file_path }}/{{ folder }}/{{ name }}.json", archiver_cls=JsonArchiver, camera_cls=RawCamera, retry_delay=5.0
    )
    assert rig.archiver.stats()["helper_processes"], "this test is about the helper process"
    rig.camera.acquisition_data({"folder": "ok", "name": LONG_NAME})
    rig.camera.acquisition_data({"folder": "plain", "name": "x"})
    rig.camera.acquisition_data({"folder": "ok", "name": "good"})

    total = wait_for_items(rig.archiver, 3)

    assert total["dead_lettered"] == 2 and total["archived"] == 1 and total["retried"] == 0, total
    assert archived_files(tmp_path) == ["ok/good.json", "plain"]
    _check_dead_letters(tmp_path, 2)


def test_the_file_system_names_the_cause(tmp_path: Path, publishing: str) -> None:
    (tmp_path / "plain").write_text("")
    cases = [
        (tmp_path / f"{LONG_NAME}.npy", errno.ENAMETOOLONG),
        (tmp_path / LONG_NAME / "x.npy", errno.ENAMETOOLONG),
        (tmp_path / "plain" / "x.npy", errno.ENOTDIR),
    ]
    for target, code in cases:
        with pytest.raises(InvalidTargetError) as raised:
            write_atomic(target, [b"data"], root=str(tmp_path))
        assert raised.value.errno == code and raised.value.permanent, raised.value
        assert str(target) in str(raised.value)
    assert archived_files(tmp_path) == ["plain"]


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (errno.ENAMETOOLONG, True),
        (errno.ENOTDIR, True),
        (errno.EISDIR, True),
        (errno.ELOOP, True),
        (errno.EINVAL, True),
        (errno.ENOSPC, False),
        (errno.EIO, False),
        (errno.EPERM, False),
        (errno.EROFS, False),
    ],
)
def test_permanence_is_decided_by_errno_in_one_place(code: int, permanent: bool) -> None:
    error = storage_error(code, "writing 'x' failed")
    assert isinstance(error, StorageError) and error.errno == code and error.permanent is permanent
