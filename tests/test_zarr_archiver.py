"""ZarrArchiver over real Zenoh: the reference's layout and BOSS config, every dtype, collisions, confinement,
and arrays that are complete or absent after a SIGKILL.

Cameras and archivers talk over loopback Zenoh (conftest ``make_rig``, tests/procs.py for children); stores
are read back with ``zarr.open_group``. The layout is compared with what the reference (herostools, in its
own interpreter: ``HEROS_ARCHIVER_REFERENCE_PYTHON``, default /work/ref-venv/bin/python) writes for the same
payloads; that test is skipped where the reference is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import procs
from conftest import Rig, RigFactory
from helpers import dead_letter_entries, read_entry, tiny_file_system, wait_for_items, wait_until
from heros_archiver import ConfigurationError, TargetExistsError, ZarrArchiver
from heros_archiver.cli.config import build_archivers, load_config
from heros_archiver.sinks.zarr_arrays import ZarrArrayWriter
from heros_archiver.state.statedir import STAGING_SUBDIR
from heros_archiver.storage.staged_trees import remove_stale_staging
from heros_archiver.storage.temporaries import PROCESS_TOKEN, is_temporary
from heros_archiver.testing import (
    ReliableSimulatedCamera,
    free_port,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)
from test_boss import _start_boss, _stop_group

pytestmark = pytest.mark.timeout(120)

SHAPE = (16, 24)
STORE = "{{ file_path }}/run-{{ run }}.zarr"
KEY = "{{ source_name }}/{{ '%04d' % frame }}"
REFERENCE_PYTHON = Path(os.environ.get("HEROS_ARCHIVER_REFERENCE_PYTHON", "/work/ref-venv/bin/python"))


def rig(make_rig: RigFactory, **kwargs: Any) -> Rig:
    """A camera ``cam`` and a ZarrArchiver of its frames into ``run-<run>.zarr`` under tmp_path."""
    kwargs.setdefault("store_template", STORE)
    kwargs.setdefault("array_path_template", KEY)
    made = make_rig(None, archiver_cls=ZarrArchiver, **kwargs)
    assert isinstance(made.archiver, ZarrArchiver)
    return made


def tree(store: Path) -> dict[str, tuple[str, dict[str, Any], dict[str, Any], bytes | None]]:
    """Every node of the store as zarr sees it: path -> (node type, metadata, attributes, values)."""
    group = zarr.open_group(store, mode="r")
    nodes: dict[str, tuple[str, dict[str, Any], dict[str, Any], bytes | None]] = {
        "": ("group", group.metadata.to_dict(), dict(group.attrs), None)
    }
    for path, node in group.members(max_depth=None):
        values = None if isinstance(node, zarr.Group) else np.asarray(node[...]).tobytes()
        kind = "group" if isinstance(node, zarr.Group) else f"array {node.dtype} {node.shape} {node.chunks}"
        nodes[path] = (kind, node.metadata.to_dict(), dict(node.attrs), values)
    return nodes


def frames_of(store: Path, source: str = "cam") -> list[int]:
    """The frame numbers (first element) of the arrays under ``source/`` in the store, in key order."""
    group = zarr.open_group(store, mode="r")[source]
    assert isinstance(group, zarr.Group)
    return [int(group[name][...].flat[0]) for name in sorted(group.array_keys())]


# ------------------------------------------------------------------------------------------ the reference
REFERENCE_WRITER = textwrap.dedent(
    """
    import sys, types
    import numpy as np
    from jinja2 import Template
    from herostools.actor.archiver.zarr_archiver import ZarrArchiver

    store_template, key_template, payloads, default = sys.argv[1:5]
    archiver = types.SimpleNamespace(
        metadata={"file_path": default}, store_template=Template(store_template),
        array_path_template=Template(key_template),
    )
    with np.load(payloads) as items:
        for name in sorted(items.files):
            source, frame = name.split(":")
            ZarrArchiver._store(archiver, source, items[name], {"frame": int(frame), "run": 1})
    """
)


@pytest.mark.skipif(not REFERENCE_PYTHON.exists(), reason=f"the reference is not installed at {REFERENCE_PYTHON}")
def test_the_stores_open_in_zarr_exactly_as_the_references_do(make_rig: RigFactory, tmp_path: Path) -> None:
    """The same payloads, ours over Zenoh and the reference's ``_store`` in its own interpreter: the same
    groups, arrays (dtype, shape, chunks, codecs, fill value), attributes and values, node for node."""
    payloads = {
        "cam:0": procs.frame(0, (600, 700)),  # several chunks, edge chunks padded
        "cam:1": procs.frame(1, SHAPE),
        "cam:2": np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10),
        "cam:3": np.arange(7, dtype=np.int64),
    }
    ours = tmp_path / "ours"
    key = "cam/{{ '%04d' % frame }}"  # the reference's templates see no source_name
    made = rig(make_rig, default_metadata={"file_path": str(ours)}, array_path_template=key)
    for name, payload in payloads.items():
        made.camera.acquisition_data(payload, {"frame": int(name.split(":")[1]), "run": 1})
    assert wait_for_items(made.archiver, len(payloads))["archived"] == len(payloads)

    theirs = tmp_path / "theirs"
    np.savez(tmp_path / "payloads.npz", **payloads)
    subprocess.run(
        [str(REFERENCE_PYTHON), "-c", REFERENCE_WRITER, STORE, key, str(tmp_path / "payloads.npz"), str(theirs)],
        check=True, cwd=tmp_path, capture_output=True, timeout=60,
    )  # fmt: skip
    ours_tree, theirs_tree = tree(ours / "run-1.zarr"), tree(theirs / "run-1.zarr")
    assert sorted(ours_tree) == sorted(theirs_tree) == ["", "cam", "cam/0000", "cam/0001", "cam/0002", "cam/0003"]
    assert ours_tree == theirs_tree
    for name in ("cam/0000", "cam/0002"):  # and byte for byte where zarr writes every chunk
        for document in (ours, theirs):
            assert (document / "run-1.zarr" / name / "zarr.json").exists()
        assert (ours / "run-1.zarr" / name / "zarr.json").read_bytes() == (
            theirs / "run-1.zarr" / name / "zarr.json"
        ).read_bytes()


@pytest.mark.slow
def test_boss_runs_the_references_zarr_config_with_only_the_classname_changed(tmp_path: Path) -> None:
    """A config written for ``herostools.actor.ZarrArchiver`` under the real ``boss``, classname changed: the
    frames are arrays at their keys, read back with zarr; SIGTERM drains."""
    frames_dir = tmp_path / "frames"
    config = {
        "_id": "zarr-capturer",
        "classname": "heros_archiver.ZarrArchiver",  # was herostools.actor.ZarrArchiver
        "arguments": {
            "object_selector": "cam",
            "event_name": "acquisition_data",
            "default_metadata": {"file_path": str(frames_dir)},
            "max_retries": 3,
            "store_template": "{{ file_path }}/scan-{{ scan }}.zarr",
            "array_path_template": "{{ '%06d' % frame }}",
        },
    }
    config_file = tmp_path / "archiver.json"
    config_file.write_text(json.dumps(config))
    port, realm = free_port(), unique_realm()
    camera = ReliableSimulatedCamera("cam", realm=realm, session_manager=session_manager(listen_port=port))
    process: subprocess.Popen[bytes] | None = None
    try:
        process = _start_boss(config_file, realm, port, tmp_path / "boss.log")
        wait_for_subscriber(camera, timeout=60)
        sent = [procs.frame(i, SHAPE) for i in range(5)]
        for i, frame in enumerate(sent):
            camera.acquisition_data(frame, {"frame": i, "scan": 4})
        store = frames_dir / "scan-4.zarr"
        wait_until(lambda: all((store / f"{i:06d}" / "zarr.json").exists() for i in range(5)), 30, "5 arrays")
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (tmp_path / "boss.log").read_text()
    finally:
        if process is not None:
            _stop_group(process)
        camera._destroy_hero()
    group = zarr.open_group(store, mode="r")
    assert sorted(group.array_keys()) == [f"{i:06d}" for i in range(5)]
    for i, frame in enumerate(sent):
        np.testing.assert_array_equal(group[f"{i:06d}"][...], frame)


# ------------------------------------------------------------------------------------------ payloads
def test_frames_over_zenoh_become_arrays_at_their_keys(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig)
    procs.send_frames(made.camera, list(range(20)), SHAPE, run=2)
    total = wait_for_items(made.archiver, 20)
    assert total["archived"] == 20 and total["dead_lettered"] == 0, total
    assert frames_of(tmp_path / "run-2.zarr") == list(range(20))
    group = zarr.open_group(tmp_path / "run-2.zarr", mode="r")
    for i in range(20):
        np.testing.assert_array_equal(group[f"cam/{i:04d}"][...], procs.frame(i, SHAPE))
    assert not list((tmp_path / STAGING_SUBDIR).iterdir()), "a staged array was left behind"


OVER_ZENOH = [
    np.arange(12, dtype=np.uint8).reshape(3, 4),
    np.arange(12, dtype=np.int16).reshape(2, 2, 3) - 6,
    np.arange(6, dtype=np.uint32),
    np.linspace(-1, 1, 12, dtype=np.float64).reshape(3, 4),
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3).T,  # not C-contiguous
    np.array([[True, False], [False, True]]),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
    np.array(7.5),  # 0-d: the reference fails on it, leaving an array of fill values
    np.zeros((0, 3), dtype=np.int8),
]


def test_payloads_of_every_dtype_and_shape_come_back_over_zenoh(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig)
    for i, payload in enumerate(OVER_ZENOH):
        made.camera.acquisition_data(payload, {"frame": i, "run": 1})
    total = wait_for_items(made.archiver, len(OVER_ZENOH))
    assert total["archived"] == len(OVER_ZENOH), total
    group = zarr.open_group(tmp_path / "run-1.zarr", mode="r")
    for i, payload in enumerate(OVER_ZENOH):
        back = group[f"cam/{i:04d}"][...]
        assert back.dtype == payload.dtype and back.shape == payload.shape, (i, back.dtype, back.shape)
        np.testing.assert_array_equal(back, payload)


DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="=", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="="),
    hnp.datetime64_dtypes(endianness="="),
    hnp.byte_string_dtypes(endianness="=", min_len=1, max_len=4),
    hnp.unicode_string_dtypes(endianness="=", min_len=1, max_len=4),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9)), big=st.booleans())
def test_any_array_zarr_can_hold_comes_back_bit_for_bit(tmp_path: Path, array: np.ndarray, big: bool) -> None:
    """Property: dtype kinds, shapes (0-d, empty, odd sizes), byte orders; zarr gives back the same values (in
    native byte order: Zarr v3 data types have none, the reference's files neither)."""
    if big and array.dtype.itemsize > 1 and array.dtype.kind not in "SU":
        array = array.astype(array.dtype.newbyteorder(">"))
    writer = ZarrArrayWriter(STORE, KEY, str(tmp_path), on_exists="overwrite")
    writer.write("cam", array, {"file_path": str(tmp_path), "frame": 0, "run": 0})
    node = zarr.open_group(tmp_path / "run-0.zarr", mode="r")["cam/0000"]
    back = np.asarray(node[...], dtype=node.dtype)  # zarr reads a 0-d array as a scalar (b"" as dtype S0)
    assert back.shape == array.shape and back.dtype == array.dtype.newbyteorder("=")
    assert back.tobytes() == array.astype(back.dtype).tobytes()


@pytest.mark.parametrize("fsync", ["file", "file+directory"])
def test_durable_writes_give_the_same_arrays(tmp_path: Path, fsync: Any) -> None:
    writer = ZarrArrayWriter(STORE, "a/b/{{ '%04d' % frame }}", str(tmp_path), fsync=fsync, writeback_window=1 << 20)
    frames = [procs.frame(i, (600, 700)) for i in range(3)]
    for i, frame in enumerate(frames):
        writer.write("cam", frame, {"file_path": str(tmp_path), "frame": i, "run": 1})
    writer.close()
    group = zarr.open_group(tmp_path / "run-1.zarr", mode="r")
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(group[f"a/b/{i:04d}"][...], frame)


def test_payloads_zarr_cannot_hold_as_the_reference_stores_them_are_dead_lettered(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    made = rig(make_rig)
    made.archiver.feed("cam", ({"not": "an array"}, {"frame": 0, "run": 1}))
    made.archiver.feed("cam", (np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]), {"frame": 1, "run": 1}))
    made.archiver.feed("cam", (procs.frame(2, SHAPE), {"frame": 2, "run": 1}))
    total = wait_for_items(made.archiver, 3)
    assert total["archived"] == 1 and total["dead_lettered"] == 2, total
    errors = sorted(read_entry(entry)["error"] for entry in dead_letter_entries(tmp_path))
    assert any("expected a numpy array" in error for error in errors), errors
    assert frames_of(tmp_path / "run-1.zarr") == [2]


