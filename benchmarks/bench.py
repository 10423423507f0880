#!/usr/bin/env python3
"""End-to-end benchmark of HEROS event archivers over real Zenoh (see README.md).

One file, three roles:
  python bench.py [options]        driver: runs the matrix, verifies, prints a table, writes JSON
  python bench.py _device SPEC     fake camera / sensor LocalHERO (started by the driver)
  python bench.py _sink SPEC       archiver under test, bare counting EventObserver or bare Zenoh subscriber (ditto)
Children talk to the driver with "@@ WORD ..." lines on stdout / plain lines on stdin.
With --impl NAME=PYTHON:PACKAGE (repeatable) every archiver row runs once per implementation, round-robin,
the sink child with that implementation's interpreter; the first --impl is the numerator of the ratio table.
"""

import argparse
import ctypes
import importlib
import io
import json
import os
import platform
import queue
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REALM = "bench"
SEED = 12345
FRAME_EVENT, EVENT_EVENT = "acquisition_data", "sensor_data"
SINKS = {  # name: (default class, default kwargs, output format)
    "array": (
        "herostools.actor.ArrayArchiver",
        {"save_template": "{{ file_path }}/img-{{ '%06d' % frame }}.npy"},
        "npy",
    ),
    "zarr": (
        "herostools.actor.archiver.ZarrArchiver",
        {"store_template": "{{ file_path }}/frames.zarr", "array_path_template": "{{ '%06d' % frame }}"},
        "zarr",
    ),
    # one HDF5 file per run, a dataset per source (default dataset_template); only implementations with the
    # class (this project's), so opt-in like zarr; items count once a commit reported them (stats())
    "hdf5": ("heros_archiver.Hdf5Archiver", {"file_template": "{{ file_path }}/run.h5"}, "hdf5"),
    # the same, with a SWMR reader in another process polling the file during the run (run_reader, --swmr-poll)
    "hdf5:swmr": ("heros_archiver.Hdf5Archiver", {"file_template": "{{ file_path }}/run.h5"}, "hdf5"),
    # one sharded Zarr array per run and source (default array_template), counted at commits as hdf5
    "zarr-append": ("heros_archiver.ZarrAppendArchiver", {"store_template": "{{ file_path }}/run.zarr"}, "zarr-append"),
    # TiffArchiver (this project's, opt-in): one TIFF per frame (files, as array), or one BigTIFF stack per run
    # whose frames count once a commit linked their pages (stats(), as hdf5)
    "tiff": ("heros_archiver.TiffArchiver", {"save_template": "{{ file_path }}/img-{{ '%06d' % frame }}.tif"}, "tiff"),
    "tiff-stack": (
        "heros_archiver.TiffArchiver",
        {"save_template": "{{ file_path }}/run.tif", "stack": True},
        "tiff-stack",
    ),
    # ArrayArchiver with an object-store root (this project's, opt-in): frames as objects in a SeaweedFS S3 server
    # the driver starts (S3Server), counted archived when stats() says the PUT returned (as hdf5); state under data
    "s3": ("heros_archiver.ArrayArchiver", {"save_template": "img-{{ '%06d' % frame }}.npy"}, "s3"),
    # readings as rows of one Parquet file (this project's class, opt-in as hdf5); an event counts once journaled
    "parquet": ("heros_archiver.ParquetArchiver", {"file_template": "{{ file_path }}/events.parquet"}, "parquet"),
    "json": ("herostools.actor.JsonArchiver", {"save_template": "{{ file_path }}/ev-{{ '%06d' % i }}.json"}, "json"),
    "count": ("heros.EventObserver", {}, "count"),
    # the transport's limit: a bare Zenoh subscriber that takes each sample's bytes and reads only the index
    # (no heros decoding, no disk), with Zenoh's shared memory off (as the archiver of this project runs) or on
    "wire:tcp": ("zenoh.Subscriber", {"shared_memory": False}, "wire"),
    "wire:shm": ("zenoh.Subscriber", {"shared_memory": True}, "wire"),
}
#: a sink with this suffix is the sink's archiver made with catalog=False (this project's archivers only): the
#: catalog's cost is the ratio of the sink's row to this one's, measured in the same run
NOCATALOG = ":nocatalog"
#: ... and with this suffix the sink's archiver made a HERO (as BOSS makes it), so that it also has its events
#: (nothing subscribes to them here): the cost of the catalog and the events together is this row over the
#: ``:nocatalog`` one (a plain observer without a catalog), same run and impl
HERO = ":hero"
for _name in ("array", "json", "hdf5", "zarr-append", "tiff-stack", "parquet"):
    SINKS[_name + NOCATALOG] = (SINKS[_name][0], {**SINKS[_name][1], "catalog": False}, SINKS[_name][2])
    SINKS[_name + HERO] = (SINKS[_name][0], {**SINKS[_name][1], HERO: True}, SINKS[_name][2])
WIRE_SINKS = ("wire:tcp", "wire:shm")
# (for small events the per-sample Python work of any subscriber, not the wire, is the limit: no wire rows)
FRAME_SINKS = (
    "array", "array:nocatalog", "array:hero", "zarr", "hdf5", "hdf5:nocatalog", "hdf5:hero", "hdf5:swmr",
    "zarr-append", "zarr-append:nocatalog", "zarr-append:hero", "tiff", "tiff-stack", "tiff-stack:nocatalog",
    "tiff-stack:hero", "s3", "count", *WIRE_SINKS,
)  # fmt: skip
EVENT_SINKS = ("json", "json:nocatalog", "json:hero", "parquet", "parquet:nocatalog", "parquet:hero", "count")
SWMR_SINKS = ("hdf5:swmr",)  # rows with a SWMR reader beside the archiver
# 'small': 8 KiB frames, where per-item work is the limit (no wire rows)
SMALL_SINKS = (
    "array", "array:nocatalog", "array:hero", "hdf5", "hdf5:nocatalog", "hdf5:hero", "zarr-append",
    "zarr-append:nocatalog", "zarr-append:hero", "count",
)  # fmt: skip
SHARED_SINKS = ("count", *WIRE_SINKS)  # rows of no implementation
RECEIVE_FORMATS = ("count", "wire")  # sinks that write nothing: an item is its receipt
COMMIT_FORMATS = (
    "hdf5",
    "zarr-append",
    "tiff-stack",
    "parquet",
    "s3",
)  # container sinks: an item arrives when a commit made it archived (the archiver's stats())
#: stats() poll of a container sink, seconds: the commit clock's resolution (a call costs tens of us of GIL time)
COMMIT_POLL = 0.005
N_CAMS_FOUR = 4  # cameras of the 'four' workload, all in the one device process
SHARED = "-"  # impl of rows that belong to no implementation (count, wire:* = transport, disk:* = disk limits)


# ----------------------------------------------------------------------------- shared helpers
PIXELS = ("random", "camera")  # --pixels: what the frames hold besides their stamp


def base_frame(shape, pixels="random"):
    """The fixed image every frame is a copy of: uniform random pixels (incompressible), or `camera`: a
    beam spot on an offset with shot noise, as benchmarks/hdf5_compression.py, for compression ratios."""
    rng = np.random.default_rng(SEED)
    if pixels == "random":
        return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    y, x = np.indices(shape)
    spot = 3000.0 * np.exp(-(((y - shape[0] / 2) ** 2 + (x - shape[1] / 2) ** 2) / (2 * (shape[0] / 8) ** 2)))
    return np.clip(rng.poisson(spot + 100.0) + rng.normal(0, 3.0, shape), 0, 65535).astype(np.uint16)


def stamp(buf, i):
    """Frame i = the fixed image (base_frame) with i written into its first two pixels."""
    buf[0, 0], buf[0, 1] = i & 0xFFFF, (i >> 16) & 0xFFFF


def frame_index(arr):
    return int(arr[0, 0]) | (int(arr[0, 1]) << 16)


def event_payload(i):
    return {"temperature": 20.0 + (i % 1000) * 0.01, "i": i}


def cbor_head(buf, pos):
    """(major type, argument, position after the head) of the CBOR data item at `pos` (definite lengths)."""
    major, info = buf[pos] >> 5, buf[pos] & 0x1F
    if info < 24:
        return major, info, pos + 1
    width = 1 << (info - 24)
    return major, int.from_bytes(buf[pos + 1 : pos + 1 + width], "big"), pos + 1 + width


def wire_index(buf):
    """Frame index of a raw heros frame payload: the stamp in its pixels, read in place.

    A frame event is the CBOR array [tag [shape, dtype, data], metadata]; only the heads before the pixels
    are walked, so the pixels are not decoded or copied again."""
    _, _, pos = cbor_head(buf, 0)  # [..., metadata]
    _, _, pos = cbor_head(buf, pos)  # tag
    _, _, pos = cbor_head(buf, pos)  # [shape, dtype, data]
    _, ndim, pos = cbor_head(buf, pos)
    for _ in range(ndim):
        _, _, pos = cbor_head(buf, pos)
    _, length, pos = cbor_head(buf, pos)  # dtype string
    _, _, pos = cbor_head(buf, pos + length)  # data
    lo, hi = struct.unpack_from("<HH", buf, pos)
    return lo | (hi << 16)


def import_dotted(path):
    mod, _, name = path.rpartition(".")
    return getattr(importlib.import_module(mod), name)


def proc_field_mib(pid, key):
    """VmRSS / VmHWM etc. from /proc/PID/status in MiB (None if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None


def proc_cpu(pid):
    """(user+system CPU seconds, minor page faults) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])
    except OSError:
        return None, None


def item_paths(root, fmt):
    """Paths of archived items: *.npy / *.json files, zarr array metadata files (one per array), or the *.h5
    files of a container sink (many items each).

    Hidden directories (an archiver's dead letters / spool, e.g. .heros-archiver/) hold no archived items."""
    out, stack = [], [str(root)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if not e.name.startswith("."):
                        stack.append(e.path)
                elif (
                    (fmt == "npy" and e.name.endswith(".npy"))
                    or (fmt == "json" and e.name.endswith(".json"))
                    or (fmt == "zarr" and e.name == "zarr.json" and not d.endswith(".zarr"))
                    or (fmt == "hdf5" and e.name.endswith(".h5"))
                    or (fmt == "zarr-append" and ".zarr" in d)  # every object of a store: its size on disk
                    or (fmt in ("tiff", "tiff-stack") and e.name.endswith(".tif"))
                    or (fmt == "parquet" and e.name.endswith(".parquet"))
                ):
                    out.append(e.path)
    return out


#: the archiver's catalog under .heros-archiver/: no items, neither set aside nor archived
CATALOG_NAMES = ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", "object-store.json")
CATALOG_JOURNALS = "catalog-journal"
#: per-process records of where named temporaries are made (storage.temporaries): no items in them
TEMPORARY_RECORDS = "temporaries"


def hidden_files(root):
    """Files under hidden directories of the data folder (dead letters, spool): items set aside, not archived."""
    n = 0
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in (CATALOG_JOURNALS, TEMPORARY_RECORDS)]
        if any(part.startswith(".") for part in Path(d).relative_to(root).parts):
            n += len([f for f in files if f not in CATALOG_NAMES])
    return n


