"""A Zenoh router as a Python process: ``heros-archiver router`` and ``python -m heros_archiver.transport.router``.

No ``zenohd`` binary comes from PyPI or Debian, but eclipse-zenoh's Python package holds the whole router:
a session opened with ``mode: "router"`` routes between its clients and peers and to the routers it connects
to, as ``zenohd`` does (without zenohd's plugins: REST, storages). This module gives that session a command
line, the config file a ``zenohd -c`` would take (JSON5, checked by Zenoh itself), a line on standard output
once it listens (what the tests and a supervisor wait for), a log line per node that connects or leaves, and
a clean close at SIGTERM or SIGINT (systemd's stop, Ctrl-C). See ``docs/deployment.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import zenoh

from ..errors import ConfigurationError

log = logging.getLogger("heros_archiver.router")

#: The line printed (and flushed) once the router listens; the rest of the line is its Zenoh id.
READY = "@@ ROUTER UP"


def router_config(config: Path | None = None, listen: Sequence[str] = (), connect: Sequence[str] = ()) -> zenoh.Config:
    """The Zenoh config of a router: ``config`` (a JSON5 file, as ``zenohd -c`` takes) with ``listen`` and
    ``connect`` endpoints, when given, in place of the file's. Without a file, multicast scouting is off (the
    deployment names its routers; nothing is announced on the network unasked), so is shared memory (reliable
    frames a camera put in shared memory were lost while the router pushed back: decisions 0003, 0038), and it
    listens on what ``listen`` says, else Zenoh's default for routers (``tcp/[::]:7447``)."""
    if config is None:
        conf = zenoh.Config()
        conf.insert_json5("scouting/multicast/enabled", "false")
        conf.insert_json5("transport/shared_memory/enabled", "false")
    else:
        try:
            conf = zenoh.Config.from_file(str(config))
        except (zenoh.ZError, OSError) as exc:
            raise ConfigurationError(f"{config}: expected a Zenoh config (JSON5), got: {exc}") from exc
        mode = json.loads(conf.get_json("mode"))
        if mode not in (None, "router"):
            raise ConfigurationError(f'{config}: mode: expected "router" (or no mode), got {mode!r}')
    conf.insert_json5("mode", '"router"')
    for key, endpoints in (("listen/endpoints", listen), ("connect/endpoints", connect)):
        if endpoints:
            try:
                conf.insert_json5(key, json.dumps(list(endpoints)))
            except zenoh.ZError as exc:
                raise ConfigurationError(
                    f"{key}: expected Zenoh endpoints (tcp/HOST:PORT), got {list(endpoints)}: {exc}"
                ) from exc
    return conf


def _log_transport(event: Any) -> None:
    """One log line per node that connects to the router or leaves it (a restart of a camera shows)."""
    transport = event.transport
    what = "connected" if event.kind == zenoh.SampleKind.PUT else "left"
    log.info("%s %s %s", transport.whatami, transport.zid, what)


def serve(conf: zenoh.Config, stop: threading.Event, out: TextIO = sys.stdout) -> None:
    """Open the router session, print :data:`READY` to ``out``, route until ``stop`` is set, then close it.

    A router that cannot listen (the port taken, an address not on this host) raises ``ConfigurationError``
    with Zenoh's reason, before anything is printed."""
    try:
        session = zenoh.open(conf)
    except zenoh.ZError as exc:
        listen = conf.get_json("listen/endpoints")
        raise ConfigurationError(f"the Zenoh router could not start (listen/endpoints {listen}): {exc}") from exc
    listener = None
    try:
        listener = session.info.declare_transport_events_listener(_log_transport)
        print(f"{READY} {session.info.zid()}", file=out, flush=True)
        log.info("Zenoh router %s listening on %s", session.info.zid(), conf.get_json("listen/endpoints"))
        stop.wait()
    finally:
        if listener is not None:  # before the interpreter exits: a callback listener left then hangs it
            listener.undeclare()
        session.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a router until SIGTERM or SIGINT; exit code 0 after a clean close, 2 when it could not start."""
    parser = argparse.ArgumentParser(
        prog="python -m heros_archiver.transport.router", description="Run a Zenoh router (Python, no zenohd)."
    )
    parser.add_argument("config", nargs="?", type=Path, help="Zenoh config file (JSON5), as zenohd -c takes")
    parser.add_argument("--listen", action="append", default=[], help="endpoint to listen on (repeatable)")
    parser.add_argument("--connect", action="append", default=[], help="router to connect to (repeatable)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args.config, args.listen, args.connect)


def run(config: Path | None, listen: Sequence[str], connect: Sequence[str]) -> int:
    """:func:`main` without the argument parsing (``heros-archiver router`` calls it)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve(router_config(config, listen, connect), stop)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
