#!/usr/bin/env python3
"""End-to-end benchmark of HEROS event archivers over real Zenoh (see README.md).

One file, three roles:
  python bench.py [options]        driver: runs the matrix, verifies, prints a table, writes JSON
  python bench.py _device SPEC     fake camera / sensor LocalHERO (started by the driver)
  python bench.py _sink SPEC       archiver under test or bare counting EventObserver (ditto)
Children talk to the driver with "@@ WORD ..." lines on stdout / plain lines on stdin.
"""

import argparse
import importlib
import json
import os
import platform
import queue
import shutil
import socket
import statistics
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
    "json": ("herostools.actor.JsonArchiver", {"save_template": "{{ file_path }}/ev-{{ '%06d' % i }}.json"}, "json"),
    "count": ("heros.EventObserver", {}, "count"),
}
FRAME_SINKS, EVENT_SINKS = ("array", "zarr", "count"), ("json", "count")


# ----------------------------------------------------------------------------- shared helpers
def base_frame(shape):
    return np.random.default_rng(SEED).integers(0, 1 << 16, size=shape, dtype=np.uint16)


def stamp(buf, i):
    """Frame i = fixed random image with i written into its first two pixels."""
    buf[0, 0], buf[0, 1] = i & 0xFFFF, (i >> 16) & 0xFFFF


def frame_index(arr):
    return int(arr[0, 0]) | (int(arr[0, 1]) << 16)


def event_payload(i):
    return {"temperature": 20.0 + (i % 1000) * 0.01, "i": i}


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
    """Paths of archived items: *.npy / *.json files, or zarr array metadata files (one per array)."""
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
                    stack.append(e.path)
                elif (
                    (fmt == "npy" and e.name.endswith(".npy"))
                    or (fmt == "json" and e.name.endswith(".json"))
                    or (fmt == "zarr" and e.name == "zarr.json" and not d.endswith(".zarr"))
                ):
                    out.append(e.path)
    return out


def tree_fingerprint(root):
    n = size = newest = 0
    for d, _, files in os.walk(root):
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
    dev = cls(spec["name"], realm=REALM)
    ev = getattr(dev, FRAME_EVENT if frames else EVENT_EVENT)
    t_wait = time.time() + 60
    while not ev.publisher.matching_status:  # wait until the sink's subscription reached us
        if time.time() > t_wait:
            raise SystemExit("no matching subscriber within 60 s")
        time.sleep(0.01)
    say("READY")
    n, rate = spec["n"], spec["rate"]
    buf = base_frame(tuple(spec["shape"])) if frames else None
    t_send = np.empty(n)
    t0 = time.time()
    for i in range(n):
        if rate:
            delay = t0 + i / rate - time.time()
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
    t_end = time.time()
    Path(spec["meta"], "device.json").write_text(json.dumps({"t_send": t_send.tolist(), "t_end": t_end}))
    say("SENT")
    while cmds.get() != "STOP":  # keep the session (and its TX queues) alive until the sink is done
        pass
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
    else:
        kwargs = base | spec["kwargs"]
        kwargs["default_metadata"] = dict(kwargs.get("default_metadata") or {}, file_path=data)
        obs = cls(**kwargs)
    tap = hasattr(obs, "register_callback")
    if tap:  # the whole count sink; for an archiver a tap beside its own callback (events delivered to it)
        obs.register_callback(on_event)
    say("READY")

    first_size = {}  # path -> size when the poller first saw it (partial-write detector)

    def progress():
        if fmt == "count":
            return len(recv)
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
            cmd = cmds.get_nowait()
        except queue.Empty:
            cmd = ""
        if cmd == "STOP":
            break
        if cmd.startswith("SENT"):
            expected, t_sent = int(cmd.split()[1]), time.time()
        count, now = progress(), time.time()
        if count != last:
            last, t_change = count, now
        if expected is not None:
            if count >= expected:
                fp = count if fmt == "count" else tree_fingerprint(data)
                if fmt == "count" or fp == prev_fp:  # nothing changed between two polls: files are complete
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
    Path(spec["meta"], "sink.json").write_text(json.dumps({"recv": recv, "tap": tap, "first_size": first_size}))
    say("DONE", {"status": status, "count": last})
    while cmd != "STOP":
        cmd = cmds.get()
    t0 = time.time()
    if hasattr(obs, "_teardown"):  # BOSS shutdown hook (HERODataArchiver: stop + join worker thread)
        obs._teardown()
    obs._destroy_hero()
    say("BYE", {"teardown_s": time.time() - t0})


