"""ArrayArchiver over Zenoh: every dtype and shape round-trips through .npy; split_data_array."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import RigFactory
from helpers import archived_files, assert_npy_equal, dead_letter_entries, read_entry, wait_for_items

pytestmark = pytest.mark.timeout(60)


def _sample(dtype: str, shape: tuple[int, ...] = (4, 5)) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.startswith("complex"):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    if dtype.startswith("float"):
        return rng.normal(scale=1e3, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


ARRAYS = {
    "uint8": _sample("uint8"),
    "uint16": _sample("uint16"),
    "int32": _sample("int32"),
    "float32": _sample("float32"),
    "float64": _sample("float64"),
    "complex64": _sample("complex64"),
    "bool": _sample("bool"),
    "3-D float32": _sample("float32", (3, 4, 5)),
    "3-D uint16": _sample("uint16", (2, 3, 7)),
    "0-d float64": np.array(-2.5),
    "empty": np.zeros((0, 3), dtype=np.int16),
}


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
def test_round_trip(make_rig: RigFactory, array: np.ndarray) -> None:
    rig = make_rig()
    rig.camera.acquisition_data(array, {"frame": 0})
    rig.camera.acquisition_data(np.flip(array).copy(), {"frame": 1})

    total = wait_for_items(rig.archiver, 2)

    assert total["archived"] == 2 and total["dead_lettered"] == 0, total
    assert archived_files(rig.root) == ["000.npy", "001.npy"]
    assert_npy_equal(rig.root / "000.npy", array)
    assert_npy_equal(rig.root / "001.npy", np.flip(array))


def test_many_frames_in_order_with_content(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/{{ run }}/{{ '%04d' % frame }}.npy")
    sent = rig.camera.acquire(50, shape=(16, 16), dtype="uint16", extra_metadata={"run": "run"})

    total = wait_for_items(rig.archiver, sent)

    assert total["archived"] == sent and total["dead_lettered"] == 0, total
    for index in range(sent):
        frame = np.load(rig.root / "run" / f"{index:04d}.npy")
        assert frame.shape == (16, 16) and frame.dtype == np.uint16
        assert int(frame.flat[0]) == index
    assert total["bytes"] >= sent * 16 * 16 * 2


def test_split_writes_one_file_per_index(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/{{ frame }}/part-{{ _split_index }}.npy", split_data_array=True)
    stack = np.arange(4 * 3 * 2, dtype=np.int32).reshape(4, 3, 2)
    rig.camera.acquisition_data(stack, {"frame": 7})

    total = wait_for_items(rig.archiver, 1)

    assert total["archived"] == 1 and total["dead_lettered"] == 0, total
    assert archived_files(rig.root) == [f"7/part-{i}.npy" for i in range(4)]
    for index in range(4):
        assert_npy_equal(rig.root / "7" / f"part-{index}.npy", stack[index])


def test_split_of_a_1d_array_writes_scalars(make_rig: RigFactory) -> None:
    """Each part of a 1-d array is a 0-d array, as ``np.save(array[i])`` writes it (not shape (1,))."""
    rig = make_rig("{{ file_path }}/{{ frame }}/part-{{ _split_index }}.npy", split_data_array=True)
    line = np.array([1.5, -0.0, np.inf], dtype=np.float32)
    rig.camera.acquisition_data(line, {"frame": 3})

    total = wait_for_items(rig.archiver, 1)

    assert total["archived"] == 1 and total["dead_lettered"] == 0, total
    for index in range(3):
        assert_npy_equal(rig.root / "3" / f"part-{index}.npy", line[index])


def test_split_without_split_index_is_dead_lettered(make_rig: RigFactory) -> None:
    rig = make_rig("{{ file_path }}/{{ frame }}.npy", split_data_array=True)
    stack = np.arange(6, dtype=np.uint8).reshape(3, 2)
    rig.camera.acquisition_data(stack, {"frame": 1})

    total = wait_for_items(rig.archiver, 1)

    assert total["dead_lettered"] == 1 and total["archived"] == 0, total
    assert archived_files(rig.root) == [], "no file may be written for an item that cannot be split"
    [entry] = dead_letter_entries(rig.root)
    info = read_entry(entry)
    assert "_split_index" in info["error"]
    assert info["metadata"]["frame"] == 1
    assert_npy_equal(entry / info["payload_file"], stack)
