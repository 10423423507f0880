"""The spec's BOSS example, run for real: `boss` starts an ArrayArchiver from a JSON config in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from heros import RemoteHERO
from heros.zenoh import ZenohSessionManager

from helpers import RawCamera, assert_npy_equal, remote_hero, wait_until
from heros_archiver.testing import (
    ReliableSimulatedCamera,
    SimulatedCamera,
    free_port,
    loopback_config_json,
    loopback_settings,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)
from heros_archiver.transport import heros_compat
from procs import group_alive, publishing_helpers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(110)]

#: The save_template of the spec's example, verbatim.
SPEC_TEMPLATE = "{{ file_path }}/testimg-{{ '%04d' % ( frame / 2 ) |round(0, 'floor') }}-{{ frame % 2 }}.npy"
BOSS = Path(sys.executable).parent / "boss"


def _start_boss(config_file: Path, realm: str, port: int, log_file: Path) -> subprocess.Popen[bytes]:
    """``boss`` with one config file, in a session of its own, connected to the camera's loopback port."""
    env = {**os.environ, "HEROS_ZENOH_CONFIG": loopback_config_json(connect_port=port)}
    with open(log_file, "wb") as log:
        return subprocess.Popen(
            [str(BOSS), "-u", config_file.as_uri(), "--realm", realm],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=config_file.parent,
            start_new_session=True,
        )


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the process group of ``process`` (boss and its workers), by its id."""
    pgid = process.pid  # start_new_session=True: the boss leads its own group
    if process.poll() is None or group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def test_boss_runs_the_spec_example(tmp_path: Path) -> None:
    images = tmp_path / "images"
    # not created: the archiver must create its root on the first write
    # boss reads one JSON document per URL: a single HERO config (an object with "_id"), or CouchDB-style
    # {"rows": [{"doc": ...}]}; a bare JSON list is not accepted (Document.update() of a list fails).
    config = {
        "_id": "my-camera-capturer",
        "classname": "heros_archiver.ArrayArchiver",
        "arguments": {
            "object_selector": "cam",
            "event_name": "acquisition_data",
            "default_metadata": {"file_path": str(images)},
            "save_template": SPEC_TEMPLATE,
        },
    }
    config_file = tmp_path / "archiver.json"
    config_file.write_text(json.dumps(config))
    log_file = tmp_path / "boss.log"

    port = free_port()
    realm = unique_realm()
    camera = ReliableSimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    process: subprocess.Popen[bytes] | None = None
    try:
        process = _start_boss(config_file, realm, port, log_file)
        try:
            wait_for_subscriber(camera, timeout=60)
        except TimeoutError:
            pytest.fail(f"the archiver under boss never subscribed; boss log:\n{log_file.read_text()}")

        frames = [np.arange(12, dtype=np.uint16).reshape(3, 4) + 100 * i for i in range(3)]
        for i, frame in enumerate(frames):
            camera.acquisition_data(frame, {"frame": i})

        expected = {
            images / "testimg-0000-0.npy": frames[0],
            images / "testimg-0000-1.npy": frames[1],
            images / "testimg-0001-0.npy": frames[2],
        }
        try:
            wait_until(lambda: all(p.exists() for p in expected), 30, f"{sorted(map(str, expected))} to appear")
        except AssertionError as exc:
            pytest.fail(f"{exc}; boss log:\n{log_file.read_text()}")
        for path, frame in expected.items():
            assert_npy_equal(path, frame)
        assert sorted(p.name for p in images.iterdir() if p.is_file()) == sorted(p.name for p in expected)

        # BOSS exposes public methods as capabilities: another process (here: the test) asks for the figures
        remote = remote_hero("my-camera-capturer", realm, heros_compat.session_manager(camera))
        try:
            stats = remote.stats()
        finally:
            remote._destroy_hero()
        assert stats["total"]["received"] == stats["total"]["archived"] == 3, stats
        assert stats["sources"]["cam"]["archived"] == 3 and stats["queue"]["items"] == 0, stats

        os.killpg(process.pid, signal.SIGTERM)
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"boss did not stop within 30 s of SIGTERM; log:\n{log_file.read_text()}")
        assert returncode == 0, log_file.read_text()
        deadline = time.monotonic() + 15
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(process.pid), "a boss worker outlived boss after SIGTERM"
        log_text = log_file.read_text()
        assert re.search(r"received 3, archived 3\b", log_text), f"no final figures from _teardown in:\n{log_text}"
        # nothing was dead-lettered
        assert not (images / ".heros-archiver" / "dead-letter").exists() or not any(
            (images / ".heros-archiver" / "dead-letter").iterdir()
        )
    finally:
        if process is not None:
            _stop_group(process)
        camera._destroy_hero()


def _group_of(pid: int) -> int | None:
    """The process group of ``pid``, or None once it is gone."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_boss_runs_a_json_archiver_whose_helper_ends_with_it(tmp_path: Path) -> None:
    """A reference JsonArchiver config under BOSS (classname changed only): events archived through the
    helper process, and BOSS's SIGTERM leaves neither a worker nor a helper behind."""
    config = {
        "_id": "event-archiver",
        "classname": "heros_archiver.JsonArchiver",
        "arguments": {
            "object_selector": "sensor",
            "event_name": "acquisition_data",
            "default_metadata": {"file_path": str(tmp_path / "events")},
            "save_template": "{{ file_path }}/reading-{{ '%03d' % i }}.json",
        },
    }
    config_file = tmp_path / "archiver.json"
    config_file.write_text(json.dumps(config))
    port, realm = free_port(), unique_realm()
    sensor = RawCamera("sensor", realm=realm, session_manager=session_manager(listen_port=port))
    process: subprocess.Popen[bytes] | None = None
    helpers: list[int] = []
    try:
        process = _start_boss(config_file, realm, port, tmp_path / "boss.log")
        wait_for_subscriber(sensor, timeout=60)
        for i in range(50):
            sensor.acquisition_data({"i": i, "value": i / 4})
        names = [f"reading-{i:03d}.json" for i in range(50)]
        wait_until(lambda: all((tmp_path / "events" / name).exists() for name in names), 30, "50 files")
        helpers = [pid for pid, parent in publishing_helpers().items() if _group_of(parent) == process.pid]
        assert len(helpers) == 1, helpers

        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (tmp_path / "boss.log").read_text()
        wait_until(lambda: not group_alive(process.pid) and not any(Path(f"/proc/{p}").exists() for p in helpers), 15)
    finally:
        if process is not None:
            _stop_group(process)
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        sensor._destroy_hero()
    assert sorted(p.name for p in (tmp_path / "events").iterdir() if p.is_file()) == names
    assert json.loads((tmp_path / "events" / "reading-007.json").read_text()) == {"i": 7, "value": 1.75}


