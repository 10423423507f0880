#!/usr/bin/env python3
"""Does this Zenoh keep shared-memory messages while a receiver pushes back? (decision 0003)

A camera HERO in one process sends `--n` reliable 2 MiB frames at full speed to a bare Zenoh subscriber
in another, over loopback TCP with or without Zenoh's shared memory. Every `--every` frames the
subscriber holds Zenoh's receive thread for `--stall-ms`, as a full bounded queue does. A reliable
stream must deliver every frame; with shared memory on, Zenoh 1.9 loses some without any error
(eclipse-zenoh/zenoh#2628). Uses the interpreter's heros and Zenoh:

    .venv/bin/python benchmarks/shm_stall.py [--stall-ms 150] [--every 50] [--n 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import uuid
from importlib.metadata import version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback(shared_memory: bool, listen: int | None = None, connect: int | None = None) -> dict:
    return {
        "mode": "peer",
        "scouting": {"multicast": {"enabled": False}},
        "listen": {"endpoints": [f"tcp/127.0.0.1:{listen}"] if listen else []},
        "connect": {"endpoints": [f"tcp/127.0.0.1:{connect}"] if connect else []},
        "transport": {"shared_memory": {"enabled": shared_memory}},
    }


def device(port: int, realm: str, n: int) -> None:
    """Send n reliable frames as soon as the subscriber is matched, then stay until told to go."""
    import os

    os.environ["HEROS_ZENOH_CONFIG"] = json.dumps(loopback(True, connect=port))
    import numpy as np
    from heros import LocalHERO, event
    from heros.event import reliable

    class Camera(LocalHERO):
        @reliable
        @event
        def acquisition_data(self, frame, meta):
            return frame, meta

    camera = Camera("cam", realm=realm)
    while not camera.acquisition_data.publisher.matching_status:
        time.sleep(0.01)
    frame = np.random.default_rng(1).integers(0, 1 << 16, (1024, 1024), dtype=np.uint16)
    for i in range(n):
        camera.acquisition_data(frame, {"frame": i})
    print("SENT", flush=True)
    sys.stdin.readline()
    camera._destroy_hero()


def sink(port: int, realm: str, shared_memory: bool, n: int, stall_ms: float, every: int) -> None:
    """Count the frames delivered; hold the receive thread every `every` frames."""
    import zenoh

    session = zenoh.open(zenoh.Config.from_json5(json.dumps(loopback(shared_memory, listen=port))))
    got: list[float] = []

    def on_sample(sample: zenoh.Sample) -> None:
        sample.payload.to_bytes()
        got.append(time.monotonic())
        if len(got) % every == 0:
            time.sleep(stall_ms / 1000)

    key = f"@object/{realm}/cam/acquisition_data"
    subscriber = session.declare_subscriber(key, zenoh.handlers.Callback(on_sample, indirect=False))
    print("READY", flush=True)
    sys.stdin.readline()  # the device has sent everything
    quiet_since, patience = time.monotonic(), 5 + 2 * stall_ms / 1000  # a stall is not the end
    while len(got) < n and time.monotonic() - max(quiet_since, got[-1] if got else 0) < patience:
        time.sleep(0.05)
    print(json.dumps({"delivered": len(got)}), flush=True)
    subscriber.undeclare()
    session.close()


def one_run(shared_memory: bool, args: argparse.Namespace) -> int:
    port, realm = free_port(), f"shm-stall-{uuid.uuid4().hex[:12]}"
    me = [sys.executable, __file__]
    rx = subprocess.Popen(
        [*me, "_sink", str(port), realm, str(int(shared_memory)), str(args.n), str(args.stall_ms), str(args.every)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    tx = None
    try:
        assert rx.stdout and rx.stdin and rx.stdout.readline().strip() == "READY"
        tx = subprocess.Popen(
            [*me, "_device", str(port), realm, str(args.n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert tx.stdout and tx.stdin and tx.stdout.readline().strip() == "SENT"
        rx.stdin.write("\n")
        rx.stdin.flush()
        delivered = int(json.loads(rx.stdout.readline())["delivered"])
        tx.stdin.write("\n")
        tx.stdin.flush()
        return delivered
    finally:
        for p in (tx, rx):
            if p is not None:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="reliable 2 MiB frames per run")
    ap.add_argument("--every", type=int, default=50, help="hold the receive thread after every this many frames")
    ap.add_argument("--stall-ms", type=float, default=150, help="how long to hold it")
    ap.add_argument("--runs", type=int, default=3, help="runs per setting")
    args = ap.parse_args()
    print(
        f"# eclipse-zenoh {version('eclipse-zenoh')}, heros {version('heros')}: {args.n} reliable frames, "
        f"receive thread held {args.stall_ms:g} ms every {args.every}"
    )
    for shared_memory in (False, True):
        counts = [one_run(shared_memory, args) for _ in range(args.runs)]
        print(f"shared memory {'on ' if shared_memory else 'off'}: delivered {counts} of {args.n}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_device":
        device(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_sink":
        sink(int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]))
    else:
        main()
