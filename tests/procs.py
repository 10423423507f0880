"""Helpers of the fault, memory, sequence, spool and replay tests: child processes, polling, file checks.

Every child is started in a session of its own and stopped by PID (its process group) in a ``finally``;
all of them talk Zenoh on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from heros import LocalHERO

import helpers
from heros_archiver.cli.app import STATS_COLUMNS
from heros_archiver.testing import (
    ReliableSimulatedCamera,
    frame_index,
    loopback_config_json,
    make_frame,
    session_manager,
    wait_for_subscriber,
)

TESTS_DIR = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "heros_archiver.cli"]
SLOW_ARCHIVER = "fixtures_pkg.slow.SlowArrayArchiver"
TMP_PREFIX = ".~heros-archiver"
#: How long a test waits for something that normally takes milliseconds to seconds.
DEADLINE = 60.0


def settled(stats: dict[str, Any]) -> int:
    """Items archived, dead-lettered or dropped."""
    total = stats["total"]
    return int(total["archived"] + total["dead_lettered"] + total["dropped"])


# ------------------------------------------------------------------------------------------------ files
@functools.lru_cache(maxsize=4)
def _base_frame(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    base = make_frame(0, shape, dtype)
    base.flags.writeable = False
    return base


def frame(index: int, shape: tuple[int, ...], dtype: str = "uint16") -> np.ndarray:
    """``make_frame(index, shape, dtype)``, computed once per shape (big random frames are slow to make)."""
    result = _base_frame(tuple(shape), dtype).copy()
    result.flat[0] = index
    return result


def _walk(directory: Path, skip_own: bool = True) -> Iterator[Path]:
    """Files below ``directory``; tolerates entries vanishing while a live archiver works there.

    With ``skip_own``, the archiver's ``.heros-archiver`` folder (dead letters, spool) is left out.
    """
    for folder, dirs, names in os.walk(directory):
        if skip_own:
            dirs[:] = [d for d in dirs if d != ".heros-archiver"]
        for name in names:
            yield Path(folder, name)


def npy_files(directory: Path) -> list[Path]:
    """``*.npy`` files under final names below ``directory``, leaving out the archiver's own folder."""
    return sorted(p for p in _walk(directory) if p.suffix == ".npy" and not p.name.startswith(TMP_PREFIX))


def temporaries(directory: Path) -> list[Path]:
    """Files named like the archiver's temporaries below ``directory``."""
    return sorted(p for p in _walk(directory) if p.name.startswith(TMP_PREFIX))


def entries(directory: Path) -> list[Path]:
    """Complete entries of a dead-letter store or spool directory, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".tmp-"))


def read_entry(entry: Path) -> dict[str, Any]:
    """The parsed ``entry.json`` of a dead-letter or spool entry."""
    return json.loads((entry / "entry.json").read_text())


def check_frame_file(path: Path, shape: tuple[int, ...], dtype: str = "uint16") -> int:
    """Load ``path`` completely and compare it with ``make_frame``; return the frame index it holds."""
    loaded = np.load(path, allow_pickle=False)
    index = frame_index(loaded)
    expected = frame(index, shape, dtype)
    assert loaded.dtype == expected.dtype and loaded.shape == expected.shape, (path, loaded.dtype, loaded.shape)
    np.testing.assert_array_equal(loaded, expected, err_msg=str(path))
    return index


def tree_state(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``directory`` with its size and mtime (ns), to show that nothing changed."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(_walk(directory, skip_own=False))
    }


# ------------------------------------------------------------------------------------------------ processes
def child_env(connect_port: int, **extra: str) -> dict[str, str]:
    """Environment of a child archiver: connects to the camera's loopback port, finds ``fixtures_pkg``."""
    env = dict(os.environ)
    env["HEROS_ZENOH_CONFIG"] = loopback_config_json(connect_port=connect_port)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "200"  # rich tables on one line each
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> None:
    """helpers.wait_until with the longer deadline that child processes need."""
    helpers.wait_until(predicate, timeout, what)


def write_config(path: Path, arguments: dict[str, Any], classname: str = "heros_archiver.ArrayArchiver") -> Path:
    """A BOSS-style config with one archiver."""
    path.write_text(json.dumps({"_id": "archiver", "classname": classname, "arguments": arguments}))
    return path


