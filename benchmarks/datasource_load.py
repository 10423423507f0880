#!/usr/bin/env python3
"""A lab's sensors into one DatasourceArchiver: N polled datasource HEROs at R Hz each for S seconds.

The datasources (``heros.PolledLocalDatasourceHERO``, two readings per poll: a temperature and a pressure)
run in this process on one asyncio loop and listen on a loopback port; the archiver runs as
``heros-archiver run`` (a three-line BOSS config) in a child process connected to it. After S seconds
the polls stop, the archiver gets SIGTERM (it drains), and every Parquet file is read back: readings sent,
rows archived, per source, and the archiver's CPU time (user + system, from /proc, until it exited).

    python benchmarks/datasource_load.py [--heros 50] [--rate 20] [--seconds 60] [--out /tmp/ds-load]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
from heros import PolledLocalDatasourceHERO

from heros_archiver.testing import free_port, loopback_config_json, session_manager, unique_realm, wait_for_subscriber


class Sensor(PolledLocalDatasourceHERO):
    """Two readings per poll; counts its polls."""

    def __init__(self, *args, **kwargs):
        self.polls = 0
        self.polling = True
        super().__init__(*args, **kwargs)

    def _observable_data(self):
        if not self.polling:  # until the archiver is subscribed: empty sets (no readings to lose)
            return {}
        self.polls += 1
        return {"T": (20.0 + (self.polls % 100) / 100, "degC"), "p": (1e-7 * (1 + self.polls % 7), "mbar")}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its waited-for children (fields 14-17 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heros", type=int, default=50)
    ap.add_argument("--rate", type=float, default=20.0, help="polls per second of each HERO")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", default="/tmp/ds-load")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port, realm = free_port(), unique_realm("ds")
    config = out / "sensors.json"
    config.write_text(
        '{"_id": "sensor-archive", "classname": "heros_archiver.DatasourceArchiver",\n'
        f' "arguments": {{"file_template": "{out}/archive/source={{{{ source_name }}}}/readings.parquet"}}}}\n'
    )
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    manager = session_manager(listen_port=port)
    sensors = [
        Sensor(f"sensor-{k:03d}", realm=realm, session_manager=manager, loop=loop, interval=1 / args.rate)
        for k in range(args.heros)
    ]
    for sensor in sensors:
        sensor.polling = False
    env = dict(os.environ, HEROS_ZENOH_CONFIG=loopback_config_json(connect_port=port), PYTHONUNBUFFERED="1")
    cli = [sys.executable, "-m", "heros_archiver.cli", "run", str(config), "--realm", realm]
    with open(out / "archiver.log", "wb") as log:
        child = subprocess.Popen(cli, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        for sensor in sensors:
            wait_for_subscriber(sensor, "observable_data", timeout=60)
        cpu0 = cpu_seconds(child.pid)
        for sensor in sensors:
            sensor.polls, sensor.polling = 0, True
        start = time.monotonic()
        time.sleep(args.seconds)
        for sensor in sensors:  # the polls end (no empty sets after them)
            loop.call_soon_threadsafe(sensor._stop_loop.set)
        wall = time.monotonic() - start
        time.sleep(2)
        cpu_run = cpu_seconds(child.pid) - cpu0
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        for sensor in sensors:
            sensor._destroy_hero()
        loop.call_soon_threadsafe(loop.stop)
    sent = {sensor._name: 2 * sensor.polls for sensor in sensors}
    archived = {}
    for path in (out / "archive").rglob("*.parquet"):
        table = pq.read_table(path, columns=["source_name", "raw_value"])
        for name in table.column("source_name").to_pylist():
            archived[name] = archived.get(name, 0) + 1
    total_sent, total_archived = sum(sent.values()), sum(archived.values())
    short = {name: (count, archived.get(name, 0)) for name, count in sent.items() if archived.get(name, 0) != count}
    result = {
        "heros": args.heros,
        "rate_hz": args.rate,
        "seconds": round(wall, 1),
        "readings_sent": total_sent,
        "rows_archived": total_archived,
        "sources_short": short,
        "archiver_cpu_s_while_sending": round(cpu_run, 2),
        "archiver_cpu_per_reading_us": round(1e6 * cpu_run / max(1, total_archived), 1),
        "archiver_exit": child.returncode,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
