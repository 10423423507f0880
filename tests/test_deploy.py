"""The documented deployment (docs/deployment.md, deploy/): every example file is valid and does what it says.

Zenoh parses the JSON5 configs with its own schema; the BOSS configs build real archivers through
``cli.config`` (their archive root moved into tmp_path), as clients of the documented client config through
two routers started from the documented router configs, and archive a camera's frames; the systemd units
pass ``systemd-analyze verify`` (else are parsed) and their command lines parse with our CLI. The router
command itself (``heros-archiver router`` / ``python -m heros_archiver.transport.router``) is tested here too.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import zenoh
from heros.zenoh import ZenohSessionManager

from helpers import wait_until
from heros_archiver import ConfigurationError
from heros_archiver.archivers.base import close_all
from heros_archiver.cli.app import app
from heros_archiver.cli.config import build_archivers, load_config
from heros_archiver.testing import ReliableSimulatedCamera, free_port, make_frame, unique_realm, wait_for_subscriber
from heros_archiver.testing.servers import CLIENT_RECONNECT, ZenohRouter, client_settings
from heros_archiver.transport.router import READY, router_config
from heros_archiver.transport.session_config import read_session_config

pytestmark = pytest.mark.timeout(90)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
EXAMPLE_ENDPOINT = '"tcp/127.0.0.1:7447"'
ARCHIVE_ROOT = "/srv/heros-archive"


def zenoh_json(path: Path, key: str) -> object:
    return json.loads(zenoh.Config.from_file(str(path)).get_json(key))


@pytest.mark.parametrize("name", sorted(p.name for p in (DEPLOY / "zenoh").glob("*.json5")))
def test_zenoh_configs_parse_and_say_what_the_docs_say(name: str) -> None:
    path = DEPLOY / "zenoh" / name
    mode = "router" if name.startswith("router") else "client"
    assert zenoh_json(path, "mode") == mode
    assert zenoh_json(path, "scouting/multicast/enabled") is False
    assert zenoh_json(path, "transport/shared_memory/enabled") is False
    if mode == "client":  # the settings the tests' clients use (servers.CLIENT_RECONNECT) are the documented ones
        for key, value in CLIENT_RECONNECT.items():
            assert zenoh_json(path, key) == value, key
        assert read_session_config(path) == path.read_text()


def test_a_bad_session_config_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json5"
    bad.write_text('{ mode: "client", connect: { endpoints: ["tcp/127.0.0.1:7447"], retries: 3 } }')
    with pytest.raises(ConfigurationError, match=r"bad\.json5.*retries"):
        read_session_config(bad)
    with pytest.raises(ConfigurationError, match="readable"):
        read_session_config(tmp_path / "missing.json5")
    peer = tmp_path / "peer.json5"
    peer.write_text('{ mode: "peer" }')
    with pytest.raises(ConfigurationError, match=r'mode: expected "router"'):
        router_config(peer)


def test_boss_configs_build_and_archive_through_two_routers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """camera (client of the central router) -> central router -> host router -> both archivers (clients)."""
    realm = unique_realm("deploy")
    central = ZenohRouter(config=DEPLOY / "zenoh" / "router-central.json5", log=tmp_path / "central.log")
    with central:
        host_port = free_port()
        text = (DEPLOY / "zenoh" / "router-host.json5").read_text()
        assert '"tcp/central.lab.example:7447"' in text
        host_config = tmp_path / "router-host.json5"
        host_config.write_text(text.replace('"tcp/central.lab.example:7447"', f'"{central.endpoint}"'))
        with ZenohRouter(port=host_port, config=host_config, log=tmp_path / "host.log") as host:
            client = (
                (DEPLOY / "zenoh" / "client-archiver.json5").read_text().replace(EXAMPLE_ENDPOINT, f'"{host.endpoint}"')
            )
            monkeypatch.setenv("HEROS_ZENOH_CONFIG", client)  # what `run --zenoh-config` sets
            entries = []
            for name in ("archivers-host.json", "archivers-central.json"):
                config = tmp_path / name
                config.write_text((DEPLOY / "boss" / name).read_text().replace(ARCHIVE_ROOT, str(tmp_path / "archive")))
                entries += load_config(config)
            camera = ReliableSimulatedCamera(
                "host-a-cam1", realm=realm, session_manager=ZenohSessionManager(client_settings(central.endpoint))
            )
            archivers = build_archivers(entries, realm)
            try:
                wait_for_subscriber(camera)
                frame = make_frame(7, (16, 16))
                for index in range(5):
                    camera.acquisition_data(frame, {"frame": index})
                frames = [a for a in archivers if a.stats()["event"] == "acquisition_data"]
                assert len(frames) == 2
                wait_until(lambda: all(a.stats()["total"]["received"] == 5 for a in frames), what="both archivers")
            finally:
                close_all(archivers)
                camera._destroy_hero()
    for archiver in frames:
        total = archiver.stats()["total"]
        assert total["archived"] == 5 and total["gaps"] == 0, total
    assert (tmp_path / "archive" / "host-a" / "host-a-cam1.h5").is_file()
    assert len(list((tmp_path / "archive" / "frames" / "host-a-cam1").glob("*.npy"))) == 5


def units() -> list[Path]:
    return sorted((DEPLOY / "systemd").glob("*.service"))


def exec_start(unit: Path) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text().replace("\\\n", " "))
    return shlex.split(parser["Service"]["ExecStart"])


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    """systemd's own check (executables pointed at this venv), else a parse; the commands parse with our CLI."""
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/heros-archiver/venv/bin/", f"{Path(sys.executable).parent}/"))
    if shutil.which("systemd-analyze"):
        done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
    command = exec_start(unit)
    if command[0] == "/bin/sh":  # BOSS's unit: the shell puts the client config into HEROS_ZENOH_CONFIG
        assert "HEROS_ZENOH_CONFIG=" in command[2] and "/boss -u file://" in command[2]
        return
    assert command[0].endswith("/heros-archiver")
    typer.main.get_command(app).make_context("heros-archiver", command[1:])  # raises on an unknown option
    if command[1] == "run":  # the stop timeout leaves room for the longest drain of the example configs
        drains = [
            entry["arguments"].get("drain_timeout", 30)
            for name in ("archivers-host.json", "archivers-central.json")
            for entry in load_config(DEPLOY / "boss" / name)
        ]
        stop = next(line for line in unit.read_text().splitlines() if line.startswith("TimeoutStopSec="))
        timeout = int(stop.partition("=")[2])
        assert timeout > max(drains), (timeout, drains)


