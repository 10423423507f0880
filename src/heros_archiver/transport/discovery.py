"""Find the running archivers of a realm over Zenoh and ask each for its status (``heros-archiver status``).

An archiver run under BOSS or ``heros-archiver run`` is a HERO, and its discovery reply names
``ARCHIVER_INTERFACE`` among what it implements (``HERODataArchiver._hero_implements``): that is how they are
told from the cameras and the rest of the realm. Each one found gets a ``heros.RemoteHERO`` (kept, so a
refresh costs one query per archiver), whose ``status()`` is the archiver's public method. The Zenoh session
is configured as heros configures every session: ``HEROS_ZENOH_CONFIG`` (a JSON5 document) if set, then the
endpoints given here to connect to.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from heros import HEROPeer, RemoteHERO
from heros.zenoh import ZenohSessionManager

from ..errors import StatusError
from ..saferepr import safe_str
from . import heros_compat

__all__ = ["ARCHIVER_INTERFACE", "ArchiverFinder"]

log = logging.getLogger("heros_archiver")

#: What every archiver says it implements in heros' discovery.
ARCHIVER_INTERFACE = "heros_archiver.Archiver"


class ArchiverFinder:
    """A Zenoh peer of ``realm`` that finds archivers and reads their status; ``close`` (or ``with``) ends it.

    Args:
        realm: the HEROS realm.
        connect: Zenoh endpoints to connect to, e.g. ``tcp/127.0.0.1:7447`` (added to ``HEROS_ZENOH_CONFIG``'s).
    """

    def __init__(self, realm: str, connect: Sequence[str] = ()) -> None:
        self.realm = realm
        self._manager = ZenohSessionManager({"connect/endpoints": list(connect)} if connect else {})
        self._peer = HEROPeer(realm, session_manager=self._manager)
        self._remotes: dict[str, Any] = {}

    def discover(self, pattern: str = "*", timeout: float = 1.0) -> list[str]:
        """The names of the archivers that answer heros' discovery within ``timeout`` seconds and match
        ``pattern`` (a glob on the name, e.g. ``cam-*``), sorted."""
        try:
            replies = heros_compat.discover(self._peer, timeout)
        except Exception as exc:  # noqa: BLE001 - a broken reply (heros reads its "name") must not end the command
            log.warning("discovery in realm %r failed: %s: %s", self.realm, type(exc).__name__, safe_str(exc))
            return []
        return sorted(
            name
            for name, reply in replies.items()
            if isinstance(name, str) and ARCHIVER_INTERFACE in _implements(reply) and fnmatch.fnmatchcase(name, pattern)
        )

    def status(self, name: str) -> dict[str, Any]:
        """The ``status()`` of archiver ``name``; raises StatusError when it cannot be had (gone, no answer, or
        an answer that is no status), after which the next call looks for it again."""
        remote = self._remotes.get(name)
        try:
            if remote is None:
                remote = self._remotes[name] = RemoteHERO(name, self.realm, session_manager=self._manager)
            result = remote.status()
        except Exception as exc:  # whatever heros or Zenoh raise: this archiver is not reachable now
            self._forget(name)
            raise StatusError(
                f"archiver {name!r} in realm {self.realm!r}: status() failed ({type(exc).__name__}: {safe_str(exc)})"
            ) from exc
        if not isinstance(result, dict) or "archiver" not in result:
            self._forget(name)
            raise StatusError(
                f"archiver {name!r} in realm {self.realm!r}: expected a status (a dict with 'archiver'), "
                f"got {safe_str(result)[:200]}"
            )
        return result

    def _forget(self, name: str) -> None:
        remote = self._remotes.pop(name, None)
        if remote is not None:
            _destroy(remote)

    def close(self) -> None:
        """Release every RemoteHERO and the Zenoh session. Idempotent."""
        for name in list(self._remotes):
            self._forget(name)
        if not getattr(self._peer, "_hero_destroyed", False):
            _destroy(self._peer)

    def __enter__(self) -> ArchiverFinder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _implements(reply: Any) -> Iterable[str]:
    """The interfaces a discovery reply names (a set after CBOR, a list from older heros; nothing if malformed)."""
    implements = reply.get("implements") if isinstance(reply, dict) else None
    return [str(entry) for entry in implements] if isinstance(implements, (set, frozenset, list, tuple)) else []


def _destroy(hero: Any) -> None:
    try:
        hero._destroy_hero()
    except Exception as exc:  # noqa: BLE001 - the session may be gone already
        log.debug("releasing %r failed: %s", hero, exc)
