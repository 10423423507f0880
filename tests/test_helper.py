"""Small files published from a helper process (decision 0012): same files, same guarantees, same accounting."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import procs
from conftest import RigFactory
from helpers import (
    RawCamera,
    archived_files,
    assert_npy_equal,
    assert_refused_before_zenoh,
    dead_letter_entries,
    immutable,
    read_entry,
    wait_for_items,
    wait_until,
)
from heros_archiver import ArrayArchiver, JsonArchiver, PathConfinementError, StorageError, TargetExistsError
from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks import publisher
from heros_archiver.sinks.batching import BATCH_ITEMS, BatchWriter
from heros_archiver.sinks.publisher import publish, result_error
from heros_archiver.sinks.writer import FileWriter, WriterSettings
from heros_archiver.testing import free_port, unique_realm

pytestmark = pytest.mark.timeout(90)

TEMPLATE = "{{ file_path }}/{{ '%04d' % i }}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _send(rig: Any, numbers: range) -> None:
    for i in numbers:
        rig.camera.acquisition_data({"i": i, "value": i * 0.5})


def test_json_archiver_writes_through_a_helper_that_stops_with_it(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera)
    [pid] = rig.archiver.stats()["helper_processes"]
    assert _alive(pid)

    _send(rig, range(300))
    total = wait_for_items(rig.archiver, 300)

    assert total["archived"] == 300 and total["dead_lettered"] == 0, total
    assert archived_files(tmp_path) == [f"{i:04d}.json" for i in range(300)]
    assert all(json.loads((tmp_path / f"{i:04d}.json").read_text()) == {"i": i, "value": i * 0.5} for i in range(300))
    rig.archiver._teardown()
    assert not _alive(pid), "the helper must end with the archiver"
    assert rig.archiver.stats()["helper_processes"] == []


def test_arrays_have_no_helper_unless_asked_and_large_ones_are_written_in_process(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    plain = make_rig("{{ file_path }}/plain-{{ frame }}.npy")
    assert plain.archiver.stats()["helper_processes"] == []

    rig = make_rig("{{ file_path }}/{{ frame }}.npy", archiver_cls=ArrayArchiver, helper_process=True)
    assert len(rig.archiver.stats()["helper_processes"]) == 1
    small = np.arange(1000, dtype=np.float32)
    large = np.arange(2**19, dtype=np.uint32)  # 2 MiB: through the writeback window, in the archiver's process
    for frame, array in enumerate([small, large, small * 2]):
        rig.camera.acquisition_data(array, {"frame": frame})
    total = wait_for_items(rig.archiver, 3)

    assert total["archived"] == 3, total
    for frame, array in enumerate([small, large, small * 2]):
        assert_npy_equal(tmp_path / f"{frame}.npy", array)


@pytest.mark.parametrize("on_exists", ["error", "unique"])
def test_a_killed_helper_is_replaced_and_nothing_is_lost_or_doubled(
    make_rig: RigFactory, tmp_path: Path, on_exists: str
) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera, on_exists=on_exists)
    [first] = rig.archiver.stats()["helper_processes"]
    _send(rig, range(400))
    wait_until(lambda: rig.archiver.stats()["total"]["archived"] >= 50, what="the first files")
    os.kill(first, signal.SIGKILL)  # mid-stream: some of its batch may be on disk, the rest is not
    _send(rig, range(400, 600))
    total = wait_for_items(rig.archiver, 600)

    assert total["archived"] == 600 and total["dead_lettered"] == 0 and total["dropped"] == 0, total
    assert archived_files(tmp_path) == [f"{i:04d}.json" for i in range(600)], "each file once, none missing"
    wait_until(lambda: len(rig.archiver.stats()["helper_processes"]) == 1, what="a new helper")
    assert rig.archiver.stats()["helper_processes"] != [first]


@pytest.mark.parametrize("interpreter", ["/nonexistent/python", "/bin/false"], ids=["cannot-start", "exits-at-once"])
def test_without_a_working_helper_the_writer_writes_every_file_itself(
    make_rig: RigFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    interpreter: str,
) -> None:
    """A helper that cannot be started, or dies at once (and so again on each of its restarts): every
    file is still written, in process, and the log says why."""
    monkeypatch.setattr(publisher.sys, "executable", interpreter)
    with caplog.at_level(logging.WARNING, logger="heros_archiver"):
        rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera)
        _send(rig, range(200))
        total = wait_for_items(rig.archiver, 200)

    assert total["archived"] == 200 and total["dead_lettered"] == 0, total
    assert archived_files(tmp_path) == [f"{i:04d}.json" for i in range(200)]
    assert "files itself" in caplog.text  # "writes its files itself" / "writes that helper's files itself"


def test_unique_names_follow_the_arrival_order_across_batches(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig("{{ file_path }}/same.json", archiver_cls=JsonArchiver, camera_cls=RawCamera, on_exists="unique")
    _send(rig, range(40))
    wait_for_items(rig.archiver, 40)

    for i in range(40):
        name = "same.json" if i == 0 else f"same-{i}.json"
        assert json.loads((tmp_path / name).read_text())["i"] == i


def test_a_failing_directory_is_retried_then_dead_lettered_and_the_next_item_written(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    (tmp_path / "blocked").mkdir()
    rig = make_rig(
        "{{ file_path }}/{{ folder }}/{{ i }}.json",
        archiver_cls=JsonArchiver,
        camera_cls=RawCamera,
        max_retries=2,
        retry_delay=0.01,
    )
    with immutable(tmp_path / "blocked"):  # EPERM, a fault that may pass: retried
        rig.camera.acquisition_data({"i": 1, "folder": "blocked"})
        rig.camera.acquisition_data({"i": 2, "folder": "free"})
        total = wait_for_items(rig.archiver, 2)

    assert total["archived"] == 1 and total["dead_lettered"] == 1 and total["retried"] == 2, total
    [entry] = dead_letter_entries(tmp_path)
    info = read_entry(entry)
    assert info["attempts"] == 3 and "StorageError" in info["error"] and "blocked/1.json" in info["error"], info
    assert json.loads((tmp_path / "free" / "2.json").read_text()) == {"i": 2, "folder": "free"}


def test_an_existing_file_is_kept_and_the_new_item_dead_lettered(make_rig: RigFactory, tmp_path: Path) -> None:
    (tmp_path / "0001.json").write_text("someone else's file\n")
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera)
    _send(rig, range(3))
    total = wait_for_items(rig.archiver, 3)

    assert total["archived"] == 2 and total["dead_lettered"] == 1 and total["retried"] == 0, total
    assert (tmp_path / "0001.json").read_text() == "someone else's file\n"
    assert "TargetExistsError" in read_entry(dead_letter_entries(tmp_path)[0])["error"]


def test_spilled_events_go_through_the_helper_and_leave_the_spool(make_rig: RigFactory, tmp_path: Path) -> None:
    """overflow="spill" with a queue of one item and the helper stopped (SIGSTOP): the events wait in the
    spool; once it runs again every one is archived from there through the helper, and the spool empties."""
    rig = make_rig(TEMPLATE, archiver_cls=JsonArchiver, camera_cls=RawCamera, overflow="spill", max_queue_items=1)
    [helper] = rig.archiver.stats()["helper_processes"]
    _send(rig, range(1))
    wait_for_items(rig.archiver, 1)
    os.kill(helper, signal.SIGSTOP)
    try:
        _send(rig, range(1, 100))
        wait_until(lambda: rig.archiver.stats()["queue"]["spooled"] > 0, what="events in the spool")
    finally:
        os.kill(helper, signal.SIGCONT)
    total = wait_for_items(rig.archiver, 100)

    assert total["archived"] == 100 and total["dead_lettered"] == 0, total
    assert archived_files(tmp_path) == [f"{i:04d}.json" for i in range(100)]
    assert all(json.loads((tmp_path / f"{i:04d}.json").read_text())["i"] == i for i in range(100))
    wait_until(lambda: rig.archiver.stats()["queue"]["spooled"] == 0, what="an empty spool")
    assert rig.archiver.stats()["helper_processes"] == [helper], "a stopped helper is not a dead one"


def test_two_writers_have_a_helper_each(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(
        "{{ file_path }}/{{ source_name }}/{{ '%04d' % i }}.json",
        archiver_cls=JsonArchiver,
        camera_cls=RawCamera,
        cameras=("cam-a", "cam-b", "cam-c"),
        object_selector="cam-$*",
        writers=2,
    )
    assert len(set(rig.archiver.stats()["helper_processes"])) == 2
    for name, camera in rig.cameras.items():
        for i in range(100):
            camera.acquisition_data({"i": i, "from": name})
    total = wait_for_items(rig.archiver, 300)

    assert total["archived"] == 300 and total["dead_lettered"] == 0, total
    expected = sorted(f"{name}/{i:04d}.json" for name in rig.cameras for i in range(100))
    assert archived_files(tmp_path) == expected


class OwnStoreItem(JsonArchiver):
    """Overrides ``_store_item``: it must be called for every item, so no helper writes around it."""

    def _store_item(self, item: Any) -> None:
        self.__dict__.setdefault("seen", []).append(item.metadata["i"])
        super()._store_item(item)


def test_a_subclass_with_its_own_store_gets_it_called(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig(TEMPLATE, archiver_cls=OwnStoreItem, camera_cls=RawCamera)
    assert rig.archiver.stats()["helper_processes"] == []
    _send(rig, range(5))
    wait_for_items(rig.archiver, 5)
    assert rig.archiver.seen == [0, 1, 2, 3, 4]  # type: ignore[attr-defined]


def test_a_batch_item_that_fails_to_be_named_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever naming or encoding raises becomes that item's outcome (retried or dead-lettered by the
    pipeline, as in process); the rest of the batch is written."""
    writer = FileWriter(WriterSettings("json", "{{ file_path }}/{{ i }}.json", str(tmp_path)))
    plan_text = writer.plan_text

    def flaky(source: str, payload: Any, metadata: dict[str, Any]) -> Any:
        if metadata["i"] == 1:
            raise RuntimeError("a bug in a format")
        return plan_text(source, payload, metadata)

    monkeypatch.setattr(writer, "plan_text", flaky)
    items = [Item("cam", {"i": i}, {"file_path": str(tmp_path), "i": i}, 10) for i in range(3)]
    batch_writer = BatchWriter(writer, 1)
    try:
        outcomes = [outcome for _, outcome in batch_writer.collect(batch_writer.send(0, items))]
    finally:
        batch_writer.close()

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], RuntimeError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.json", "2.json"]


