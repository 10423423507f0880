"""A ``catalog_child.py`` archiver killed by SIGKILL in the middle of a run, and the same root started again:
what the catalog tests (SQLite and PostgreSQL) share."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from catalog_child import arguments
from helpers import wait_until
from heros_archiver.testing import free_port, session_manager, unique_realm
from procs import TESTS_DIR, child, child_env


def package_process(pid: int) -> bool:
    """Whether ``pid`` is still one of this package's processes (not a later process that got the PID)."""
    try:
        return b"heros_archiver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def kill_and_restart(
    tmp_path: Path,
    kind: str,
    killable: Callable[[str], bool],
    timeout: float,
    *,
    url: str | None = None,
    restart: str | None = None,
    **env: str,
) -> None:
    """Run ``catalog_child.py KIND tmp_path/archive [URL]`` (with ``env`` added to its environment) until
    ``killable(its output)``, SIGKILL it, wait for its applier and helpers to exit (they finish what they were
    given), then make the archiver of ``KIND`` (or of ``restart``) on the same root, whose catalog's recovery
    runs, and close it. Waits at most ``timeout`` seconds each; the child's own processes are killed by PID if
    they outlive that."""
    root = tmp_path / "archive"
    others: list[int] = []
    args = [sys.executable, str(TESTS_DIR / "catalog_child.py"), kind, str(root), *([url] if url else [])]
    try:
        with child(args, tmp_path / "child.log", child_env(0, **env)) as proc:
            wait_until(lambda: killable(proc.output()), timeout, "the child's run under way")
            others = [int(pid) for pid in proc.output().split("@@ PIDS", 1)[1].split("\n", 1)[0].split()]
            proc.kill()
        # its applier sees its input end and exits after one last application; its helpers finish their batch
        wait_until(lambda: not any(map(package_process, others)), timeout, "the killed run's own processes to exit")
        cls, kwargs = arguments(restart or kind, str(root))
        cls(
            object_selector="crash-sender",
            event_name="acquisition_data",
            realm=unique_realm(),
            session_manager=session_manager(listen_port=free_port()),
            catalog_url=url,
            **kwargs,
        ).close()
    finally:
        for pid in others:
            if package_process(pid):
                os.kill(pid, signal.SIGKILL)
