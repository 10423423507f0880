"""Helpers to run archivers against a simulated camera over real Zenoh on loopback.

Used by the test suite, the ``demo`` command and the benchmarks. Everything here listens on and
connects to ``127.0.0.1`` only, with multicast scouting off, so nothing leaves the machine, unless the
camera process is given another endpoint (a router's, or its own in a test's network namespace).

Run as a program it is a camera process driven over stdin (for tests that need the camera and the
archiver in different processes)::

    python -m heros_archiver.testing camera --name cam --realm R --listen PORT|tcp/ADDR:PORT [--reliable]
    python -m heros_archiver.testing camera --name cam --realm R --connect tcp/ROUTER:PORT [--reliable]
    stdin:  SEND n [height width dtype [rate|max [start]]]  ->  stdout: "@@ SENT n" (frames start .. start+n-1)
            WAIT   ->  "@@ MATCHED" once an archiver subscribes
            QUIT
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import uuid
from typing import Any

import numpy as np
from heros import LocalHERO, event
from heros.event import reliable
from heros.zenoh import ZenohSessionManager

from ..transport.heros_compat import hero_name

FRAME_EVENT = "acquisition_data"
_SEED = 20260


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_realm(prefix: str = "test") -> str:
    """A realm name no other test or run uses, so runs cannot see each other's HEROs."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def loopback_settings(
    listen_port: int | None = None, connect_port: int | None = None, shared_memory: bool = False
) -> dict[str, Any]:
    """Zenoh settings (``path/to/key: value``) for a loopback-only peer; Zenoh's shared-memory transport off
    unless asked (a peer with it on that is killed leaves its file in ``/dev/shm``, ``zenoh_segments``; the
    archivers turn it off in their own sessions anyway, ``transport.sharedmemory``)."""
    return {
        "mode": "peer",
        "scouting/multicast/enabled": False,
        "listen/endpoints": [f"tcp/127.0.0.1:{listen_port}"] if listen_port else [],
        "connect/endpoints": [f"tcp/127.0.0.1:{connect_port}"] if connect_port else [],
        "transport/shared_memory/enabled": shared_memory,
    }


def loopback_config_json(
    listen_port: int | None = None, connect_port: int | None = None, shared_memory: bool = False
) -> str:
    """The same settings as a JSON document for ``HEROS_ZENOH_CONFIG`` (for child processes)."""
    document: dict[str, Any] = {}
    for path, value in loopback_settings(listen_port, connect_port, shared_memory).items():
        node = document
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return json.dumps(document)


def session_manager(
    listen_port: int | None = None, connect_port: int | None = None, shared_memory: bool = False
) -> ZenohSessionManager:
    """A heros session manager of its own: its Zenoh session is a separate peer on loopback."""
    return ZenohSessionManager(loopback_settings(listen_port, connect_port, shared_memory))


def make_frame(index: int, shape: tuple[int, ...] = (1024, 1024), dtype: str = "uint16") -> np.ndarray:
    """Frame ``index``: a fixed random image with ``index`` written into its first element.

    Every frame differs, so a test can tell which frame a file holds and that it is complete.
    """
    rng = np.random.default_rng(_SEED)
    frame = rng.integers(0, 200, size=shape).astype(dtype)
    frame.flat[0] = index
    return frame


def frame_index(frame: np.ndarray) -> int:
    """The index ``make_frame`` wrote into ``frame``."""
    return int(frame.flat[0])


class SimulatedCamera(LocalHERO):
    """A camera HERO that publishes ``acquisition_data(frame, {"frame": i, ...})`` on demand."""

    @event
    def acquisition_data(self, frame: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """The event archivers subscribe to."""
        return frame, metadata

    def acquire(
        self,
        n: int,
        shape: tuple[int, ...] = (1024, 1024),
        dtype: str = "uint16",
        rate: float | None = None,
        start: int = 0,
        extra_metadata: dict[str, Any] | None = None,
    ) -> int:
        """Publish ``n`` frames (at ``rate`` per second, or as fast as possible); returns how many were sent."""
        base = make_frame(0, shape, dtype)
        t0 = time.monotonic()
        for k in range(n):
            if rate:
                delay = t0 + k / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            index = start + k
            base.flat[0] = index
            self.acquisition_data(base, {"frame": index, "t_send": time.time(), **(extra_metadata or {})})
        return n


class ReliableSimulatedCamera(SimulatedCamera):
    """The same camera with a reliable event (RELIABLE + congestion control BLOCK)."""

    @reliable
    @event
    def acquisition_data(self, frame: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """The event archivers subscribe to, declared reliable."""
        return frame, metadata


def wait_for_subscriber(hero: LocalHERO, event_name: str = FRAME_EVENT, timeout: float = 30.0) -> None:
    """Block until a subscriber matches ``hero``'s event, so that no event is published into the void."""
    publisher = getattr(hero, event_name).publisher
    deadline = time.monotonic() + timeout
    while not publisher.matching_status.matching:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no subscriber matched {event_name!r} of {hero_name(hero)!r} within {timeout} s")
        time.sleep(0.01)


def _camera_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m heros_archiver.testing camera")
    parser.add_argument("--name", default="cam")
    parser.add_argument("--realm", required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", help="a peer listening on this loopback port, or on this endpoint (tcp/ADDR:PORT)")
    where.add_argument("--connect", action="append", help="router endpoint: a client of it (repeatable)")
    parser.add_argument("--reliable", action="store_true")
    args = parser.parse_args(argv)
    cls = ReliableSimulatedCamera if args.reliable else SimulatedCamera
    if args.connect:
        from .servers import client_settings

        manager = ZenohSessionManager(client_settings(*args.connect))
    elif args.listen.isdigit():
        manager = session_manager(listen_port=int(args.listen))
    else:
        manager = ZenohSessionManager({**loopback_settings(), "listen/endpoints": [args.listen]})
    camera = cls(args.name, realm=args.realm, session_manager=manager)
    print("@@ READY", flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "QUIT":
                break
            if words[0] == "WAIT":
                wait_for_subscriber(camera)
                print("@@ MATCHED", flush=True)
            elif words[0] == "SEND":
                n = int(words[1])
                shape = (int(words[2]), int(words[3])) if len(words) > 3 else (1024, 1024)
                dtype = words[4] if len(words) > 4 else "uint16"
                rate = float(words[5]) if len(words) > 5 and words[5] != "max" else None
                start = int(words[6]) if len(words) > 6 else 0
                camera.acquire(n, shape, dtype, rate, start)
                print(f"@@ SENT {n}", flush=True)
    finally:
        camera._destroy_hero()
