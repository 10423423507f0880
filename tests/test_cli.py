"""The heros-archiver command line, run as a user runs it: a real process, real Zenoh on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from heros_archiver.testing import (
    ReliableSimulatedCamera,
    frame_index,
    free_port,
    loopback_config_json,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)

CLI = [sys.executable, "-m", "heros_archiver.cli"]


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a child by PID (its whole process group), also when the test failed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_demo_archives_every_frame_and_checks_them(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--frames", "40", "--shape", "256x128", "--out", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=dict(os.environ, COLUMNS="120"),
    )
    try:
        output, _ = proc.communicate(timeout=90)
    finally:
        _stop(proc)
    assert proc.returncode == 0, output
    assert "40 of 40" in output
    files = sorted((tmp_path / "demo" / "demo-camera").glob("*.npy"))
    assert [f.name for f in files] == [f"frame-{i:06d}.npy" for i in range(40)]
    for i, path in enumerate(files):
        array = np.load(path)
        assert array.shape == (256, 128) and array.dtype == np.uint16 and frame_index(array) == i


def test_version_names_ours_heros_and_zenoh() -> None:
    from importlib.metadata import version

    import heros_archiver

    result = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = (
        f"heros-archiver {heros_archiver.__version__} (heros {version('heros')}, "
        f"eclipse-zenoh {version('eclipse-zenoh')})"
    )
    assert result.stdout.strip() == expected
    assert heros_archiver.__version__ == version("heros-archiver"), "the package's and its metadata's versions differ"


def test_render_prints_the_path() -> None:
    result = subprocess.run(
        [*CLI, "render", "{{ file_path }}/img-{{ '%04d' % frame }}.npy", "frame=7", "--default", "file_path=/data/run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/data/run/img-0007.npy"


@pytest.mark.parametrize(
    ("values", "message"),
    [(["name=../../etc/passwd"], "outside the archive root"), ([], "'name' is undefined")],
)
def test_render_reports_the_error(values: list[str], message: str) -> None:
    result = subprocess.run(
        [*CLI, "render", "{{ file_path }}/{{ name }}.npy", *values, "--default", "file_path=/data/run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert result.returncode == 1
    assert message in result.stderr


def test_render_rejects_a_syntax_error() -> None:
    result = subprocess.run([*CLI, "render", "{{ frame "], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "syntax error" in result.stderr


def test_run_archives_until_sigterm_then_drains(tmp_path: Path) -> None:
    """`run` with a config written for the reference (its classname) archives, and SIGTERM drains and exits 0."""
    port, realm = free_port(), unique_realm()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            [
                {
                    "_id": "capturer",
                    "classname": "herostools.actor.ArrayArchiver",
                    "arguments": {
                        "object_selector": "cam",
                        "event_name": "acquisition_data",
                        "default_metadata": {"file_path": str(tmp_path / "out")},
                        "save_template": "{{ file_path }}/img-{{ '%03d' % frame }}.npy",
                    },
                }
            ]
        )
    )
    camera = ReliableSimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    proc = subprocess.Popen(
        [*CLI, "run", str(config), "--realm", realm],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=dict(os.environ, HEROS_ZENOH_CONFIG=loopback_config_json(connect_port=port), COLUMNS="160"),
    )
    try:
        wait_for_subscriber(camera, timeout=60)
        camera.acquire(25, (64, 64))
        deadline = time.monotonic() + 30
        while len(list((tmp_path / "out").glob("*.npy"))) < 25 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        _stop(proc)
        camera._destroy_hero()
    assert proc.returncode == 0, output
    names = sorted(p.name for p in (tmp_path / "out").glob("*.npy"))
    assert names == [f"img-{i:03d}.npy" for i in range(25)]
    assert "total" in output and "25" in output


def test_run_reports_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"classname": "heros_archiver.ArrayArchiver", "arguments": {"save_template": "{{ x"}}))
    result = subprocess.run([*CLI, "run", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error" in result.stderr