# ------------------------------------------------------------------------------------------ collisions
def test_an_existing_array_is_kept_under_on_exists_error(make_rig: RigFactory, tmp_path: Path) -> None:
    first = rig(make_rig)
    procs.send_frames(first.camera, [0, 1], SHAPE, run=1)
    wait_for_items(first.archiver, 2)
    again = rig(make_rig)
    again.camera.acquisition_data(procs.frame(99, SHAPE), {"frame": 0, "run": 1})  # same key, other content
    again.camera.acquisition_data(procs.frame(1, SHAPE), {"frame": 1, "run": 1})  # same key, same content
    total = wait_for_items(again.archiver, 2)
    assert total["archived"] == 1 and total["dead_lettered"] == 1, total
    assert "exists and on_exists='error' keeps it" in read_entry(dead_letter_entries(tmp_path)[0])["error"]
    assert frames_of(tmp_path / "run-1.zarr") == [0, 1]


def test_unique_adds_a_suffix_and_overwrite_replaces_in_one_step(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, on_exists="unique")
    for value in (0, 10, 20):
        made.camera.acquisition_data(procs.frame(value, SHAPE), {"frame": 0, "run": 1})
    wait_for_items(made.archiver, 3)
    group = zarr.open_group(tmp_path / "run-1.zarr", mode="r")["cam"]
    assert sorted(group.array_keys()) == ["0000", "0000-1", "0000-2"]
    assert [int(group[k][...].flat[0]) for k in ("0000", "0000-1", "0000-2")] == [0, 10, 20]

    other = rig(make_rig, on_exists="overwrite", compression="none")
    other.camera.acquisition_data(procs.frame(5, SHAPE), {"frame": 0, "run": 1})
    wait_for_items(other.archiver, 1)
    group = zarr.open_group(tmp_path / "run-1.zarr", mode="r")["cam"]
    assert int(group["0000"][...].flat[0]) == 5 and list(group["0000"].metadata.to_dict()["codecs"]) == [
        {"name": "bytes", "configuration": {"endian": "little"}}
    ]
    assert not list((tmp_path / STAGING_SUBDIR).iterdir()), "the replaced array was left in the staging directory"