def test_router_command_routes_and_stops_at_sigterm(tmp_path: Path) -> None:
    """``python -m heros_archiver.transport.router``: ready line, two clients exchange a sample, exit 0 at SIGTERM."""
    endpoint = f"tcp/127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "heros_archiver.transport.router", "--listen", endpoint],
        stdout=subprocess.PIPE, stderr=(tmp_path / "router.log").open("wb"), start_new_session=True,
    )  # fmt: skip
    sessions: list[zenoh.Session] = []
    try:
        assert process.stdout is not None
        assert process.stdout.readline().decode().startswith(READY)
        for _ in range(2):
            conf = zenoh.Config()
            for key, value in client_settings(endpoint).items():
                conf.insert_json5(key, json.dumps(value))
            sessions.append(zenoh.open(conf))
        got: list[bytes] = []
        subscriber = sessions[0].declare_subscriber("deploy/test", lambda sample: got.append(sample.payload.to_bytes()))
        publisher = sessions[1].declare_publisher("deploy/test")
        wait_until(lambda: publisher.matching_status.matching, what="the subscriber, through the router")
        publisher.put(b"through the router")
        wait_until(lambda: got == [b"through the router"], what="the sample")
        subscriber.undeclare()
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(20) == 0
        assert "client" in (tmp_path / "router.log").read_text()  # a line per client that connected
    finally:
        for session in sessions:
            session.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_router_command_refuses_a_port_in_use(tmp_path: Path) -> None:
    with ZenohRouter() as router:
        done = subprocess.run(
            [sys.executable, "-m", "heros_archiver.cli", "router", "--listen", router.endpoint],
            capture_output=True, text=True, timeout=60, start_new_session=True,
        )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "could not start" in done.stderr and router.endpoint in done.stderr


def test_run_refuses_a_bad_zenoh_config_before_any_archiver(tmp_path: Path) -> None:
    from procs import run_cli, write_config

    arguments = {"save_template": "{{ frame }}.npy", "object_selector": "cam", "event_name": "acquisition_data"}
    config = write_config(tmp_path / "archivers.json", arguments)
    bad = tmp_path / "client.json5"
    bad.write_text('{ mode: "client", connect: { endpoints: ["tcp/127.0.0.1:7447"], retries: 3 } }')
    done = run_cli(["run", str(config), "--zenoh-config", str(bad)])
    assert done.returncode == 2, done.stdout
    assert (
        "--zenoh-config" in done.stdout and "client.json5" in done.stdout and "expected a Zenoh config" in done.stdout
    )


def test_run_stops_at_sigterm_while_waiting_for_its_router(tmp_path: Path) -> None:
    """A client's first session waits for the router (``timeout_ms: -1``) inside Zenoh; SIGTERM still ends run."""
    from procs import child, write_config

    arguments = {"save_template": "{{ frame }}.npy", "object_selector": "cam", "event_name": "acquisition_data"}
    config = write_config(tmp_path / "archivers.json", arguments)
    nobody = f'"tcp/127.0.0.1:{free_port()}"'  # no router there
    client = tmp_path / "client.json5"
    client.write_text((DEPLOY / "zenoh" / "client-archiver.json5").read_text().replace(EXAMPLE_ENDPOINT, nobody))
    command = [sys.executable, "-m", "heros_archiver.cli", "run", str(config), "--zenoh-config", str(client)]
    with child(command, tmp_path / "run.log", dict(os.environ, COLUMNS="200")) as run:
        wait_until(lambda: "starting 1 archiver(s)" in run.output(), 60.0, "run to start building")
        code, output = run.terminate()
    assert code == 1, output
    assert "stopped before the archivers were up" in output and "running" not in output
