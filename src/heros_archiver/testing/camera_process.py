"""A simulated camera in a process of its own (``python -m heros_archiver.testing camera``), driven over stdin.

For tests and benchmarks whose camera must sit on another "host" (a network namespace) or survive what the
archiver does not (a router restart): the child is a Zenoh client of the given router(s), prints what it did
to a log file (no pipe can fill up), and is stopped by its PID (its process group) when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CameraProcess:
    """Camera ``name`` of ``realm`` publishing ``acquisition_data`` through the router(s) ``connect``, or, with
    ``listen`` (an endpoint) instead, as a peer that archivers connect to directly."""

    name: str
    realm: str
    connect: Sequence[str]
    log: Path
    netns: str | None = None
    reliable: bool = True
    listen: str | None = None
    _process: subprocess.Popen[bytes] | None = None
    #: how many times each answer was waited for: :meth:`expect` waits for the next one
    _answers: dict[str, int] = field(default_factory=dict)

    def start(self) -> CameraProcess:
        cmd = ["ip", "netns", "exec", self.netns] if self.netns else []
        cmd += [sys.executable, "-m", "heros_archiver.testing", "camera", "--name", self.name, "--realm", self.realm]
        cmd += [word for endpoint in self.connect for word in ("--connect", endpoint)]
        cmd += ["--listen", self.listen] if self.listen else []
        cmd += ["--reliable"] if self.reliable else []
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            self.expect("@@ READY", 60.0)
        except BaseException:
            self.stop()  # a `with` block never reaches __exit__ when __enter__ raised
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tell(self, line: str) -> None:
        """Send one command line (``SEND ...``, ``WAIT``) without waiting for its answer."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(line.encode() + b"\n")
        self._process.stdin.flush()

    def expect(self, answer: str, timeout: float) -> None:
        """Wait until the camera printed ``answer`` once more than when this was last asked for it."""
        wanted = self._answers.get(answer, 0) + 1
        deadline = time.monotonic() + timeout
        while self.output().count(answer) < wanted:
            if self._process is None or self._process.poll() is not None:
                raise AssertionError(f"camera {self.name} exited before {answer!r}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"camera {self.name}: no {answer!r} within {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.02)
        self._answers[answer] = wanted

    def wait_matched(self, timeout: float = 60.0) -> None:
        """Block until an archiver's subscription matches the camera's event."""
        self.tell("WAIT")
        self.expect("@@ MATCHED", timeout)

    def send(self, count: int, shape: tuple[int, int], rate: float | None = None, start: int = 0) -> None:
        """Start publishing frames ``start`` .. ``start + count - 1``; :meth:`expect` ``"@@ SENT"`` for the end."""
        self.tell(f"SEND {count} {shape[0]} {shape[1]} uint16 {rate or 'max'} {start}")

    def stop(self) -> None:
        """QUIT, then SIGKILL its process group if it has not gone within 10 s."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert process.stdin is not None
            process.stdin.write(b"QUIT\n")
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def __enter__(self) -> CameraProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