def test_boss_runs_an_hdf5_archiver(tmp_path: Path) -> None:
    """``heros_archiver.Hdf5Archiver`` under BOSS: frames stacked in one file, its figures through BOSS's
    remote ``stats()``, and BOSS's SIGTERM commits and closes the file (any reader opens it afterwards)."""
    import h5py

    runs = tmp_path / "runs"
    config = {
        "_id": "run-archiver",
        "classname": "heros_archiver.Hdf5Archiver",
        "arguments": {
            "object_selector": "cam",
            "event_name": "acquisition_data",
            "default_metadata": {"file_path": str(runs)},
            "file_template": "{{ file_path }}/run-{{ run }}.h5",
            "dataset_template": "entry/{{ source_name }}/data",
            "sequence_key": "frame",
            "flush_seconds": 0.1,
        },
    }
    config_file = tmp_path / "archiver.json"
    config_file.write_text(json.dumps(config))
    port, realm = free_port(), unique_realm()
    camera = ReliableSimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    process: subprocess.Popen[bytes] | None = None
    try:
        process = _start_boss(config_file, realm, port, tmp_path / "boss.log")
        wait_for_subscriber(camera, timeout=60)
        frames = [np.arange(12, dtype=np.uint16).reshape(3, 4) + 100 * i for i in range(5)]
        for i, frame in enumerate(frames):
            camera.acquisition_data(frame, {"frame": i, "run": 3})
        remote = remote_hero("run-archiver", realm, heros_compat.session_manager(camera))
        try:
            wait_until(lambda: remote.stats()["total"]["archived"] == 5, 30, "5 frames committed")
        finally:
            remote._destroy_hero()
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (tmp_path / "boss.log").read_text()
        with h5py.File(runs / "run-3.h5", "r") as handle:
            np.testing.assert_array_equal(handle["entry/cam/data"][()], np.stack(frames))
            assert handle["entry"].attrs["NX_class"] == "NXentry"
    finally:
        if process is not None:
            _stop_group(process)
        camera._destroy_hero()


