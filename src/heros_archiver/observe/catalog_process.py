"""The catalog's applier: a process per archiver that applies the archiver's journal to the catalog as it grows.

    python -m heros_archiver.observe.catalog_process ROOT PREFIX

(with ``HEROS_ARCHIVER_APPLIER_URL`` and ``HEROS_ARCHIVER_APPLIER_HOST`` in its environment when the catalog is a
shared PostgreSQL database, decision 0037: in the environment, not the command line, so that ``ps`` does not
show the URL's password)

A thread of the archiver's own would share its GIL: every SQLite call gives the GIL up and must take it back
from a busy writer or intake thread, and parsing the lines holds it (decision 0031). In a process of its own,
at the lowest CPU priority (nice 19), it costs the archiver nothing but the CPU left over: on a saturated
machine the catalog falls behind, and catches up once there is time.

It applies what is new in the segments of the journal ``PREFIX`` (the archiver's: ``catalog_names``) under
``ROOT`` once the journal has not grown for ``POLL_INTERVAL`` (a commit of a quiet archiver is in the catalog
within ~0.1 s) and at least every ``MAX_DELAY`` seconds while it keeps growing (a burst is applied mostly after
it, on CPU the archiver no longer needs), and removes a segment once it is applied and the archiver writes the
next one. It reads its standard input: ``stop`` (the archiver stops and applies the rest itself) ends it
at once; the end of the input without ``stop`` (the archiver is gone: killed) ends it after one last
application, leaving the journal for the next start to find (a killed run's files may need adopting,
``catalog_recovery``). Like the publishing helper it runs in a process group of its own and ignores SIGINT and
SIGTERM: the archiver ends it. It imports neither heros nor numpy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..errors import CatalogError
from ..saferepr import safe_str
from .catalog_apply import apply_journal
from .catalog_backend import CatalogBackend, CatalogTarget
from .catalog_names import JournalName
from .catalog_schema import journal_directory

log = logging.getLogger("heros_archiver")

#: Seconds between two looks at the journal's size.
POLL_INTERVAL = 0.05
#: The journal is applied once it has not grown for a look (the end of a burst, or of a commit), and at least this
#: often while it keeps growing: what a reader of the catalog lags behind, at most about this plus one
#: transaction (more when the CPU is short: the applier runs at the lowest priority).
MAX_DELAY = 1.0
#: Niceness of the applier process.
NICE = 19
#: Seconds between two log lines of an applier that keeps failing (the journal keeps what it could not apply).
ERROR_LOG_INTERVAL = 30.0
#: The command that ends it (the archiver applies the rest).
STOP = b"stop"
#: The environment that names a shared catalog (its URL and the host name to write as) to the applier.
URL_VARIABLE = "HEROS_ARCHIVER_APPLIER_URL"
HOST_VARIABLE = "HEROS_ARCHIVER_APPLIER_HOST"


def target_environment(target: CatalogTarget) -> dict[str, str]:
    """The environment of the applier process of ``target``: ``os.environ`` with (only) its catalog's variables."""
    env = {key: value for key, value in os.environ.items() if key not in (URL_VARIABLE, HOST_VARIABLE)}
    return env if target.url is None else {**env, URL_VARIABLE: target.url, HOST_VARIABLE: target.host}


def target_from_environment() -> CatalogTarget:
    """The target ``target_environment`` gave (the root's SQLite catalog without it)."""
    url = os.environ.get(URL_VARIABLE)
    return CatalogTarget() if url is None else CatalogTarget(url, os.environ.get(HOST_VARIABLE) or CatalogTarget().host)


def apply_segments(catalog: CatalogBackend, root: Path, prefix: str, final: bool = False) -> None:
    """Apply what is new in each segment of journal ``prefix``; remove each segment applied whole that is not
    the last one (the archiver writes the next), or with ``final`` (the archiver has stopped) all of them."""
    directory = journal_directory(root)
    names = sorted(
        (name for name in map(JournalName.parse, os.listdir(directory)) if name is not None and name.prefix == prefix),
        key=lambda name: name.segment,
    )
    for number, name in enumerate(names):
        applied = apply_journal(catalog, directory / name.text, str(root))
        if applied is not None and applied.complete and (final or number < len(names) - 1):
            (directory / name.text).unlink(missing_ok=True)
            catalog.forget_journals([name.text])


def _journal_size(root: Path, prefix: str) -> int:
    """The bytes of all the segments of journal ``prefix`` (how it grows tells a burst from a pause)."""
    directory = journal_directory(root)
    total = 0
    for name in os.listdir(directory):
        parsed = JournalName.parse(name)
        if parsed is not None and parsed.prefix == prefix:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(directory / name).st_size
    return total


class _Commands:
    """What the archiver says on standard input, read by a thread: ``stop``, or the end of the input."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.stopped = False
        threading.Thread(target=self._read, name="catalog-commands", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin.buffer:
            if line.strip() == STOP:
                self.stopped = True
                break
        self.ended.set()


def main(argv: list[str]) -> None:
    root, prefix = Path(argv[0]), argv[1]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    os.nice(NICE)
    logging.basicConfig(level=logging.WARNING, format=f"catalog applier {os.getpid()}: %(message)s")
    commands = _Commands()
    target = target_from_environment()
    catalog: CatalogBackend | None = None
    logged_at = -ERROR_LOG_INTERVAL
    size, applied_size, applied_at = -1, -1, time.monotonic()
    try:
        while True:
            ended = commands.ended.wait(POLL_INTERVAL)
            if ended and commands.stopped:
                return
            now = time.monotonic()
            try:
                current = _journal_size(root, prefix)
                grown, size = current != size, current
                if size != applied_size and (ended or not grown or now - applied_at >= MAX_DELAY):
                    catalog = catalog or target.open_writer(root)
                    apply_segments(catalog, root, prefix)
                    applied_size, applied_at = size, now
            except (OSError, CatalogError) as exc:
                if catalog is not None:  # a lost connection (a database server restarted): connect again
                    catalog.close()
                    catalog = None
                if now - logged_at >= ERROR_LOG_INTERVAL:
                    logged_at = now
                    log.error("cannot apply the journal %s of %s to %s: %s; the journal keeps it, retrying", prefix,
                              root, target.describe(root), safe_str(exc))  # fmt: skip
            if ended:
                return
    finally:
        if catalog is not None:
            catalog.close()


if __name__ == "__main__":
    main(sys.argv[1:])