def tree_fingerprint(root):
    n = size = newest = 0
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x != ".heros-archiver"]  # the archiver's own state (its catalog changes later)
        for f in files:
            try:
                st = os.stat(os.path.join(d, f))
            except OSError:
                continue
            n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return n, size, newest


def stdin_commands():
    """Queue of stdin lines; EOF (driver gone) reads as STOP."""
    q = queue.Queue()

    def pump():
        for line in sys.stdin:
            q.put(line.strip())
        q.put("STOP")

    threading.Thread(target=pump, daemon=True).start()
    return q


def say(word, obj=None):
    print(f"@@ {word}" + ("" if obj is None else " " + json.dumps(obj)), flush=True)


def watchdog(seconds):
    t = threading.Timer(seconds, lambda: os._exit(124))
    t.daemon = True
    t.start()


# ----------------------------------------------------------------------------- child: device
def run_device(spec):
    from heros import LocalHERO, event
    from heros.event import reliable

    class FakeCamera(LocalHERO):
        @event
        def acquisition_data(self, frame, meta):
            return frame, meta

    class ReliableCamera(LocalHERO):
        @reliable
        @event
        def acquisition_data(self, frame, meta):
            return frame, meta

    class FakeSensor(LocalHERO):
        @event
        def sensor_data(self, payload):
            return payload

    watchdog(spec["max_life"])
    cmds = stdin_commands()
    frames = spec["kind"] == "frames"
    cls = (ReliableCamera if spec["reliable"] else FakeCamera) if frames else FakeSensor
    devs = [cls(name, realm=REALM) for name in spec["names"]]  # 'four': several cameras in this one process
    evs = [getattr(dev, FRAME_EVENT if frames else EVENT_EVENT) for dev in devs]
    t_wait = time.time() + 60
    while not all(ev.publisher.matching_status for ev in evs):  # wait until the sink's subscription reached us
        if time.time() > t_wait:
            raise SystemExit("no matching subscriber within 60 s")
        time.sleep(0.01)
    say("READY")
    n, rate = spec["n"], spec["rate"]  # n per camera; camera k sends the global indices k*n .. k*n+n-1
    t_send = np.empty(n * len(evs))
    errors = []

    def send(k, ev):
        buf = base_frame(tuple(spec["shape"]), spec["pixels"]) if frames else None
        t0 = time.time()
        try:
            for i in range(k * n, (k + 1) * n):
                if rate:
                    delay = t0 + (i - k * n) / rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                if frames:
                    stamp(buf, i)
                    t_send[i] = t = time.time()
                    ev(buf, {"frame": i, "t_send": t})
                else:
                    payload = event_payload(i)
                    t_send[i] = time.time()
                    ev(payload)
        except BaseException as e:
            errors.append(repr(e))
            raise

    threads = [threading.Thread(target=send, args=(k, ev)) for k, ev in enumerate(evs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"send failed: {errors}")
    t_end = time.time()
    Path(spec["meta"], "device.json").write_text(json.dumps({"t_send": t_send.tolist(), "t_end": t_end}))
    say("SENT")
    while cmds.get() != "STOP":  # keep the session (and its TX queues) alive until the sink is done
        pass
    for dev in devs:
        dev._destroy_hero()


# ----------------------------------------------------------------------------- child: sink
def run_sink(spec):
    watchdog(spec["max_life"])
    cmds = stdin_commands()
    fmt, data = spec["format"], spec["data"]
    base = {"object_selector": spec["selector"], "event_name": spec["event"], "realm": REALM}
    cls = import_dotted(spec["cls"])
    recv = []  # (index, receive time) of every event HEROS delivered to this process

    def on_event(_source, payload):
        recv.append((payload[1]["frame"] if isinstance(payload, (list, tuple)) else payload["i"], time.time()))

    if fmt == "count":
        obs = cls(**base)
    elif fmt == "wire":
        obs = WireSubscriber(spec["selector"], spec["event"], spec["kwargs"]["shared_memory"])
    else:
        kwargs = base | spec["kwargs"]
        kwargs["default_metadata"] = dict(kwargs.get("default_metadata") or {}, file_path=data)
        if kwargs.pop(HERO, False):  # this project's archivers only: made a HERO, as BOSS makes it
            from heros_archiver.transport.hero_builder import hero_class

            cls = hero_class(cls)
            obs = cls("bench-archiver", **kwargs)
        else:
            obs = cls(**kwargs)
    tap = hasattr(obs, "register_callback")
    if tap:  # the whole count / wire sink; for an archiver a tap beside its own callback (events delivered to it)
        obs.register_callback(on_event)
    say("READY")

    first_size = {}  # path -> size when the poller first saw it (partial-write detector)
    commits = [[time.time(), 0]]  # container sinks: [time, archived] whenever the archiver's archived count changed

    def progress():
        if fmt in RECEIVE_FORMATS:
            return len(recv)
        if fmt in COMMIT_FORMATS:  # committed items; the file alone cannot say when a frame was committed
            count = obs.stats()["total"]["archived"]
            if not commits or commits[-1][1] != count:
                commits.append([time.time(), count])
            return count
        paths = item_paths(data, fmt)
        for p in paths:
            if p not in first_size:
                try:
                    first_size[p] = os.stat(p).st_size
                except OSError:
                    pass
        return len(paths)

    expected, t_sent, last, t_change, prev_fp, status = None, None, -1, time.time(), None, "stopped"
    deadline = time.time() + spec["max_life"] - 30
    while True:
        try:
            cmd = cmds.get(timeout=spec["poll"]) if spec["driver_progress"] else cmds.get_nowait()
        except queue.Empty:
            cmd = ""
        if cmd == "STOP":
            break
        if cmd.startswith("FINISH"):  # the driver watched the files (ArrivalWatcher) and says how it ended
            _, status, count = cmd.split()
            last = int(count)
            break
        if spec["driver_progress"]:  # this process then hosts nothing but the archiver under test
            continue
        if cmd.startswith("SENT"):
            expected, t_sent = int(cmd.split()[1]), time.time()
        count, now = progress(), time.time()
        if count != last:
            last, t_change = count, now
        if expected is not None:
            if count >= expected:
                final = fmt in RECEIVE_FORMATS or fmt in COMMIT_FORMATS  # the count is the verdict
                fp = count if final else tree_fingerprint(data)
                if final or fp == prev_fp:  # nothing changed between two polls: files are complete
                    status = "complete"
                    break
                prev_fp = fp
            elif now - max(t_change, t_sent) > spec["quiet"]:
                status = "quiet"
                break
            elif now > deadline:
                status = "timeout"
                break
        time.sleep(spec["poll"])
    module = getattr(sys.modules.get(type(obs).__module__), "__file__", None)  # which copy of the package ran
    info = {"recv": recv, "tap": tap, "first_size": first_size, "commits": commits, "module": module}
    Path(spec["meta"], "sink.json").write_text(json.dumps(info))
    say("DONE", {"status": status, "count": last})
    while cmd != "STOP":
        cmd = cmds.get()
    t0 = time.time()
    if hasattr(obs, "_teardown"):  # BOSS shutdown hook (HERODataArchiver: stop + join worker thread)
        obs._teardown()
    obs._destroy_hero()
    say("BYE", {"teardown_s": time.time() - t0})


class WireSubscriber:
    """The transport's part alone: a Zenoh subscriber on the event's key whose callback runs on Zenoh's
    receive thread, takes the sample's bytes and hands its registered callbacks the frame index in the
    payload shape heros would give them; it decodes nothing else.

    Its session is the one heros would open from HEROS_ZENOH_CONFIG, with shared memory set explicitly."""

    def __init__(self, selector, event, shared_memory):
        import zenoh

        conf = zenoh.Config.from_json5(os.environ.get("HEROS_ZENOH_CONFIG") or "{}")
        conf.insert_json5("transport/shared_memory/enabled", json.dumps(shared_memory))
        self.session = zenoh.open(conf)
        self.callbacks = []

        def on_sample(sample):
            payload = [None, {"frame": wire_index(sample.payload.to_bytes())}]
            for callback in self.callbacks:
                callback(None, payload)

        key = f"@object/{REALM}/{selector}/{event}"  # where a heros event of these objects is published
        self.sub = self.session.declare_subscriber(key, zenoh.handlers.Callback(on_sample, indirect=False))

    def register_callback(self, callback):
        self.callbacks.append(callback)

    def _destroy_hero(self):
        self.sub.undeclare()
        self.session.close()


# ----------------------------------------------------------------------------- child: SWMR reader
def run_reader(spec):
    """A live viewer of the archiver's HDF5 files, in a process of its own: every `poll` seconds it refreshes
    each stack of every .h5 file below `data` (opened once with SWMR) and reads its newest frame. At STOP it
    writes reader.json: polls, frames read, the most frames it saw, and the open errors (a file not yet in
    SWMR mode refuses readers)."""
    import h5py

    try:
        import hdf5plugin  # noqa: F401 - the filters, for compressed rows
    except ImportError:
        pass
    watchdog(spec["max_life"])
    cmds = stdin_commands()
    data, poll = Path(spec["data"]), spec["poll"]
    handles, stacks = {}, {}
    stats = {"polls": 0, "frames_read": 0, "seen": 0, "open_errors": 0}
    say("READY")
    while True:
        try:
            if cmds.get(timeout=poll) == "STOP":
                break
        except queue.Empty:
            pass
        for path in item_paths(str(data), "hdf5"):
            if path not in handles:
                try:
                    handles[path] = h5py.File(path, "r", libver="latest", swmr=True)
                except OSError:
                    stats["open_errors"] += 1
                    continue
                stacks[path] = [frames for _group, frames in hdf5_stacks(handles[path])]
            for frames in stacks[path]:
                frames.refresh()
                n = frames.shape[0]
                if n:
                    frames[n - 1]  # what a live display does with the newest committed frame
                    stats["frames_read"] += 1
                stats["seen"] = max(stats["seen"], n)
        stats["polls"] += 1
    for handle in handles.values():
        handle.close()
    Path(spec["meta"], "reader.json").write_text(json.dumps(stats))
    say("BYE", stats)


# ----------------------------------------------------------------------------- driver
LIVE = {}  # pid -> Popen, for cleanup


def reap(p, timeout):
    """Wait up to `timeout` s for a process already asked to exit, then SIGKILL it by PID."""
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


class Child:
    def __init__(self, role, spec, env, log_path, python=None):
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(
            [python or sys.executable, os.path.abspath(__file__), role, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        LIVE[self.p.pid] = self.p
        self.role, self.log_path, self.lines = role, log_path, queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self):
        return self.p.pid

    def _pump(self):
        for line in self.p.stdout:
            if line.startswith("@@ "):
                self.lines.put(line[3:].rstrip("\n"))
        self.lines.put(None)

    def expect(self, word, deadline):
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                raise RuntimeError(f"{self.role}: no {word} before deadline") from None
            if line is None:
                tail = Path(self.log_path).read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{self.role} exited (rc={self.p.poll()}) before {word}:\n{tail}")
            head, _, rest = line.partition(" ")
            if head == word:
                return json.loads(rest) if rest else None

    def send(self, msg):
        try:
            self.p.stdin.write(msg + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stop(self, timeout=30):
        """STOP, wait for a clean exit; SIGTERM then SIGKILL by PID if it does not come."""
        self.send("STOP")
        bye, t0 = None, time.time()
        try:
            bye = self.expect("BYE", time.time() + timeout) if self.role == "_sink" else None
            self.p.wait(timeout=max(1, timeout - (time.time() - t0)))
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        if self.p.poll() is None:
            self.p.terminate()
            reap(self.p, 5)
        LIVE.pop(self.p.pid, None)
        self.log.close()
        return {"rc": self.p.returncode, "stop_s": time.time() - t0, **(bye or {})}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(a, b):
    return {k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in (a | b).items()}


def zenoh_env(cfg, listen=None, connect=None):
    """Loopback-only peers, no multicast scouting, merged with --zenoh-config ('none': Zenoh defaults)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cfg.zenoh_config == "none":
        env.pop("HEROS_ZENOH_CONFIG", None)
        return env
    conf = {
        "mode": "peer",
        "scouting": {"multicast": {"enabled": False}},
        "listen": {"endpoints": [f"tcp/127.0.0.1:{listen or 0}"]},
    }
    if connect:
        conf["connect"] = {"endpoints": [f"tcp/127.0.0.1:{connect}"]}
    env["HEROS_ZENOH_CONFIG"] = json.dumps(merge(conf, json.loads(cfg.zenoh_config or "{}")))
    return env


def ranges(missing):
    """[[first, last], ...] of consecutive missing indices (at most 20 ranges)."""
    out = []
    for i in missing:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out[:20]


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def verify(fmt, data, n, shape, sink_info, arrivals=None, pixels="random"):
    """Load every archived item, check its content; return per-index arrival times and counters.

    Arrival time of an npy / json file: its time in `arrivals` (ArrivalWatcher), else its mtime (counted in
    the last value); of a zarr array: the newest mtime below it; of a count item: its receive time; of an
    hdf5 frame: see verify_hdf5 (the last value counts frames timed by their receive time)."""
    good, bad, dup, partial, by_mtime = {}, 0, 0, 0, 0
    arrivals = arrivals or {}
    if fmt in RECEIVE_FORMATS:
        for i, t in sink_info["recv"]:
            dup += i in good
            good[i] = t
        return good, bad, dup, None, 0
    if fmt == "hdf5":
        return verify_hdf5(data, n, shape, sink_info, pixels)
    if fmt == "zarr-append":
        return verify_zarr_append(data, n, shape, sink_info, pixels)
    if fmt == "tiff-stack":
        return verify_tiff_stack(data, n, shape, sink_info, pixels)
    if fmt == "parquet":
        return verify_parquet(data, n, sink_info)
    if fmt == "s3":
        return verify_s3(data, n, shape, sink_info, pixels)
    exp = base_frame(shape, pixels) if fmt != "json" else None
    if fmt == "zarr":
        import zarr
    if fmt == "tiff":
        import tifffile
    for p in item_paths(data, fmt):
        try:
            if fmt == "json":
                obj = json.loads(Path(p).read_text())
                i = obj["i"]
                ok = obj.get("temperature") == event_payload(i)["temperature"]
            else:
                if fmt == "tiff":
                    arr = tifffile.imread(p)
                else:
                    arr = np.load(p) if fmt == "npy" else zarr.open_array(os.path.dirname(p), mode="r")[...]
                i = frame_index(arr)
                stamp(exp, i)
                ok = arr.shape == exp.shape and arr.dtype == exp.dtype and np.array_equal(arr, exp)
        except Exception:  # noqa: BLE001 - any unreadable file is a bad item
            ok = False
        if not ok or not 0 <= i < n:
            bad += 1
            continue
        if fmt == "zarr":
            t = tree_fingerprint(os.path.dirname(p))[2] / 1e9
        else:
            st = os.stat(p)
            t = arrivals.get(p)
            if t is None:
                t, by_mtime = st.st_mtime_ns / 1e9, by_mtime + 1
            partial += sink_info["first_size"].get(p, st.st_size) < st.st_size
        dup += i in good
        good[i] = t
    return good, bad, dup, (None if fmt == "zarr" else partial), (None if fmt == "zarr" else by_mtime)


#: rows of an HDF5 stack read back at once in verify_hdf5 (at least one)
VERIFY_BLOCK_BYTES = 64 << 20


def hdf5_stacks(handle):
    """(group, frames dataset) of every stack in an open HDF5 file: the NXdata groups the archiver makes."""
    out = []

    def visit(_name, obj):
        if obj.attrs.get("NX_class") in ("NXdata", b"NXdata") and "archive" in obj:
            signal = obj.attrs.get("signal")
            out.append((obj, obj[signal.decode() if isinstance(signal, bytes) else signal]))

    handle.visititems(visit)
    return out


def verify_hdf5(data, n, shape, sink_info, pixels="random"):
    """Load every committed frame of every *.h5 file back with h5py and compare it with what was sent.

    Rows up to archive/committed_length count (a reopen trusts no more); a frame is good when its
    shape, dtype and every pixel are those of the frame its stamp names. Arrival = commit: with one stack,
    row k was committed when the archiver's archived count (sink_info["commits"], polled every COMMIT_POLL s)
    first exceeded k, since one writer commits a stack's rows in order; with several stacks (several
    sources or files) that order is not known, and their frames are timed by archive/received (their
    receipt in the archiver: no commit wait), counted in the last value returned."""
    import h5py

    try:
        import hdf5plugin  # noqa: F401 - registers the filters (lz4, bitshuffle, zstd, blosc) with h5py
    except ImportError:
        pass

    bad, rows = 0, []
    exp = base_frame(shape, pixels)
    flat = exp.reshape(-1)[2:]  # all but the two stamp pixels
    for p in item_paths(data, "hdf5"):
        try:
            with h5py.File(p, "r") as f:
                for group, frames in hdf5_stacks(f):
                    committed = int(group["archive/committed_length"][0])
                    received = group["archive/received"][:committed]
                    if frames.shape[1:] != tuple(shape) or frames.dtype != exp.dtype:
                        bad += committed
                        continue
                    step = max(1, VERIFY_BLOCK_BYTES // max(1, exp.nbytes))
                    for start in range(0, committed, step):
                        block = frames[start : min(committed, start + step)]
                        flat_rows = block.reshape(len(block), -1)
                        ok = (flat_rows[:, 2:] == flat).all(axis=1)
                        idx = flat_rows[:, 0].astype(np.int64) | (flat_rows[:, 1].astype(np.int64) << 16)
                        rows.append((group.name, start, idx, ok, received[start : start + len(block)]))
        except Exception:  # noqa: BLE001 - an unreadable file: its frames are missing, and it is one bad item
            bad += 1
    good, dup, by_received, bad = commit_times(rows, sink_info, n, bad)
    return good, bad, dup, None, by_received


def commit_times(rows, sink_info, n, bad):
    """(good, dup, by_received, bad) of the frames read back from container stacks: ``rows`` of
    (stack name, first index, frame stamps, pixels ok, receive times) per block; see verify_hdf5."""
    good, dup, by_received = {}, 0, 0
    commits = np.array(sink_info.get("commits") or [[0.0, 0]], dtype=float)
    single = len({name for name, *_ in rows}) == 1
    for _name, start, idx, ok, received in rows:
        if single:  # arrival of row k: the first poll that saw more than k frames archived
            at = np.searchsorted(commits[:, 1], np.arange(start, start + len(idx)), side="right")
            late = at >= len(commits)  # committed after the sink stopped polling (at teardown)
            times = np.where(late, received, commits[np.minimum(at, len(commits) - 1), 0])
            by_received += int(late.sum())
        else:
            times, by_received = received, by_received + len(idx)
        for i, fine, t in zip(idx.tolist(), ok.tolist(), times.tolist()):
            if not fine or not 0 <= i < n:
                bad += 1
                continue
            dup += i in good
            good[i] = t
    return good, dup, by_received, bad


def verify_zarr_append(data, n, shape, sink_info, pixels="random"):
    """Load every committed frame of every array of every *.zarr store back with zarr and compare it with what
    was sent, as verify_hdf5 does: the committed frames are the array's shape (zarr.json), the arrays those
    with the heros_archiver attribute, the receive times their group's archive/received."""
    import zarr

    bad, rows = 0, []
    exp = base_frame(shape, pixels)
    flat = exp.reshape(-1)[2:]
    stores = sorted({p.split(".zarr")[0] + ".zarr" for p in item_paths(data, "zarr-append")})
    for store in stores:
        try:
            root = zarr.open_group(store, mode="r")
            for path, frames in _zarr_stacks(root):
                committed = frames.shape[0]
                group = root[path.rpartition("/")[0]]
                received = group["archive/received"][:committed]
                if frames.shape[1:] != tuple(shape) or frames.dtype != exp.dtype:
                    bad += committed
                    continue
                step = max(1, VERIFY_BLOCK_BYTES // max(1, exp.nbytes))
                for start in range(0, committed, step):
                    block = frames[start : min(committed, start + step)]
                    flat_rows = block.reshape(len(block), -1)
                    ok = (flat_rows[:, 2:] == flat).all(axis=1)
                    idx = flat_rows[:, 0].astype(np.int64) | (flat_rows[:, 1].astype(np.int64) << 16)
                    rows.append((f"{store}/{path}", start, idx, ok, received[start : start + len(block)]))
        except Exception:  # noqa: BLE001 - an unreadable store: its frames are missing, and it is one bad item
            bad += 1
    good, dup, by_received, bad = commit_times(rows, sink_info, n, bad)
    return good, bad, dup, None, by_received


def _zarr_stacks(group, prefix=""):
    """(path, array) of every frames array the Zarr append archiver made below ``group``."""
    out = []
    for name, member in group.members():
        path = f"{prefix}{name}"
        if isinstance(member, type(group)):
            out += _zarr_stacks(member, path + "/")
        elif "heros_archiver" in member.attrs:
            out.append((path, member))
    return out


def verify_tiff_stack(data, n, shape, sink_info, pixels="random"):
    """Load every page of every *.tif stack back with tifffile and compare it with what was sent.

    The linked pages are the committed ones. Arrival = commit, as in verify_hdf5 (one stack: page k was
    committed when the archiver's archived count first exceeded k; several stacks: the receive time each
    page's record holds, counted in the last value returned)."""
    import tifffile

    good, bad, dup, by_received, stacks = {}, 0, 0, 0, []
    exp = base_frame(shape, pixels)
    flat = exp.reshape(-1)[2:]
    for p in item_paths(data, "tiff-stack"):
        try:
            with tifffile.TiffFile(p) as handle:
                if not handle.is_imagej or handle.imagej_metadata.get("images") != len(handle.pages):
                    bad += 1  # not a hyperstack whose count is right: Fiji would not show its frames
                rows = []
                for page in handle.pages:
                    pixels_back = page.asarray().reshape(-1)
                    fine = page.shape == tuple(shape) and page.dtype == exp.dtype and (pixels_back[2:] == flat).all()
                    i = int(pixels_back[0]) | (int(pixels_back[1]) << 16)
                    rows.append((i, bool(fine), json.loads(page.tags[65000].value)["received"]))
                stacks.append(rows)
        except Exception:  # noqa: BLE001 - an unreadable file: its frames are missing, and it is one bad item
            bad += 1
    commits = np.array(sink_info.get("commits") or [[0.0, 0]], dtype=float)
    for rows in stacks:
        for k, (i, fine, received) in enumerate(rows):
            if len(stacks) == 1:
                at = int(np.searchsorted(commits[:, 1], k, side="right"))
                late = at >= len(commits)
                t = received if late else float(commits[at, 0])
                by_received += late
            else:
                t, by_received = received, by_received + 1
            if not fine or not 0 <= i < n:
                bad += 1
                continue
            dup += i in good
            good[i] = t
    return good, bad, dup, None, by_received


def verify_parquet(data, n, sink_info):
    """Read every row of every *.parquet file back with pyarrow; a row is good when its temperature is the one
    its index ``i`` was sent with. Arrival = journal commit: rows are in commit order in one file, so row k
    was archived when the archiver's archived count (sink_info["commits"]) first exceeded k; rows committed
    after the sink stopped polling are timed by their ``received`` column (counted in the last value)."""
    import pyarrow.parquet as pq

    good, bad, dup, by_received, start = {}, 0, 0, 0, 0
    commits = np.array(sink_info.get("commits") or [[0.0, 0]], dtype=float)
    for p in sorted(item_paths(data, "parquet")):
        try:
            table = pq.read_table(p, columns=["i", "temperature", "received"])
        except Exception:  # noqa: BLE001 - an unreadable file is one bad item
            bad += 1
            continue
        idx = np.asarray(table.column("i").to_numpy(), dtype=np.int64)
        ok = np.asarray(table.column("temperature").to_numpy()) == 20.0 + (idx % 1000) * 0.01
        received = table.column("received").cast("int64").to_numpy() / 1e6
        at = np.searchsorted(commits[:, 1], np.arange(start, start + len(idx)), side="right")
        late = at >= len(commits)
        times = np.where(late, received, commits[np.minimum(at, len(commits) - 1), 0])
        by_received += int(late.sum())
        start += len(idx)
        for i, fine, t in zip(idx.tolist(), ok.tolist(), times.tolist()):
            if not fine or not 0 <= i < n:
                bad += 1
                continue
            dup += i in good
            good[i] = t
    return good, bad, dup, None, by_received


# ----------------------------------------------------------------------------- object storage (s3 sink, disk:s3)
S3_BUCKET = "bench"
S3_SERVER = []  # the S3Server of this invocation (started by main when an s3 row is planned)


def s3_prefix(data):
    """The key prefix of a run's objects: its run folder's name (data is RUN/data)."""
    return Path(data).parent.name


def s3_store():
    """An obstore client of the bench bucket (the archiver's client, decision 0035)."""
    return S3_SERVER[0].obstore_client(S3_BUCKET)


def verify_s3(data, n, shape, sink_info, pixels="random"):
    """Load every object of the run back and compare it with what was sent; an object arrives when the
    archiver's stats() first counted it archived (the writer archives one source's frames in order)."""
    import obstore

    store, exp = s3_store(), base_frame(shape, pixels)
    commits = np.array(sink_info["commits"], dtype=float).reshape(-1, 2)
    good, bad, dup = {}, 0, 0
    prefix = s3_prefix(data) + "/"
    keys = sorted(meta["path"] for chunk in obstore.list(store, prefix) for meta in chunk)
    for rank, key in enumerate(keys):
        try:
            arr = np.load(io.BytesIO(bytes(obstore.get(store, key).bytes())))
            i = frame_index(arr)
            stamp(exp, i)
            ok = arr.shape == exp.shape and arr.dtype == exp.dtype and np.array_equal(arr, exp)
        except Exception:  # noqa: BLE001 - any unreadable object is a bad item
            ok = False
        if not ok or not 0 <= i < n:
            bad += 1
            continue
        at = int(np.searchsorted(commits[:, 1], rank + 1, side="left"))
        dup += i in good
        good[i] = float(commits[min(at, len(commits) - 1), 0])
    return good, bad, dup, None, 0


def s3_upload(prefix, n, buf):
    """The client's own upload of n stamped frames as .npy objects (header and bytes as the archiver sends
    them), each a conditional create (If-None-Match: *), one at a time."""
    import obstore

    store = s3_store()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(buf))
    for i in range(n):
        stamp(buf, i)
        body = header.getvalue() + buf.tobytes()
        obstore.put(store, f"{prefix}/img-{i:06d}.npy", body, mode="create", use_multipart=False)


def sink_spec(cfg, sink, impl):
    """(class, kwargs, format) of a sink for one implementation (impl None: the shared count sink)."""
    cls, kwargs, fmt = SINKS[sink]
    if sink in SHARED_SINKS:
        return cls, kwargs, fmt
    option = sink.removesuffix(NOCATALOG).removesuffix(HERO).replace("-", "_")  # --zarr-append: cfg.zarr_append
    cls = f"{impl['package']}.{cls.rpartition('.')[2]}" if impl["package"] else getattr(cfg, option, None) or cls
    return cls, kwargs | json.loads(getattr(cfg, option + "_kwargs", None) or "{}") | impl["kwargs"], fmt


class Profiler:
    """py-spy attached to the archiver process by PID while it works (`--profile`); no-op without it."""

    def __init__(self, folder, pid, name):
        self.p = None
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            cmd = [spy, "record", "--pid", str(pid), "--rate", "500", "--idle", "--threads", "--nonblocking"]
            cmd += ["--format", "raw", "--output", str(Path(folder, f"{name}.txt"))]
            self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            LIVE[self.p.pid] = self.p
            time.sleep(0.5)  # py-spy needs a moment to attach

    def stop(self):
        if self.p is None:
            return
        self.p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        reap(self.p, 30)
        LIVE.pop(self.p.pid, None)
        self.p = None


class RssSampler:
    """VmRSS of a process every `period` seconds, in a thread of the driver."""

    def __init__(self, pid, period):
        self.samples, self._stop = [], threading.Event()
        self._t = threading.Thread(target=self._run, args=(pid, period), daemon=True)
        self._t.start()

    def _run(self, pid, period):
        while True:
            v = proc_field_mib(pid, "VmRSS")
            if v is not None:
                self.samples.append((time.time(), v))
            if self._stop.wait(period):
                return

    def stop(self):
        self._stop.set()
        self._t.join()
        return self.samples


IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100  # <sys/inotify.h>
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_ISDIR = 0x4000, 0x8000, 0x01000000, 0x40000000
INOTIFY_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then name[len])


class ArrivalWatcher:
    """time.time() at which each file below `root` last became complete under its final name (inotify).

    File mtimes here mostly come from the kernel's coarse clock (4 ms tick, up to 4 ms behind time.time(); fine
    only right after a stat, which is why info.mtime_resolution_us reads us): too coarse for latencies of a few ms.
    A thread of the driver, not of the archiver's process, reads inotify events as they come: a write
    in place ends with IN_CLOSE_WRITE, a temporary + rename / link with IN_MOVED_TO / IN_CREATE of the final name;
    the last event of a path wins. New subdirectories are watched, then scanned once for files that came before
    their watch (stamped with the scan time). Hidden names are temporaries / spool; `#<inode>` names are
    unnamed (O_TMPFILE) files, reported so until linked: not arrivals, and skipped as cheaply as possible, since
    this thread shares the CPU with what it measures. ok=False: no inotify here."""

    def __init__(self, root):
        self.root, self.times, self.wds = str(root), {}, {}
        self.partial, self.last_event = set(), time.time()  # paths written while visible; time of the last event
        self.overflow, self.watch_errors, self.ok, self.fd = False, 0, False, -1
        self._stop, self._t = threading.Event(), None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, self._add = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError):
            return
        init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
        self._add.argtypes, self._add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
        self.fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            return
        if not self._watch(self.root):  # e.g. ENOSPC: fs.inotify.max_user_watches reached
            os.close(self.fd)
            return
        self.ok = True
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _watch(self, d):
        """Watch directory d, then record the files already in it (made before the watch could see them)."""
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR
        wd = self._add(self.fd, os.fsencode(d), mask)
        if wd < 0:
            self.watch_errors += 1
            return False
        self.wds[wd] = d
        t = time.time()
        try:
            it = os.scandir(d)
        except OSError:
            return True
        with it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    self._watch(e.path)
                else:
                    self.times.setdefault(e.path, t)
        return True

    def _run(self):
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._stop.is_set():
            if poller.poll(100):  # ms; a timeout only so that stop() is seen
                self._drain()
        self._drain()
        os.close(self.fd)

    def _drain(self):
        while True:
            try:
                buf = os.read(self.fd, 1 << 18)
            except BlockingIOError:
                return
            t, off = time.time(), 0  # one stamp per read: the events in it happened before t
            while off < len(buf):
                wd, mask, _cookie, size = INOTIFY_EVENT.unpack_from(buf, off)
                name = buf[off + 16 : off + 16 + size].rstrip(b"\0")
                off += 16 + size
                if mask & IN_Q_OVERFLOW:  # events lost: those files fall back to mtime in verify()
                    self.overflow = True
                elif mask & IN_IGNORED:
                    self.wds.pop(wd, None)
                elif name and not name.startswith((b".", b"#")) and wd in self.wds:  # '#<inode>': an unnamed file
                    path = os.path.join(self.wds[wd], os.fsdecode(name))
                    self.last_event = t
                    if mask & IN_MODIFY:  # a reader could have seen this file incomplete under its final name
                        self.partial.add(path)
                    elif not mask & IN_ISDIR:
                        self.times[path] = t
                    elif mask & (IN_CREATE | IN_MOVED_TO):
                        self._watch(path)

    def progress(self, n, t_sent, quiet, poll, deadline):
        """The sink loop's verdict, from here: complete (n files, no event for two polls), quiet or timeout."""
        last, t_change = -1, time.time()
        while True:
            count, now = len(self.times), time.time()
            if count != last:
                last, t_change = count, now
            if count >= n and now - self.last_event > 2 * poll:
                return "complete"
            if count < n and now - max(t_change, t_sent) > quiet:
                return "quiet"
            if now > deadline:
                return "timeout"
            time.sleep(poll)

    def stop(self):
        """Stop the thread (after reading what is queued); path -> arrival time."""
        if self._t is not None:
            self._stop.set()
            self._t.join()
            self._t = None
        return self.times


