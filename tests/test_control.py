"""Control of a running archiver (decision 0032): pause/resume over BOSS loses nothing and keeps the order,
flush commits containers at once, rollover starts the next parts, config() is plain data."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import pyarrow.parquet as pq
import pytest

import procs
from conftest import Rig, RigFactory
from helpers import RawCamera, wait_for_items, wait_until
from heros_archiver import (
    ArrayArchiver,
    ConfigurationError,
    Hdf5Archiver,
    JsonArchiver,
    ParquetArchiver,
)
from heros_archiver.cli.config import build_archivers
from heros_archiver.errors import HerosCompatibilityError
from heros_archiver.testing import (
    ReliableSimulatedCamera,
    free_port,
    loopback_config_json,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)
from heros_archiver.testing.faults import SlowSink
from heros_archiver.transport import heros_compat
from heros_archiver.transport.hero_builder import configured_class, hero_class
from procs import group_alive
from test_events import Received, remote

pytestmark = pytest.mark.timeout(120)

SHAPE = (16, 24)
BOSS = Path(sys.executable).parent / "boss"


@contextlib.contextmanager
def boss(config: dict[str, Any], tmp_path: Path, realm: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``boss`` running ``config`` in a process group of its own, connected to ``port``; killed (by its group id)
    when the block is left, also on failure."""
    config_file = tmp_path / "boss-config.json"
    config_file.write_text(json.dumps(config))
    env = {**os.environ, "HEROS_ZENOH_CONFIG": loopback_config_json(connect_port=port)}
    with open(tmp_path / "boss.log", "wb") as log:
        process = subprocess.Popen(
            [str(BOSS), "-u", config_file.as_uri(), "--realm", realm],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None or group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def test_pause_and_resume_over_boss_lose_nothing_and_keep_the_order(tmp_path: Path) -> None:
    """Under a real BOSS: frames sent while paused are counted and spooled, none archived; after the resume all
    of them are, after those sent before and before those sent after, as the ``archived`` events show; a pause
    with ``drop=True`` drops by choice and counts it."""
    archive = tmp_path / "archive"
    config = {
        "_id": "paused-archiver",
        "classname": "heros_archiver.ArrayArchiver",
        "arguments": procs.camera_archiver_arguments(archive, sequence_key="frame"),
    }
    port, realm = free_port(), unique_realm()
    camera = ReliableSimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    try:
        with boss(config, tmp_path, realm, port) as process:
            wait_for_subscriber(camera, timeout=60)
            received = Received()
            with remote("paused-archiver", realm, heros_compat.session_manager(camera)) as archiver:
                archiver.archived.connect(received)
                assert archiver.stats()["paused"] is False
                procs.send_frames(camera, list(range(5)), SHAPE)
                wait_until(lambda: archiver.stats()["total"]["archived"] == 5, 30, "5 frames before the pause")

                paused = archiver.pause()
                assert paused["paused"] and paused["done"] and not paused["drop"], paused
                procs.send_frames(camera, list(range(5, 25)), SHAPE)
                wait_until(lambda: archiver.stats()["pause"]["spilled"] == 20, 30, "20 frames spooled while paused")
                stats = archiver.stats()
                assert stats["paused"] and stats["total"]["archived"] == 5 and stats["queue"]["spooled"] == 20, stats
                assert stats["total"]["received"] == 25 and stats["total"]["in_flight"] == 20
                assert len(procs.npy_files(archive)) == 5

                resumed = archiver.resume()
                assert resumed["paused"] is False and resumed["was_paused"], resumed
                wait_until(lambda: archiver.stats()["total"]["archived"] == 25, 30, "the spooled frames archived")
                procs.send_frames(camera, [25, 26], SHAPE)  # after the resume: behind the spooled ones
                wait_until(lambda: archiver.stats()["total"]["archived"] == 27, 30, "2 more frames")

                assert archiver.pause(drop=True)["drop"]
                procs.send_frames(camera, [27, 28, 29], SHAPE)
                wait_until(lambda: archiver.stats()["total"]["dropped"] == 3, 30, "3 frames dropped while paused")
                archiver.resume()
                procs.send_frames(camera, [30], SHAPE)
                wait_until(lambda: archiver.stats()["total"]["archived"] == 28, 30, "the frame after the second pause")
                wait_until(lambda: len(received.items()) == 28, 30, "an archived event for every frame")
                stats = archiver.stats()
            os.killpg(process.pid, signal.SIGTERM)
            assert process.wait(timeout=30) == 0, (tmp_path / "boss.log").read_text()
    finally:
        camera._destroy_hero()

    total = stats["total"]
    assert total["received"] == 31 and total["archived"] == 28, total
    assert total["dropped"] == total["dropped_paused"] == 3 and total["dead_lettered"] == 0, total
    assert total["in_flight"] == 0 and stats["queue"]["spooled"] == 0 and not stats["paused"], stats
    assert stats["pause"]["spilled"] == 20 and stats["pause"]["dropped"] == 3, stats["pause"]
    order = [item["sequence"] for item in received.items()]
    assert order == [*range(27), 30], order  # one writer: in arrival order, the spooled ones in their place
    assert [procs.check_frame_file(p, SHAPE) for p in procs.npy_files(archive)] == [*range(27), 30]


def hdf5(make_rig: RigFactory, **kwargs: Any) -> Rig:
    """A camera and an Hdf5Archiver of its frames into ``run.h5`` under tmp_path."""
    kwargs.setdefault("file_template", "{{ file_path }}/run.h5")
    kwargs.setdefault("dataset_template", "cam/data")
    return make_rig(None, archiver_cls=Hdf5Archiver, sequence_key="frame", **kwargs)


def frames_in(path: Path) -> list[int]:
    """The frame numbers in the stack of ``path`` as a SWMR reader sees them now (any file: open or closed)."""
    with h5py.File(path, "r", libver="latest", swmr=True) as handle:
        return [int(frame.flat[0]) for frame in handle["cam/data"][()]] if "cam/data" in handle else []


def test_flush_commits_an_hdf5_file_at_once(make_rig: RigFactory, tmp_path: Path) -> None:
    """Commits by count, time and idleness are far away: only ``flush()`` makes the frames archived, and a reader
    sees every frame it reports as soon as it returned."""
    rig = hdf5(make_rig, flush_frames=10_000, flush_seconds=3600.0, flush_idle=None)
    procs.send_frames(rig.camera, list(range(6)), SHAPE)
    wait_until(lambda: rig.archiver.stats()["total"]["received"] == 6, what="6 frames received")
    committed = 0
    while committed < 6:  # the writer may not have taken all of them when the first flush comes
        flushed = rig.archiver.flush()
        assert flushed["done"], flushed
        committed += flushed["committed"]
        assert rig.archiver.stats()["total"]["archived"] == committed
        if committed:
            assert frames_in(tmp_path / "run.h5") == list(range(committed))
    assert rig.archiver.flush() == {"committed": 0, "done": True}


def test_pause_commits_and_closes_the_files_and_resume_appends_in_order(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = hdf5(make_rig, flush_frames=10_000, flush_seconds=3600.0, flush_idle=None)
    archiver = rig.archiver
    procs.send_frames(rig.camera, [0, 1, 2], SHAPE)
    wait_until(lambda: archiver.stats()["total"]["received"] == 3, what="3 frames received")
    paused = archiver.pause()
    assert paused["done"], paused
    procs.send_frames(rig.camera, [3, 4, 5], SHAPE)
    wait_until(lambda: archiver.stats()["pause"]["spilled"] == 3, what="3 frames spooled")
    archived = archiver.stats()["total"]["archived"]
    assert archived == paused["committed"] == len(frames_in(tmp_path / "run.h5"))
    with h5py.File(tmp_path / "run.h5", "r") as handle:  # closed: any reader opens it, SWMR or not
        assert handle["cam/data"].shape[0] == archived
    archiver.resume()
    wait_until(lambda: archiver.flush()["done"] and archiver.stats()["total"]["archived"] == 6, what="6 archived")
    assert frames_in(tmp_path / "run.h5") == list(range(6))


def test_rollover_starts_run_1_and_run_2(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = hdf5(make_rig)
    archiver = rig.archiver
    batches = [[0, 1, 2], [3, 4], [5]]
    for number, batch in enumerate(batches):
        procs.send_frames(rig.camera, batch, SHAPE)
        wait_for_items(archiver, batch[-1] + 1)
        if number < len(batches) - 1:
            rolled = archiver.rollover()
            assert rolled["rolled_over"] and rolled["done"] and rolled["why"] is None, rolled
    assert archiver.rollover()["rolled_over"]
    assert frames_in(tmp_path / "run.h5") == [0, 1, 2]
    assert frames_in(tmp_path / "run-1.h5") == [3, 4]
    assert frames_in(tmp_path / "run-2.h5") == [5]
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["run-1.h5", "run-2.h5", "run.h5"]


def test_rollover_publishes_a_parquet_file_and_the_next_reading_starts_the_next_part(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    rig = make_rig(
        None,
        archiver_cls=ParquetArchiver,
        camera_cls=RawCamera,
        cameras=("s1",),
        file_template="{{ file_path }}/readings.parquet",
        flush_items=10_000,
        flush_seconds=3600.0,
    )
    archiver = rig.archiver
    for value in range(3):
        rig.camera.acquisition_data({"value": value})
    wait_until(lambda: archiver.flush()["done"] and archiver.stats()["total"]["archived"] == 3, what="3 readings")
    assert not (tmp_path / "readings.parquet").exists()  # journaled: the file is published at its close
    rolled = archiver.rollover()
    assert rolled["rolled_over"] and rolled["done"] and rolled["committed"] == 0, rolled
    assert [row["value"] for row in pq.read_table(tmp_path / "readings.parquet").to_pylist()] == [0, 1, 2]
    rig.camera.acquisition_data({"value": 3})
    wait_until(lambda: archiver.stats()["total"]["received"] == 4, what="the next reading")
    wait_until(lambda: archiver.rollover()["done"] and (tmp_path / "readings-1.parquet").exists())
    assert [row["value"] for row in pq.read_table(tmp_path / "readings-1.parquet").to_pylist()] == [3]


def test_a_file_per_item_archiver_says_it_has_nothing_to_roll_over_or_flush(make_rig: RigFactory) -> None:
    archiver = make_rig().archiver
    rolled = archiver.rollover()
    assert rolled["rolled_over"] is False and "file per item" in rolled["why"], rolled
    assert archiver.flush() == {"committed": 0, "done": True}


def test_a_pause_outlives_a_restart_in_the_spool(make_rig: RigFactory, tmp_path: Path) -> None:
    """An archiver stopped while paused keeps what the pause spooled; the next one archives it first."""
    rig = make_rig(sequence_key="frame")
    rig.archiver.pause()
    procs.send_frames(rig.camera, [0, 1, 2, 3], SHAPE)
    wait_until(lambda: rig.archiver.stats()["pause"]["spilled"] == 4, what="4 frames spooled")
    rig.archiver.close()
    assert procs.npy_files(tmp_path) == [] and len(procs.entries(tmp_path / ".heros-archiver" / "spool")) == 4
    again = make_rig(sequence_key="frame").archiver
    wait_until(lambda: again.stats()["total"]["archived"] == 4, what="the spooled frames archived at the restart")
    assert [procs.check_frame_file(p, SHAPE) for p in procs.npy_files(tmp_path)] == [0, 1, 2, 3]


def test_a_pause_waits_for_the_item_a_slow_writer_holds(make_rig: RigFactory) -> None:
    """pause() returns once the writer finished the item in hand; after it, nothing more is archived."""
    rig = make_rig(sink_wrapper=SlowSink(0.3))
    procs.send_frames(rig.camera, [0, 1, 2, 3], SHAPE)
    wait_until(lambda: rig.archiver.stats()["total"]["archived"] >= 1, what="the first frame written")
    paused = rig.archiver.pause(timeout=5.0)
    assert paused["done"], paused
    archived = rig.archiver.stats()["total"]["archived"]
    time.sleep(0.5)  # more than a slow write: had the writer gone on, one more would be archived by now
    assert rig.archiver.stats()["total"]["archived"] == archived < 4
    assert rig.archiver.stats()["total"]["in_flight"] == 4 - archived
    rig.archiver.resume()
    assert wait_for_items(rig.archiver, 4)["archived"] == 4


def test_config_is_plain_data(make_rig: RigFactory) -> None:
    rig = make_rig(sequence_key="frame", sink_wrapper=SlowSink(0.0), low_disk_space=0.05)
    config = rig.archiver.config()
    assert json.loads(json.dumps(config)) == config
    assert config["class"] == "heros_archiver.archivers.files.ArrayArchiver" and config["name"] is None
    options = config["options"]
    assert options["sequence_key"] == "frame" and options["pipeline"]["overflow"] == "block"
    assert options["low_disk_space"] == 0.05 and options["events"] is True
    assert options["sink_wrapper"] == "<SlowSink>" and options["listeners"] == []
    assert config["sink_options"]["file_format"] == "npy" and config["root"] == str(rig.root)


def test_the_hero_class_of_an_archiver_is_made_once_and_is_still_that_archiver() -> None:
    made = hero_class(ArrayArchiver)
    assert (
        issubclass(made, ArrayArchiver)
        and configured_class(made) is ArrayArchiver
        and hero_class(ArrayArchiver) is made
    )


def test_a_json_archiver_writing_through_its_helper_process_pauses_and_resumes(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/{{ '%03d' % frame }}.json", archiver_cls=JsonArchiver, matched=())
    archiver = rig.archiver
    assert archiver.stats()["helper_processes"], "the batch path is what this test is about"
    for frame in range(10):
        archiver.feed("cam", ({"t": frame}, {"frame": frame}))
    wait_for_items(archiver, 10)
    assert archiver.pause()["done"]
    for frame in range(10, 30):
        archiver.feed("cam", ({"t": frame}, {"frame": frame}))
    assert archiver.stats()["pause"]["spilled"] == 20 and archiver.stats()["total"]["archived"] == 10
    archiver.resume()
    assert wait_for_items(archiver, 30)["archived"] == 30
    assert sorted(p.name for p in rig.root.glob("*.json")) == [f"{frame:03d}.json" for frame in range(30)]


def test_two_config_entries_of_one_name_are_refused_before_any_is_built(tmp_path: Path) -> None:
    entry = {"_id": "twice", "classname": "heros_archiver.ArrayArchiver", "arguments": {}}
    with pytest.raises(ConfigurationError, match="_id 'twice': expected one archiver of each name, got 2"):
        build_archivers([entry, entry], unique_realm())
    with pytest.raises(ConfigurationError, match="_id: expected the archiver's HERO name"):
        build_archivers([{**entry, "_id": ""}], unique_realm())


def test_a_hero_archiver_has_what_heros_compat_checks_and_keeps_its_subscriptions(make_rig: RigFactory) -> None:
    """The private pieces of a LocalHERO the events use are there (``check_hero``), and the subscription the
    archiver declared before ``LocalHERO.__init__`` is still in heros' list (undeclared before the drain)."""
    hero = make_rig(archiver_cls=functools.partial(hero_class(ArrayArchiver), "checked")).archiver
    heros_compat.check_hero(hero)
    assert heros_compat.hero_ready(hero) and heros_compat.hero_name(hero) == "checked"
    assert heros_compat.primary_subscription(hero) in heros_compat.subscriptions(hero)
    plain = make_rig().archiver
    assert not heros_compat.hero_ready(plain)
    with pytest.raises(HerosCompatibilityError, match="_name"):
        heros_compat.check_hero(plain)