@pytest.mark.timeout(60)
def test_batches_and_answers_larger_than_a_pipe_do_not_wait_for_each_other(tmp_path: Path) -> None:
    """The writer sends the next batch before reading the last answer: with long paths (answers > 64 KiB)
    and large items (batches > 64 KiB) both pipes fill; a helper that answered from its reading loop hung."""
    folder = tmp_path / ("d" * 200)
    writer = FileWriter(WriterSettings("json", str(folder) + "/{{ 'x' * 40 }}-{{ i }}.json", str(tmp_path)))
    items = [Item("cam", {"i": i, "pad": "p" * 2000}, {"i": i}, 2100) for i in range(3 * BATCH_ITEMS)]
    batch_writer = BatchWriter(writer, 1)
    outcomes: list[Any] = []
    try:
        pending = None
        for start in range(0, len(items) + BATCH_ITEMS, BATCH_ITEMS):
            chunk = items[start : start + BATCH_ITEMS]
            batch = batch_writer.send(0, chunk) if chunk else None
            if pending is not None:
                outcomes += [outcome for _, outcome in batch_writer.collect(pending)]
            pending = batch
    finally:
        batch_writer.close()

    assert outcomes == [None] * len(items)
    assert len(list(folder.iterdir())) == len(items)


def test_helper_process_must_be_a_bool(tmp_path: Path) -> None:
    assert_refused_before_zenoh(tmp_path, "helper_process: expected true or false, got 'yes'", helper_process="yes")


