"""Confinement by directory handles (item 14 of issue 13): symlinks and renames below the root, at any time.

Real symlinks and renames on the real file system, with both ways of resolving (``openat2`` and the
component walk used where the kernel lacks it), both ways of publishing, and over Zenoh through the
in-process writer and the helper process.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import RigFactory
from helpers import (
    RawCamera,
    archived_files,
    assert_refused_before_zenoh,
    dead_letter_entries,
    read_entry,
    wait_for_items,
)
from heros_archiver import JsonArchiver, PathConfinementError
from heros_archiver.sinks.writer import FileWriter, WriterSettings
from heros_archiver.storage import confinement
from heros_archiver.storage.atomic import remove_file, write_atomic
from heros_archiver.storage.confinement import open_directory


@pytest.fixture(params=["openat2", "walk"])
def resolving(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each way of resolving a directory beneath the root."""
    if request.param == "openat2" and confinement._OPENAT2 is None:
        pytest.skip("no openat2 on this kernel")
    if request.param == "walk":
        monkeypatch.setattr(confinement, "_OPENAT2", None)
    return str(request.param)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory outside the archive root that nothing may ever be written to (checked at the end)."""
    directory = tmp_path / "outside"
    directory.mkdir()
    yield directory
    assert list(directory.iterdir()) == [], "something was written outside the archive root"


def _tree(directory: Path) -> list[str]:
    """Everything under ``directory`` but the archiver's own state (records of named temporaries)."""
    relative = (p.relative_to(directory) for p in directory.rglob("*"))
    return sorted(str(p) for p in relative if ".heros-archiver" not in p.parts)


# ---------------------------------------------------------------------------------------------- write_atomic
def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path, outside: Path, publishing: str, resolving: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    for target in (root / "link" / "x.npy", root / "link" / "new" / "deeper" / "x.npy"):
        with pytest.raises(PathConfinementError, match="symbolic link"):
            write_atomic(target, [b"data"], root=str(root))
    assert _tree(root) == ["link"]


def test_symlinks_below_the_root_are_refused_wherever_they_point(
    tmp_path: Path, publishing: str, resolving: str
) -> None:
    """Decision 0014: no symlink below the root is followed (the same rule with openat2 and without)."""
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "absolute").symlink_to(root / "real")
    (root / "relative").symlink_to("real")
    for name in ("absolute", "relative"):
        with pytest.raises(PathConfinementError, match=f"{name}' is a symbolic link"):
            write_atomic(root / name / "x.npy", [b"data"], root=str(root))
    assert list((root / "real").iterdir()) == []


def test_the_root_itself_may_be_a_symlink_and_may_not_exist_yet(tmp_path: Path, publishing: str) -> None:
    """The root is trusted configuration: opened by its path, following symlinks; made when missing."""
    real = tmp_path / "real-root"
    real.mkdir()
    (tmp_path / "root-link").symlink_to(real, target_is_directory=True)
    link = tmp_path / "root-link"
    write_atomic(link / "a" / "x.npy", [b"data"], root=str(link))
    assert (real / "a" / "x.npy").read_bytes() == b"data"
    missing = tmp_path / "new" / "root"
    write_atomic(missing / "x.npy", [b"data"], root=str(missing))
    assert (missing / "x.npy").read_bytes() == b"data"


def test_a_directory_replaced_by_a_symlink_after_a_write_is_refused(
    tmp_path: Path, outside: Path, publishing: str, resolving: str
) -> None:
    """The old code checked a directory once, cached it, and then wrote by name: the second file went out."""
    writer = FileWriter(WriterSettings("json", "{{ file_path }}/run/{{ i }}.json", str(tmp_path / "root")))
    root = tmp_path / "root"
    writer.write("cam", {"i": 0}, {"file_path": str(root), "i": 0})
    (root / "run").rename(root / "run-moved")
    (root / "run").symlink_to(outside)
    with pytest.raises(PathConfinementError, match="symbolic link"):
        writer.write("cam", {"i": 1}, {"file_path": str(root), "i": 1})
    assert _tree(root) == ["run", "run-moved", "run-moved/0.json"]