@pytest.mark.parametrize("kind", ["hdf5", "tiff"])
def test_boss_runs_a_herosdevices_camera_and_an_archiver_of_its_acquisitions(tmp_path: Path, kind: str) -> None:
    """A real herosdevices ``CameraDummy`` and ``Hdf5Archiver(acquisitions=True)`` (or ``TiffArchiver(stack=True,
    acquisitions=True)``), both started by BOSS, the camera's three events made reliable by BOSS's
    ``extra_decorators``; the test arms and triggers the camera by remote calls, twice, and reads one file per
    acquisition back."""
    runs = tmp_path / "runs"
    reliable = "heros.event.reliable"
    camera_config = {
        "_id": "cam",
        "classname": "herosdevices.hardware.dummy.cameras.CameraDummy",
        "arguments": {
            "config_dict": {
                "triggered": {"frame_count": 3, "width": 8, "height": 6, "exposure_time": 0.5, "auto_trigger": False},
                "second": {"frame_count": 2, "width": 4, "height": 2, "exposure_time": 0.25, "auto_trigger": False},
            },
            "default_config": "triggered",
        },
        "extra_decorators": [
            [name, reliable] for name in ("acquisition_data", "acquisition_started", "acquisition_stopped")
        ],
    }
    template = "{{ file_path }}/{{ source_name }}-{{ acquisition }}." + ("h5" if kind == "hdf5" else "tif")
    archiver_config = {
        "_id": "acquisition-archiver",
        "classname": "heros_archiver.Hdf5Archiver" if kind == "hdf5" else "heros_archiver.TiffArchiver",
        "arguments": {
            "object_selector": "cam",
            "event_name": "acquisition_data",
            "default_metadata": {"file_path": str(runs)},
            **({"file_template": template} if kind == "hdf5" else {"save_template": template, "stack": True}),
            "acquisitions": True,
            "sequence_key": "frame",
        },
    }
    files = []
    for config in (camera_config, archiver_config):
        files.append(tmp_path / f"{config['_id']}.json")
        files[-1].write_text(json.dumps(config))
    port, realm = free_port(), unique_realm()
    # the test's session routes between BOSS's workers (peers that only connect to it): the archiver's
    # subscription reaches the camera before the remote calls the test sends after it through the same router
    router = ZenohSessionManager({**loopback_settings(listen_port=port), "mode": "router"})
    log_file = tmp_path / "boss.log"
    process: subprocess.Popen[bytes] | None = None
    heroes: list[RemoteHERO] = []
    try:
        process = _start_boss_with(files, realm, port, log_file)
        try:
            archiver = remote_hero("acquisition-archiver", realm, router, timeout=60)
            heroes.append(archiver)
            camera = remote_hero("cam", realm, router, timeout=60)
            heroes.append(camera)
        except AssertionError as exc:
            pytest.fail(f"{exc}; boss log:\n{log_file.read_text()}")

        def acquisitions_checked(count: int) -> None:
            try:
                wait_until(lambda: archiver.stats()["total"]["acquisitions"] == count, 30, f"acquisition {count}'s end")
                wait_until(lambda: archiver.stats()["total"]["in_flight"] == 0, 30, "every item archived")
            except AssertionError as exc:
                pytest.fail(f"{exc}; stats {archiver.stats()['total']}; boss log:\n{log_file.read_text()}")

        # triggered by the test, not by the camera itself: with auto_trigger, CameraDummy's acquisition thread
        # (started by arm() before it emits acquisition_started) may emit frame 0 before the start
        for number, (configuration, frames) in enumerate((("triggered", 3), ("second", 2)), start=1):
            assert camera.configure(configuration)
            assert camera.arm()
            for _ in range(frames):
                assert camera.start()  # a software trigger: one frame each
            acquisitions_checked(number)
        stats = archiver.stats()["sources"]["cam"]
        assert stats["archived"] == 5 + 4 and stats["acquisition_gaps"] == 0 and stats["duplicates"] == 0, stats

        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_file.read_text()
    finally:
        for hero in heroes:
            hero._destroy_hero()
        if process is not None:
            _stop_group(process)
        router.force_close()

    if kind == "tiff":
        _check_tiff_acquisitions(runs)
        return
    import h5py

    assert sorted(p.name for p in runs.glob("*.h5")) == ["cam-1.h5", "cam-2.h5"]
    for name, shape, count, exposure in (("cam-1.h5", (6, 8), 3, 0.5), ("cam-2.h5", (2, 4), 2, 0.25)):
        with h5py.File(runs / name, "r") as handle:
            group = handle["cam"]
            frames = group["data"]
            assert frames.shape == (count, *shape) and frames.dtype == np.uint16, (name, frames)
            assert list(group["metadata/frame"][()]) == list(range(count)), name
            assert group["configuration"].attrs["exposure_time"] == exposure, name
            acquisition = dict(group["acquisition"].attrs)
            assert acquisition["stopped"] and acquisition["frames_expected"] == acquisition["frames_held"] == count
            assert acquisition["start_seen"], acquisition