def test_publish_answers_each_file_as_the_writer_would(tmp_path: Path) -> None:
    (tmp_path / "same.json").write_bytes(b"same")
    (tmp_path / "other.json").write_bytes(b"other")
    (tmp_path / "not-a-dir").write_bytes(b"")
    (tmp_path / "blocked").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "blocked")
    root = str(tmp_path)
    with immutable(tmp_path / "blocked"):
        results = publish(
            [
                (root, str(tmp_path / "new.json"), b"new", "error", "none"),
                (root, str(tmp_path / "same.json"), b"same", "error", "none"),  # these bytes there: written
                (root, str(tmp_path / "other.json"), b"mine", "error", "none"),
                (root, str(tmp_path / "other.json"), b"mine", "unique", "file"),
                (root, str(tmp_path / "not-a-dir" / "x.json"), b"x", "error", "none"),
                (root, str(tmp_path / "blocked" / "x.json"), b"x", "error", "none"),
                (root, str(tmp_path / "out" / "x.json"), b"x", "error", "none"),
            ]
        )

    assert results[:2] == [("ok", str(tmp_path / "new.json")), ("ok", str(tmp_path / "same.json"))]
    assert isinstance(result_error(results[2]), TargetExistsError)
    assert results[3] == ("ok", str(tmp_path / "other-1.json"))
    error = result_error(results[4])  # a component that is a file comes from the item: permanent
    assert isinstance(error, StorageError) and error.errno == errno.ENOTDIR and error.permanent
    error = result_error(results[5])  # a directory refusing new files may be fixed: retried
    assert isinstance(error, StorageError) and error.errno == errno.EPERM and not error.permanent
    error = result_error(results[6])
    assert isinstance(error, PathConfinementError) and error.permanent and "symbolic link" in str(error)
    assert (tmp_path / "new.json").read_bytes() == b"new" and (tmp_path / "other-1.json").read_bytes() == b"mine"


