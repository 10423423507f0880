"""Storage faults end to end: a blocked target directory, a full disk, teardown with a backlog, SIGKILL mid-write."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import RigFactory
from fixtures_pkg.slow import SlowArrayArchiver
from helpers import immutable, tiny_file_system
from heros_archiver import StorageError
from heros_archiver.sinks.writer import FileWriter, WriterSettings
from heros_archiver.testing import free_port, unique_realm
from procs import (
    SLOW_ARCHIVER,
    camera,
    camera_archiver_arguments,
    check_frame_file,
    entries,
    frame,
    npy_files,
    parse_stats_table,
    read_entry,
    run_archiver,
    run_cli,
    send_frames,
    settled,
    temporaries,
    tree_state,
    wait_for_archiver,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

SMALL = (16, 32)


# ---------------------------------------------------------------------------------------------- (a) blocked target
def test_target_directory_unwritable_for_3_s_loses_nothing(make_rig: RigFactory, tmp_path: Path) -> None:
    """The target directory refuses new files for ~3 s (immutable: EPERM, even for root); the default retries
    bridge it. (A file in the way of the directory is no passing fault: it comes from the item, and is
    dead-lettered at once, tests/test_input_errors.py.)"""
    archive = tmp_path / "archive"
    target = archive / "target"
    target.mkdir(parents=True)
    rig = make_rig("{{ file_path }}/{{ sub }}/{{ '%03d' % frame }}.npy", default_metadata={"file_path": str(archive)})
    assert rig.archiver.root == archive  # the dead-letter store stays writable

    sent = list(range(10))
    with immutable(target):
        send_frames(rig.camera, sent, SMALL, sub="target")
        wait_until(lambda: rig.archiver.stats()["total"]["retried"] > 0, what="a failed write")
        time.sleep(3.0)  # the fault lasts ~3 s (not an assertion on timing)
        assert rig.archiver.stats()["total"]["archived"] == 0
    # writable again

    wait_until(lambda: settled(rig.archiver.stats()) >= len(sent), what="every frame settled")
    total = rig.archiver.stats()["total"]
    assert total["received"] == total["archived"] == len(sent), total
    assert total["dead_lettered"] == 0 and total["dropped"] == 0 and total["retried"] > 0, total
    files = npy_files(target)
    assert [p.name for p in files] == [f"{i:03d}.npy" for i in sent]
    assert [check_frame_file(p, SMALL) for p in files] == sent
    assert entries(archive / ".heros-archiver" / "dead-letter") == []


# ---------------------------------------------------------------------------------------------- (b) full disk
def test_disk_full_dead_letters_then_replay_archives_all(tmp_path: Path) -> None:
    """Target file system full (a 1 MiB tmpfs; the root with the dead-letter store elsewhere): the frames that do
    not fit are dead-lettered with the disk's error; after freeing space ``replay`` archives them exactly once."""
    shape = (256, 512)  # 256 KiB: three fit into 1 MiB
    archive = tmp_path / "archive"
    data = archive / "data"
    dead_letters = archive / ".heros-archiver" / "dead-letter"
    port, realm = free_port(), unique_realm()
    config = write_config(
        tmp_path / "config.json",
        camera_archiver_arguments(
            archive,
            "{{ file_path }}/data/{{ '%03d' % frame }}.npy",
            root=str(archive),
            max_retries=2,
            retry_delay=0.05,
        ),
    )
    sent = list(range(8))
    with tiny_file_system(data, "1m"):
        with camera(port, realm) as cam, run_archiver(config, realm, port, tmp_path / "run.log") as proc:
            wait_for_archiver(cam, proc)
            send_frames(cam, sent, shape)
            wait_until(lambda: len(npy_files(data)) + len(entries(dead_letters)) >= len(sent), what="all settled")
            code, output = proc.terminate()
        assert code == 0, output
        total = parse_stats_table(output)
        archived = [check_frame_file(p, shape) for p in npy_files(data)]
        assert 0 < len(archived) < len(sent), (archived, output)
        assert total["received"] == len(sent), output
        assert total["received"] == total["archived"] + total["dead_lettered"], output
        assert total["archived"] == len(archived) and total["dropped"] == 0, output
        dead = entries(dead_letters)
        assert len(dead) == total["dead_lettered"]
        for entry in dead:
            info = read_entry(entry)
            assert info["error"].startswith("StorageError") and "/data/0" in info["error"], info
            assert "No space left on device" in info["error"], info["error"]
            assert info["attempts"] == 3 and info["writer"]["save_template"].endswith(".npy"), info
            assert check_frame_file(entry / "payload.npy", shape) == info["metadata"]["frame"]
        assert temporaries(data) == []

        subprocess.run(["mount", "-o", "remount,size=8m", str(data)], check=True)  # space freed

        first = run_cli(["replay", str(dead_letters)])
        assert first.returncode == 0, first.stdout
        assert f"archived {len(dead)} of {len(dead)} item(s); 0 failed" in first.stdout
        files = npy_files(data)
        assert [check_frame_file(p, shape) for p in files] == sent
        assert [p.name for p in files] == [f"{i:03d}.npy" for i in sent]
        assert entries(dead_letters) == []

        before = tree_state(archive)
        again = run_cli(["replay", str(dead_letters)])
        assert again.returncode == 0, again.stdout
        assert "archived 0 of 0 item(s)" in again.stdout
        assert tree_state(archive) == before


