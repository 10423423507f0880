#!/usr/bin/env python3
"""Four cameras on two hosts through a Zenoh router into one archiver, against the same without the router.

Issue 18's row: hosts are network namespaces (``heros_archiver.testing.servers.NetNamespaces``, root needed):
hosts 0 and 1 run two camera processes each, host 2 runs the archiver (``heros-archiver run``, an
ArrayArchiver of the four cameras, 2 MiB uint16 frames as ``.npy`` files on local disk under ``--out``) and,
in the ``router`` rows, the router (``python -m heros_archiver.transport.router``): cameras and archiver are
its clients, with the documented client settings. In the ``direct`` rows the cameras are peers listening
on their host's address and the archiver a peer connected to all four. Rows alternate (router, direct, ...)
``--repeats`` times in one run; each row sends ``--frames`` reliable frames per camera at full speed, all
cameras at once, and measures the aggregate archived frames/s from the first send to the last file under its
name. The ratio is router / direct (target >= 0.8). Lost = sent - archived (also the archiver's gaps).

    sudo .venv/bin/python benchmarks/routers.py [--frames 200] [--repeats 3] [--out /var/tmp] [--router-config F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from heros_archiver.testing.camera_process import CameraProcess
from heros_archiver.testing.servers import NetNamespaces, ZenohRouter, client_settings, namespaces_unavailable

SHAPE = (1024, 1024)  # uint16: 2 MiB
PORT = 7447
CAMERAS = [(0, "cam-0"), (0, "cam-1"), (1, "cam-2"), (1, "cam-3")]  # (host, name)


def nested(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"a/b": 1}`` -> ``{"a": {"b": 1}}`` (a Zenoh config document)."""
    document: dict[str, Any] = {}
    for path, value in settings.items():
        node = document
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return document


def archiver_config(directory: Path, archive: Path) -> Path:
    config = directory / "archiver.json"
    arguments = {
        "object_selector": "cam-$*",
        "event_name": "acquisition_data",
        "save_template": "{{ file_path }}/{{ source_name }}/{{ '%05d' % frame }}.npy",
        "default_metadata": {"file_path": str(archive)},
        "sequence_key": "frame",
    }
    config.write_text(
        json.dumps({"_id": "archiver", "classname": "heros_archiver.ArrayArchiver", "arguments": arguments})
    )
    return config


def start_archiver(
    hosts: NetNamespaces, directory: Path, archive: Path, zenoh: dict[str, Any]
) -> subprocess.Popen[bytes]:
    zenoh_config = directory / "zenoh.json5"
    zenoh_config.write_text(json.dumps(nested(zenoh)))
    cmd = ["ip", "netns", "exec", hosts.names[2], sys.executable, "-m", "heros_archiver.cli", "run"]
    cmd += [str(archiver_config(directory, archive)), "--realm", directory.name, "--zenoh-config", str(zenoh_config)]
    log = (directory / "archiver.log").open("wb")
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("HEROS_ZENOH_CONFIG", None)
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
    )


def archived(archive: Path) -> int:
    count = 0
    for _, name in CAMERAS:
        folder = archive / name
        if folder.is_dir():
            count += sum(
                1 for entry in os.scandir(folder) if entry.name.endswith(".npy") and not entry.name.startswith(".")
            )
    return count


