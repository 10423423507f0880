"""Hosts behind Zenoh routers: the archiver survives a router restart and a cut link (issue 18, decision 0038).

The camera and the archiver are Zenoh clients of a router (the documented deployment's client config,
``deploy/zenoh/client-archiver.json5``, pointed at the test's router), each in a process of its own; the
router is stopped mid-run and started again on the same port, or a namespaced host's link is cut for a few
seconds. Whatever the camera published while it could not reach the archiver is lost upstream, and must be
counted: the archiver's gaps in the camera's ``frame`` numbers, so that per source archived + missing == sent,
every archived frame is on disk intact, and archiving goes on by itself afterwards.

A sample Zenoh garbled while the router reset a transport (seen once: metadata ``0`` instead of a dict) is not a
frame: the archiver dead-letters it with its PayloadError, so received == archived + dead-lettered, and its
frame, never received whole, is among the missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import dead_letter_entries, read_entry
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
TEMPLATE = "{{ file_path }}/{{ '%05d' % frame }}.npy"
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


def archived_indices(archive: Path) -> list[int]:
    return [int(path.stem) for path in npy_files(archive)]


def resume(camera: CameraProcess, archive: Path, start: int, deadline: float = 60.0) -> int:
    """Publish batches from frame ``start`` on until one of them is archived (archiving resumed by itself),
    then 50 more at a steady rate that must all arrive; returns how many frames the camera has sent in all."""
    give_up = time.monotonic() + deadline
    sent = start
    while not any(index >= start for index in archived_indices(archive)):
        assert time.monotonic() < give_up, f"archiving did not resume within {deadline} s of the outage"
        camera.send(500, SHAPE, rate=1000.0, start=sent)
        camera.expect("@@ SENT", 60.0)
        sent += 500
        time.sleep(0.5)
    camera.wait_matched()
    camera.send(50, SHAPE, rate=100.0, start=sent)
    camera.expect("@@ SENT", 60.0)
    return sent + 50


#: What a sample broken by a cut link is dead-lettered as: decoded but no (data, metadata) pair, or cut short in
#: its CBOR (seen once in CI: "premature end of stream (expected to read 65536 bytes, got 17 instead)").
NOT_A_FRAME = ("PayloadError: expected a payload (data, metadata dict)", "PayloadError: payload could not be decoded")


def finish(archiver: Child, archive: Path, sent: int) -> dict[str, int]:
    """Wait until the last frame is on disk, stop the archiver (SIGTERM: it drains) and check the account:
    archived + missing == sent, the last 50 frames all archived, each file the frame it names, and nothing
    dead-lettered but samples that were not frames."""
    wait_until(lambda: (archive / f"{sent - 1:05d}.npy").exists(), what=f"frame {sent - 1} archived")
    code, output = archiver.terminate()
    assert code == 0, output
    totals = parse_stats_table(output)
    files = npy_files(archive)
    assert [check_frame_file(path, SHAPE) for path in files] == [int(path.stem) for path in files]
    assert totals["archived"] + totals["missing"] == sent, totals
    assert totals["received"] == totals["archived"] + totals["dead_lettered"], totals
    assert totals["archived"] == len(files) and totals["dropped"] == 0, totals
    for entry in dead_letter_entries(archive):  # a sample a cut link broke: not a frame, or not even CBOR
        assert read_entry(entry)["error"].startswith(NOT_A_FRAME), read_entry(entry)["error"][:300]
    assert set(range(sent - 50, sent)) <= set(archived_indices(archive))
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
            totals = finish(archiver, archive, resume(camera, archive, 300))
    assert totals["gaps"] >= 1 and totals["missing"] > 0, f"1.5 s without a router lost nothing? {totals}"
    log = archiver.output()  # the archiver said when it lost the router and when it was back
    lost = log.index("lost Zenoh router")
    assert "connected to Zenoh router" in log[lost:], log[-3000:]


@pytest.mark.parametrize("cut", [0, 2], ids=["camera-host", "archiver-host"])
def test_archiver_survives_a_cut_link_between_hosts(tmp_path: Path, cut: int) -> None:
    """Camera host (0) ↔ router host (1) ↔ archiver host (2); host ``cut``'s link is cut for 4 s.

    Cutting the archiver's own link: the router closes the archiver's transport ~2 s after the link is back
    (its queue blocked > 5 s, ``congestion_control/block/wait_before_close``) and the archiver reconnects at
    once, but the router forwards nothing from the camera until the camera's transport, pushed back, is reset
    too: a camera that publishes little waits long for it (Zenoh 1.9.0; decision 0038)."""
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
                finish(archiver, archive, resume(camera, archive, 400))  # TCP may have resent all: missing 0