def tenth(values):
    """Number of values in 10 % of them (at least 1)."""
    return max(1, -(-len(values) // 10))


def drift(res, rss_samples, t_window, good_idx, lat_ms, n):
    """'long': sink RSS and p99 latency in the first vs the last 10 % (of RSS samples / of frame indices).

    Only RSS samples taken between the first send and the last archived item count (not the idle wait after)."""
    res["rss_samples"] = [[round(t, 3), round(v, 1)] for t, v in rss_samples]
    rss = [v for t, v in rss_samples if t_window[0] <= t <= t_window[1]]
    res["rss_samples_used"] = len(rss)
    if rss:
        k = tenth(rss)
        res["rss_first10_mib"], res["rss_last10_mib"] = statistics.median(rss[:k]), statistics.median(rss[-k:])
        res["rss_growth"] = res["rss_last10_mib"] / res["rss_first10_mib"]
    k = tenth(range(n))
    first, last = lat_ms[good_idx < k], lat_ms[good_idx >= n - k]
    res["lat_p99_first10_ms"], res["lat_p99_last10_ms"] = pct(first, 99), pct(last, 99)
    if len(first) and len(last) and res["lat_p99_first10_ms"] > 0:
        res["lat_p99_growth"] = res["lat_p99_last10_ms"] / res["lat_p99_first10_ms"]


def one_run(cfg, wl, sink, impl, rep):
    kind, rate, rel = wl["kind"], wl["rate"], wl["reliable"]
    names = wl["names"]
    n = wl["n"] * len(names)  # items in total ('four': every camera sends wl["n"])
    run_dir = Path(cfg.out, f"{wl['name']}-{sink}-{impl['name']}-{rep}")
    data, meta = run_dir / "data", run_dir / "meta"
    data.mkdir(parents=True)
    meta.mkdir()
    res = {"workload": wl["name"], "sink": sink, "impl": impl["name"], "rep": rep, "sent": n}
    deadline = time.time() + cfg.run_timeout
    port, procs, sampler, profiler, watcher = free_port(), [], None, Profiler(None, 0, ""), None
    try:
        cls, kwargs, fmt = sink_spec(cfg, sink, impl)
        res["class"] = cls
        sink_env = zenoh_env(cfg, listen=port) | dict(kv.split("=", 1) for kv in cfg.sink_env)
        if fmt == "s3":  # objects under the run's prefix; spool, dead letters and catalog in its data folder
            kwargs = kwargs | {"root": f"s3://{S3_BUCKET}/{s3_prefix(data)}", "state_dir": str(data)}
            sink_env |= S3_SERVER[0].client_env()
        if fmt in ("npy", "json", "tiff"):  # before the sink exists, so that no file escapes it
            watcher = ArrivalWatcher(data)
            res["arrival_clock"] = "inotify" if watcher.ok else "mtime"
        else:
            res["arrival_clock"] = {
                "zarr": "mtime",
                "hdf5": "commit",
                "zarr-append": "commit",
                "tiff-stack": "commit",
                "parquet": "commit",
                "s3": "commit",
            }.get(fmt, "recv")
        common = {"meta": str(meta), "max_life": cfg.run_timeout + 60}
        sink_p = Child(
            "_sink",
            common
            | {
                "cls": cls,
                "kwargs": kwargs,
                "format": fmt,
                "data": str(data),
                "quiet": cfg.quiet,
                "poll": min(cfg.poll, COMMIT_POLL) if fmt in COMMIT_FORMATS else cfg.poll,
                "driver_progress": bool(watcher and watcher.ok),
                "selector": wl["selector"],
                "event": FRAME_EVENT if kind == "frames" else EVENT_EVENT,
            },
            sink_env,
            meta / "sink.log",
            python=impl["python"],
        )
        procs.append(sink_p)
        sink_p.expect("READY", time.time() + 120)
        res["rss_base_mib"] = proc_field_mib(sink_p.pid, "VmRSS")
        cpu0, flt0 = proc_cpu(sink_p.pid)
        if wl["sample_rss"]:
            sampler = RssSampler(sink_p.pid, cfg.rss_period)
        profiler = Profiler(cfg.profile, sink_p.pid, run_dir.name)
        reader = None
        if sink in SWMR_SINKS:  # started before the first frame: it polls until the file appears
            reader = Child(
                "_reader", common | {"data": str(data), "poll": cfg.swmr_poll}, os.environ, meta / "reader.log"
            )
            procs.append(reader)
            reader.expect("READY", time.time() + 60)
        dev = Child(
            "_device",
            common
            | {
                "kind": kind,
                "names": names,
                "n": wl["n"],
                "rate": rate,
                "reliable": rel,
                "shape": wl["shape"],
                "pixels": wl["pixels"],
            },
            zenoh_env(cfg, connect=port),
            meta / "device.log",
        )
        procs.append(dev)
        dev.expect("READY", deadline)
        dev.expect("SENT", deadline)
        dinfo = json.loads((meta / "device.json").read_text())
        sink_p.send(f"SENT {n}")
        if watcher and watcher.ok:  # counting files in the archiver's process would compete for its GIL
            verdict = watcher.progress(n, time.time(), cfg.quiet, cfg.poll, deadline)
            sink_p.send(f"FINISH {verdict} {len(watcher.times)}")
        done = sink_p.expect("DONE", deadline + 30)
        arrivals = watcher.stop() if watcher else None
        profiler.stop()
        rss_samples = sampler.stop() if sampler else None
        res["rss_peak_mib"] = proc_field_mib(sink_p.pid, "VmHWM")  # before stopping it
        cpu1, flt1 = proc_cpu(sink_p.pid)
        res["sink_cpu_s"], res["sink_minflt"] = cpu1 - cpu0, flt1 - flt0
        res["device_rss_peak_mib"] = proc_field_mib(dev.pid, "VmHWM")
        res["status"] = done["status"]
        if reader is not None:
            reader.send("STOP")
            res["reader"] = reader.expect("BYE", time.time() + 30)
            reader.stop()
        res["sink_stop"] = sink_p.stop()
        res["device_stop"] = dev.stop()
        t_send = np.array(dinfo["t_send"])
        t_first, t_lastsend = float(t_send.min()), float(t_send.max())  # cameras of 'four' send concurrently
        sink_info = json.loads((meta / "sink.json").read_text())
        good, bad, dup, partial, by_mtime = verify(fmt, data, n, tuple(wl["shape"]), sink_info, arrivals, wl["pixels"])
        if watcher and watcher.ok:  # exact: every file written to while it had its final name, not a sample
            # (an unnamed O_TMPFILE file is written under "#<inode>", a name that never exists in the folder)
            partial = sum(1 for p in watcher.partial if os.path.lexists(p))
        if watcher and watcher.ok:  # items the watcher missed (queue overflow, watch limit) were timed by mtime
            res.update(arrival_by_mtime=by_mtime, inotify_overflow=watcher.overflow)
            res["inotify_watch_errors"] = watcher.watch_errors
        res["sink_module"] = sink_info.get("module")
        if fmt in COMMIT_FORMATS and fmt != "s3":  # frames timed by their receipt, not their commit (verify_hdf5)
            res["arrival_by_received"] = by_mtime
            res["file_bytes"] = sum(os.stat(p).st_size for p in item_paths(data, fmt))
            res["raw_per_file_byte"] = len(good) * payload_bytes(wl) / res["file_bytes"] if res["file_bytes"] else None
        idx = np.fromiter(good.keys(), int, len(good))
        t_arr = np.fromiter(good.values(), float, len(good))
        lat_ms = (t_arr - t_send[idx]) * 1e3
        t_last = float(t_arr.max()) if len(good) else float("nan")
        wall = t_last - t_first
        received = len({i for i, _ in sink_info["recv"]}) if sink_info["tap"] else None
        # send -> delivered to the archiver's process (the transport's part of the latency)
        recv_ms = [(t - t_send[i]) * 1e3 for i, t in sink_info["recv"] if 0 <= i < n] if sink_info["tap"] else []
        res.update(
            archived=len(good),
            lost=n - len(good),
            received=received,
            lost_net=None if received is None else n - received,
            bad=bad,
            dup=dup,
            partial_seen=partial,
            set_aside=None if fmt in RECEIVE_FORMATS else hidden_files(data),
            wall_s=wall,
            events_per_s=len(good) / wall,
            mib_per_s=len(good) * payload_bytes(wl) / wall / 2**20,
            send_s=t_lastsend - t_first,
            send_rate=(n - 1) / max(1e-9, t_lastsend - t_first),
            tail_s=t_last - t_lastsend,
            missing=ranges(sorted(set(range(n)) - set(good))),
            lat_p50_ms=pct(lat_ms, 50),
            lat_p99_ms=pct(lat_ms, 99),
            lat_max_ms=pct(lat_ms, 100),
            recv_p50_ms=pct(recv_ms, 50),
            recv_p99_ms=pct(recv_ms, 99),
        )
        if rss_samples is not None:
            drift(res, rss_samples, (t_first, t_last), idx, lat_ms, n)
    except Exception as e:  # noqa: BLE001 - one failed run must not kill the whole matrix
        res["error"] = str(e)
    finally:
        profiler.stop()
        if sampler:
            sampler.stop()
        if watcher:
            watcher.stop()
        for c in procs:
            if c.p.poll() is None:
                c.stop(timeout=10)
        release_space(run_dir)
    return res


def payload_bytes(wl):
    return wl["shape"][0] * wl["shape"][1] * 2 if wl["kind"] == "frames" else len(json.dumps(event_payload(0)))


DISK_ROWS = {  # name: (workload row it belongs to, what is written)
    "disk:np.save": ("frames", "npy"),
    "disk:np.save+fsync": ("frames", "npy+fsync"),
    "disk:json": ("events", "json"),
    "disk:np.save-big": ("big", "npy"),
    # the driver's own h5py append (one chunked dataset, a chunk per frame, no SWMR, no metadata), as
    # benchmarks/hdf5_compression.py's baseline: the limit of the hdf5 sink, with --sinks hdf5
    "disk:h5py": ("frames", "h5py"),
    "disk:h5py-big": ("big", "h5py"),
    # the driver's own obstore upload of the same frames as .npy objects (conditional create) to the same S3 server:
    # the limit of the s3 sink, with --sinks s3 --workloads reliable (best-effort frames are dropped at any sink
    # slower than the sender, and one S3 server on these 2 cores is)
    "disk:s3": ("reliable", "s3"),
}


def h5py_append(path, n, buf):
    """Append n stamped copies of buf to one chunked dataset, resized and written frame by frame."""
    import h5py

    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "data", shape=(0, *buf.shape), maxshape=(None, *buf.shape), chunks=(1, *buf.shape), dtype=buf.dtype
        )
        for i in range(n):
            stamp(buf, i)
            ds.resize(i + 1, axis=0)
            ds[i] = buf


def disk_run(cfg, wls, name, rep):
    """Physical limit: write the same bytes straight from this process into the same folder."""
    row, what = DISK_ROWS[name]
    wl = wls[row]
    n = wl["n"]
    data = Path(cfg.out, f"{name.replace(':', '-')}-{rep}")
    data.mkdir(parents=True)
    buf = base_frame(tuple(wl["shape"]), wl["pixels"]) if wl["kind"] == "frames" else None
    try:
        t0 = time.time()
        if what == "h5py":
            h5py_append(data / "frames.h5", n, buf)
        elif what == "s3":
            s3_upload(f"{name.replace(':', '-')}-{rep}", n, buf)
        else:
            for i in range(n):
                if what == "json":
                    Path(data, f"ev-{i:06d}.json").write_text(json.dumps(event_payload(i), indent=4))
                elif what == "npy":
                    stamp(buf, i)
                    np.save(data / f"img-{i:06d}.npy", buf)
                else:
                    stamp(buf, i)
                    with open(data / f"img-{i:06d}.npy", "wb") as f:
                        np.save(f, buf)
                        f.flush()
                        os.fsync(f.fileno())
        wall = time.time() - t0
    finally:
        release_space(data)
    return {
        "workload": row,
        "sink": name,
        "impl": SHARED,
        "rep": rep,
        "sent": n,
        "archived": n,
        "lost": 0,
        "wall_s": wall,
        "events_per_s": n / wall,
        "mib_per_s": n * payload_bytes(wl) / wall / 2**20,
    }


METRICS = (
    "archived",
    "lost",
    "lost_net",
    "received",
    "wall_s",
    "events_per_s",
    "mib_per_s",
    "lat_p50_ms",
    "lat_p99_ms",
    "recv_p50_ms",
    "recv_p99_ms",
    "rss_base_mib",
    "rss_peak_mib",
    "sink_cpu_s",
    "send_rate",
    "tail_s",
    "bad",
    "dup",
    "partial_seen",
    "set_aside",
    "rss_first10_mib",
    "rss_last10_mib",
    "rss_growth",
    "lat_p99_first10_ms",
    "lat_p99_last10_ms",
    "lat_p99_growth",
    "file_bytes",
    "raw_per_file_byte",
)


def summarize(runs):
    rows = {}
    for r in runs:
        rows.setdefault((r["workload"], r["sink"], r.get("impl", SHARED)), []).append(r)
    out = []
    for (wl, sink, impl), rs in rows.items():
        row = {
            "workload": wl,
            "sink": sink,
            "impl": impl,
            "class": rs[0].get("class"),
            "sent": rs[0]["sent"],
            "runs": len(rs),
            "errors": [r["error"] for r in rs if "error" in r],
            "statuses": sorted({r["status"] for r in rs if "status" in r}),
        }
        for m in METRICS:
            vals = [r[m] for r in rs if r.get(m) is not None and not (isinstance(r[m], float) and np.isnan(r[m]))]
            if vals:
                row[m] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        out.append(row)
    order = list(dict.fromkeys(r["workload"] for r in runs))
    return sorted(out, key=lambda row: order.index(row["workload"]))


def med(row, key):
    s = row.get(key) if row else None
    return s["median"] if s else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}"


