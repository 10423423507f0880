"""The live status: ``status()`` of an archiver (rates, last errors, the oldest waiting item, the disk), and
``heros-archiver status`` finding an archiver that runs in another process (under BOSS) over Zenoh."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from conftest import RigFactory
from helpers import remote_hero, wait_for_items, wait_until
from heros_archiver import Hdf5Archiver
from heros_archiver.cli.status_command import jsonable, status_table
from heros_archiver.errors import StorageError
from heros_archiver.observe.status import RateWindow, StatusListener, disk_usage
from heros_archiver.pipeline.accounting import Accounting
from heros_archiver.pipeline.queueing import Item, LaneQueue
from heros_archiver.testing import (
    ReliableSimulatedCamera,
    free_port,
    loopback_config_json,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)
from heros_archiver.testing.faults import FailingSink, SlowSink
from heros_archiver.transport import heros_compat
from heros_archiver.transport.discovery import ARCHIVER_INTERFACE
from procs import (
    CLI,
    camera,
    camera_archiver_arguments,
    child,
    child_env,
    run_cli,
    send_frames,
    wait_for_archiver,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

BOSS = Path(sys.executable).parent / "boss"
SHAPE = (4, 6)


def _frame(index: int) -> np.ndarray:
    frame = np.zeros(SHAPE, dtype=np.uint16)
    frame.flat[0] = index
    return frame


# ------------------------------------------------------------------------------------------------ the parts
def test_the_rate_window_counts_the_commits_of_the_last_seconds_only() -> None:
    window = RateWindow(seconds=10)
    for second in range(100, 120):  # one item of 1000 bytes per second for 20 s
        window.add(second + 0.5, 1000)
    items, nbytes = window.rates(now=120.5)
    assert items == pytest.approx(9 / 9.5)  # the last 10 whole seconds (111..120) hold 9 items, over 9.5 s
    assert nbytes == pytest.approx(items * 1000)
    assert window.rates(now=200.0) == (0.0, 0.0)  # nothing in the last 10 s
    # a listener that started 2 s ago measures over those 2 s, not the whole window
    fresh = RateWindow(seconds=10)
    fresh.add(119.5, 10)
    fresh.add(119.6, 10)
    assert fresh.rates(now=120.0, since=118.0) == (1.0, 10.0)


def test_the_oldest_age_is_the_head_of_a_lane_or_what_a_writer_holds() -> None:
    queue = LaneQueue(lanes=2, max_items=10, max_bytes=1000)
    assert queue.oldest_age() is None
    queue.put(Item("cam", b"x", {}, 1, received=time.time() - 30))
    queue.put(Item("cam", b"y", {}, 1))
    age = queue.oldest_age()
    assert age is not None and age >= 30
    lane = queue.lane_of("cam")
    taken = queue.get_many(lane, 10, 1000, 0.0, hold=True)
    assert len(taken) == 2 and queue.oldest_age() is None  # taken, but not yet declared held
    queue.hold(lane, 2, 2, since=time.monotonic() - 50)
    age = queue.oldest_age()
    assert age is not None and age >= 50 and queue.depth() == (2, 2)
    queue.hold(lane, 0, 0)
    assert queue.oldest_age() is None


def test_disk_usage_is_that_of_the_nearest_existing_parent(tmp_path: Path) -> None:
    usage = disk_usage(tmp_path / "not" / "yet" / "made")
    assert usage is not None and usage["path"] == str(tmp_path / "not" / "yet" / "made")
    assert 0 < usage["free_bytes"] <= usage["total_bytes"]
    assert disk_usage(None) is None


# ------------------------------------------------------------------------------------------------ status()
def test_status_reports_counters_rates_the_disk_and_what_it_is(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(sequence_key="frame")
    for index in (0, 1, 2, 5):
        rig.camera.acquisition_data(_frame(index), {"frame": index})
    wait_for_items(rig.archiver, 4)
    wait_until(lambda: rig.archiver.status()["listeners"]["status"]["handled"] == 4, what="the status listener")
    status = rig.archiver.status()
    json.dumps(status)  # plain types only
    assert status["archiver"]["class"] == "heros_archiver.archivers.files.ArrayArchiver"
    assert status["archiver"]["event"] == "acquisition_data" and status["archiver"]["selector"] == "cam"
    assert status["archiver"]["root"] == str(tmp_path)
    cam = status["sources"]["cam"]
    assert (cam["received"], cam["archived"], cam["failed"], cam["gaps"], cam["missing"]) == (4, 4, 0, 1, 2)
    assert cam["items_per_second"] > 0 and cam["bytes_per_second"] > 0 and cam["last_error"] is None
    assert status["total"]["archived"] == 4 and status["total"]["in_flight"] == 0
    assert status["queue"]["items"] == 0 and status["queue"]["oldest_age"] is None
    assert status["disk"]["free_bytes"] > 0 and status["paused"] in (None, False) and status["uptime"] > 0
    assert ARCHIVER_INTERFACE in type(rig.archiver)._hero_implements
    table = status_table([status], [], rig.realm)
    assert [cell for cell in table.columns[1].cells] == ["cam"]


def test_status_shows_the_queue_and_its_oldest_item_under_a_slow_sink(make_rig: RigFactory) -> None:
    rig = make_rig(sink_wrapper=SlowSink(0.5))
    for index in range(6):
        rig.camera.acquisition_data(_frame(index), {"frame": index})

    def waiting() -> bool:
        queue = rig.archiver.status()["queue"]
        return bool(queue["items"] >= 2 and queue["oldest_age"] is not None and queue["oldest_age"] > 0)

    wait_until(waiting, 30, "items waiting behind the slow sink")
    queue = rig.archiver.status()["queue"]
    assert queue["bytes"] > 0 and queue["max_items"] == rig.archiver.options.pipeline.max_queue_items
    wait_for_items(rig.archiver, 6)
    assert rig.archiver.status()["queue"]["oldest_age"] is None


def test_items_a_container_writer_holds_count_as_waiting(make_rig: RigFactory, tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    rig = make_rig(
        None,
        archiver_cls=Hdf5Archiver,
        file_template=str(tmp_path / "run.h5"),
        flush_frames=1000,
        flush_seconds=600.0,
        flush_idle=None,
    )
    for index in range(3):
        rig.camera.acquisition_data(_frame(index), {"frame": index})

    def held() -> bool:
        queue = rig.archiver.status()["queue"]
        return bool(queue["items"] == 3 and queue["oldest_age"] is not None)

    wait_until(held, 30, "three frames held for their commit")
    assert rig.archiver.status()["sources"]["cam"]["archived"] == 0


def test_the_last_error_is_the_latest_retry_dead_letter_or_drop(make_rig: RigFactory) -> None:
    failing = FailingSink(1, StorageError(5, "disk hiccup"))
    rig = make_rig(sink_wrapper=failing, retry_delay=0.01, retry_max_delay=0.01)
    rig.camera.acquisition_data(_frame(0), {"frame": 0})
    wait_for_items(rig.archiver, 1)
    last = rig.archiver.status()["sources"]["cam"]["last_error"]
    assert last["kind"] == "retried" and "disk hiccup" in last["error"], last
    rig.archiver.feed("cam", ("not an array", {"frame": 1}))
    wait_for_items(rig.archiver, 2)
    wait_until(lambda: rig.archiver.status()["sources"]["cam"]["last_error"]["kind"] == "dead_lettered")
    cam = rig.archiver.status()["sources"]["cam"]
    assert cam["failed"] == cam["dead_lettered"] == 1 and cam["retried"] == 1
    assert "expected a numpy array" in cam["last_error"]["error"] and cam["last_error"]["time"] >= last["time"]


# ------------------------------------------------------------------------------------------------ the table
def _sample_status() -> dict[str, Any]:
    """A status as an archiver with one source makes it (without Zenoh)."""
    accounting = Accounting("acquisition_data", "frame")
    accounting.received("cam", {"frame": 0})
    accounting.archived_items([Item("cam", b"", {"frame": 0}, 100)])
    stats = accounting.snapshot()
    stats["queue"] = {"items": 2, "bytes": 3000, "max_items": 10, "max_bytes": 10**6, "oldest_age": 1.5, "spooled": 0}
    identity = {"name": "capturer", "class": "x.ArrayArchiver", "event": "acquisition_data", "selector": "cam"}
    listeners = {"status": {"handled": 1, "queued": 0, "lagged": 0, "failed": 0}}
    return StatusListener().report(identity, stats, {"cam": ("OSError: hiccup", time.time())}, listeners, None, None)


def _rendered(table: Any) -> str:
    console = Console(file=io.StringIO(), width=250)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def test_the_table_shows_each_source_and_the_archivers_own_figures_once() -> None:
    status = _sample_status()
    text = _rendered(status_table([status], [{"name": "gone", "error": "no answer"}], "lab"))
    row = next(line for line in text.splitlines() if "capturer" in line)
    assert "cam" in row and "2 · 2.9 KiB" in row and "1.5 s" in row and "retried" in row, text
    assert "gone" in text and "no answer" in text
    assert "intake" not in row  # nothing waits in front of the queue


def test_the_table_shows_what_waits_in_a_buffered_intake() -> None:
    status = _sample_status()
    status["queue"]["intake_waiting"] = 37
    row = next(line for line in _rendered(status_table([status], [], "lab")).splitlines() if "capturer" in line)
    assert "2 · 2.9 KiB (+37 in intake)" in row, row  # a status of a version without the intake's bytes
    status["queue"]["intake_waiting_bytes"] = 3 << 20
    row = next(line for line in _rendered(status_table([status], [], "lab")).splitlines() if "capturer" in line)
    assert "2 · 2.9 KiB (+37 · 3.0 MiB in intake)" in row, row


def test_the_table_shows_each_sources_items_in_flight_and_in_the_intake() -> None:
    status = _sample_status()
    status["sources"]["cam"].update(in_flight=5, intake_waiting=0)
    status["sources"]["cam2"] = {**status["sources"]["cam"], "in_flight": 2, "intake_waiting": 30}

    def cells(text: str, source: str) -> list[str]:
        row = next(line for line in text.splitlines() if f" {source} " in line)
        return [cell.strip() for cell in row.replace("┃", "│").split("│")[1:-1]]

    text = _rendered(status_table([status], [], "lab"))
    column = cells(text, "source").index("in flight")
    assert cells(text, "cam")[column] == "5"
    assert cells(text, "cam2")[column] == "2 (+30 in intake)"
    del status["sources"]["cam"]["in_flight"]  # a status of a version without it
    assert cells(_rendered(status_table([status], [], "lab")), "cam")[column] == "-"


def test_a_sources_status_counts_its_items_in_flight() -> None:
    accounting = Accounting("acquisition_data", "frame")
    for frame in range(3):
        accounting.received("cam", {"frame": frame})
    accounting.archived_items([Item("cam", b"", {"frame": 0}, 100)])
    snapshot = accounting.snapshot()
    assert snapshot["sources"]["cam"]["in_flight"] == 2 == snapshot["total"]["in_flight"]


network_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.binary(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=3)
    ),
    max_leaves=12,
)


#: paths into a status (as far as each goes) where the network value is put instead
status_paths = st.lists(
    st.sampled_from(["queue", "sources", "cam", "disk", "time", "archiver", "last_error", "received", "oldest_age"]),
    min_size=1,
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(junk=network_values, where=status_paths)
def test_a_status_of_any_shape_is_shown_never_raised(junk: Any, where: list[str]) -> None:
    """A status comes over the network: another version's, a broken peer's. The table and the JSON take it."""
    status: Any = _sample_status()
    node = status
    for key in where[:-1]:  # replace what is at a path of the real status, as far as the path goes
        if not isinstance(node, dict) or key not in node:
            break
        node = node[key]
    if isinstance(node, dict):
        node[where[-1]] = junk
    for shown in (status, junk):
        _rendered(status_table([shown], [], "lab"))
        json.dumps(jsonable({"archivers": [shown]}))


# ------------------------------------------------------------------------------------------------ the command
def test_status_exits_2_when_no_archiver_answers() -> None:
    result = run_cli(["status", "--realm", unique_realm(), "--timeout", "1", "--json"])
    assert result.returncode == 2, result.stdout
    assert "no archiver matching '*' answered" in result.stdout, result.stdout


def _status_json(realm: str, port: int) -> dict[str, Any]:
    """``heros-archiver status --json``, connected to the archiver's Zenoh peer on ``port``."""
    result = run_cli(["status", "--json", "--realm", realm, "--connect", f"tcp/127.0.0.1:{port}", "--timeout", "30"])
    assert result.returncode == 0, result.stdout
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.mark.slow
def test_status_shows_an_archiver_under_boss_and_its_counters_move(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    config = tmp_path / "archiver.json"
    arguments = camera_archiver_arguments(archive, sequence_key="frame")
    config.write_text(
        json.dumps({"_id": "capturer", "classname": "heros_archiver.ArrayArchiver", "arguments": arguments})
    )
    port, boss_port, realm = free_port(), free_port(), unique_realm()
    camera = ReliableSimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    remote = None
    # BOSS connects to the camera and listens on a port of its own, to which the command connects: Zenoh peers
    # do not pass queries on between two peers that are not connected to each other
    env = child_env(port, HEROS_ZENOH_CONFIG=loopback_config_json(listen_port=boss_port, connect_port=port))
    try:
        args = [str(BOSS), "-u", config.as_uri(), "--realm", realm]
        with child(args, tmp_path / "boss.log", env, cwd=tmp_path) as boss:
            wait_for_subscriber(camera, timeout=60)
            remote = remote_hero("capturer", realm, heros_compat.session_manager(camera))
            for index in range(3):
                camera.acquisition_data(_frame(index), {"frame": index})
            wait_until(lambda: remote.stats()["total"]["archived"] == 3, 60, f"3 archived:\n{boss.output()}")

            first = _status_json(realm, boss_port)
            assert first["errors"] == [] and len(first["archivers"]) == 1, first
            status = first["archivers"][0]
            assert status["archiver"]["name"] == "capturer" and status["archiver"]["pid"] != 0
            assert status["sources"]["cam"]["archived"] == 3 and status["sources"]["cam"]["received"] == 3

            for index in (3, 4, 6, 7):  # 5 never sent: a gap
                camera.acquisition_data(_frame(index), {"frame": index})
            wait_until(lambda: remote.stats()["total"]["archived"] == 7, 60, "7 archived")
            second = _status_json(realm, boss_port)["archivers"][0]
            cam = second["sources"]["cam"]
            assert (cam["received"], cam["archived"], cam["gaps"], cam["missing"]) == (7, 7, 1, 1), cam
            assert second["uptime"] > status["uptime"] and second["time"] > status["time"]

            connect = ["--connect", f"tcp/127.0.0.1:{boss_port}"]
            table = run_cli(["status", "capturer", "--once", "--realm", realm, *connect])
            assert table.returncode == 0, table.stdout
            row = next(line for line in table.stdout.splitlines() if "capturer" in line)
            assert "cam" in row and " 7 " in row, table.stdout

            nothing = run_cli(["status", "other-*", "--json", "--realm", realm, "--timeout", "1", *connect])
            assert nothing.returncode == 2, nothing.stdout

            live_args = [*CLI, "status", "--realm", realm, "--interval", "0.2", *connect]
            with child(live_args, tmp_path / "live.log", dict(os.environ, COLUMNS="250")) as live:
                wait_until(lambda: "Ctrl-C to stop" in live.output(), 60, f"the live table:\n{live.output()}")
                os.kill(live.pid, signal.SIGINT)  # Ctrl-C
                live.proc.wait(30)
                assert live.proc.returncode == 0, live.output()
                assert "capturer" in live.output() and "cam" in live.output(), live.output()
    finally:
        if remote is not None:
            remote._destroy_hero()
        camera._destroy_hero()


@pytest.mark.slow
def test_status_shows_an_archiver_of_heros_archiver_run(tmp_path: Path) -> None:
    """``heros-archiver run`` makes each config entry with an ``_id`` a HERO of that name (transport.hero_builder,
    the control work): the command finds it like one under BOSS, and its counters move."""
    pytest.importorskip("heros_archiver.transport.hero_builder", reason="heros-archiver run makes no HEROs here yet")
    config = write_config(tmp_path / "config.json", camera_archiver_arguments(tmp_path / "archive"))
    port, run_port, realm = free_port(), free_port(), unique_realm()
    env = child_env(port, HEROS_ZENOH_CONFIG=loopback_config_json(listen_port=run_port, connect_port=port))
    args = [*CLI, "run", str(config), "--realm", realm]
    with camera(port, realm) as cam, child(args, tmp_path / "run.log", env) as proc:
        wait_for_archiver(cam, proc)
        send_frames(cam, [0, 1, 2], (4, 4))
        connect = ["--connect", f"tcp/127.0.0.1:{run_port}"]

        def archived() -> int:
            result = run_cli(["status", "--json", "--realm", realm, "--timeout", "30", *connect])
            assert result.returncode == 0, f"{result.stdout}\n{proc.output()}"
            (status,) = json.loads(result.stdout)["archivers"]
            assert status["archiver"]["name"] == "archiver" and status["paused"] is False, status
            return int(status["total"]["archived"])

        wait_until(lambda: archived() == 3, what="3 archived in the status of the run's archiver")
        send_frames(cam, [3, 4], (4, 4))
        wait_until(lambda: archived() == 5, what="the counters to move")
