"""Where each item went, for the container sinks (issue 17): every archived item's location (file or store,
member, index in arrival order, raw bytes' xxh3-128), also for items found again by their key after a resume,
and ``observe.readers``, which reads one item back and says what is wrong with a damaged or missing one."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import xxhash
import zarr

import procs
from acquisition_rigs import AcquiringCamera
from conftest import RigFactory
from hdf5_child import expected_frame
from helpers import wait_until
from heros_archiver import Hdf5Archiver, ParquetArchiver, TiffArchiver, ZarrAppendArchiver, ZarrArchiver
from heros_archiver.archivers.base import HERODataArchiver
from heros_archiver.errors import ItemUnreadableError
from heros_archiver.observe.outcomes import Location
from heros_archiver.observe.readers import ContainerReader, read_item
from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks.base import ContainerSink, Settled
from heros_archiver.state.spool import Spool
from heros_archiver.state.statedir import DEAD_LETTER_SUBDIR, SPOOL_DIR_NAME
from heros_archiver.testing import free_port, make_frame, session_manager, unique_realm, wait_for_subscriber
from heros_archiver.testing.collect import CollectOutcomes
from heros_archiver.testing.contract import wait_until_drained
from heros_archiver.testing.faults import FailingSink, SinkWrapper

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def xxh3(array: np.ndarray) -> str:
    return f"xxh3-128:{xxhash.xxh3_128_hexdigest(np.ascontiguousarray(array).tobytes())}"


@dataclass(frozen=True)
class Kind:
    """One frame container sink: its archiver, the arguments that name its container, and how to read it."""

    name: str
    archiver: type[HERODataArchiver]
    kwargs: Callable[[Path], dict[str, Any]]
    #: the container (file or store) of part ``n`` under the root
    container: Callable[[Path, int], Path]
    member: str
    #: the frames of a container, read with the format's own library
    frames: Callable[[Path], np.ndarray]


def _hdf5_frames(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        return np.asarray(handle["cam/data"][()])


def _part(name: str, suffix: str) -> Callable[[Path, int], Path]:
    return lambda root, n: root / (f"{name}{suffix}" if n == 0 else f"{name}-{n}{suffix}")


KINDS = [
    Kind(
        "hdf5", Hdf5Archiver,
        lambda root: {"file_template": "{{ file_path }}/run.h5", "on_exists": "append"},
        _part("run", ".h5"), "cam/data", _hdf5_frames,
    ),
    Kind(
        "zarr_append", ZarrAppendArchiver,
        lambda root: {"store_template": "{{ file_path }}/run.zarr", "on_exists": "append"},
        _part("run", ".zarr"), "cam/data", lambda path: zarr.open_array(path, path="cam/data", mode="r")[...],
    ),
    Kind(
        "tiff", TiffArchiver,
        lambda root: {"save_template": "{{ file_path }}/run.tif", "stack": True, "on_exists": "append"},
        _part("run", ".tif"), "pages", lambda path: tifffile.imread(path),
    ),
]  # fmt: skip


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., HERODataArchiver]]:
    """Archivers fed directly (``feed``), each with a Zenoh session of its own; all closed at the end."""
    made: list[HERODataArchiver] = []

    def factory(cls: type[HERODataArchiver], **kwargs: Any) -> HERODataArchiver:
        archiver = cls(
            object_selector="sender",
            event_name="acquisition_data",
            default_metadata={"file_path": str(tmp_path)},
            retry_delay=0.01,
            realm=unique_realm("locations"),
            session_manager=session_manager(listen_port=free_port()),
            sequence_key="frame",
            **kwargs,
        )
        made.append(archiver)
        return archiver

    yield factory
    for archiver in made:
        archiver.close()


def feed(archiver: HERODataArchiver, frames: Sequence[Any], first: int = 0) -> None:
    for offset, frame in enumerate(frames):
        archiver.feed("cam", (frame, {"frame": first + offset}))


def frames_of(count: int, dtype: str = ">u2") -> list[np.ndarray]:
    """Frames unlike each other, big-endian by default (the byte order must survive into the checksum)."""
    return [make_frame(n + 1, (6, 8), "uint16").astype(dtype) for n in range(count)]


# ------------------------------------------------------------------------------------------ the sinks
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_every_frame_is_located_in_arrival_order_with_the_checksum_of_what_reads_back(
    kind: Kind, make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    listener = CollectOutcomes()
    archiver = make(kind.archiver, listeners=[listener], max_frames=4, **kind.kwargs(tmp_path))
    sent = frames_of(10)
    feed(archiver, sent)
    archiver.close()

    archived = listener.archived
    assert [o.sequence for o in archived] == list(range(10))
    parts = [kind.frames(kind.container(tmp_path, part)) for part in range(3)]  # 4 + 4 + 2 frames: rolled over
    for number, (outcome, frame) in enumerate(zip(archived, sent, strict=True)):
        (location,) = outcome.locations
        part, index = divmod(number, 4)
        assert location.path == str(kind.container(tmp_path, part)) and os.path.isabs(location.path)
        assert (location.member, location.index, location.count) == (kind.member, index, 1)
        assert location.nbytes == frame.nbytes
        back = parts[part][index]
        np.testing.assert_array_equal(back, frame)
        assert location.checksum == xxh3(frame) == xxh3(back.astype(frame.dtype))
    with ContainerReader(tmp_path) as reader:
        for outcome in archived:
            (location,) = outcome.locations
            reading = reader.read(location.path, location.member, location.index)
            assert (reading.checksum, reading.nbytes) == (location.checksum, location.nbytes)
            relative = os.path.relpath(location.path, tmp_path)  # as the catalog keeps it
            assert reader.read(relative, location.member, location.index).checksum == location.checksum


def _hdf5_frame(path: str, member: str, index: int) -> np.ndarray:
    with h5py.File(path, "r", locking=False) as handle:  # the reader has it open too: HDF5 wants the same locking
        return np.asarray(handle[member][index])


#: Frame dtypes as they arrive from the network: byte orders, widths, kinds.
DTYPES = ("<u2", ">u2", ">i4", "<f8", ">f4", "int8", "uint64", "complex64", ">c16", "bool")
#: Per kind, the template arguments of one container per source (``{{ source_name }}``).
PER_SOURCE: dict[str, dict[str, Any]] = {
    "hdf5": {"file_template": "{{ file_path }}/{{ source_name }}.h5"},
    "zarr_append": {"store_template": "{{ file_path }}/{{ source_name }}.zarr"},
    "tiff": {"save_template": "{{ file_path }}/{{ source_name }}.tif", "stack": True},
}
READ_BACK: dict[str, Callable[[str, str, int], np.ndarray]] = {
    "hdf5": lambda path, member, index: _hdf5_frame(path, member, index),
    "zarr_append": lambda path, member, index: zarr.open_array(path, path=member, mode="r")[index],
    "tiff": lambda path, member, index: tifffile.imread(path)[index],
}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_every_dtype_and_byte_order_is_checksummed_as_stored_and_reads_back_the_same(
    kind: Kind, make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    """The checksum is of the raw bytes in the order stored, which these containers keep as it arrived; the
    reader gives the same for every dtype (zarr reads in the machine's order: the reader turns it back)."""
    dtypes = [d for d in DTYPES if kind.name != "tiff" or d != "bool"]  # a TIFF page has no boolean samples
    listener = CollectOutcomes()
    archiver = make(kind.archiver, listeners=[listener], **PER_SOURCE[kind.name])
    sent: dict[str, list[np.ndarray]] = {}
    for number, dtype in enumerate(dtypes):
        source = f"cam{number}"
        sent[source] = [(make_frame(number * 2 + n, (3, 4), "uint16") % 2).astype(dtype) + n for n in range(2)]
        for n, frame in enumerate(sent[source]):
            archiver.feed(source, (frame, {"frame": n}))
    archiver.close()

    assert len(listener.archived) == 2 * len(dtypes), archiver.stats()["total"]
    with ContainerReader(tmp_path) as reader:
        for outcome in listener.archived:
            (location,) = outcome.locations
            assert location.index is not None and location.member is not None
            frame = sent[outcome.source][location.index]
            back = np.asarray(READ_BACK[kind.name](location.path, location.member, location.index))
            np.testing.assert_array_equal(back, frame)
            assert location.checksum == xxh3(frame) == xxh3(back.astype(frame.dtype)), frame.dtype
            assert reader.read(location.path, location.member, location.index).checksum == location.checksum


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_frames_found_again_after_a_resume_keep_their_index(
    kind: Kind, make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    """A crash after the commit, before the spool entries went: the restart finds the frames by their key and
    locates them where they are; the one frame that was not written goes after them."""
    sent = frames_of(6, "uint16")
    first = make(kind.archiver, **kind.kwargs(tmp_path))
    feed(first, sent[:5])
    first.close()
    spool = Spool(tmp_path / DEAD_LETTER_SUBDIR.parent / SPOOL_DIR_NAME, "acquisition_data")
    for number, frame in enumerate(sent):
        spool.put(Item("cam", frame, {"file_path": str(tmp_path), "frame": number}, frame.nbytes))

    listener = CollectOutcomes()
    resumed = make(kind.archiver, listeners=[listener], **kind.kwargs(tmp_path))
    wait_until_drained(resumed)
    resumed.close()

    located = {o.sequence: o.locations for o in listener.archived}
    assert sorted(located) == list(range(6))
    for number, frame in enumerate(sent):
        (location,) = located[number]
        assert (location.path, location.member, location.index) == (
            str(kind.container(tmp_path, 0)),
            kind.member,
            number,
        )
        assert location.checksum == xxh3(frame)
    assert len(kind.frames(kind.container(tmp_path, 0))) == 6, "a frame was written twice"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_frames_appended_again_after_a_commit_reported_failed_are_located_through_the_fault_wrapper(
    kind: Kind, make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    """``FailingSink`` wraps the sink the pipeline sets ``locate`` on: the inner sink locates, and the frames the
    failed commit had written are found by their key at their first index."""
    listener, failing = CollectOutcomes(), FailingSink(1, calls=("commit",))
    archiver = make(
        kind.archiver, listeners=[listener], sink_wrapper=failing, max_retries=10, retry_max_delay=0.05,
        **kind.kwargs(tmp_path),
    )  # fmt: skip
    sent = frames_of(8)
    feed(archiver, sent)
    archiver.close()

    assert failing.failures == 1
    containers = [sink for sink in failing.wrapped if isinstance(sink, ContainerSink)]
    assert containers and all(sink.locate for sink in containers), "the wrapped (inner) sinks do not locate"
    archived = sorted(listener.archived, key=lambda o: o.sequence or 0)
    assert [o.sequence for o in archived] == list(range(8))
    for number, outcome in enumerate(archived):
        (location,) = outcome.locations
        assert (location.index, location.checksum) == (number, xxh3(sent[number]))
        assert read_item(tmp_path, location.path, location.member, location.index).checksum == location.checksum


class Settlements(SinkWrapper):
    """Keeps every item the sink reported archived."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Item] = []

    def commit(self, inner: ContainerSink, call: Callable[[], Settled]) -> Settled:
        settled = call()
        self.items.extend(settled.archived)
        return settled


def test_without_a_listener_nothing_is_located(make: Callable[..., HERODataArchiver], tmp_path: Path) -> None:
    """No listener that reads locations (the catalog off), no location: the sinks do no work for an outcome
    nobody hears."""
    kept = Settlements()
    archiver = make(Hdf5Archiver, sink_wrapper=kept, file_template="{{ file_path }}/run.h5", catalog=False)
    feed(archiver, frames_of(5))
    archiver.close()
    assert len(kept.items) == 5 and all(item.locations == () for item in kept.items)
    assert not any(isinstance(sink, ContainerSink) and sink.locate for sink in kept.wrapped)


def test_parquet_rows_are_located_in_the_published_file_also_when_found_again_after_a_resume(
    make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    kwargs = {"file_template": "{{ file_path }}/readings.parquet", "max_rows": 4}
    readings = [{"t": 20.0 + n, "ok": n % 2 == 0} for n in range(6)]
    listener = CollectOutcomes()
    first = make(ParquetArchiver, listeners=[listener], **kwargs)
    feed(first, readings[:5])
    first.close()
    before = {o.sequence: o.locations for o in listener.archived}
    parts = [tmp_path / "readings.parquet", tmp_path / "readings-1.parquet"]
    for number in range(5):
        (location,) = before[number]
        part, row = divmod(number, 4)
        assert (location.path, location.member, location.index, location.count) == (str(parts[part]), "rows", row, 1)
        assert location.checksum is None
        table = pq.read_table(location.path).to_pylist()
        assert table[row]["t"] == readings[number]["t"] and table[row]["sequence"] == number

    spool = Spool(tmp_path / DEAD_LETTER_SUBDIR.parent / SPOOL_DIR_NAME, "acquisition_data")
    for number, reading in enumerate(readings):
        spool.put(Item("cam", reading, {"file_path": str(tmp_path), "frame": number}, 64))
    listener = CollectOutcomes()
    resumed = make(ParquetArchiver, listeners=[listener], **kwargs)
    wait_until_drained(resumed)
    resumed.close()

    after = {o.sequence: o.locations for o in listener.archived}
    assert sorted(after) == list(range(6))
    for number in range(5):
        assert after[number][0].as_dict() | {"nbytes": 0} == before[number][0].as_dict() | {"nbytes": 0}
    (sixth,) = after[5]
    assert (sixth.path, sixth.index) == (str(tmp_path / "readings-2.parquet"), 0)
    with ContainerReader(tmp_path) as reader:
        for number, (location,) in sorted(after.items()):
            reading = reader.read(location.path, location.member, location.index, location.count)
            assert reading.checksum is None and reading.row is not None
            assert (reading.row["source_name"], reading.row["sequence"]) == ("cam", number)


def test_a_zarr_archiver_array_is_located_as_its_key_in_the_group(
    make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    """The drop-in writes one array per item: the location is the group (store) and the array's key in it,
    the checksum that of its bytes as stored (little-endian, whatever order arrived)."""
    listener = CollectOutcomes()
    archiver = make(
        ZarrArchiver, listeners=[listener], store_template="{{ file_path }}/run.zarr",
        array_path_template="{{ source_name }}/{{ '%03d' % frame }}",
    )  # fmt: skip
    sent = frames_of(3)
    feed(archiver, sent)
    archiver.close()

    for outcome, frame in zip(listener.archived, sent, strict=True):
        (location,) = outcome.locations
        key = f"cam/{outcome.sequence:03d}"
        assert (location.path, location.member, location.index) == (str(tmp_path / "run.zarr"), key, None)
        back = zarr.open_array(tmp_path / "run.zarr", path=key, mode="r")[...]
        assert location.checksum == xxh3(frame.astype("<u2")) == xxh3(back.astype("<u2"))
        assert read_item(tmp_path, location.path, location.member, None).checksum == location.checksum


# ------------------------------------------------------------------------------------------ acquisitions
def test_hdf5_acquisition_markers_are_located_at_the_groups_they_became(make_rig: RigFactory, tmp_path: Path) -> None:
    listener = CollectOutcomes()
    made = make_rig(
        None, archiver_cls=Hdf5Archiver, camera_cls=AcquiringCamera,
        file_template="{{ file_path }}/{{ source_name }}-{{ acquisition }}.h5", dataset_template="entry/cam/data",
        acquisitions=True, sequence_key="frame", flush_seconds=0.1, listeners=[listener],
    )  # fmt: skip
    for name in ("acquisition_started", "acquisition_stopped"):
        wait_for_subscriber(made.camera, name)
    sent = made.camera.acquire({"exposure_time": 0.5}, 3)
    wait_until(lambda: len(listener.archived) == 5, 30, "the start, three frames and the stop archived")

    path = str(tmp_path / "cam-1.h5")
    start, *frames, stop = listener.archived
    assert [o.event for o in (start, stop)] == ["acquisition_started", "acquisition_stopped"]
    assert start.locations == (Location(path, start.nbytes, None, "entry/cam/configuration"),)
    assert stop.locations == (Location(path, stop.nbytes, None, "entry/cam/acquisition"),)
    for index, (outcome, frame) in enumerate(zip(frames, sent, strict=True)):
        assert outcome.locations == (Location(path, frame.nbytes, xxh3(frame), "entry/cam/data", index),)
    with ContainerReader(tmp_path) as reader:
        for outcome in listener.archived:
            (location,) = outcome.locations
            assert reader.read(location.path, location.member, location.index).checksum == location.checksum


def test_tiff_acquisition_markers_are_archived_without_a_location(make_rig: RigFactory, tmp_path: Path) -> None:
    """Neither marker is in the stack when it is archived (the configuration waits for the first page's
    record; the stop writes nothing): no location, while the frames have theirs."""
    listener = CollectOutcomes()
    made = make_rig(
        "{{ file_path }}/{{ source_name }}-{{ acquisition }}.tif", archiver_cls=TiffArchiver,
        camera_cls=AcquiringCamera, stack=True, acquisitions=True, sequence_key="frame", flush_seconds=0.1,
        listeners=[listener],
    )  # fmt: skip
    for name in ("acquisition_started", "acquisition_stopped"):
        wait_for_subscriber(made.camera, name)
    sent = made.camera.acquire({"exposure_time": 0.5}, 2)
    wait_until(lambda: len(listener.archived) == 4, 30, "the start, two frames and the stop archived")

    markers = [o for o in listener.archived if o.event != "acquisition_data"]
    frames = [o for o in listener.archived if o.event == "acquisition_data"]
    assert [o.locations for o in markers] == [(), ()]
    path = str(tmp_path / "cam-1.tif")
    assert [o.locations for o in frames] == [
        (Location(path, frame.nbytes, xxh3(frame), "pages", index),) for index, frame in enumerate(sent)
    ]


# ------------------------------------------------------------------------------------------ the readers
def archive(
    make: Callable[..., HERODataArchiver], cls: type[HERODataArchiver], count: int, **kwargs: Any
) -> list[Location]:
    """Archive ``count`` frames; their locations, in order."""
    listener = CollectOutcomes()
    archiver = make(cls, listeners=[listener], **kwargs)
    feed(archiver, frames_of(count))
    archiver.close()
    return [o.locations[0] for o in listener.archived]


def test_the_hdf5_reader_finds_a_modified_frame_a_damaged_chunk_and_an_index_beyond_the_end(
    make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    plain = archive(make, Hdf5Archiver, 3, file_template="{{ file_path }}/plain.h5", frames_per_chunk=1)
    packed = archive(
        make, Hdf5Archiver, 3, file_template="{{ file_path }}/packed.h5", compression="gzip", frames_per_chunk=1
    )
    with h5py.File(plain[1].path, "r+") as handle:
        handle["cam/data"][1, 0, 0] ^= 1  # one bit of frame 1
    with h5py.File(packed[2].path, "r") as handle:
        offset = handle["cam/data"].id.get_chunk_info(2).byte_offset
    with open(packed[2].path, "r+b") as raw:  # the compressed bytes of frame 2, overwritten
        raw.seek(offset)
        raw.write(b"\xff" * 16)

    with ContainerReader(tmp_path) as reader:
        assert reader.read(plain[0].path, "cam/data", 0).checksum == plain[0].checksum
        assert reader.read(plain[1].path, "cam/data", 1).checksum != plain[1].checksum
        assert reader.read(packed[1].path, "cam/data", 1).checksum == packed[1].checksum
        with pytest.raises(ItemUnreadableError, match="does not read back") as damaged:
            reader.read(packed[2].path, "cam/data", 2)
        assert (damaged.value.reason, damaged.value.index) == ("unreadable", 2)
        with pytest.raises(ItemUnreadableError, match="the stack holds 3") as beyond:
            reader.read(plain[0].path, "cam/data", 3)
        assert (beyond.value.reason, beyond.value.path, beyond.value.member) == (
            "beyond_end",
            plain[0].path,
            "cam/data",
        )
        with pytest.raises(ItemUnreadableError, match="no such dataset") as missing:
            reader.read(plain[0].path, "cam/other", 0)
        assert missing.value.reason == "missing"
    with pytest.raises(ItemUnreadableError, match="no such file") as gone:
        read_item(tmp_path, "nothing.h5", "cam/data", 0)
    assert gone.value.reason == "missing"


def test_the_hdf5_reader_reads_a_file_another_process_is_writing(tmp_path: Path) -> None:
    """A SWMR writer in another process (tests/hdf5_child.py writer) appends and commits; the reader, with the
    file open all along, finds each committed frame (reading the committed length again when an index is past
    what it saw), and an index past the last commit is beyond the end."""
    path = tmp_path / "live.h5"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    with procs.child([sys.executable, str(TESTS / "hdf5_child.py"), "writer", str(path), "cam/data", "2"],
                     tmp_path / "writer.log", env) as writer:  # fmt: skip
        procs.wait_until(lambda: committed(writer.output()) >= 4, what="4 frames committed")
        with ContainerReader(tmp_path) as reader:
            for index in range(4):
                assert reader.read(str(path), "cam/data", index).checksum == xxh3(expected_frame(index))
            with pytest.raises(ItemUnreadableError) as beyond:
                reader.read(str(path), "cam/data", 10_000_000)
            assert beyond.value.reason == "beyond_end"
            seen = committed(writer.output())
            procs.wait_until(lambda: committed(writer.output()) >= seen + 4, what="4 more frames committed")
            index = committed(writer.output()) - 1
            assert reader.read(str(path), "cam/data", index).checksum == xxh3(expected_frame(index))


def committed(output: str) -> int:
    """The committed length the writer child printed last."""
    found = re.findall(r"@@ COMMITTED (\d+)", output)
    return int(found[-1]) if found else 0


def test_the_zarr_reader_finds_a_truncated_and_a_deleted_shard_and_an_index_beyond_the_end(
    make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    locations = archive(make, ZarrAppendArchiver, 6, store_template="{{ file_path }}/run.zarr", frames_per_shard=2)
    store = Path(locations[0].path)
    shards = sorted((store / "cam" / "data").glob("c.*"))
    assert [s.name for s in shards] == ["c.0.0.0", "c.1.0.0", "c.2.0.0"]
    with open(shards[1], "r+b") as shard:  # frames 2 and 3
        shard.truncate(os.path.getsize(shards[1]) - 5)
    shards[2].unlink()  # frames 4 and 5

    with ContainerReader(tmp_path) as reader:
        assert reader.read(str(store), "cam/data", 1).checksum == locations[1].checksum
        with pytest.raises(ItemUnreadableError, match="does not decode") as truncated:
            reader.read(str(store), "cam/data", 3)
        assert (truncated.value.reason, truncated.value.index) == ("unreadable", 3)
        with pytest.raises(ItemUnreadableError, match=r"'c\.2\.0\.0' is missing") as deleted:
            reader.read(str(store), "cam/data", 4)
        assert deleted.value.reason == "unreadable"
        with pytest.raises(ItemUnreadableError, match="the array holds 6") as beyond:
            reader.read(str(store), "cam/data", 6)
        assert beyond.value.reason == "beyond_end"
        with pytest.raises(ItemUnreadableError, match="no such array") as missing:
            reader.read(str(store), "cam/nothing", 0)
        assert missing.value.reason == "missing"


def test_the_zarr_reader_finds_a_missing_chunk_of_a_zarr_archiver_array(
    make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    locations = archive(
        make, ZarrArchiver, 2, store_template="{{ file_path }}/run.zarr", array_path_template="cam/{{ frame }}"
    )
    chunks = [p for p in (tmp_path / "run.zarr" / "cam" / "1").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    chunks[0].unlink()
    assert read_item(tmp_path, locations[0].path, "cam/0").checksum == locations[0].checksum
    with pytest.raises(ItemUnreadableError, match="is missing") as missing:
        read_item(tmp_path, locations[1].path, "cam/1")
    assert (missing.value.reason, missing.value.member, missing.value.index) == ("unreadable", "cam/1", None)


def test_the_tiff_reader_finds_modified_pixels_and_a_cut_off_page(
    make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    locations = archive(make, TiffArchiver, 3, save_template="{{ file_path }}/run.tif", stack=True)
    path = locations[0].path
    with tifffile.TiffFile(path) as handle:
        assert len(handle.pages) == 3
        offset = handle.pages[1].dataoffsets[0]  # type: ignore[union-attr]
    with open(path, "r+b") as raw:
        raw.seek(offset)
        raw.write(b"\x12\x34")
    with ContainerReader(tmp_path) as reader:
        assert reader.read(path, "pages", 0).checksum == locations[0].checksum
        assert reader.read(path, "pages", 1).checksum != locations[1].checksum
    os.truncate(path, os.path.getsize(path) - 10)  # the last page's pixels cut short
    with ContainerReader(tmp_path) as reader:
        assert reader.read(path, "pages", 0).checksum == locations[0].checksum
        with pytest.raises(ItemUnreadableError, match="links 2 complete page") as cut:
            reader.read(path, "pages", 2)
        assert cut.value.reason == "beyond_end"
        with pytest.raises(ItemUnreadableError, match="one member, 'pages'"):
            reader.read(path, "frames", 0)


def test_the_parquet_reader_checks_the_rows_exist_and_hold_the_expected_key(
    make: Callable[..., HERODataArchiver], tmp_path: Path
) -> None:
    listener = CollectOutcomes()
    archiver = make(ParquetArchiver, listeners=[listener], file_template="{{ file_path }}/r.parquet")
    feed(archiver, [{"t": float(n)} for n in range(3)])
    archiver.close()
    path = listener.archived[0].locations[0].path
    keys = pq.read_table(path, columns=["item_key"]).column("item_key").to_pylist()

    with ContainerReader(tmp_path) as reader:
        reading = reader.read(path, "rows", 2, key=keys[2])
        assert reading.row is not None and reading.row["item_key"] == keys[2] and reading.row["sequence"] == 2
        with pytest.raises(ItemUnreadableError, match=f"expected item_key {keys[0].hex()}") as other:
            reader.read(path, "rows", 1, key=keys[0])
        assert other.value.reason == "other_item"
        with pytest.raises(ItemUnreadableError, match="one item") as two:
            reader.read(path, "rows", 0, count=2)
        assert two.value.reason == "other_item"
        with pytest.raises(ItemUnreadableError, match="the file has 3") as beyond:
            reader.read(path, "rows", 3)
        assert beyond.value.reason == "beyond_end"


def test_a_file_of_its_own_is_read_whole(tmp_path: Path) -> None:
    (tmp_path / "a.npy").write_bytes(b"\x93NUMPY" + bytes(range(256)) * 5000)
    reading = read_item(tmp_path, "a.npy")
    data = (tmp_path / "a.npy").read_bytes()
    assert (reading.nbytes, reading.checksum) == (len(data), f"xxh3-128:{xxhash.xxh3_128_hexdigest(data)}")
    shutil.copy(tmp_path / "a.npy", tmp_path / "b.h5")
    with pytest.raises(ItemUnreadableError, match="expected an HDF5, TIFF or Parquet file") as other:
        read_item(tmp_path, "b.h5", "cam/data", 0)
    assert other.value.reason == "unreadable"