def ratios(summary, impls):
    """Per (workload, sink): the first impl over each other impl (medians), and the cross-row ratios."""
    by = {(r["workload"], r["sink"], r["impl"]): r for r in summary}
    rows, names = [], [i["name"] for i in impls]
    for r in summary:
        if r["impl"] != names[0]:
            continue
        for other in names[1:]:
            o = by.get((r["workload"], r["sink"], other))
            if not o:
                continue
            rows.append(
                {
                    "workload": r["workload"],
                    "sink": r["sink"],
                    "num": names[0],
                    "den": other,
                    **{
                        k: ratio(med(r, k), med(o, k))
                        for k in ("events_per_s", "mib_per_s", "lat_p99_ms", "rss_peak_mib")
                    },
                    **{
                        f"{k}_{w}": med(x, k)
                        for k in ("rss_growth", "lat_p99_growth")
                        for w, x in (("num", r), ("den", o))
                    },
                    "ok_num": f"{fmt_stat(r.get('archived'))}/{r['sent']}",
                    "ok_den": f"{fmt_stat(o.get('archived'))}/{o['sent']}",
                }
            )
    cross = []  # four/frames aggregate ev/s; archiver MiB/s over the disk limit, ev/s over the transport's
    wire = [(w, w, ws, f"{w} ev/s / {ws}") for w in ("frames", "reliable", "four", "big") for ws in WIRE_SINKS]
    for r in summary:
        for wl, ref_wl, ref_sink, what in (
            ("four", "frames", r["sink"], "four/frames aggregate ev/s"),
            ("frames", "frames", "disk:np.save", "frames MiB/s / disk:np.save"),
            ("big", "big", "disk:np.save-big", "big MiB/s / disk:np.save-big"),
            ("frames", "frames", "disk:h5py", "frames MiB/s / disk:h5py"),
            ("reliable", "reliable", "disk:s3", "reliable MiB/s / disk:s3"),
            ("big", "big", "disk:h5py-big", "big MiB/s / disk:h5py-big"),
            ("small", "small", "array", "small ev/s / array"),
            ("small", "small", "count", "small ev/s / count"),
            ("frames", "frames", "hdf5", "frames ev/s hdf5:swmr / hdf5"),
            *((w, w, ref, f"{w} ev/s / {ref}") for w in ("events", "eventslong") for ref in ("count", "json")),
            *wire,
        ):
            shared_sink = r["sink"] in WIRE_SINKS or (wl != "four" and r["sink"] == "count")
            if r["workload"] != wl or r["sink"].startswith("disk:") or shared_sink:
                continue
            if ref_sink.startswith("disk:h5py") and r["sink"] != "hdf5":  # the hdf5 sink's limits
                continue
            if (ref_sink == "disk:s3") != (r["sink"] == "s3") and ref_sink.startswith("disk:"):  # s3 to s3 only
                continue
            if wl == "small" and r["sink"] not in COMMIT_FORMATS:  # the container sinks' per-item cost
                continue
            if (ref_sink == "hdf5") != (r["sink"] in SWMR_SINKS):  # the reader's cost: only hdf5:swmr over hdf5
                continue
            if wl in ("events", "eventslong") and r["sink"] != "parquet":  # the parquet sink's targets
                continue
            o = by.get((ref_wl, ref_sink, SHARED if ref_sink in SHARED_SINKS or ref_sink in DISK_ROWS else r["impl"]))
            key = (
                "events_per_s"
                if wl in ("four", "small", "events", "eventslong") or ref_sink in WIRE_SINKS
                else "mib_per_s"
            )
            if o:
                cross.append(
                    {"what": what, "sink": r["sink"], "impl": r["impl"], "ratio": ratio(med(r, key), med(o, key))}
                )
    for r in summary:  # the hdf5 (parquet) sink's memory over the npy (json) archiver's (peak RSS, MiB), per workload
        base = {"hdf5": "array", "parquet": "json"}.get(r["sink"])
        o = by.get((r["workload"], base, r["impl"]))
        if base and o and med(r, "rss_peak_mib") is not None and med(o, "rss_peak_mib") is not None:
            what = f"{r['workload']} RSS peak MiB {r['sink']} - {base}"
            cross.append(
                {
                    "what": what,
                    "sink": r["sink"],
                    "impl": r["impl"],
                    "diff": med(r, "rss_peak_mib") - med(o, "rss_peak_mib"),
                }
            )
    for r in summary:  # the catalog's cost (and the events'): a sink over the same sink without, same run and impl
        o = by.get((r["workload"], r["sink"].removesuffix(HERO) + NOCATALOG, r["impl"]))
        if o:
            cross.append(
                {
                    "what": f"{r['workload']} ev/s {r['sink']} / {r['sink'].removesuffix(HERO)}{NOCATALOG}",
                    "sink": r["sink"],
                    "impl": r["impl"],
                    "ratio": ratio(med(r, "events_per_s"), med(o, "events_per_s")),
                }
            )
    return rows, cross


