"""Hosts behind Zenoh routers: the archiver survives a router restart and a cut link (issue 18, decision 0038).

The camera and the archiver are Zenoh clients of a router (the documented deployment's client config,
``deploy/zenoh/client-archiver.json5``, pointed at the test's router), each in a process of its own; the
router is stopped mid-run and started again on the same port, or a namespaced host's link is cut for a few
seconds. Whatever the camera published while it could not reach the archiver is lost upstream, and must be
counted: the archiver's gaps in the camera's ``frame`` numbers, so that per source received + missing ==
sent, every received frame is on disk intact, and archiving goes on after the restart.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from heros_archiver.testing import unique_realm
from heros_archiver.testing.camera_process import CameraProcess
from heros_archiver.testing.servers import NetNamespaces, ZenohRouter, namespaces_unavailable
from procs import (
    CLI,
    Child,
    camera_archiver_arguments,
    check_frame_file,
    child,
    child_env,
    npy_files,
    parse_stats_table,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SHAPE = (64, 64)
TEMPLATE = "{{ file_path }}/{{ '%04d' % frame }}.npy"
#: the net= of this file's namespaces (10.231.0.x), apart from every other test file's
NET = 231


def client_config(path: Path, endpoint: str) -> Path:
    """The documented archiver client config with the router's endpoint in place of the example's."""
    text = (DEPLOY / "zenoh" / "client-archiver.json5").read_text()
    assert '"tcp/127.0.0.1:7447"' in text
    path.write_text(text.replace('"tcp/127.0.0.1:7447"', f'"{endpoint}"'))
    return path


def archiver_command(tmp_path: Path, realm: str, endpoint: str, netns: str | None = None) -> list[str]:
    """``heros-archiver run`` of an ArrayArchiver of camera ``cam`` (sequence_key ``frame``) into
    ``tmp_path/archive``, a client of ``endpoint`` through ``--zenoh-config``, in namespace ``netns`` if given."""
    arguments = camera_archiver_arguments(tmp_path / "archive", TEMPLATE, sequence_key="frame")
    config = write_config(tmp_path / "archiver.json", arguments)
    zenoh_config = client_config(tmp_path / "client.json5", endpoint)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, *CLI, "run", str(config), "--realm", realm, "--zenoh-config", str(zenoh_config)]


def archiver_env() -> dict[str, str]:
    env = child_env(0)
    env.pop("HEROS_ZENOH_CONFIG")  # the archiver's session comes from --zenoh-config alone
    return env


def wait_running(archiver: Child) -> None:
    wait_until(lambda: "running 1 archiver(s)" in archiver.output() or not archiver.alive(), what="archiver up")
    assert archiver.alive(), archiver.output()


def finish(archiver: Child, archive: Path, sent: int, last: int, timeout: float = 60.0) -> dict[str, int]:
    """Wait until frame ``last`` is on disk, stop the archiver (SIGTERM: it drains) and check the account:
    received + missing == sent, everything received archived, each file the frame it names."""
    wait_until(lambda: (archive / f"{last:04d}.npy").exists(), timeout, f"frame {last} archived")
    code, output = archiver.terminate()
    assert code == 0, output
    totals = parse_stats_table(output)
    files = npy_files(archive)
    indices = [check_frame_file(path, SHAPE) for path in files]
    assert [int(p.stem) for p in files] == indices
    assert totals["received"] + totals["missing"] == sent, totals
    assert totals["archived"] == totals["received"] == len(files), totals
    assert totals["dead_lettered"] == totals["dropped"] == 0, totals
    return totals


def test_archiver_survives_router_restart(tmp_path: Path) -> None:
    realm = unique_realm("routers")
    archive = tmp_path / "archive"
    with ZenohRouter(log=tmp_path / "router.log") as router:
        command = archiver_command(tmp_path, realm, router.endpoint)
        with (
            CameraProcess("cam", realm, [router.endpoint], tmp_path / "camera.log") as camera,
            child(command, tmp_path / "archiver.log", archiver_env()) as archiver,
        ):
            wait_running(archiver)
            camera.wait_matched()
            camera.send(300, SHAPE, rate=100.0)  # 3 s of frames
            time.sleep(1.0)
            router.stop()
            time.sleep(1.5)  # the camera goes on numbering frames that reach nobody
            router.start()  # the same port: both clients find it again by themselves
            camera.expect("@@ SENT", 60.0)
            camera.wait_matched()  # the archiver's subscription is declared to the new router
            camera.send(50, SHAPE, rate=100.0, start=300)  # archiving goes on after the restart
            camera.expect("@@ SENT", 60.0)
            totals = finish(archiver, archive, sent=350, last=349)
    assert totals["gaps"] >= 1 and totals["missing"] > 0, f"1.5 s without a router lost nothing? {totals}"
    assert all((archive / f"{index:04d}.npy").exists() for index in range(300, 350))


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(0, id="camera-host"),
        pytest.param(
            2,
            id="archiver-host",
            marks=pytest.mark.xfail(
                reason="known: a cut of the archiver's own link for 4 s makes the router close its transport (blocked "
                "> 5 s, congestion_control/block/wait_before_close) ~2 s after the link is back; the archiver "
                "reconnects at once, the camera's subscription matches again, but no frame reaches the archiver "
                "any more (Zenoh 1.9.0, client and peer mode alike; docs/deployment.md, decision 0038)",
                strict=False,
            ),
        ),
    ],
)
def test_archiver_survives_a_cut_link_between_hosts(tmp_path: Path, cut: int) -> None:
    """Camera host (0) ↔ router host (1) ↔ archiver host (2); host ``cut``'s link is cut for 4 s."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    realm = unique_realm("routers-ns")
    archive = tmp_path / "archive"
    with NetNamespaces(3, net=NET + cut) as hosts:
        router = ZenohRouter(host=hosts.address(1), netns=hosts.names[1], log=tmp_path / "router.log")
        with router:
            command = archiver_command(tmp_path, realm, router.endpoint, netns=hosts.names[2])
            camera = CameraProcess("cam", realm, [router.endpoint], tmp_path / "camera.log", netns=hosts.names[0])
            with camera, child(command, tmp_path / "archiver.log", archiver_env()) as archiver:
                wait_running(archiver)
                camera.wait_matched()
                camera.send(400, SHAPE, rate=100.0)  # 4 s of frames
                time.sleep(1.0)
                hosts.link_down(cut)
                time.sleep(4.0)
                hosts.link_up(cut)
                camera.expect("@@ SENT", 60.0)
                camera.wait_matched()
                camera.send(50, SHAPE, rate=100.0, start=400)
                camera.expect("@@ SENT", 60.0)
                finish(archiver, archive, sent=450, last=449, timeout=20.0)
    assert all((archive / f"{index:04d}.npy").exists() for index in range(400, 450))
