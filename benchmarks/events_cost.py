#!/usr/bin/env python3
"""What the ``archived`` events cost (decision 0032): archiving throughput of a HERO archiver with ``events=True``
against ``events=False``, in the same run, with a subscriber of ``archived`` in another process (or, with
``--no-subscriber``, none: the events are then counted as unheard and not made, decision 0046).

Items are fed to the archiver directly (``feed``, as Zenoh's receive thread would, at full speed, blocking when
the queue is full), so the figure is the archiver's own: writing plus, with events on, checksums, payloads and
Zenoh puts on the events thread competing for the GIL. Rows: ``small`` (8 KiB uint16 frames, a ``.npy`` each),
``events`` (small dicts, a ``.json`` each, through the helper process), ``frames`` (2 MiB uint16 frames). Prints
items/s per row and setting (median of ``--repeats``, alternating), the ratio, and the archiver process's CPU
time per item::

    python benchmarks/events_cost.py [--repeats 3] [--small 5000] [--events 5000] [--frames 200] [--no-subscriber]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from heros_archiver import ArrayArchiver, JsonArchiver
from heros_archiver.testing import free_port, loopback_config_json, session_manager, unique_realm
from heros_archiver.transport.hero_builder import hero_class

SUBSCRIBER = """
import os, sys, time
from heros import RemoteHERO
from heros_archiver.testing import session_manager
name, realm, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
manager = session_manager(connect_port=port)
while True:
    try:
        hero = RemoteHERO(name, realm=realm, session_manager=manager)
        break
    except NameError:
        time.sleep(0.1)
count = [0]
hero.archived.connect(lambda payload: count.__setitem__(0, count[0] + payload["count"]))
print("READY", flush=True)
sys.stdin.read()
print(count[0], flush=True)
hero._destroy_hero()
manager.force_close()
os._exit(0)  # not the interpreter's finalization, with Zenoh's threads still about
"""


def run(kind: str, n: int, events: bool, out: Path, subscribed: bool = True) -> tuple[float, float]:
    """Items per second of one run, and the archiver's process CPU time per item (all its threads; less
    disturbed by a busy machine than the rate): ``n`` items of ``kind`` fed and archived, events on or off,
    with a subscriber of ``archived`` in another process or without."""
    port, realm = free_port(), unique_realm("bench")
    folder = Path(tempfile.mkdtemp(dir=out))
    os.environ["HEROS_ZENOH_CONFIG"] = loopback_config_json()
    cls: Any = JsonArchiver if kind == "events" else ArrayArchiver
    suffix = "json" if kind == "events" else "npy"
    archiver = hero_class(cls)(
        "bench-archiver",
        f"{{{{ file_path }}}}/{{{{ '%06d' % frame }}}}.{suffix}",
        object_selector="nobody",
        event_name="acquisition_data",
        default_metadata={"file_path": str(folder)},
        realm=realm,
        session_manager=session_manager(listen_port=port),
        events=events,
        low_disk_space=None,
    )
    env = {**os.environ, "HEROS_ZENOH_CONFIG": loopback_config_json()}
    subscriber = None
    if subscribed:
        subscriber = subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, "bench-archiver", realm, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
    try:
        if subscriber is not None:
            assert subscriber.stdout is not None and subscriber.stdout.readline().strip() == "READY"
        if events and subscriber is not None:
            publisher = archiver.archived.publisher
            while not publisher.matching_status.matching:
                time.sleep(0.01)
        if kind == "frames":
            payloads: list[Any] = [np.full((1024, 1024), i, np.uint16) for i in range(4)]
        elif kind == "small":
            payloads = [np.full((64, 64), i, np.uint16) for i in range(4)]
        else:
            payloads = [{"value": i / 4, "name": "sensor"} for i in range(4)]
        start, cpu = time.perf_counter(), time.process_time()
        for index in range(n):
            archiver.feed("cam", (payloads[index % 4], {"frame": index}))
        while archiver.stats()["total"]["archived"] < n:
            time.sleep(0.002)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        try:
            if subscriber is not None:
                subscriber.communicate("", timeout=30)
        finally:
            if subscriber is not None and subscriber.poll() is None:
                subscriber.kill()
                subscriber.wait()
            archiver.close()
            shutil.rmtree(folder, ignore_errors=True)
    return n / elapsed, cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--no-subscriber", action="store_true", help="no subscriber of archived (events unheard)")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="events-cost-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        print(f"{'row':8} {'events off':>12} {'events on':>12} {'on/off':>7} {'CPU us/item off':>16} {'on':>8}")
        for kind, n in (("small", args.small), ("events", args.events), ("frames", args.frames)):
            runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for events in (False, True):
                    runs[events].append(run(kind, n, events, out, not args.no_subscriber))
            off, on = (statistics.median(rate for rate, _ in runs[e]) for e in (False, True))
            cpu_off, cpu_on = (statistics.median(cpu for _, cpu in runs[e]) * 1e6 for e in (False, True))
            print(f"{kind:8} {off:10.0f}/s {on:10.0f}/s {on / off:7.3f} {cpu_off:16.1f} {cpu_on:8.1f}", flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