def totals(log: Path) -> dict[str, int]:
    """received / archived / gaps / missing of the ``total`` row ``heros-archiver run`` printed at its stop."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        cells = [cell.strip() for cell in re.split(r"[│|┃]", line) if cell.strip()]
        if cells and cells[0] == "total":
            names = ("received", "archived", "retried", "dead_lettered", "dropped", "quarantined", "gaps", "missing")
            return dict(zip(names, map(int, cells[1:9]), strict=True))
    return {}


def one_row(hosts: NetNamespaces, mode: str, frames: int, scratch: Path, router_config: Path | None) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=scratch))
    archive = directory / "archive"
    realm = directory.name
    router = ZenohRouter(
        host=hosts.address(2), port=PORT, netns=hosts.names[2], config=router_config, log=directory / "router.log"
    )
    cameras: list[CameraProcess] = []
    archiver: subprocess.Popen[bytes] | None = None
    try:
        if mode == "router":
            router.start()
            camera_endpoints = {name: None for _, name in CAMERAS}
            zenoh = client_settings(router.endpoint)
        else:
            camera_endpoints = {
                name: f"tcp/{hosts.address(host)}:{PORT + 1 + i}" for i, (host, name) in enumerate(CAMERAS)
            }
            zenoh = {"mode": "peer", "scouting/multicast/enabled": False, "listen/endpoints": []}
            zenoh["connect/endpoints"] = list(camera_endpoints.values())
        for host, name in CAMERAS:
            connect = [] if camera_endpoints[name] else [router.endpoint]
            camera = CameraProcess(
                name, realm, connect, directory / f"{name}.log", netns=hosts.names[host], listen=camera_endpoints[name]
            )
            cameras.append(camera.start())
        archiver = start_archiver(hosts, directory, archive, {**zenoh, "transport/shared_memory/enabled": False})
        for camera in cameras:
            camera.wait_matched(120.0)
        start = time.monotonic()
        for camera in cameras:
            camera.send(frames, SHAPE)
        expected = frames * len(cameras)
        done = 0
        last_change = time.monotonic()
        while done < expected and time.monotonic() - last_change < 20.0:
            time.sleep(0.02)
            now = archived(archive)
            if now != done:
                done, last_change = now, time.monotonic()
        elapsed = last_change - start
        for camera in cameras:
            camera.expect("@@ SENT", 60.0)
        os.kill(archiver.pid, signal.SIGTERM)
        archiver.wait(120)
        figures = totals(directory / "archiver.log")
        return {
            "mode": mode,
            "frames_per_s": round(done / elapsed, 1),
            "MiB_per_s": round(done * 2 / elapsed, 1),
            "archived": done,
            "sent": expected,
            "lost": expected - done,
            "gaps": figures.get("gaps"),
            "missing": figures.get("missing"),
            "seconds": round(elapsed, 2),
        }
    finally:
        if archiver is not None and archiver.poll() is None:
            os.killpg(archiver.pid, signal.SIGKILL)
            archiver.wait(30)
        for camera in cameras:
            camera.stop()
        router.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per camera and row (2 MiB each)")
    parser.add_argument("--repeats", type=int, default=3, help="router/direct pairs")
    parser.add_argument("--out", type=Path, default=Path("/var/tmp"), help="local disk for the archive")
    parser.add_argument("--net", type=int, default=233, help="the namespaces' 10.NET.0.x")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--router-config", type=Path, help="the router's Zenoh config file (JSON5), e.g. to tune it")
    args = parser.parse_args()
    reason = namespaces_unavailable()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    scratch = Path(tempfile.mkdtemp(prefix="heros-routers-bench-", dir=args.out))
    rows: list[dict[str, Any]] = []
    try:
        with NetNamespaces(3, net=args.net) as hosts:
            for _ in range(args.repeats):
                for mode in ("router", "direct"):
                    row = one_row(hosts, mode, args.frames, scratch, args.router_config)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rate = {
        mode: statistics.median(r["frames_per_s"] for r in rows if r["mode"] == mode) for mode in ("router", "direct")
    }
    ratio = rate["router"] / rate["direct"] if rate["direct"] else float("nan")
    print(f"# 4 cameras on 2 hosts -> 1 archiver, {args.frames} x 2 MiB frames per camera, median of {args.repeats}:")
    print(
        f"# through the router {rate['router']:.1f} frames/s, direct {rate['direct']:.1f} frames/s, "
        f"ratio {ratio:.2f} (target >= 0.8)"
    )
    print(f"# lost: {sum(r['lost'] for r in rows)} of {sum(r['sent'] for r in rows)}")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "router": rate["router"], "direct": rate["direct"], "ratio": ratio}, indent=1)
        )


if __name__ == "__main__":
    main()
