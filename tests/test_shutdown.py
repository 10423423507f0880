"""Shutdown is public and parallel: ``close()`` and ``with``, a drain at exit for scripts that forget
``_teardown()``, and ``heros-archiver run`` draining several archivers at once (decision 0016)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import RigFactory
from fixtures_pkg.slow import SlowArrayArchiver
from heros_archiver.testing import (
    ReliableSimulatedCamera,
    free_port,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)
from procs import (
    SLOW_ARCHIVER,
    TESTS_DIR,
    camera_archiver_arguments,
    check_frame_file,
    child,
    child_env,
    frame,
    npy_files,
    run_archiver,
    send_frames,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

SMALL = (16, 32)

SCRIPT = """
import sys
from heros_archiver.testing import session_manager, unique_realm, free_port
from procs import frame
from fixtures_pkg.slow import SlowArrayArchiver

archiver = SlowArrayArchiver(
    "{{{{ file_path }}}}/{{{{ '%03d' % frame }}}}.npy",
    object_selector="cam",
    event_name="acquisition_data",
    default_metadata={{"file_path": {archive!r}}},
    realm=unique_realm(),
    session_manager=session_manager(listen_port=free_port()),
    store_delay=0.02,
)
for index in range({count}):
    archiver.feed("cam", (frame(index, {shape!r}), {{"frame": index}}))
print("queued", archiver.stats()["queue"]["items"], flush=True)
# no _teardown(), no close(): the script just ends
"""


def test_a_script_that_never_tears_down_still_writes_its_queue(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    count = 40
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(archive=str(archive), count=count, shape=SMALL))
    env = child_env(free_port())
    with child([sys.executable, str(script)], tmp_path / "script.log", env, cwd=str(TESTS_DIR)) as proc:
        proc.proc.wait(60)
    output = proc.output()
    assert proc.proc.returncode == 0, output
    queued = int(output.split("queued ")[1].split()[0])
    assert queued > 10, output  # a real backlog when the script ended
    assert [check_frame_file(p, SMALL) for p in npy_files(archive)] == list(range(count)), output


def test_close_drains_is_idempotent_and_with_closes(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(archiver_cls=SlowArrayArchiver, store_delay=0.01)
    archiver: Any = rig.archiver
    with archiver as entered:
        assert entered is archiver
        for index in range(20):
            archiver.feed("cam", (frame(index, SMALL), {"frame": index}))
    assert archiver._pipeline.stopped and archiver._hero_destroyed
    total = archiver.stats()["total"]
    assert total["received"] == total["archived"] == 20, total
    archiver.close()  # again: nothing happens, nothing raises
    archiver._teardown()
    archiver._destroy_hero()  # what BOSS or the test rig may still call
    assert [check_frame_file(p, SMALL) for p in npy_files(tmp_path)] == list(range(20))


def test_run_drains_its_archivers_in_parallel(tmp_path: Path) -> None:
    """Two archivers behind slow storage, each with a backlog at SIGTERM: their drains overlap in time."""
    drain_log = tmp_path / "drains.log"
    port, realm = free_port(), unique_realm()
    configs = [
        {
            "_id": f"archiver-{name}",
            "classname": SLOW_ARCHIVER,
            "arguments": {
                **camera_archiver_arguments(tmp_path / name),
                "object_selector": name,
                "store_delay": 0.15,
                "drain_log": str(drain_log),
            },
        }
        for name in ("cam-a", "cam-b")
    ]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(configs))
    listening = session_manager(listen_port=port)
    cameras = [ReliableSimulatedCamera(name, realm=realm, session_manager=listening) for name in ("cam-a", "cam-b")]
    try:
        with run_archiver(config, realm, port, tmp_path / "run.log") as proc:
            wait_until(lambda: "running 2 archiver(s)" in proc.output(), what="the archivers")
            for cam in cameras:
                wait_for_subscriber(cam)
            for cam in cameras:
                send_frames(cam, list(range(12)), SMALL)
            for name in ("cam-a", "cam-b"):
                wait_until(lambda name=name: npy_files(tmp_path / name), what=f"a first file of {name}")
            code, output = proc.terminate()
    finally:
        for cam in cameras:
            cam._destroy_hero()
    assert code == 0, output
    for name in ("cam-a", "cam-b"):
        assert [check_frame_file(p, SMALL) for p in npy_files(tmp_path / name)] == list(range(12)), output
    times = {}
    for line in drain_log.read_text().splitlines():
        what, name, when = line.split()
        times[what, name] = float(when)
    assert times["start", "cam-b"] < times["end", "cam-a"] and times["start", "cam-a"] < times["end", "cam-b"], times