def camera_archiver_arguments(
    archive: Path, template: str = "{{ file_path }}/{{ '%03d' % frame }}.npy", **extra: Any
) -> dict[str, Any]:
    """Constructor arguments of an archiver of camera ``cam``'s frames into ``archive``."""
    return {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(archive)},
        "save_template": template,
        **extra,
    }


class Child:
    """A child process in its own session; output goes to a log file (no pipe can fill up)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], **popen: Any) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, **popen,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        """The child's PID (also its process group)."""
        return self.proc.pid

    def output(self) -> str:
        """Everything the child printed so far."""
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc.poll() is None

    def terminate(self, timeout: float = DEADLINE) -> tuple[int, str]:
        """SIGTERM, wait for the exit; returns (exit code, output)."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        self.proc.wait(timeout)
        return self.proc.returncode, self.output()

    def kill(self) -> None:
        """SIGKILL the child's process group if it still runs, and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(30)


@contextlib.contextmanager
def child(args: list[str], log: Path, env: dict[str, str], **popen: Any) -> Iterator[Child]:
    """Run a child for the duration of the block; it is killed (by PID) when the block is left anyway."""
    started = Child(args, log, env, **popen)
    try:
        yield started
    finally:
        started.kill()


def group_alive(pgid: int) -> bool:
    """True while any process of process group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def publishing_helpers() -> dict[int, int]:
    """Every running publishing helper (decision 0012) with its parent's PID: they run in process groups
    of their own, so a test finds them by their command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if b"heros_archiver.sinks.publisher" in (entry / "cmdline").read_bytes():
                status = (entry / "status").read_text()
                found[int(entry.name)] = int(status.split("PPid:")[1].split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return found


def run_archiver(
    config: Path, realm: str, port: int, log: Path, **popen: Any
) -> contextlib.AbstractContextManager[Child]:
    """``heros-archiver run CONFIG --realm REALM`` in a child connected to the camera on ``port``."""
    return child([*CLI, "run", str(config), "--realm", realm], log, child_env(port), **popen)


def run_cli(args: list[str], timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    """Run a short ``heros-archiver`` command to completion (own session, killed on timeout)."""
    proc = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env=dict(os.environ, COLUMNS="250"), start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


def parse_stats_table(output: str) -> dict[str, int]:
    """The ``total`` row of the table ``heros-archiver run`` prints when it stops."""
    for line in reversed(output.splitlines()):
        cells = [cell.strip() for cell in re.split(r"[│|┃]", line)]
        cells = [cell for cell in cells if cell]
        if cells and cells[0] == "total" and len(cells) == len(STATS_COLUMNS) + 1:
            return dict(zip(STATS_COLUMNS, map(int, cells[1:]), strict=True))
    raise AssertionError(f"no stats table in the output:\n{output[-3000:]}")


def rss_anon_kib(pid: int) -> int | None:
    """RssAnon of ``pid`` in KiB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


# ------------------------------------------------------------------------------------------------ cameras
@contextlib.contextmanager
def camera(port: int, realm: str, name: str = "cam", cls: type[LocalHERO] = ReliableSimulatedCamera) -> Iterator[Any]:
    """A camera in this process listening on 127.0.0.1:``port``; destroyed when the block is left."""
    cam = cls(name, realm=realm, session_manager=session_manager(listen_port=port))
    try:
        yield cam
    finally:
        cam._destroy_hero()


def wait_for_archiver(cam: Any, proc: Child, timeout: float = DEADLINE) -> None:
    """Wait until the archiver in ``proc`` is built and subscribed to ``cam``'s event (fail early if it died).

    ``run`` prints "running" once its archivers are built (storage set up, stale temporaries removed,
    subscription declared); the camera's matching status alone could still reflect a just-killed archiver.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise AssertionError(f"the archiver exited with {proc.proc.returncode}:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the archiver did not subscribe within {timeout} s:\n{proc.output()}")
        if "running 1 archiver(s)" in proc.output():
            try:
                wait_for_subscriber(cam, timeout=0.5)
                return
            except TimeoutError:
                continue
        time.sleep(0.05)


def send_frames(cam: Any, indices: list[int], shape: tuple[int, ...], dtype: str = "uint16", **metadata: Any) -> None:
    """Publish ``make_frame(i)`` with metadata ``{"frame": i, **metadata}`` for each index."""
    for index in indices:
        cam.acquisition_data(frame(index, shape, dtype), {"frame": index, **metadata})