# ----------------------------------------------------------------------------- driver
LIVE = {}  # pid -> Popen, for cleanup


class Child:
    def __init__(self, role, spec, env, log_path):
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), role, json.dumps(spec)],
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
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
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


def verify(fmt, data, n, shape, sink_info):
    """Load every archived item, check its content; return per-index arrival times and counters."""
    good, bad, dup, partial = {}, 0, 0, 0
    if fmt == "count":
        for i, t in sink_info["recv"]:
            dup += i in good
            good[i] = t
        return good, bad, dup, None
    exp = base_frame(shape) if fmt != "json" else None
    if fmt == "zarr":
        import zarr
    for p in item_paths(data, fmt):
        try:
            if fmt == "json":
                obj = json.loads(Path(p).read_text())
                i = obj["i"]
                ok = obj.get("temperature") == event_payload(i)["temperature"]
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
            mtime = tree_fingerprint(os.path.dirname(p))[2] / 1e9
        else:
            st = os.stat(p)
            mtime = st.st_mtime_ns / 1e9
            partial += sink_info["first_size"].get(p, st.st_size) < st.st_size
        dup += i in good
        good[i] = mtime
    return good, bad, dup, (None if fmt == "zarr" else partial)


def sink_spec(cfg, sink):
    cls, kwargs, fmt = SINKS[sink]
    cls = getattr(cfg, sink, None) or cls
    return cls, kwargs | json.loads(getattr(cfg, sink + "_kwargs", None) or "{}"), fmt


def one_run(cfg, wl, sink, rep):
    kind, rate, rel = wl["kind"], wl["rate"], wl["reliable"]
    n = cfg.n_frames if kind == "frames" else cfg.n_events
    run_dir = Path(cfg.out, f"{wl['name']}-{sink}-{rep}")
    data, meta = run_dir / "data", run_dir / "meta"
    data.mkdir(parents=True)
    meta.mkdir()
    res = {"workload": wl["name"], "sink": sink, "rep": rep, "sent": n}
    deadline = time.time() + cfg.run_timeout
    port, procs = free_port(), []
    try:
        cls, kwargs, fmt = sink_spec(cfg, sink)
        res["class"] = cls
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
                "poll": cfg.poll,
                "selector": "cam1" if kind == "frames" else "sensor1",
                "event": FRAME_EVENT if kind == "frames" else EVENT_EVENT,
            },
            zenoh_env(cfg, listen=port) | dict(kv.split("=", 1) for kv in cfg.sink_env),
            meta / "sink.log",
        )
        procs.append(sink_p)
        sink_p.expect("READY", time.time() + 120)
        res["rss_base_mib"] = proc_field_mib(sink_p.pid, "VmRSS")
        cpu0, flt0 = proc_cpu(sink_p.pid)
        dev = Child(
            "_device",
            common
            | {
                "kind": kind,
                "name": "cam1" if kind == "frames" else "sensor1",
                "n": n,
                "rate": rate,
                "reliable": rel,
                "shape": cfg.shape,
            },
            zenoh_env(cfg, connect=port),
            meta / "device.log",
        )
        procs.append(dev)
        dev.expect("READY", deadline)
        dev.expect("SENT", deadline)
        dinfo = json.loads((meta / "device.json").read_text())
        sink_p.send(f"SENT {n}")
        done = sink_p.expect("DONE", deadline)
        res["rss_peak_mib"] = proc_field_mib(sink_p.pid, "VmHWM")  # before stopping it
        cpu1, flt1 = proc_cpu(sink_p.pid)
        res["sink_cpu_s"], res["sink_minflt"] = cpu1 - cpu0, flt1 - flt0
        res["device_rss_peak_mib"] = proc_field_mib(dev.pid, "VmHWM")
        res["status"] = done["status"]
        res["sink_stop"] = sink_p.stop()
        res["device_stop"] = dev.stop()
        t_send = np.array(dinfo["t_send"])
        sink_info = json.loads((meta / "sink.json").read_text())
        good, bad, dup, partial = verify(fmt, data, n, tuple(cfg.shape), sink_info)
        idx = np.fromiter(good.keys(), int, len(good))
        t_arr = np.fromiter(good.values(), float, len(good))
        lat_ms = (t_arr - t_send[idx]) * 1e3
        t_last = float(t_arr.max()) if len(good) else float("nan")
        wall = t_last - t_send[0]
        received = len({i for i, _ in sink_info["recv"]}) if sink_info["tap"] else None
        res.update(
            archived=len(good),
            lost=n - len(good),
            received=received,
            lost_net=None if received is None else n - received,
            bad=bad,
            dup=dup,
            partial_seen=partial,
            wall_s=wall,
            events_per_s=len(good) / wall,
            mib_per_s=len(good) * payload_bytes(cfg, kind) / wall / 2**20,
            send_s=float(t_send[-1] - t_send[0]),
            send_rate=(n - 1) / max(1e-9, t_send[-1] - t_send[0]),
            tail_s=t_last - float(t_send[-1]),
            missing=ranges(sorted(set(range(n)) - set(good))),
            lat_p50_ms=pct(lat_ms, 50),
            lat_p99_ms=pct(lat_ms, 99),
            lat_max_ms=pct(lat_ms, 100),
        )
    except Exception as e:  # noqa: BLE001 - one failed run must not kill the whole matrix
        res["error"] = str(e)
    finally:
        for c in procs:
            if c.p.poll() is None:
                c.stop(timeout=10)
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