def test_disk_full_error_names_the_cause(tmp_path: Path) -> None:
    data = tmp_path / "data"
    writer = FileWriter(WriterSettings("npy", "{{ '%03d' % frame }}.npy", str(data)))
    with tiny_file_system(data, "64k"):
        with pytest.raises(StorageError) as raised:
            writer.write("cam", frame(0, (256, 512)), {"frame": 0})
        assert temporaries(data) == [] and npy_files(data) == []
    assert raised.value.errno == errno.ENOSPC, raised.value
    assert "No space left on device" in str(raised.value)


# ---------------------------------------------------------------------------------------------- (c) teardown
def _feed(archiver: Any, count: int) -> None:
    for index in range(count):
        archiver.feed("cam", (frame(index, SMALL), {"frame": index}))


def test_teardown_drains_200_items_behind_slow_storage(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(archiver_cls=SlowArrayArchiver, store_delay=0.02)
    _feed(rig.archiver, 200)
    assert rig.archiver.stats()["queue"]["items"] > 100  # a real backlog

    rig.archiver._teardown()

    total = rig.archiver.stats()["total"]
    assert total["received"] == total["archived"] == 200 and total["dead_lettered"] == 0, total
    files = npy_files(tmp_path)
    assert [check_frame_file(p, SMALL) for p in files] == list(range(200))


def test_teardown_spills_the_backlog_and_the_next_start_archives_it(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(archiver_cls=SlowArrayArchiver, store_delay=0.02, drain_timeout=0.2, overflow="spill")
    _feed(rig.archiver, 200)

    rig.archiver._teardown()

    first = rig.archiver.stats()
    spool = Path(first["spool_dir"])
    left = entries(spool)
    assert first["total"]["dead_lettered"] == 0 and first["total"]["dropped"] == 0, first["total"]
    assert first["total"]["archived"] + len(left) == 200 and len(left) > 0, (first["total"], len(left))
    assert len(npy_files(tmp_path)) == first["total"]["archived"]

    second = make_rig()  # a new archiver on the same root resumes the spool at start
    wait_until(lambda: settled(second.archiver.stats()) >= len(left), what="the spool archived")
    wait_until(lambda: entries(spool) == [], what="the spool emptied")
    total = second.archiver.stats()["total"]
    assert total["archived"] == total["received"] == len(left) and total["dead_lettered"] == 0, total
    files = npy_files(tmp_path)
    assert [check_frame_file(p, SMALL) for p in files] == list(range(200))


# ---------------------------------------------------------------------------------------------- (d) SIGKILL
def test_sigkill_mid_write_leaves_only_complete_files_and_the_spool_resumes(tmp_path: Path) -> None:
    shape = (2048, 2048)  # 8 MiB of uint16
    count = 24
    archive = tmp_path / "archive"
    port, realm = free_port(), unique_realm()
    config = write_config(
        tmp_path / "config.json",
        camera_archiver_arguments(archive, overflow="spill", max_queue_bytes=32 * 2**20, store_delay=0.1),
        classname=SLOW_ARCHIVER,
    )
    spool = archive / ".heros-archiver" / "spool"
    caught_temporary = False
    with camera(port, realm) as cam:
        with run_archiver(config, realm, port, tmp_path / "run-1.log") as proc:
            wait_for_archiver(cam, proc)
            send_frames(cam, list(range(count)), shape)
            wait_until(lambda: len(npy_files(archive)) >= 3, what="some frames written")
            # kill while a file is being written if we can see one (a temporary), but with a backlog left
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not caught_temporary and len(entries(spool)) > 3:
                caught_temporary = any(e.name.startswith(".~heros-archiver") for e in os.scandir(archive))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.proc.wait(30)
        assert proc.proc.returncode == -signal.SIGKILL

        written = {check_frame_file(p, shape): p for p in npy_files(archive)}  # each one complete and right
        spooled = {read_entry(e)["metadata"]["frame"] for e in entries(spool)}
        expected = set(written) | spooled
        print(
            f"\nSIGKILL: {len(written)} files written, {len(spooled)} in the spool, "
            f"temporary seen: {caught_temporary}, lost in memory: {count - len(expected)} of {count}"
        )
        assert spooled, "the backlog should be in the spool"

        with run_archiver(config, realm, port, tmp_path / "run-2.log") as proc:
            wait_for_archiver(cam, proc)
            assert temporaries(archive) == []  # removed at start, before anything is written
            wait_until(lambda: entries(spool) == [], what="the spool archived")
            wait_until(lambda: {int(p.stem) for p in npy_files(archive)} >= expected, what="spooled frames written")
            code, output = proc.terminate()
        assert code == 0, output
        print("restart:", next((line.strip() for line in output.splitlines() if "stale temporary" in line), "-"))
        total = parse_stats_table(output)
        assert total["received"] == total["archived"] == len(spooled) and total["dead_lettered"] == 0, output

    final = {check_frame_file(p, shape) for p in npy_files(archive)}
    assert final == expected
    assert all(int(p.stem) == check_frame_file(p, shape) for p in npy_files(archive))
    assert temporaries(archive) == []
    leftovers = sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []
    print(f"left in the spool directory after the restart: {leftovers}")
