"""Publish small files from a helper process, so that creating them overlaps with naming the next ones.

Every small file costs four system calls (an unnamed file, its content, its name, close: 15-45 us of
kernel time on ext4), and in one Python process each of them gives up and takes back the GIL that the
receiving and naming threads need. A second writer thread made it worse (the threads convoy on the GIL:
~18,000 instead of ~40,000 files/s on tmpfs, ``benchmarks/small_files.py``). A helper process has its
own interpreter: the archiver's writer renders and encodes a batch while the helper creates the files
of the previous batch on the other core (decision 0012). The helper runs ``write_atomic`` exactly as
the writer would, so the guarantees are the same (confined beneath the root by directory handles,
unnamed until complete, no overwrite, fsync as asked).

The helper is ``python -m heros_archiver.sinks.publisher READ_FD WRITE_FD``: it reads pickled batches of
``(root, path, content, on_exists, fsync)`` from one pipe and answers each with one result per file on the
other. The archiver must drain through it after a Ctrl-C or SIGTERM, so it runs in a process group of
its own (a terminal's Ctrl-C and ``kill -- -PGID`` reach the archiver's group only), ignores SIGINT and
SIGTERM once running (a service manager may signal every process of its cgroup), and exits when the
request pipe closes, also when the archiver dies.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import ArchiverError, PathConfinementError, StorageError, TargetExistsError, storage_error
from ..storage.atomic import Fsync, OnExists, write_unless_present

log = logging.getLogger("heros_archiver")

#: One file to publish: archive root (None: not confined), target path, content, on_exists, fsync.
Request = tuple[str | None, str, bytes, OnExists, Fsync]
#: The answer for one file: ("ok", path written) | ("exists", message) | ("confined", message)
#: | ("storage", errno, message).
Result = tuple[Any, ...]


class HelperGone(ArchiverError):
    """The helper process exited or cannot be reached: what it was given must be written another way."""

    permanent = False


class PublishHelper:
    """One helper process and the two pipes to it; used by one writer thread at a time."""

    def __init__(self) -> None:
        request_read, request_write = os.pipe()
        result_read, result_write = os.pipe()
        package_parent = str(Path(__file__).resolve().parents[2])  # src/, above heros_archiver/sinks/
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
        }
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "heros_archiver.sinks.publisher", str(request_read), str(result_write)],
                pass_fds=(request_read, result_write),
                stdin=subprocess.DEVNULL,
                env=env,
                process_group=0,  # a Ctrl-C or kill of the archiver's group must not reach it, not even as it starts
            )
        except BaseException:
            os.close(request_write)
            os.close(result_read)
            raise
        finally:  # the helper's ends: only the helper may hold them, or it never sees the end of its pipe
            os.close(request_read)
            os.close(result_write)
        self._requests = Connection(request_write, readable=False)
        self._results = Connection(result_read, writable=False)

    @property
    def pid(self) -> int:
        """The helper's process id."""
        return self._process.pid

    def send(self, requests: list[Request]) -> None:
        """Hand a batch to the helper (it answers with ``receive``). Raises HelperGone."""
        try:
            self._requests.send(requests)
        except (OSError, ValueError) as exc:
            raise self._gone("cannot be reached", exc) from exc

    def receive(self) -> list[Result]:
        """The results of the oldest batch not yet answered, one per request. Raises HelperGone."""
        try:
            results: list[Result] = self._results.recv()
        except (EOFError, OSError, ValueError) as exc:
            raise self._gone("did not answer", exc) from exc
        return results

    def _gone(self, what: str, error: BaseException) -> HelperGone:
        code = self._process.poll()
        status = "still running" if code is None else f"exit status {code}"
        return HelperGone(f"the publishing helper (pid {self.pid}, {status}) {what}: {error or 'end of pipe'}")

    def close(self, timeout: float = 10.0) -> None:
        """Let the helper finish and exit (it reads the end of its pipe); kill it after ``timeout`` seconds."""
        self._requests.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the publishing helper (pid %d) did not exit within %.0f s; killing it", self.pid, timeout)
            self._process.kill()
            self._process.wait()
        self._results.close()


def publish(requests: list[Request]) -> list[Result]:
    """Write each requested file as the writer does (``write_unless_present``)."""
    results: list[Result] = []
    for root, path, content, on_exists, fsync in requests:
        try:
            results.append(("ok", write_unless_present(path, [content], on_exists, fsync, root=root) or path))
        except TargetExistsError as exc:
            results.append(("exists", str(exc)))
        except PathConfinementError as exc:
            results.append(("confined", str(exc)))
        except StorageError as exc:
            results.append(("storage", exc.errno, str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the archiver, which writes the item itself
            results.append(("storage", None, f"{type(exc).__name__}: {exc}"))
    return results


def result_error(result: Result) -> ArchiverError | None:
    """The error a result stands for, as the writer would have raised it; None for a written file."""
    kind = result[0]
    if kind == "ok":
        return None
    if kind == "exists":
        return TargetExistsError(result[1])
    if kind == "confined":
        return PathConfinementError(result[1])
    code, message = result[1], result[2]
    return storage_error(code or 5, message)  # 5: EIO, for a failure without an errno


def _serve(request_fd: int, result_fd: int) -> None:
    """Publish batches as they come; a thread of its own sends the answers.

    The writer hands over the next batch before it reads the answer to the last one. Were answers sent
    from this loop, a batch too large for the request pipe and an answer too large for the result pipe
    (long paths, long error messages) would wait for each other for ever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = Connection(request_fd, writable=False)
    answers: queue.SimpleQueue[list[Result] | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_answers, args=(Connection(result_fd, readable=False), answers))
    sender.start()
    try:
        while True:
            try:
                batch = requests.recv()
            except EOFError:
                return  # the archiver closed the pipe, or died
            answers.put(publish(batch))
    finally:
        answers.put(None)
        sender.join()


def _send_answers(results: Connection, answers: queue.SimpleQueue[list[Result] | None]) -> None:
    while (answer := answers.get()) is not None:
        try:
            results.send(answer)
        except BrokenPipeError:
            return  # the archiver died while this batch was written: no one to answer


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
