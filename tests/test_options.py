"""Every archiver argument is gathered into one frozen options object, checked once, before Zenoh is touched."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heros_archiver import ArrayArchiver, ConfigurationError, Hdf5Archiver, JsonArchiver
from heros_archiver.archivers.options import (
    ArchiverOptions,
    FileOptions,
    Hdf5Options,
    TiffOptions,
    ZarrAppendOptions,
)
from heros_archiver.pipeline.options import PipelineOptions
from heros_archiver.testing import free_port, session_manager, unique_realm
from heros_archiver.transport.heros_compat import open_sessions

BAD_COMMON: list[tuple[str, Any, str]] = [
    ("max_retries", -1, "max_retries: expected a non-negative integer"),
    ("max_queue_items", 0, "max_queue_items: expected a positive integer"),
    ("overflow", "later", "overflow: expected one of block, spill, drop"),
    ("drain_timeout", True, "drain_timeout: expected a non-negative number"),
    ("intake_buffer", -5, "intake_buffer: expected a number of samples"),
    ("sequence_key", 7, "sequence_key: expected a metadata key"),
    ("dead_letter_dir", 3.5, "dead_letter_dir: expected a directory path or None"),
    ("zenoh_shared_memory", "yes", "zenoh_shared_memory: expected true, false or None"),
    ("default_metadata", ["file_path"], "default_metadata: expected a dict"),
]
BAD_HDF5: list[tuple[str, Any, str]] = [
    ("compression", "lzma", "compression: expected one of none"),
    ("flush_frames", 0, "flush_frames: expected a positive integer"),
    ("max_frames", 1.5, "max_frames: expected None or a positive integer"),
    ("idle_timeout", -1, "idle_timeout: expected a non-negative number"),
    ("on_exists", "overwrite", "on_exists: expected one of error, append, unique"),
    ("fsync", "file+directory", "fsync: expected one of none, file"),
    ("dataset_template", 5, "dataset_template: expected a Jinja2 template"),
]
BAD_FILES: list[tuple[str, Any, str]] = [
    ("on_exists", "append", "on_exists: expected one of error, overwrite, unique"),
    ("fsync", "always", "fsync: expected one of none, file, file\\+directory"),
    ("writeback_window", -1, "writeback_window: expected a number of bytes >= 0"),
    ("helper_process", "on", "helper_process: expected true or false"),
    ("root", 12, "root: expected a directory path or None"),
]


def _refused_before_zenoh(make: Any, match: str) -> None:
    manager = session_manager(connect_port=free_port())
    try:
        with pytest.raises(ConfigurationError, match=match):
            make(manager)
        assert open_sessions(manager) == {}, "a bad argument must be refused before a Zenoh session exists"
    finally:
        manager.force_close()


def _common(tmp_path: Path, manager: Any) -> dict[str, Any]:
    return {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(tmp_path)},
        "realm": unique_realm(),
        "session_manager": manager,
    }


@pytest.mark.parametrize(("name", "value", "match"), BAD_COMMON + BAD_HDF5, ids=lambda v: str(v)[:30])
def test_every_hdf5_argument_is_refused_in_the_options_before_zenoh(
    tmp_path: Path, name: str, value: Any, match: str
) -> None:
    def make(manager: Any) -> Any:
        kwargs = {**_common(tmp_path, manager), name: value}
        return Hdf5Archiver("{{ file_path }}/run.h5", **kwargs)

    _refused_before_zenoh(make, match)


@pytest.mark.parametrize(("name", "value", "match"), BAD_COMMON + BAD_FILES, ids=lambda v: str(v)[:30])
@pytest.mark.parametrize("archiver_class", [ArrayArchiver, JsonArchiver])
def test_every_file_archiver_argument_is_refused_in_the_options_before_zenoh(
    tmp_path: Path, archiver_class: type, name: str, value: Any, match: str
) -> None:
    def make(manager: Any) -> Any:
        kwargs = {**_common(tmp_path, manager), name: value}
        return archiver_class("{{ file_path }}/{{ frame }}.x", **kwargs)

    _refused_before_zenoh(make, match)


def test_the_options_are_a_frozen_record_of_the_arguments(tmp_path: Path) -> None:
    manager = session_manager(connect_port=free_port())
    archiver = Hdf5Archiver(
        "{{ file_path }}/run.h5",
        compression="lz4",
        max_frames=10,
        writers=2,
        sequence_key="frame",
        **_common(tmp_path, manager),
    )
    try:
        assert archiver.options.pipeline == PipelineOptions(writers=2)
        assert archiver.options.sequence_key == "frame"
        assert archiver.options.intake_buffer == Hdf5Archiver.DEFAULT_INTAKE_BUFFER
        assert archiver.sink_options == Hdf5Options("{{ file_path }}/run.h5", compression="lz4", max_frames=10)
        with pytest.raises(dataclasses.FrozenInstanceError):
            archiver.sink_options.max_frames = 20  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            archiver.options.max_retries = 0  # type: ignore[misc]
    finally:
        archiver.close()
        manager.force_close()


def test_the_class_default_of_a_file_archiver_is_in_its_options(tmp_path: Path) -> None:
    manager = session_manager(connect_port=free_port())
    archiver = JsonArchiver("{{ file_path }}/{{ i }}.json", **_common(tmp_path, manager))
    try:
        assert archiver.sink_options.helper_process is True
        assert archiver.options.intake_buffer == JsonArchiver.DEFAULT_INTAKE_BUFFER
    finally:
        archiver.close()
        manager.force_close()


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["max_retries", "intake_buffer", "sequence_key", "zenoh_shared_memory", "spool_dir"]),
        st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=5)),
    )
)
def test_options_either_take_a_value_or_refuse_it_with_a_configuration_error(values: dict[str, Any]) -> None:
    """Whatever a JSON config holds, making the options raises nothing but ConfigurationError (a BOSS start
    fails with a message, never a TypeError from deep inside), and what is taken is kept as given."""
    arguments = {"max_retries": 5, "intake_buffer": 0, **values}
    try:
        options = ArchiverOptions("cam", "acquisition_data", **arguments)
    except ConfigurationError as exc:
        assert any(str(exc).startswith(f"{name}: expected") for name in arguments)
        return
    for name, value in arguments.items():
        assert getattr(options, name) == value or value != value  # NaN is never equal to itself


def test_file_and_hdf5_options_check_templates_without_an_archiver() -> None:
    with pytest.raises(ConfigurationError, match="save_template: expected a Jinja2 template"):
        FileOptions(None, "npy")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="file_template: expected a Jinja2 template"):
        Hdf5Options(b"run.h5")  # type: ignore[arg-type]


BAD_ZARR: list[tuple[str, Any, str]] = [
    ("compression", "lz4", "compression: expected one of zstd, none"),
    ("compression_level", 23, "compression_level: expected a zstd level"),
    ("chunks", "frame", "chunks: expected one of auto, array"),
    ("on_exists", "append", "on_exists: expected one of error, overwrite, unique"),
    ("array_path_template", None, "array_path_template: expected a Jinja2 template"),
]


@pytest.mark.parametrize(("name", "value", "match"), BAD_COMMON[:3] + BAD_ZARR, ids=lambda v: str(v)[:30])
def test_every_zarr_argument_is_refused_in_the_options_before_zenoh(
    tmp_path: Path, name: str, value: Any, match: str
) -> None:
    from heros_archiver import ZarrArchiver

    def make(manager: Any) -> Any:
        kwargs = {"array_path_template": "{{ frame }}", **_common(tmp_path, manager), name: value}
        return ZarrArchiver("{{ file_path }}/run.zarr", **kwargs)

    _refused_before_zenoh(make, match)


BAD_ZARR_APPEND: list[tuple[str, Any, str]] = [
    ("array_template", 3, "array_template: expected a Jinja2 template"),
    ("compression", "gzip", "compression: expected one of none, zstd, blosc-lz4"),
    ("frames_per_chunk", 0, "frames_per_chunk: expected a positive integer"),
    ("frames_per_shard", "8", "frames_per_shard: expected None or a positive integer"),
    ("flush_frames", True, "flush_frames: expected a positive integer"),
    ("flush_seconds", -0.5, "flush_seconds: expected a non-negative number"),
    ("flush_idle", -1, "flush_idle: expected None or a non-negative number of seconds"),
    ("max_frames", 0, "max_frames: expected None or a positive integer"),
    ("idle_timeout", "60", "idle_timeout: expected a non-negative number"),
    ("on_exists", "overwrite", "on_exists: expected one of error, append, unique"),
    ("root", 12, "root: expected a directory path, an s3://bucket/prefix URL or None"),
    ("fsync", "file+directory", "fsync: expected one of none, file"),
]


@pytest.mark.parametrize(("name", "value", "match"), BAD_COMMON[:3] + BAD_ZARR_APPEND, ids=lambda v: str(v)[:30])
def test_every_zarr_append_argument_is_refused_in_the_options_before_zenoh(
    tmp_path: Path, name: str, value: Any, match: str
) -> None:
    from heros_archiver import ZarrAppendArchiver

    def make(manager: Any) -> Any:
        kwargs = {**_common(tmp_path, manager), name: value}
        return ZarrAppendArchiver("{{ file_path }}/run.zarr", **kwargs)

    _refused_before_zenoh(make, match)


BAD_TIFF_FILES: list[tuple[str, Any, str]] = [
    ("stack", "yes", "stack: expected true or false"),
    ("flush_frames", 10, "flush_frames: expected only with stack=True"),
    ("on_exists", "append", "on_exists: expected one of error, overwrite, unique"),
    ("fsync", "always", "fsync: expected one of none, file, file\\+directory"),
    ("writeback_window", 0.5, "writeback_window: expected a number of bytes >= 0"),
    ("helper_process", 1, "helper_process: expected true or false"),
    ("root", b"/data", "root: expected a directory path or None"),
]
BAD_TIFF_STACK: list[tuple[str, Any, str]] = [
    ("on_exists", "overwrite", "on_exists: expected one of error, append, unique"),
    ("fsync", "file+directory", "fsync: expected one of none, file"),
    ("split_data_array", True, "split_data_array: expected false with stack=True"),
    ("flush_frames", 0, "flush_frames: expected a positive integer"),
    ("max_open_files", 2.0, "max_open_files: expected a positive integer"),
    ("max_frames", -1, "max_frames: expected None or a positive integer"),
    ("max_bytes", "1G", "max_bytes: expected None or a positive integer"),
    ("flush_seconds", -1, "flush_seconds: expected a non-negative number"),
    ("idle_timeout", False, "idle_timeout: expected a non-negative number"),
    ("writeback_window", -1, "writeback_window: expected a number of bytes >= 0"),
    ("helper_process", "on", "helper_process: expected true or false"),
    ("root", 12, "root: expected a directory path or None"),
]


@pytest.mark.parametrize(
    ("stack", "name", "value", "match"),
    [(False, *bad) for bad in BAD_COMMON[:3] + BAD_TIFF_FILES] + [(True, *bad) for bad in BAD_TIFF_STACK],
    ids=lambda v: str(v)[:30],
)
def test_every_tiff_argument_is_refused_in_the_options_before_zenoh(
    tmp_path: Path, stack: bool, name: str, value: Any, match: str
) -> None:
    from heros_archiver import TiffArchiver

    def make(manager: Any) -> Any:
        kwargs = {**_common(tmp_path, manager), name: value}
        if name != "stack":
            kwargs["stack"] = stack
        return TiffArchiver("{{ file_path }}/{{ source_name }}.tif", **kwargs)

    _refused_before_zenoh(make, match)


def test_zarr_append_and_tiff_options_check_templates_without_an_archiver() -> None:
    with pytest.raises(ConfigurationError, match="store_template: expected a Jinja2 template"):
        ZarrAppendOptions(None)  # type: ignore[arg-type]
    for stack in (False, True):
        with pytest.raises(ConfigurationError, match="save_template: expected a Jinja2 template"):
            TiffOptions(Path("run.tif"), stack=stack)  # type: ignore[arg-type]


def test_the_options_of_zarr_append_and_tiff_archivers_are_frozen_records(tmp_path: Path) -> None:
    """What the archivers are made from is their options (the defaults of a stack filled in), and nothing else:
    no loose copies of the arguments on the archiver."""
    from heros_archiver import TiffArchiver, ZarrAppendArchiver

    manager = session_manager(connect_port=free_port())
    archivers: list[Any] = []
    try:
        archivers.append(ZarrAppendArchiver("{{ file_path }}/run.zarr", max_frames=7, **_common(tmp_path, manager)))
        assert archivers[-1].sink_options == ZarrAppendOptions("{{ file_path }}/run.zarr", max_frames=7)
        archivers.append(TiffArchiver("{{ file_path }}/s.tif", stack=True, max_frames=5, **_common(tmp_path, manager)))
        stack = archivers[-1].sink_options
        assert stack == TiffOptions("{{ file_path }}/s.tif", stack=True, max_frames=5, flush_frames=1000)
        assert (stack.flush_seconds, stack.idle_timeout, stack.max_open_files) == (0.1, 60.0, 16)
        assert stack.files.on_exists == "error" and stack.files.writeback_window == 0
        archivers.append(TiffArchiver("{{ file_path }}/{{ i }}.tif", on_exists="unique", **_common(tmp_path, manager)))
        files = archivers[-1].sink_options
        assert files.flush_frames is None and files.max_open_files is None
        assert files.files == FileOptions("{{ file_path }}/{{ i }}.tif", "tiff", on_exists="unique")
        assert archivers[-1].on_exists == "unique"
        for archiver in archivers:
            with pytest.raises(dataclasses.FrozenInstanceError):
                archiver.sink_options.max_frames = 20
            for loose in ("stack", "flush_frames", "max_frames", "idle_timeout", "store_template", "compression"):
                assert loose not in vars(archiver), f"{type(archiver).__name__}.{loose} is a loose copy of an option"
    finally:
        for archiver in archivers:
            archiver.close()
        manager.force_close()
