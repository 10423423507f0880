"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from heros import LocalHERO, event
from heros.event import reliable

from heros_archiver import ArrayArchiver, ConfigurationError, HERODataArchiver
from heros_archiver.testing import free_port, session_manager, unique_realm
from heros_archiver.testing.contract import refusing_new_entries
from heros_archiver.transport.heros_compat import open_sessions

#: A directory that refuses new entries for a while: the contract suite's passing storage fault.
immutable = refusing_new_entries
DEAD_LETTER_DIR = Path(".heros-archiver") / "dead-letter"
#: How long a test waits for items to arrive; generous, the normal case takes milliseconds.
DEADLINE = 30.0


class RawCamera(LocalHERO):
    """A HERO whose reliable one-argument event publishes its argument as the whole payload."""

    @reliable
    @event
    def acquisition_data(self, payload: Any) -> Any:
        """Publish ``payload`` unchanged (a tuple, a dict, an int, anything CBOR can carry)."""
        return payload


def assert_refused_before_zenoh(
    tmp_path: Path, match: str, template: str = "{{ file_path }}/{{ frame }}.npy", **kwargs: Any
) -> None:
    """Construct an ArrayArchiver that must raise ConfigurationError matching ``match`` before any Zenoh session.

    The session manager points at an unused loopback port, so even a regression that got as far as
    Zenoh could not send traffic anywhere else.
    """
    manager = session_manager(connect_port=free_port())
    try:
        with pytest.raises(ConfigurationError, match=match):
            ArrayArchiver(
                template,
                object_selector="cam",
                event_name="acquisition_data",
                default_metadata={"file_path": str(tmp_path)},
                realm=unique_realm(),
                session_manager=manager,
                **kwargs,
            )
        assert open_sessions(manager) == {}, "a bad setting must fail before Zenoh is touched"
    finally:
        manager.force_close()


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def wait_for_items(archiver: HERODataArchiver, count: int, timeout: float = DEADLINE) -> dict[str, Any]:
    """Wait until ``count`` items are settled (archived, dead-lettered or dropped); return the totals."""

    def settled() -> int:
        total = archiver.stats()["total"]
        return int(total["archived"] + total["dead_lettered"] + total["dropped"])

    try:
        wait_until(lambda: settled() >= count, timeout, f"{count} settled items")
    except AssertionError as exc:  # the totals when it gave up, not those before it waited
        raise AssertionError(f"{exc} (stats: {archiver.stats()['total']})") from None
    return archiver.stats()["total"]


def dead_letter_entries(root: Path) -> list[Path]:
    """The entry directories of the dead-letter store under archive root ``root``, oldest first."""
    directory = root / DEAD_LETTER_DIR
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".tmp-"))


def read_entry(entry: Path) -> dict[str, Any]:
    """The parsed ``entry.json`` of a dead-letter entry."""
    return json.loads((entry / "entry.json").read_text())


def archived_files(root: Path) -> list[str]:
    """Files under ``root`` as sorted relative paths, leaving out the archiver's own ``.heros-archiver`` folder."""
    relative = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return sorted(p.as_posix() for p in relative if ".heros-archiver" not in p.parts)


def assert_npy_equal(path: Path, expected: np.ndarray) -> None:
    """``path`` holds exactly ``expected``: same dtype, shape and content."""
    loaded = np.load(path, allow_pickle=False)
    assert loaded.dtype == expected.dtype, f"{path}: dtype {loaded.dtype} != {expected.dtype}"
    assert loaded.shape == expected.shape, f"{path}: shape {loaded.shape} != {expected.shape}"
    np.testing.assert_array_equal(loaded, expected)


@contextlib.contextmanager
def tiny_file_system(directory: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted at ``directory`` (needs root; skips otherwise); unmounted when the block ends."""
    directory.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def remote_hero(name: str, realm: str, manager: Any, timeout: float = 60.0) -> Any:
    """A ``heros.RemoteHERO`` for ``name``, asked for again until ``timeout`` while it is not usable yet.

    heros' discovery answers at once, empty, while this session has not yet heard of the HERO's queryable
    (seen in 2 of 10 runs under 3 CPU hogs, although the HERO had archived the frames already); and a
    RemoteHERO whose capabilities query went unanswered has none (seen in the full suite under load): such
    a one is let go and asked for again.
    """
    from heros import RemoteHERO

    found: list[Any] = []

    def usable() -> bool:
        with contextlib.suppress(NameError):
            remote = RemoteHERO(name, realm=realm, session_manager=manager)
            if remote._remote_capabilities:
                found.append(remote)
            else:
                remote._destroy_hero()
        return bool(found)

    wait_until(usable, timeout, f"heros to discover {name!r} in realm {realm!r} with its capabilities")
    return found[0]