def test_overwrite_replaces_only_arrays_never_a_group(make_rig: RigFactory, tmp_path: Path) -> None:
    first = rig(make_rig, array_path_template="{{ name }}")
    first.camera.acquisition_data(procs.frame(0, SHAPE), {"frame": 0, "run": 1, "name": "g/inner"})
    wait_for_items(first.archiver, 1)
    made = rig(make_rig, array_path_template="{{ name }}", on_exists="overwrite")
    made.camera.acquisition_data(procs.frame(1, SHAPE), {"frame": 1, "run": 1, "name": "g"})  # a group there
    total = wait_for_items(made.archiver, 1)
    assert total["dead_lettered"] == 1, total
    assert "replaces only arrays" in read_entry(dead_letter_entries(tmp_path)[0])["error"]
    kept = zarr.open_group(tmp_path / "run-1.zarr", mode="r")["g/inner"][...]
    np.testing.assert_array_equal(kept, procs.frame(0, SHAPE))


def test_an_array_missing_chunks_of_this_very_item_is_completed_and_any_other_is_kept(tmp_path: Path) -> None:
    """The writeback window removes a chunk file the device failed to write and the item is written again: the
    array holding the same zarr.json and the same other chunks is completed; an array of other content is not."""
    writer = ZarrArrayWriter(STORE, KEY, str(tmp_path))
    frame = procs.frame(4, (600, 700))
    metadata = {"file_path": str(tmp_path), "frame": 4, "run": 1}
    array = tmp_path / "run-1.zarr" / "cam" / "0004"
    assert writer.write("cam", frame, metadata) == str(array)
    (array / "c" / "1" / "1").unlink()
    assert writer.write("cam", frame, metadata) == str(array)
    np.testing.assert_array_equal(zarr.open_array(array, mode="r")[...], frame)
    (array / "c" / "1" / "1").unlink()
    with pytest.raises(TargetExistsError):
        writer.write("cam", procs.frame(5, (600, 700)), metadata)
    assert not (array / "c" / "1" / "1").exists()


