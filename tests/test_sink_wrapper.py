"""The archiver's ``sink_wrapper`` hook and the fault wrappers' own checks (their faults: the sink contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heros_archiver import ArrayArchiver, Hdf5Archiver, JsonArchiver
from heros_archiver.errors import ConfigurationError
from heros_archiver.sinks.base import FileSink, Sink
from heros_archiver.testing import free_port, session_manager, unique_realm
from heros_archiver.testing.faults import FailingSink, SinkWrapper, SlowSink


def _make(cls: type, tmp_path: Path, **kwargs: Any) -> Any:
    suffix = "json" if cls is JsonArchiver else "npy"
    template = (
        {"file_template": "{{ file_path }}/run.h5"}
        if cls is Hdf5Archiver
        else {"save_template": "{{ file_path }}/{{ '%04d' % frame }}." + suffix}
    )
    return cls(
        object_selector="cam",
        event_name="acquisition_data",
        default_metadata={"file_path": str(tmp_path)},
        realm=unique_realm("wrapper"),
        session_manager=session_manager(listen_port=free_port()),
        **template,
        **kwargs,
    )


@pytest.mark.parametrize("cls", [ArrayArchiver, Hdf5Archiver])
def test_a_wrapper_that_returns_another_kind_of_sink_is_refused_at_construction(cls: type, tmp_path: Path) -> None:
    def wrong(inner: Sink) -> Sink:
        return FileSink(lambda item: None) if not isinstance(inner, FileSink) else object()  # type: ignore[return-value]

    with pytest.raises(ConfigurationError, match="sink_wrapper: expected a"):
        _make(cls, tmp_path, sink_wrapper=wrong)


def test_a_sink_wrapper_that_is_no_callable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="sink_wrapper: expected a callable"):
        _make(ArrayArchiver, tmp_path, sink_wrapper="slow")


def test_a_wrapped_json_archiver_writes_without_helper_processes_so_the_wrapper_sees_every_item(tmp_path: Path) -> None:
    wrapper = SinkWrapper()
    archiver = _make(JsonArchiver, tmp_path, sink_wrapper=wrapper)
    try:
        assert archiver.stats()["helper_processes"] == []
        for index in range(3):
            archiver.feed("cam", ({"value": index}, {"frame": index}))
    finally:
        archiver.close()
    assert archiver.stats()["total"]["archived"] == 3
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["0000.json", "0001.json", "0002.json"]
    assert [type(sink) for sink in wrapper.wrapped] == [FileSink] and not wrapper.containers


def test_the_container_sinks_of_every_lane_are_wrapped(tmp_path: Path) -> None:
    wrapper = SlowSink(0.0)
    archiver = _make(Hdf5Archiver, tmp_path, sink_wrapper=wrapper, writers=2)
    archiver.close()
    assert wrapper.containers and len([s for s in wrapper.wrapped if not isinstance(s, FileSink)]) == 2


@pytest.mark.parametrize("calls", [(), ("flush",), ("store", "write")])
def test_a_fault_names_calls_that_exist(calls: tuple[str, ...]) -> None:
    with pytest.raises(ConfigurationError, match="calls: expected one or more of"):
        FailingSink(1, calls=calls)