def test_a_dot_dot_below_the_root_is_refused_by_the_handle(tmp_path: Path, resolving: str) -> None:
    """``confine_text`` never lets ``..`` through; the handle would not follow it either."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    with pytest.raises(PathConfinementError):
        open_directory(str(root), f"{root}/a/../..", create=False)


def test_removing_a_written_file_does_not_follow_a_planted_symlink(tmp_path: Path, outside: Path) -> None:
    """An item's files are removed again when a later file of it fails: by handle too, never out of the root."""
    root = tmp_path / "root"
    write_atomic(root / "d" / "x.npy", [b"mine"], root=str(root))
    (root / "d").rename(root / "moved")
    (root / "d").symlink_to(outside)
    (outside / "x.npy").write_bytes(b"someone else's")
    with pytest.raises(PathConfinementError):
        remove_file(str(root / "d" / "x.npy"), str(root))
    assert (outside / "x.npy").read_bytes() == b"someone else's"
    (outside / "x.npy").unlink()  # the fixture checks that nothing else is there


def test_a_component_that_is_a_file_names_itself(tmp_path: Path, resolving: str) -> None:
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(OSError) as raised:
        write_atomic(tmp_path / "plain" / "deeper" / "x.npy", [b"x"], root=str(tmp_path))
    assert raised.value.errno == errno.ENOTDIR and "plain" in str(raised.value)


# ---------------------------------------------------------------------------------------------- at start
@pytest.mark.parametrize("points_to", ["outside", "inside"])
def test_a_state_directory_that_is_a_symlink_is_refused_at_start(tmp_path: Path, points_to: str) -> None:
    target = tmp_path.parent / f"elsewhere-{uuid.uuid4().hex}" if points_to == "outside" else tmp_path / "state"
    (tmp_path / ".heros-archiver").symlink_to(target, target_is_directory=True)
    assert_refused_before_zenoh(tmp_path, r"\.heros-archiver is a symbolic link")
    assert not target.exists()


# ---------------------------------------------------------------------------------------------- over Zenoh
@pytest.mark.timeout(60)
def test_a_directory_swapped_for_a_symlink_mid_run_is_refused_in_process(
    make_rig: RigFactory, tmp_path: Path, outside: Path, publishing: str
) -> None:
    rig = make_rig("{{ file_path }}/{{ run }}/{{ frame }}.npy")
    rig.camera.acquisition_data(np.arange(3), {"frame": 0, "run": "a"})
    wait_for_items(rig.archiver, 1)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    (tmp_path / "a").symlink_to(outside)
    rig.camera.acquisition_data(np.arange(3), {"frame": 1, "run": "a"})
    rig.camera.acquisition_data(np.arange(3), {"frame": 2, "run": "b"})

    total = wait_for_items(rig.archiver, 3)

    assert total["archived"] == 2 and total["dead_lettered"] == 1 and total["retried"] == 0, total
    assert archived_files(tmp_path) == ["a-moved/0.npy", "b/2.npy"]
    [entry] = dead_letter_entries(tmp_path)
    info = read_entry(entry)
    assert "PathConfinementError" in info["error"] and info["attempts"] == 1, info


@pytest.mark.timeout(60)
def test_a_directory_swapped_for_a_symlink_mid_run_is_refused_by_the_helper(
    make_rig: RigFactory, tmp_path: Path, outside: Path
) -> None:
    rig = make_rig("{{ file_path }}/{{ run }}/{{ i }}.json", archiver_cls=JsonArchiver, camera_cls=RawCamera)
    assert rig.archiver.stats()["helper_processes"], "this test is about the helper process"
    rig.camera.acquisition_data({"i": 0, "run": "a"})
    wait_for_items(rig.archiver, 1)
    (tmp_path / "a").rename(tmp_path / "a-moved")
    (tmp_path / "a").symlink_to(outside)
    rig.camera.acquisition_data({"i": 1, "run": "a"})
    rig.camera.acquisition_data({"i": 2, "run": "b"})

    total = wait_for_items(rig.archiver, 3)

    assert total["archived"] == 2 and total["dead_lettered"] == 1 and total["retried"] == 0, total
    assert archived_files(tmp_path) == ["a-moved/0.json", "b/2.json"]
    [entry] = dead_letter_entries(tmp_path)
    info = read_entry(entry)
    assert "PathConfinementError" in info["error"] and info["attempts"] == 1, info