def print_ratios(rows, cross):
    if rows:
        cols = [
            ("workload", 9),
            ("sink", 8),
            ("impls", 22),
            ("ev/s", 6),
            ("MiB/s", 6),
            ("lat p99", 8),
            ("RSS peak", 9),
            ("ok/sent num", 20),
            ("ok/sent den", 20),
            ("notes", 0),
        ]
        print(
            "\nratios first impl / other impl (medians; ev/s, MiB/s > 1: first is faster; lat, RSS < 1: first is lower)"
        )
        print("  ".join(f"{c:<{w}}" for c, w in cols))
        for r in rows:
            notes = " ".join(
                f"{what} last10/first10 {fmt_ratio(r[k + '_num'])} vs {fmt_ratio(r[k + '_den'])}"
                for what, k in (("rss", "rss_growth"), ("p99", "lat_p99_growth"))
                if r[k + "_num"] is not None or r[k + "_den"] is not None
            )
            vals = [
                r["workload"],
                r["sink"],
                f"{r['num']}/{r['den']}",
                fmt_ratio(r["events_per_s"]),
                fmt_ratio(r["mib_per_s"]),
                fmt_ratio(r["lat_p99_ms"]),
                fmt_ratio(r["rss_peak_mib"]),
                r["ok_num"],
                r["ok_den"],
                notes,
            ]
            print("  ".join(f"{v:<{w}}" for v, (_, w) in zip(vals, cols)))
    for c in cross:
        if "diff" in c:
            print(f"{c['what']}  {c['sink']:<6} {c['impl']:<12} {c['diff']:+.0f}")
        else:
            print(f"{c['what']} ratio  {c['sink']:<6} {c['impl']:<12} {fmt_ratio(c['ratio'])}")


