"""Shared fixtures: real heros + real Zenoh on loopback (127.0.0.1 only), one realm and port per rig."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from heros import LocalHERO
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from heros_archiver import ArrayArchiver, HERODataArchiver
from heros_archiver.storage import atomic as storage
from heros_archiver.testing import (
    ReliableSimulatedCamera,
    free_port,
    loopback_config_json,
    session_manager,
    unique_realm,
    wait_for_subscriber,
)
from heros_archiver.testing.servers import S3Server
from heros_archiver.testing.zenoh_segments import remove_stale_segments, zenoh_segments

DEFAULT_TEMPLATE = "{{ file_path }}/{{ '%03d' % frame }}.npy"

# CI draws the property tests' examples from a fixed seed: a change lands or fails for what it changed, not for
# what one day's random draw found (a tifffile bug on 0-d bool arrays once failed an unrelated merge); local runs
# keep drawing new examples, which is how such bugs are found.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture(params=["anonymous", "named"])
def publishing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each way of publishing: unnamed file + link, and named temporary + rename."""
    if request.param == "anonymous" and storage._LINK_ANONYMOUS is None:
        pytest.skip("no O_TMPFILE + /proc here")
    if request.param == "named":
        monkeypatch.setattr(storage, "_LINK_ANONYMOUS", None)
    return str(request.param)


_HYPOTHESIS_HOME: list[str] = []
#: Zenoh's shared-memory files in /dev/shm before the run (someone else's: never removed)
_SEGMENTS_BEFORE: set[str] = set()


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis keeps its caches (.hypothesis) in a temporary directory, not in the project."""
    _HYPOTHESIS_HOME.append(tempfile.mkdtemp(prefix="heros-archiver-hypothesis-"))
    set_hypothesis_home_dir(_HYPOTHESIS_HOME[-1])
    _SEGMENTS_BEFORE.update(zenoh_segments())


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary Hypothesis directory, and the Zenoh files the run made that a test's own sweep
    (``no_stale_zenoh_segments``) found still held or too young: by now only this process may hold them, as a
    receiver of their senders' frames (``testing.zenoh_segments``)."""
    while _HYPOTHESIS_HOME:
        shutil.rmtree(_HYPOTHESIS_HOME.pop(), ignore_errors=True)
    remove_stale_segments(_SEGMENTS_BEFORE, min_age=0.0, own_locks_are_stale=True)


@pytest.fixture(autouse=True)
def no_stale_zenoh_segments() -> Iterator[None]:
    """A process a test killed leaves its Zenoh shared-memory file in /dev/shm (``testing.zenoh_segments``):
    removed after the test (after its other fixtures stopped their processes), so none is left outside tmp."""
    before = zenoh_segments()
    yield
    remove_stale_segments(before)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test uses Zenoh's default configuration (multicast scouting, all interfaces), and none writes to the
    project directory: the working directory is the test's own tmp_path."""
    monkeypatch.setenv("HEROS_ZENOH_CONFIG", loopback_config_json())
    monkeypatch.chdir(tmp_path)


@dataclass
class Rig:
    """Cameras publishing over Zenoh on one loopback port and an archiver connected to it."""

    archiver: HERODataArchiver
    cameras: dict[str, LocalHERO]
    root: Path
    realm: str
    port: int

    @property
    def camera(self) -> Any:
        """The only (or first) camera."""
        return next(iter(self.cameras.values()))


RigFactory = Callable[..., Rig]


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[RigFactory]:
    """A factory of camera(s) + archiver pairs; every HERO it made is destroyed at the end, also on failure.

    ``make_rig(template, archiver_cls=..., camera_cls=..., cameras=("cam",), object_selector="cam", **kwargs)``:
    the cameras share one listening session manager; the archiver connects to it and gets
    ``default_metadata={"file_path": str(tmp_path)}`` (unless given) plus ``kwargs``. Returns once every camera
    (or those named in ``matched``) has a matching subscriber. ``shared_memory``: both sessions configured with
    Zenoh's shared-memory transport on (Zenoh's default; off in tests, ``testing.loopback_settings``).
    """
    made: list[Rig] = []

    def factory(
        template: str | None = DEFAULT_TEMPLATE,
        *,
        archiver_cls: type[HERODataArchiver] = ArrayArchiver,
        camera_cls: type[LocalHERO] = ReliableSimulatedCamera,
        cameras: tuple[str, ...] = ("cam",),
        object_selector: str | None = None,
        event_name: str = "acquisition_data",
        matched: tuple[str, ...] | None = None,
        shared_memory: bool = False,
        **archiver_kwargs: Any,
    ) -> Rig:
        port = free_port()
        realm = unique_realm()
        listening = session_manager(listen_port=port, shared_memory=shared_memory)
        rig = Rig(archiver=None, cameras={}, root=tmp_path, realm=realm, port=port)  # type: ignore[arg-type]
        made.append(rig)
        for name in cameras:
            rig.cameras[name] = camera_cls(name, realm=realm, session_manager=listening)
        if template is not None:
            archiver_kwargs["save_template"] = template
        archiver_kwargs.setdefault("default_metadata", {"file_path": str(tmp_path)})
        rig.archiver = archiver_cls(
            object_selector=object_selector or cameras[0],
            event_name=event_name,
            realm=realm,
            session_manager=session_manager(connect_port=port, shared_memory=shared_memory),
            **archiver_kwargs,
        )
        for name in cameras if matched is None else matched:
            wait_for_subscriber(rig.cameras[name], event_name)
        return rig

    yield factory

    errors: list[BaseException] = []
    for rig in reversed(made):
        steps: list[Callable[[], None]] = []
        if rig.archiver is not None:
            steps += [rig.archiver._teardown, rig.archiver._destroy_hero]
        steps += [camera._destroy_hero for camera in rig.cameras.values()]
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - finish the cleanup, report afterwards
                errors.append(exc)
    if errors:
        raise errors[0]


# ------------------------------------------------------------------------------------------ object storage
@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """One S3 server (SeaweedFS, ``testing.servers``) for a module's tests that do not stop it, with the
    module's ``BUCKET`` made; started in a temporary directory and stopped by PID at the module's end."""
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        server.create_bucket(request.module.BUCKET)
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The server's credentials and endpoint in the environment (the AWS conventions the archiver reads),
    and the default state directory (``XDG_STATE_HOME``) under the test's tmp_path."""
    for name, value in s3.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    return s3