def test_a_store_or_group_that_is_an_array_is_not_written_into(make_rig: RigFactory, tmp_path: Path) -> None:
    zarr.create_array(tmp_path / "run-1.zarr", shape=(2,), dtype="i4")  # the store is an array
    made = rig(make_rig, array_path_template="{{ '%04d' % frame }}")
    procs.send_frames(made.camera, [0], SHAPE, run=1)
    total = wait_for_items(made.archiver, 1)
    assert total["dead_lettered"] == 1, total
    assert "expected a Zarr v3 group" in read_entry(dead_letter_entries(tmp_path)[0])["error"]
    assert zarr.open_array(tmp_path / "run-1.zarr", mode="r").shape == (2,)


# ------------------------------------------------------------------------------------------ confinement
@pytest.mark.parametrize(
    ("store", "key", "where"),
    [
        ("{{ file_path }}/{{ run }}.zarr", "{{ '%04d' % frame }}", "outside the archive root"),  # run = "../x"
        (STORE, "{{ run }}/{{ frame }}", "outside the archive root"),  # key = "../x/0": out of the group
        (STORE, "/{{ frame }}", "is absolute"),
        (STORE, "__{{ frame }}", "reserves names"),
        (STORE, "zarr.json", "reserves names"),
    ],
)
def test_hostile_metadata_cannot_write_outside_the_store(
    make_rig: RigFactory, tmp_path: Path, store: str, key: str, where: str
) -> None:
    archive = tmp_path / "archive"
    made = rig(make_rig, store_template=store, array_path_template=key, default_metadata={"file_path": str(archive)})
    made.camera.acquisition_data(procs.frame(0, SHAPE), {"frame": 0, "run": "../../x"})
    total = wait_for_items(made.archiver, 1)
    assert total["dead_lettered"] == 1 and total["archived"] == 0, total
    assert where in read_entry(dead_letter_entries(archive)[0])["error"]
    outside = [p for p in tmp_path.rglob("zarr.json") if archive not in p.parents]
    assert outside == []