def fmt_stat(s, digits=0):
    if not s:
        return "-"
    f = f"{{:.{digits}f}}"
    m = f.format(s["median"])
    return m if s["min"] == s["max"] else f"{m} [{f.format(s['min'])}-{f.format(s['max'])}]"


def print_table(summary):
    cols = [
        ("workload", 9),
        ("sink", 26),
        ("impl", 14),
        ("ok/sent", 18),
        ("lost", 12),
        ("lost@net", 12),
        ("wall s", 18),
        ("ev/s", 17),
        ("MiB/s", 20),
        ("lat p50 ms", 17),
        ("lat p99 ms", 19),
        ("RSS base>peak MiB", 19),
        ("notes", 0),
    ]
    print("  ".join(f"{c:<{w}}" for c, w in cols))
    for r in summary:
        notes = [
            f"{k}={fmt_stat(r[k])}" for k in ("bad", "dup", "partial_seen", "set_aside") if r.get(k) and r[k]["max"]
        ]
        if r.get("rss_first10_mib"):
            notes.append(f"rss first10>last10={fmt_stat(r['rss_first10_mib'])}>{fmt_stat(r['rss_last10_mib'])}MiB")
        if r.get("lat_p99_first10_ms"):
            notes.append(
                f"p99 first10>last10={fmt_stat(r['lat_p99_first10_ms'], 1)}>{fmt_stat(r.get('lat_p99_last10_ms'), 1)}ms"
            )
        if r.get("raw_per_file_byte"):  # container sinks: raw frame bytes per byte of file (compression ratio)
            notes.append(f"raw/file={fmt_stat(r['raw_per_file_byte'], 2)}")
        if r.get("recv_p99_ms") and r["sink"] not in SHARED_SINKS:  # there, receipt is arrival
            notes.append(f"recv p50/p99={fmt_stat(r['recv_p50_ms'], 1)}/{fmt_stat(r['recv_p99_ms'], 1)}ms")
        if r["statuses"] and r["statuses"] != ["complete"]:
            notes.append("status=" + "/".join(r["statuses"]))
        if r["errors"]:
            notes.append(f"errors={len(r['errors'])}")
        rss = f"{r['rss_base_mib']['median']:.0f}>{fmt_stat(r['rss_peak_mib'])}" if r.get("rss_peak_mib") else "-"
        sink = r["sink"] + (":" + r["class"].rpartition(".")[2] if r.get("class") else "")
        vals = [
            r["workload"],
            sink,
            r["impl"],
            f"{fmt_stat(r.get('archived'))}/{r['sent']}",
            fmt_stat(r.get("lost")),
            fmt_stat(r.get("lost_net")),
            fmt_stat(r.get("wall_s"), 2),
            fmt_stat(r.get("events_per_s")),
            fmt_stat(r.get("mib_per_s"), 1),
            fmt_stat(r.get("lat_p50_ms"), 1),
            fmt_stat(r.get("lat_p99_ms"), 1),
            rss,
            " ".join(notes),
        ]
        print("  ".join(f"{v:<{w}}" for v, (_, w) in zip(vals, cols)))