def test_sigterm_to_the_whole_group_drains_through_the_helper_then_all_exit(tmp_path: Path) -> None:
    """A terminal's Ctrl-C or ``kill -- -PGID`` signals the archiver's whole group: the archiver drains
    every received event through its helper, then the helper exits too."""
    port, realm = free_port(), unique_realm()
    config = procs.write_config(
        tmp_path / "config.json",
        procs.camera_archiver_arguments(tmp_path / "out", TEMPLATE),
        classname="herostools.actor.JsonArchiver",
    )
    helpers: list[int] = []
    with (
        procs.camera(port, realm, cls=RawCamera) as cam,
        procs.run_archiver(config, realm, port, tmp_path / "log") as run,
    ):
        try:
            procs.wait_for_archiver(cam, run)
            for i in range(2000):
                cam.acquisition_data({"i": i})
                if i == 1000:
                    wait_until(lambda: len(list((tmp_path / "out").glob("*.json"))) >= 100, what="the first files")
                    helpers = [pid for pid, parent in procs.publishing_helpers().items() if parent == run.pid]
                    os.killpg(run.pid, signal.SIGTERM)
            run.proc.wait(procs.DEADLINE)
            wait_until(lambda: not procs.group_alive(run.pid), 15, "the archiver's group to end")
            assert len(helpers) == 1 and not any(map(_alive, helpers)), "the helper must exit with the archiver"
        finally:
            for pid in helpers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    output = run.output()
    assert run.proc.returncode == 0, output
    total = procs.parse_stats_table(output)
    assert total["received"] >= 100 and total["archived"] == total["received"], total
    assert total["dead_lettered"] == 0 and total["retried"] == 0, total
    assert archived_files(tmp_path / "out") == [f"{i:04d}.json" for i in range(total["received"])], output
    assert "publishing helper" not in output, "the helper must not have been lost"
