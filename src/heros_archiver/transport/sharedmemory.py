"""Whether the archiver's Zenoh session uses Zenoh's shared-memory transport (decision 0003).

On one host, shared memory carries a 2 MiB frame about 2.5x as fast as the loopback TCP link. But Zenoh
1.9 and earlier drop a shared-memory message silently when the receiving thread is held longer than the
sender's watchdog period (~100 ms) before it maps the message (eclipse-zenoh/zenoh#2628), and a bounded
queue holds that thread by design when storage is slower than the sender. Zenoh 1.10.2 keeps such
messages. So by default shared memory is on only with a Zenoh that keeps them.
"""

from __future__ import annotations

import logging
import re
from importlib.metadata import PackageNotFoundError, version

from heros.zenoh import ZenohSessionManager
from heros.zenoh import session_manager as heros_session_manager

from .heros_compat import open_sessions

log = logging.getLogger("heros_archiver")

#: The first eclipse-zenoh release measured to keep shared-memory messages across a held receive
#: thread (a reliable stream held 0.15-2.5 s every 50 frames: 500 of 500 frames in 10 of 10 runs,
#: against 450-481 of 500 with 1.9.0).
FIRST_SAFE_ZENOH = (1, 10, 2)


def installed_zenoh_version() -> str:
    """The version of the installed ``eclipse-zenoh`` distribution ("" if it cannot be told)."""
    try:
        return version("eclipse-zenoh")
    except PackageNotFoundError:
        return ""


def shared_memory_is_safe(zenoh_version: str) -> bool:
    """True when Zenoh ``zenoh_version`` ("1.10.2", "1.11.0rc1", ...) keeps shared-memory messages while
    the receiver pushes back. A version that cannot be read counts as unsafe."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", zenoh_version)
    if not match:
        return False
    return tuple(int(part or 0) for part in match.groups()) >= FIRST_SAFE_ZENOH


def configure_shared_memory(manager: ZenohSessionManager | None, realm: str, enabled: bool) -> None:
    """Turn Zenoh's shared-memory transport on or off for the session this archiver is about to open (on: as a
    ``zenoh_shared_memory=True`` asks, also where the configuration turned it off).

    heros shares one session per realm and process; when it is already open (another HERO in this
    process opened it) its configuration cannot change any more, which is worth a warning.
    """
    manager = manager or heros_session_manager
    if realm in open_sessions(manager):
        if not enabled:  # asked on, an open session keeps what it has: nothing is at risk
            log.warning(
                "the Zenoh session of realm %r is already open, so its shared-memory transport stays as "
                "configured; with it on, Zenoh %s may drop events silently when the archiver pushes back "
                "(eclipse-zenoh/zenoh#2628)",
                realm,
                installed_zenoh_version() or "of unknown version",
            )
        return
    manager.update_config({"transport/shared_memory/enabled": enabled})