def release_space(folder):
    """Free a finished run's disk space but keep its (now empty) files until the matrix ends.

    Unlinking thousands of files makes ext4 skip their inode numbers as "recently deleted" for the next
    60-360 s, scanning past every one of them on each new file: 5000 deletions cut file creation here from
    ~50,000/s to ~5,000/s (perf: recently_deleted/find_get_block_common in __ext4_new_inode). Deleting after
    each run would make every later small-file row measure that scan instead of the archiver; truncating frees
    the blocks without freeing inodes, and `main` removes the whole scratch folder at the end."""
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                os.truncate(os.path.join(dirpath, name), 0)
            except OSError:
                pass


#: Above this many microseconds per small file created in place, the scratch file system is in a state
#: that makes the small-file rows measure it rather than the archivers (see probe_scratch).
SLOW_FILE_CREATION_US = 100


def probe_scratch(folder, n=500):
    """(us per small file created in place here, smallest step between the mtimes of files written back to
    back, in us: the kernel tick if timestamps are coarse). The probe files stay until the matrix ends.

    Creation on this project's VM (ext4 without a journal) takes 25-35 us normally and 90-480 us for about
    six minutes after thousands of files were deleted on that file system: every new inode then scans past
    the recently deleted ones (perf: recently_deleted, find_get_block_common; see release_space). Printed
    in the header so that a run made in that state is recognised as one."""
    folder.mkdir(parents=True)
    paths = [folder / f"{i:04d}.json" for i in range(n)]
    t0 = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b'{"probe": true}')
        os.close(fd)
    creation_us = (time.perf_counter() - t0) / n * 1e6
    ts = sorted({os.stat(path).st_mtime_ns for path in paths})
    return creation_us, (min(np.diff(ts)) / 1e3 if len(ts) > 1 else None)


VERSIONS_SNIPPET = """
import importlib, json, os, platform, sys
from importlib import metadata
out = {"executable": sys.executable, "python": platform.python_version()}
for dist in ["heros", "eclipse-zenoh", "numpy", "herostools", "zarr", "h5py", "hdf5plugin"] + sys.argv[1:]:
    for name in (dist, dist.replace("_", "-")):
        try:
            out[dist] = metadata.version(name)
            break
        except metadata.PackageNotFoundError:
            pass
    else:
        if dist in sys.argv[1:]:
            try:
                out[dist] = getattr(importlib.import_module(dist), "__version__", "?")
            except ImportError as e:
                out[dist] = "missing: " + str(e)
for dist in sys.argv[1:]:  # where the package under test comes from (PYTHONPATH or the installed copy)
    try:
        out[dist + " from"] = os.path.dirname(importlib.import_module(dist).__file__)
    except (ImportError, TypeError) as e:
        out[dist + " from"] = "missing: " + str(e)
print(json.dumps(out))
"""


def versions(cfg):
    """Versions of the driver's environment, and of each implementation's interpreter."""
    out = {"kernel": platform.release(), "cpus": os.cpu_count()}
    envs = {"driver": (sys.executable, [])}
    for impl in cfg.impls:
        tops = sorted({sink_spec(cfg, s, impl)[0].split(".")[0] for s in cfg.sinks if s not in SHARED_SINKS})
        envs[impl["name"]] = (impl["python"], tops)
    for name, (python, tops) in envs.items():
        try:
            p = subprocess.run([python, "-c", VERSIONS_SNIPPET, *tops], capture_output=True, text=True, timeout=120)
            out[name] = json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-500:]}
        except (OSError, subprocess.TimeoutExpired, ValueError) as e:
            out[name] = {"error": str(e)}
    return out


WORKLOADS = ("frames", "rate", "reliable", "events", "disk", "four", "big", "small", "long", "eventslong")


def parse_shape(text):
    return [int(x) for x in text.lower().split("x")]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workloads",
        default="frames,rate,reliable,events,disk,four,big",
        help="comma list of " + ",".join(WORKLOADS) + " (rate = one workload per --rates entry; small and long are "
        "opt-in)",
    )
    ap.add_argument(
        "--sinks",
        default="array,json,count,wire",
        help="comma list of array,zarr,hdf5,hdf5:swmr,zarr-append,tiff,tiff-stack,s3,parquet,json,count,wire (wire = "
        "the rows wire:tcp and wire:shm; zarr, hdf5, zarr-append, parquet and the tiff ones are opt-in: ZarrArchiver "
        "is in both implementations (the reference's package is herostools.actor), the others only in this project; "
        "hdf5:swmr = hdf5 with a SWMR reader polling the file in another process; array:nocatalog, json:nocatalog, "
        "hdf5:nocatalog (and zarr-append:, tiff-stack:, parquet:nocatalog) = the archiver with catalog=False, for the "
        "catalog's cost; array:hero, json:hero, hdf5:hero (and the same three) = the archiver made a HERO (its events "
        "on, no subscriber), for the cost of the catalog and the events together; "
        "s3 = array with an s3:// root in "
        "an S3 server the driver starts, beside its limit disk:s3)",
    )
    ap.add_argument(
        "--impl",
        action="append",
        default=[],
        metavar="NAME=PYTHON:PACKAGE",
        help="implementation under test (repeatable): its sink runs with PYTHON, classes PACKAGE.ArrayArchiver, "
        "PACKAGE.JsonArchiver (PACKAGE.ZarrArchiver / Hdf5Archiver for --sinks zarr / hdf5); the first one is the "
        "ratio numerator",
    )
    ap.add_argument(
        "--impl-kwargs",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="extra archiver kwargs for one implementation (repeatable), e.g. ours='{\"writers\": 2}'",
    )
    for sink in ("array", "zarr", "hdf5", "zarr-append", "parquet", "json"):
        ap.add_argument(f"--{sink}", help=f"dotted archiver class without --impl (default {SINKS[sink][0]})")
        ap.add_argument(
            f"--{sink}-kwargs", help=f"JSON kwargs merged over {json.dumps(SINKS[sink][1])}".replace("%", "%%")
        )
    ap.add_argument("--n-frames", type=int, default=500, help="frames per run (per camera for 'four')")
    ap.add_argument("--n-events", type=int, default=5000)
    ap.add_argument("--n-events-long", type=int, default=100_000, help="events of the 'eventslong' workload")
    ap.add_argument("--events-long-rate", type=float, default=20_000, help="events/s of the 'eventslong' workload")
    ap.add_argument("--shape", default="1024x1024", help="frame HxW (uint16)")
    ap.add_argument("--rates", default="50,200", help="fixed frame rates for the 'rate' workload")
    ap.add_argument("--n-frames-big", type=int, default=100, help="frames of the 'big' workload")
    ap.add_argument("--big-shape", default="2048x2048", help="frame HxW (uint16) of the 'big' workload")
    ap.add_argument(
        "--pixels",
        choices=PIXELS,
        default="random",
        help="frame content besides the stamp: random (incompressible) or camera (a beam spot with shot noise, "
        "for the compression ratio of the hdf5 sink)",
    )
    ap.add_argument(
        "--swmr-poll",
        type=float,
        default=0.05,
        help="seconds between two polls of the SWMR reader of the hdf5:swmr rows (refresh, read the newest frame)",
    )
    ap.add_argument("--n-small", type=int, default=20000, help="frames of the 'small' workload")
    ap.add_argument("--small-shape", default="64x64", help="frame HxW (uint16) of the 'small' workload (8 KiB)")
    ap.add_argument("--n-long", type=int, default=5000, help="frames of the 'long' workload")
    ap.add_argument("--long-rate", type=float, default=100, help="frames/s of the 'long' workload")
    ap.add_argument("--rss-period", type=float, default=0.5, help="sink VmRSS sampling period of 'long', seconds")
    ap.add_argument(
        "--four-selector",
        default="cam$*",
        help="object_selector of the 'four' sink (Zenoh allows a bare * only as a whole chunk: cam$* = cam*)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the discarded warm-up run (a shortened first row) before measuring",
    )
    ap.add_argument("--out", default="/tmp/archbench", help="scratch folder, removed afterwards")
    ap.add_argument(
        "--keep-out",
        action="store_true",
        help="leave the scratch folder (its files truncated) for the caller to remove: mass deletions slow "
        "ext4 file creation for minutes, so back-to-back invocations should not delete in between",
    )
    ap.add_argument("--results", default="results.json")
    ap.add_argument("--run-timeout", type=float, default=300, help="hard limit per run, seconds")
    ap.add_argument("--quiet", type=float, default=5, help="sender done + no new item for this long = finished")
    ap.add_argument("--poll", type=float, default=0.1, help="sink folder poll interval, seconds")
    ap.add_argument(
        "--sink-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the sink process only (repeatable), e.g. MALLOC_ARENA_MAX=1",
    )
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="attach py-spy (from the driver's environment) to each archiver process from READY to DONE and "
        "write DIR/<workload>-<sink>-<impl>-<rep>.txt (collapsed stacks, all threads, with idle ones)",
    )
    ap.add_argument(
        "--zenoh-config",
        help="JSON merged over the loopback Zenoh config of both children "
        '(e.g. \'{"transport": {"shared_memory": {"enabled": false}}}\'); \'none\' = Zenoh defaults',
    )
    cfg = ap.parse_args()
    cfg.shape, cfg.big_shape, cfg.small_shape = map(parse_shape, (cfg.shape, cfg.big_shape, cfg.small_shape))
    cfg.sinks = [w for s in cfg.sinks.split(",") if s for w in (WIRE_SINKS if s == "wire" else [s])]
    cfg.workloads = [w for w in cfg.workloads.split(",") if w]
    for w in cfg.workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r} (choices: {', '.join(WORKLOADS)})")
    for s in cfg.sinks:
        if s not in SINKS:
            ap.error(f"unknown sink {s!r} (choices: {', '.join(SINKS)})")
    cfg.impls = []
    for spec in cfg.impl:
        name, eq, rest = spec.partition("=")
        python, colon, package = rest.rpartition(":")
        if not (eq and colon and name and python and package) or name == SHARED:
            ap.error(f"--impl {spec!r}: expected NAME=PYTHON:PACKAGE")
        if name in [i["name"] for i in cfg.impls]:
            ap.error(f"--impl {name!r} given twice")
        cfg.impls.append({"name": name, "python": os.path.abspath(python), "package": package, "kwargs": {}})
    if cfg.impls and (cfg.array or cfg.zarr or cfg.hdf5 or cfg.parquet or cfg.json):
        ap.error("--array/--zarr/--hdf5/--json choose the classes without --impl; with --impl they are PACKAGE.<Class>")
    if not cfg.impls:  # the old single-implementation behaviour: this interpreter, classes from --array etc.
        top = (cfg.array or SINKS["array"][0]).split(".")[0]
        cfg.impls.append({"name": top, "python": sys.executable, "package": None, "kwargs": {}})
    for spec in cfg.impl_kwargs:
        name, eq, text = spec.partition("=")
        impl = next((i for i in cfg.impls if i["name"] == name), None)
        if not eq or impl is None:
            ap.error(f"--impl-kwargs {spec!r}: expected NAME=JSON with NAME one of {[i['name'] for i in cfg.impls]}")
        impl["kwargs"] |= json.loads(text)
    return cfg