def payload_bytes(cfg, kind):
    return cfg.shape[0] * cfg.shape[1] * 2 if kind == "frames" else len(json.dumps(event_payload(0)))


def disk_run(cfg, name, rep):
    """Physical limit: write the same bytes straight from this process into the same folder."""
    kind = "events" if name == "disk:json" else "frames"
    n = cfg.n_events if kind == "events" else cfg.n_frames
    data = Path(cfg.out, f"{name.replace(':', '-')}-{rep}")
    data.mkdir(parents=True)
    buf = base_frame(tuple(cfg.shape))
    try:
        t0 = time.time()
        for i in range(n):
            if kind == "events":
                Path(data, f"ev-{i:06d}.json").write_text(json.dumps(event_payload(i), indent=4))
            elif name == "disk:np.save":
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
        shutil.rmtree(data, ignore_errors=True)
    return {
        "workload": "events" if kind == "events" else "frames",
        "sink": name,
        "rep": rep,
        "sent": n,
        "archived": n,
        "lost": 0,
        "wall_s": wall,
        "events_per_s": n / wall,
        "mib_per_s": n * payload_bytes(cfg, kind) / wall / 2**20,
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
    "rss_base_mib",
    "rss_peak_mib",
    "sink_cpu_s",
    "send_rate",
    "tail_s",
    "bad",
    "dup",
    "partial_seen",
)