def test_a_symlink_in_the_store_is_not_followed(make_rig: RigFactory, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = tmp_path / "run-1.zarr"
    made = rig(make_rig)
    procs.send_frames(made.camera, [0], SHAPE, run=1)
    wait_for_items(made.archiver, 1)
    (store / "evil").symlink_to(elsewhere)  # a group key through a link out of the archive
    made.camera.acquisition_data(procs.frame(1, SHAPE), {"frame": 1, "run": 1})
    made.archiver.feed("evil", (procs.frame(2, SHAPE), {"frame": 2, "run": 1}))
    total = wait_for_items(made.archiver, 3)
    assert total["archived"] == 2 and total["dead_lettered"] == 1, total
    assert "symbolic link" in read_entry(dead_letter_entries(tmp_path)[0])["error"]
    assert list(elsewhere.iterdir()) == []


def test_a_store_on_another_file_system_than_the_root_is_refused_at_once(make_rig: RigFactory, tmp_path: Path) -> None:
    """The array cannot be moved from the root's staging directory to another mount (EXDEV): dead-lettered at
    the first attempt with the reason, not retried and not written non-atomically."""
    with tiny_file_system(tmp_path / "mnt", "4m"):
        made = rig(make_rig, store_template="{{ file_path }}/mnt/run.zarr", root=str(tmp_path), max_retries=5)
        procs.send_frames(made.camera, [0], SHAPE)
        total = wait_for_items(made.archiver, 1)
        made.archiver.close()
        assert total["dead_lettered"] == 1 and total["retried"] == 0, total
        assert "another file system" in read_entry(dead_letter_entries(tmp_path)[0])["error"]
        assert not list((tmp_path / "mnt" / "run.zarr").glob("cam/*/zarr.json"))  # the group cam, no array


# ------------------------------------------------------------------------------------------ crashes
KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from heros_archiver.sinks.zarr_arrays import ZarrArrayWriter

    root = sys.argv[1]
    writer = ZarrArrayWriter("{{ file_path }}/run.zarr", "{{ '%06d' % frame }}", root, compression="none")
    frame = np.arange(64 * 1024 * 1024 // 2, dtype=np.uint16).reshape(4096, 8192)  # 64 MiB: 32 chunks
    for index in range(1000):
        frame.flat[0] = index
        writer.write("cam", frame, {"file_path": root, "frame": index})
        print("WROTE", index, flush=True)
    """
)


@pytest.mark.slow
def test_a_killed_writer_leaves_complete_arrays_or_none_and_its_temporary_is_cleaned(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """A writer SIGKILLed while it builds an array: the store holds only complete arrays (the half-built one is
    in the staging directory, which no reader of the store sees); the next archiver's start removes it."""
    staging = tmp_path / STAGING_SUBDIR
    log = tmp_path / "writer.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with procs.child([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], log, env) as child:
        wait_until(lambda: "WROTE 1" in log.read_text(), 60, "two arrays")
        for _attempt in range(100):  # stopped while a build is under way, then killed
            wait_until(lambda: any(is_temporary(p.name) for p in staging.iterdir()), 60, "a build")
            os.kill(child.proc.pid, signal.SIGSTOP)
            if any(is_temporary(p.name) for p in staging.iterdir()):
                break
            os.kill(child.proc.pid, signal.SIGCONT)
        child.kill()
    [leftover] = [p for p in staging.iterdir() if is_temporary(p.name)]
    group = zarr.open_group(tmp_path / "run.zarr", mode="r")
    names = sorted(group.array_keys())
    assert len(names) >= 2 and all(not is_temporary(name) for name in names)
    for name in names:
        array = group[name][...]
        assert int(array.flat[0]) == int(name) and int(array.flat[-1]) == (4096 * 8192 - 1) % 65536
        assert np.array_equal(array.reshape(-1)[1:1000], np.arange(1, 1000, dtype=np.uint16))

    made = rig(make_rig, store_template="{{ file_path }}/run.zarr", array_path_template="{{ '%06d' % frame }}")
    assert not leftover.exists()
    assert sorted(zarr.open_group(tmp_path / "run.zarr", mode="r").array_keys()) == names
    made.camera.acquisition_data(procs.frame(7, SHAPE), {"frame": 999999})
    assert wait_for_items(made.archiver, 1)["archived"] == 1


def test_a_live_writers_build_is_not_removed(tmp_path: Path) -> None:
    """Another archiver sharing the root may be building an array right now: only dead processes' builds go."""
    staging = tmp_path / STAGING_SUBDIR
    staging.mkdir(parents=True)
    live = staging / f".~heros-archiver.{os.getpid()}.{PROCESS_TOKEN}.1.tmp"
    live.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = staging / f".~heros-archiver.{int(ended.stdout)}.abcdef12.3.tmp"
    (dead / "c").mkdir(parents=True)
    (dead / "zarr.json").write_text("{}")
    assert remove_stale_staging(str(tmp_path), str(tmp_path)) == 1
    assert live.exists() and not dead.exists()


# ------------------------------------------------------------------------------------------ configuration
def test_the_references_class_name_runs_ours_under_heros_archiver_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``heros-archiver run`` takes a config written for the reference unchanged: its class name maps to ours."""
    port, realm = free_port(), unique_realm()
    arguments = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(tmp_path)},
        "store_template": "{{ file_path }}/frames.zarr",
        "array_path_template": "{{ '%06d' % frame }}",
    }
    config = procs.write_config(tmp_path / "config.json", arguments, classname="herostools.actor.ZarrArchiver")
    with procs.camera(port, realm) as cam:
        monkeypatch.setenv("HEROS_ZENOH_CONFIG", procs.loopback_config_json(connect_port=port))
        [archiver] = build_archivers(load_config(config), realm)
        try:
            assert isinstance(archiver, ZarrArchiver)
            wait_for_subscriber(cam)
            procs.send_frames(cam, [0, 1], SHAPE)
            wait_for_items(archiver, 2)
        finally:
            archiver.close()
    assert sorted(zarr.open_group(tmp_path / "frames.zarr", mode="r").array_keys()) == ["000000", "000001"]


def test_one_chunk_per_array_reads_back_the_same(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, chunks="array", compression_level=-1)
    frame = procs.frame(3, (600, 700))
    made.camera.acquisition_data(frame, {"frame": 3, "run": 1})
    wait_for_items(made.archiver, 1)
    array = zarr.open_group(tmp_path / "run-1.zarr", mode="r")["cam/0003"]
    assert array.chunks == (600, 700) and array.metadata.to_dict()["codecs"][1]["configuration"]["level"] == -1
    np.testing.assert_array_equal(array[...], frame)
    assert sorted(p.name for p in (tmp_path / "run-1.zarr" / "cam" / "0003").rglob("*") if p.is_file()) == [
        "0",
        "zarr.json",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"compression": "lz4"}, "compression: expected one of zstd, none"),
        ({"chunks": "rows"}, "chunks: expected one of auto, array"),
        ({"compression_level": 99}, "compression_level"),
        ({"on_exists": "append"}, "on_exists"),
        ({"store_template": "{{ file_path }/x.zarr"}, "syntax error"),
    ],
)
def test_bad_arguments_are_refused_at_construction(
    make_rig: RigFactory, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        rig(make_rig, **arguments)


def test_without_zarr_the_package_imports_and_the_archiver_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['zarr'] = None\n"
        "import heros_archiver, heros_archiver.archivers.zarr, heros_archiver.sinks.zarr_arrays as sink\n"
        "assert 'numcodecs' not in sys.modules\n"
        "try:\n"
        f"    sink.ZarrArrayWriter('{{{{ file_path }}}}/x.zarr', 'a', {str(tmp_path)!r})\n"
        "except heros_archiver.ConfigurationError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "REFUSED" in result.stdout and "pip install 'heros-archiver[zarr]'" in result.stdout, result.stderr