def workloads(cfg):
    """name -> workload description (kind, per-camera n, camera names, selector, shape, rate, reliable)."""
    frame = {"kind": "frames", "n": cfg.n_frames, "names": ["cam1"], "selector": "cam1", "shape": cfg.shape}
    frame |= {"rate": None, "reliable": False, "sample_rss": False, "pixels": cfg.pixels}
    wls = {}
    for w in cfg.workloads:
        if w == "rate":
            for r in cfg.rates.split(","):
                wls[f"rate{r}"] = frame | {"name": f"rate{r}", "rate": float(r)}
        elif w in ("frames", "reliable"):
            wls[w] = frame | {"name": w, "reliable": w == "reliable"}
        elif w == "events":
            wls[w] = frame | {
                "name": w,
                "kind": "events",
                "n": cfg.n_events,
                "names": ["sensor1"],
                "selector": "sensor1",
            }
        elif w == "eventslong":  # a long run at a fixed high rate: what a lab's sensors send for minutes
            wls[w] = frame | {
                "name": w,
                "kind": "events",
                "n": cfg.n_events_long,
                "rate": cfg.events_long_rate,
                "names": ["sensor1"],
                "selector": "sensor1",
            }
        elif w == "four":
            cams = [f"cam{k + 1}" for k in range(N_CAMS_FOUR)]
            wls[w] = frame | {"name": w, "names": cams, "selector": cfg.four_selector, "reliable": True}
        elif w == "big":
            wls[w] = frame | {"name": w, "n": cfg.n_frames_big, "shape": cfg.big_shape, "reliable": True}
        elif w == "small":
            wls[w] = frame | {"name": w, "n": cfg.n_small, "shape": cfg.small_shape, "reliable": True}
            wls[w]["sinks"] = SMALL_SINKS
        elif w == "long":
            wls[w] = frame | {"name": w, "n": cfg.n_long, "rate": cfg.long_rate, "sample_rss": True}
    if "disk" in cfg.workloads and "frames" not in wls:  # the disk rows write what 'frames' would send
        wls["frames"] = frame | {"name": "frames", "skip": True}
    return wls


def matrix(cfg, wls):
    """[(workload or None for disk rows, sink, [impls])]; count, wire and disk rows are shared (impl '-').

    The wire rows run only where the device sends at full speed: at a fixed rate they would show the rate."""
    shared = {"name": SHARED, "python": sys.executable, "package": None, "kwargs": {}}
    plan = []
    for wl in wls.values():
        if wl.get("skip"):
            continue
        for s in wl.get("sinks") or (FRAME_SINKS if wl["kind"] == "frames" else EVENT_SINKS):
            if s in cfg.sinks and not (s in WIRE_SINKS and wl["rate"]):
                plan.append((wl, s, [shared] if s in SHARED_SINKS else cfg.impls))
    if "disk" in cfg.workloads:
        plan += [(None, "disk:np.save", [shared]), (None, "disk:np.save+fsync", [shared])]
        if "events" in cfg.workloads:
            plan.append((None, "disk:json", [shared]))
    if "big" in cfg.workloads:
        plan.append((None, "disk:np.save-big", [shared]))
    if "s3" in cfg.sinks and "reliable" in wls:  # the limit of the s3 rows: the client's own upload, same frames
        plan.append((None, "disk:s3", [shared]))
    if "hdf5" in cfg.sinks:  # the limit of the hdf5 rows: h5py driven by hand, same frames
        if "frames" in wls:
            plan.append((None, "disk:h5py", [shared]))
        if "big" in cfg.workloads:
            plan.append((None, "disk:h5py-big", [shared]))
    return plan


def warm_up(cfg, plan):
    """One discarded run of the first planned row, shortened, before anything is measured.

    The first run of an invocation was repeatedly the slowest of its row here (e.g. 247 vs 400-430 ev/s
    for the same archiver, with frames dropped at the sender), whichever implementation it was: the
    file system is still busy with the previous invocation's deletions and the page cache is cold.
    Without a warm-up that penalty falls on whoever goes first in repeat 0."""
    wl, sink, impls = next((row for row in plan if row[0] is not None), (None, None, None))
    if wl is None:
        return
    short = dict(wl, name=f"warmup-{wl['name']}", n=max(1, min(wl["n"], 200)), rate=None, sample_rss=False)
    t0 = time.time()
    r = one_run(cfg, short, sink, impls[0], 0)
    print(
        f"# warm-up {wl['name']} {sink} {impls[0]['name']} {time.time() - t0:.1f}s (not counted): "
        + (f"ERROR {r['error'][:200]}" if "error" in r else f"ok={r.get('archived')}/{r['sent']}"),
        file=sys.stderr,
    )


def main():
    cfg = parse_args()
    out = Path(cfg.out)
    if out.exists():
        raise SystemExit(f"{out} exists; remove it or pass --out")
    wls = workloads(cfg)
    plan, runs = matrix(cfg, wls), []
    info = {
        "argv": sys.argv,
        "config": vars(cfg),
        "versions": versions(cfg),
    }
    info["file_creation_us"], info["mtime_resolution_us"] = probe_scratch(out / "probe")
    n_runs = sum(len(impls) for _, _, impls in plan)
    print(f"# {n_runs} runs x {cfg.repeats} repeats; versions {json.dumps(info['versions'])}", file=sys.stderr)
    print(f"# small file created in place in {out}: {info['file_creation_us']:.0f} us", file=sys.stderr)
    if info["file_creation_us"] > SLOW_FILE_CREATION_US:
        print(
            f"# WARNING: over {SLOW_FILE_CREATION_US} us per small file: the file system is slow now (on ext4 "
            "without a journal, for minutes after mass deletions); the small-file rows will measure that",
            file=sys.stderr,
        )
    summary, ratio_rows, cross = [], [], []
    try:
        if any(sink == "s3" or sink == "disk:s3" for _, sink, _ in plan):
            from heros_archiver.testing.servers import S3Server

            S3_SERVER.append(S3Server(out / "s3-server").start())  # stopped by PID in the finally below
            S3_SERVER[0].create_bucket(S3_BUCKET)
        if cfg.warmup and plan:
            warm_up(cfg, plan)
        for rep in range(cfg.repeats):  # round-robin so machine noise spreads over all rows
            for wl, sink, impls in plan:
                for impl in impls if rep % 2 == 0 else impls[::-1]:  # alternate who goes first
                    os.sync()
                    t0 = time.time()
                    r = disk_run(cfg, wls, sink, rep) if wl is None else one_run(cfg, wl, sink, impl, rep)
                    runs.append(r)
                    print(
                        f"# rep {rep} {r['workload']:>9} {sink:<20} {r['impl']:<14} {time.time() - t0:6.1f}s  "
                        + (
                            f"ERROR {r['error'][:300]}"
                            if "error" in r
                            else f"ok={r.get('archived')}/{r['sent']} wall={r.get('wall_s', 0):.2f}s "
                            f"ev/s={r.get('events_per_s', 0):.0f} rss_peak={r.get('rss_peak_mib')}"
                        ),
                        file=sys.stderr,
                    )
    finally:
        for pid, p in list(LIVE.items()):
            if p.poll() is None:
                p.kill()
        while S3_SERVER:
            S3_SERVER.pop().stop()
        if cfg.keep_out:
            release_space(out)
        else:
            shutil.rmtree(out, ignore_errors=True)
        summary = summarize(runs)
        ratio_rows, cross = ratios(summary, cfg.impls)
        Path(cfg.results).write_text(
            json.dumps(
                {"info": info, "summary": summary, "ratios": ratio_rows, "cross_ratios": cross, "runs": runs},
                indent=1,
            )
        )
        print_table(summary)
        print_ratios(ratio_rows, cross)
        print(f"\nresults: {os.path.abspath(cfg.results)}  (median [min-max] over {cfg.repeats} repeats)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("_device", "_sink", "_reader"):
        {"_device": run_device, "_sink": run_sink, "_reader": run_reader}[sys.argv[1]](json.loads(sys.argv[2]))
    else:
        main()