def summarize(runs):
    rows = {}
    for r in runs:
        rows.setdefault((r["workload"], r["sink"]), []).append(r)
    out = []
    for (wl, sink), rs in rows.items():
        row = {
            "workload": wl,
            "sink": sink,
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


def fmt_stat(s, digits=0):
    if not s:
        return "-"
    f = f"{{:.{digits}f}}"
    med = f.format(s["median"])
    return med if s["min"] == s["max"] else f"{med} [{f.format(s['min'])}-{f.format(s['max'])}]"


def print_table(summary):
    cols = [
        ("workload", 9),
        ("sink", 26),
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
        notes = [f"{k}={fmt_stat(r[k])}" for k in ("bad", "dup", "partial_seen") if r.get(k) and r[k]["max"]]
        if r["statuses"] and r["statuses"] != ["complete"]:
            notes.append("status=" + "/".join(r["statuses"]))
        if r["errors"]:
            notes.append(f"errors={len(r['errors'])}")
        rss = f"{r['rss_base_mib']['median']:.0f}>{fmt_stat(r['rss_peak_mib'])}" if r.get("rss_peak_mib") else "-"
        sink = r["sink"] + (":" + r["class"].rpartition(".")[2] if r.get("class") else "")
        vals = [
            r["workload"],
            sink,
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


def mtime_resolution_us(folder, n=200):
    """Smallest step between file mtimes written back to back here (kernel tick if timestamps are coarse)."""
    folder.mkdir(parents=True)
    try:
        for i in range(n):
            Path(folder, str(i)).write_bytes(b"x")
        ts = sorted({os.stat(Path(folder, str(i))).st_mtime_ns for i in range(n)})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return min(np.diff(ts)) / 1e3 if len(ts) > 1 else None


def versions(cfg):
    from importlib import metadata

    out = {"python": platform.python_version(), "kernel": platform.release(), "cpus": os.cpu_count()}
    for dist in ("heros", "eclipse-zenoh", "numpy", "herostools", "zarr"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for sink in cfg.sinks:
        top = sink_spec(cfg, sink)[0].split(".")[0]
        try:
            out[top] = metadata.version(top)
        except metadata.PackageNotFoundError:
            out[top] = getattr(importlib.import_module(top), "__version__", "?")
    return out


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workloads",
        default="frames,rate,reliable,events,disk",
        help="comma list of frames,rate,reliable,events,disk (rate = one workload per --rates entry)",
    )
    ap.add_argument("--sinks", default="array,zarr,json,count", help="comma list of array,zarr,json,count")
    for sink in ("array", "zarr", "json"):
        ap.add_argument(f"--{sink}", help=f"dotted archiver class (default {SINKS[sink][0]})")
        ap.add_argument(f"--{sink}-kwargs", help=f"JSON kwargs merged over {json.dumps(SINKS[sink][1])}")
    ap.add_argument("--n-frames", type=int, default=500)
    ap.add_argument("--n-events", type=int, default=5000)
    ap.add_argument("--shape", default="1024x1024", help="frame HxW (uint16)")
    ap.add_argument("--rates", default="50,200", help="fixed frame rates for the 'rate' workload")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="/tmp/archbench", help="scratch folder, removed afterwards")
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
        "--zenoh-config",
        help="JSON merged over the loopback Zenoh config of both children "
        '(e.g. \'{"transport": {"shared_memory": {"enabled": false}}}\'); \'none\' = Zenoh defaults',
    )
    cfg = ap.parse_args()
    cfg.shape = [int(x) for x in cfg.shape.lower().split("x")]
    cfg.sinks = [s for s in cfg.sinks.split(",") if s]
    cfg.workloads = [w for w in cfg.workloads.split(",") if w]
    return cfg


def matrix(cfg):
    wls = []
    for w in cfg.workloads:
        if w == "rate":
            wls += [
                {"name": f"rate{r}", "kind": "frames", "rate": float(r), "reliable": False}
                for r in cfg.rates.split(",")
            ]
        elif w in ("frames", "reliable", "events"):
            wls.append(
                {"name": w, "kind": "events" if w == "events" else "frames", "rate": None, "reliable": w == "reliable"}
            )
    plan = [(wl, s) for wl in wls for s in (FRAME_SINKS if wl["kind"] == "frames" else EVENT_SINKS) if s in cfg.sinks]
    if "disk" in cfg.workloads:
        plan += [(None, "disk:np.save"), (None, "disk:np.save+fsync")]
        if "events" in cfg.workloads:
            plan.append((None, "disk:json"))
    return plan


def main():
    cfg = parse_args()
    out = Path(cfg.out)
    if out.exists():
        raise SystemExit(f"{out} exists; remove it or pass --out")
    plan, runs = matrix(cfg), []
    info = {
        "argv": sys.argv,
        "config": vars(cfg),
        "versions": versions(cfg),
        "mtime_resolution_us": mtime_resolution_us(out / "mtime-probe"),
    }
    print(f"# {len(plan)} runs x {cfg.repeats} repeats; versions {info['versions']}", file=sys.stderr)
    try:
        for rep in range(cfg.repeats):  # round-robin so machine noise spreads over all rows
            for wl, sink in plan:
                os.sync()
                t0 = time.time()
                r = disk_run(cfg, sink, rep) if wl is None else one_run(cfg, wl, sink, rep)
                runs.append(r)
                print(
                    f"# rep {rep} {r['workload']:>9} {sink:<20} {time.time() - t0:6.1f}s  "
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
        shutil.rmtree(out, ignore_errors=True)
        summary = summarize(runs)
        Path(cfg.results).write_text(json.dumps({"info": info, "summary": summary, "runs": runs}, indent=1))
        print_table(summary)
        print(f"\nresults: {os.path.abspath(cfg.results)}  (median [min-max] over {cfg.repeats} repeats)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("_device", "_sink"):
        (run_device if sys.argv[1] == "_device" else run_sink)(json.loads(sys.argv[2]))
    else:
        main()
