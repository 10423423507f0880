"""The real servers the multi-host tests start (``heros_archiver.testing.servers``) answer, and are gone after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from heros_archiver.testing.servers import (
    NetNamespaces,
    PostgresServer,
    S3Server,
    ZenohRouter,
    namespaces_unavailable,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state != "Z"


def test_s3_server_keeps_objects_across_a_restart_and_honours_conditional_create(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "s3")
    with server:
        pid = server.pid
        assert pid is not None
        server.create_bucket("servers-test")
        client = server.boto3_client()
        client.put_object(Bucket="servers-test", Key="k", Body=b"first", IfNoneMatch="*")
        with pytest.raises(Exception, match="PreconditionFailed"):
            client.put_object(Bucket="servers-test", Key="k", Body=b"second", IfNoneMatch="*")
    assert server.pid is None and not _alive(pid)
    with server:  # same directory, same ports
        body = server.boto3_client().get_object(Bucket="servers-test", Key="k")["Body"].read()
    assert body == b"first"


def test_postgres_server_answers_and_stops(tmp_path: Path) -> None:
    import psycopg

    server = PostgresServer(tmp_path / "pg")
    with server:
        pid = server.pid
        assert pid is not None
        url = server.create_database("servers_test")
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone() == ("servers_test",)
    assert not _alive(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as nobody only when we are root")
def test_postgres_server_runs_binaries_nobody_cannot_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout in a private directory (``mktemp -d``: mode 700) holds the venv and so the pgserver wheel's
    binaries: the server copies them where ``nobody`` can run them, and removes the copy with the server."""
    import shutil

    import psycopg

    from heros_archiver.testing import servers

    found = servers.postgres_bin_dir()
    assert found is not None
    install = found.parent
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    site = private / "site-packages"
    shutil.copytree(install, site / install.relative_to(install.parent.parent), symlinks=True)
    for libs in install.parent.parent.glob(f"{install.parent.name}.libs"):
        shutil.copytree(libs, site / libs.name, symlinks=True)
    private_bin = site / install.relative_to(install.parent.parent) / "bin"
    unreachable = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", str(private_bin / "initdb"), "-V"],
        capture_output=True,
        check=False,
    )
    assert unreachable.returncode != 0, "the private copy should be out of nobody's reach"
    monkeypatch.setattr(servers, "postgres_bin_dir", lambda: private_bin)

    server = PostgresServer(tmp_path / "pg")
    with server:
        work = server._work
        assert work is not None and (work / "site").is_dir()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert not work.exists()


def test_zenoh_router_relays_between_two_clients(tmp_path: Path) -> None:
    script = (
        "import sys, time, zenoh\n"
        "conf = zenoh.Config()\n"
        "conf.insert_json5('mode', '\"client\"')\n"
        "conf.insert_json5('scouting/multicast/enabled', 'false')\n"
        "conf.insert_json5('connect/endpoints', '[\"' + sys.argv[1] + '\"]')\n"
        "s = zenoh.open(conf)\n"
        "got = []\n"
        "sub = s.declare_subscriber('servers/test', lambda sample: got.append(sample.payload.to_bytes()))\n"
        "pub = zenoh.open(conf)\n"
        "deadline = time.monotonic() + 20\n"
        "while not got and time.monotonic() < deadline:\n"
        "    pub.put('servers/test', b'hello')\n"
        "    time.sleep(0.1)\n"
        "print(got[0].decode() if got else 'nothing', flush=True)\n"
        "pub.close()\n"
        "s.close()\n"
    )
    with ZenohRouter() as router:
        pid = router.pid
        assert pid is not None
        done = subprocess.run([sys.executable, "-c", script, router.endpoint], capture_output=True, timeout=60)
        assert done.stdout.decode().strip() == "hello", done.stderr.decode()[-2000:]
    assert not _alive(pid)


def test_namespaces_reach_each_other_and_nothing_else() -> None:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], 9), timeout=2)\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    with NetNamespaces(2, net=241) as hosts:
        inside = subprocess.run(
            ["ip", "netns", "exec", hosts.names[0], sys.executable, "-c", probe, hosts.address(1)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        # the other host answers (nothing listens on port 9: refused, not unreachable)
        assert inside.stdout.strip() == "ConnectionRefusedError", inside
        outside = subprocess.run(
            ["ip", "netns", "exec", hosts.names[0], sys.executable, "-c", probe, "192.0.2.1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        # no route leaves a namespace: an address outside it is unreachable, nothing is sent
        assert outside.stdout.strip() == "OSError", outside
        hosts.link_down(1)
        cut = subprocess.run(
            ["ip", "netns", "exec", hosts.names[0], sys.executable, "-c", probe, hosts.address(1)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cut.stdout.strip() in {"TimeoutError", "OSError", "socket.timeout"}, cut
        names = list(hosts.names)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in names)