def _check_tiff_acquisitions(runs: Path) -> None:
    """The two stacks of ``test_boss_runs_a_herosdevices_camera_and_an_archiver_of_its_acquisitions``."""
    import tifffile

    from heros_archiver.sinks.containers.tiff import read_records

    assert sorted(p.name for p in runs.glob("*.tif")) == ["cam-1.tif", "cam-2.tif"]
    for name, shape, count, exposure in (("cam-1.tif", (6, 8), 3, 0.5), ("cam-2.tif", (2, 4), 2, 0.25)):
        frames = tifffile.imread(runs / name).reshape(-1, *shape)
        assert frames.shape == (count, *shape) and frames.dtype == np.uint16, (name, frames.shape)
        records = read_records(runs / name)
        assert [r["metadata"]["frame"] for r in records] == list(range(count)), name
        acquisition = records[0]["acquisition"]
        assert acquisition["configuration"]["exposure_time"] == exposure and acquisition["start_seen"], acquisition


def _start_boss_with(config_files: list[Path], realm: str, port: int, log_file: Path) -> subprocess.Popen[bytes]:
    """``boss`` with several config files (one worker process per HERO), each a Zenoh client of the test's router
    (peers would expect to reach each other directly, and BOSS's workers do not listen)."""
    settings = {**json.loads(loopback_config_json(connect_port=port)), "mode": "client"}
    env = {**os.environ, "HEROS_ZENOH_CONFIG": json.dumps(settings)}
    urls = [argument for path in config_files for argument in ("-u", path.as_uri())]
    with open(log_file, "wb") as log:
        return subprocess.Popen(
            [str(BOSS), *urls, "--realm", realm],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_file.parent,
            start_new_session=True,
        )


def test_boss_runs_a_zarr_append_archiver(tmp_path: Path) -> None:
    """``heros_archiver.ZarrAppendArchiver`` under BOSS: frames appended to one sharded array, its figures
    through BOSS's remote ``stats()``, and BOSS's SIGTERM commits what waits (zarr reads every frame)."""
    import zarr

    runs = tmp_path / "runs"
    config = {
        "_id": "run-archiver",
        "classname": "heros_archiver.ZarrAppendArchiver",
        "arguments": {
            "object_selector": "cam",
            "event_name": "acquisition_data",
            "default_metadata": {"file_path": str(runs)},
            "store_template": "{{ file_path }}/run-{{ run }}.zarr",
            "sequence_key": "frame",
            "flush_frames": 3,
            "flush_seconds": 3600,
            "flush_idle": None,
        },
    }
    config_file = tmp_path / "archiver.json"
    config_file.write_text(json.dumps(config))
    port, realm = free_port(), unique_realm()
    camera = ReliableSimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    process: subprocess.Popen[bytes] | None = None
    try:
        process = _start_boss(config_file, realm, port, tmp_path / "boss.log")
        wait_for_subscriber(camera, timeout=60)
        frames = [np.arange(12, dtype=np.uint16).reshape(3, 4) + 100 * i for i in range(5)]
        for i, frame in enumerate(frames):
            camera.acquisition_data(frame, {"frame": i, "run": 3})
        remote = remote_hero("run-archiver", realm, heros_compat.session_manager(camera))
        try:
            wait_until(lambda: remote.stats()["total"]["archived"] == 3, 30, "one commit of 3 frames")
        finally:
            remote._destroy_hero()
        os.killpg(process.pid, signal.SIGTERM)  # frames 3 and 4 wait for a commit: the drain makes it
        assert process.wait(timeout=30) == 0, (tmp_path / "boss.log").read_text()
        array = zarr.open_array(runs / "run-3.zarr", path="cam/data", mode="r")
        np.testing.assert_array_equal(array[...], np.stack(frames))
    finally:
        if process is not None:
            _stop_group(process)
        camera._destroy_hero()


def test_under_boss_the_subscription_is_undeclared_before_the_drain(tmp_path: Path) -> None:
    """BOSS's HEROFactory runs LocalHERO's ``__init__`` after the archiver's, which starts heros' subscription
    list anew: the archiver's own subscription must still be undeclared at ``_teardown`` (before the drain), so
    that nothing is received by an archiver that has stopped."""
    from boss.factory import HEROFactory

    port, realm = free_port(), unique_realm("boss-undeclare")
    camera = SimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    try:
        archiver = HEROFactory.build(
            "heros_archiver.ArrayArchiver",
            "undeclared",
            arg_dict={
                "object_selector": "*",
                "event_name": "acquisition_data",
                "save_template": str(tmp_path / "{{ frame }}.npy"),
            },
            realm=realm,
            session_manager=session_manager(connect_port=port),
        )
        wait_for_subscriber(camera)
        camera.acquire(3, shape=(4, 4))
        wait_until(lambda: archiver.stats()["total"]["archived"] == 3, what="3 frames archived")
        archiver._teardown()
        camera.acquire(3, shape=(4, 4), start=3)
        time.sleep(1.0)  # what a still-declared subscription would receive arrives within this
        assert archiver.stats()["total"]["received"] == 3
        archiver._destroy_hero()
    finally:
        camera._destroy_hero()
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["0.npy", "1.npy", "2.npy"]
