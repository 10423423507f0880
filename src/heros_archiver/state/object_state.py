"""The local state directory of an archiver whose root is an object store (``s3://bucket/prefix``).

Spool, dead letters and catalog stay on local disk, under ``<state_dir>/.heros-archiver/`` as under a local
root: they must work while the store is down, and the dead-letter store is where items go *because* it is.
The state directory also records which object location and store it belongs to
(``.heros-archiver/object-store.json``: the root URL, endpoint, region, profile, whether plain HTTP is
allowed; never a credential), so that ``heros-archiver replay`` of its dead letters writes to that location
only (decided here, not by an entry that anyone may edit) and reaches the same store, with the credentials
of its own environment. One state directory serves one location: an archiver refuses one that records
another.

The default state directory is derived from the location alone, so every archiver of one host that writes
a location shares its catalog, as archivers sharing a local root do:
``$XDG_STATE_HOME/heros-archiver/s3/<bucket>/<prefix>`` (``XDG_STATE_HOME`` defaults to ``~/.local/state``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, ReplayError
from ..storage.objectstore import ObjectLocation, ObjectStore, open_object_store
from .statedir import STATE_DIR_NAME

if TYPE_CHECKING:
    from ..archivers.object_root import ObjectRoot

#: The record of the object location a state directory belongs to, relative to the state directory.
STORE_RECORD = PurePath(STATE_DIR_NAME, "object-store.json")


@dataclass(frozen=True)
class StoreRecord:
    """Where the objects of a state directory go, and how to reach that store (no secrets)."""

    root: str
    endpoint: str | None
    region: str
    profile: str | None
    allow_http: bool


def default_state_dir(location: ObjectLocation) -> Path:
    """``$XDG_STATE_HOME/heros-archiver/s3/<bucket>/<prefix>`` (see the module docstring)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    path = Path(base, "heros-archiver", "s3", location.bucket)
    return path.joinpath(*location.prefix.split("/")) if location.prefix else path


def record_store(state_dir: Path, record: StoreRecord) -> None:
    """Write the record (replacing an older one of the same root); refuse a state directory that records
    another object location, since its dead letters and catalog belong there."""
    existing = read_store(state_dir)
    if existing is not None and existing.root != record.root:
        raise ConfigurationError(
            f"state_dir {state_dir}: expected the state of {record.root!r}, but it holds that of {existing.root!r} "
            f"({state_dir / STORE_RECORD}); pass another state_dir for this root"
        )
    if existing == record:
        return
    (state_dir / STATE_DIR_NAME).mkdir(parents=True, exist_ok=True)
    target = state_dir / STORE_RECORD
    temporary = target.with_name(f"{target.name}.{os.getpid()}.new")
    with open(temporary, "wb") as handle:  # the archiver's own directory: no confinement needed, no record
        handle.write(json.dumps(asdict(record), indent=1).encode())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def read_store(state_dir: Path) -> StoreRecord | None:
    """The record of ``state_dir``, or None when it has none (a local root's own directory)."""
    path = state_dir / STORE_RECORD
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReplayError(f"{path}: expected the JSON record of an object-store root, got {exc}") from exc
    types = {"root": (str,), "endpoint": (str, type(None)), "region": (str,), "profile": (str, type(None))}
    if not isinstance(data, dict) or sorted(data) != sorted([*types, "allow_http"]):
        raise ReplayError(f"{path}: expected the fields {sorted([*types, 'allow_http'])}, got {data!r:.200}")
    if any(not isinstance(data[name], kinds) for name, kinds in types.items()) or type(data["allow_http"]) is not bool:
        raise ReplayError(f"{path}: a field has the wrong type: {data!r:.300}")
    ObjectLocation.parse(data["root"])  # a ConfigurationError names what is wrong with it
    return StoreRecord(**data)


@dataclass
class RecordedStore:
    """The object store a state directory records, opened (for replay and verify)."""

    url: str
    store: ObjectStore

    def root(self, state_dir: Path) -> ObjectRoot:
        """The store as an archiver's opened object-store root (for the container sinks replay rebuilds)."""
        from ..archivers.object_root import ObjectRoot

        return ObjectRoot(ObjectLocation.parse(self.url), self.store, state_dir)


def open_recorded_store(state_dir: Path) -> RecordedStore | None:
    """The ``s3://`` root whose local state ``state_dir`` is, its store opened by the record's endpoint, region
    and profile and this environment's credentials (the AWS conventions); None for a local root."""
    record = read_store(state_dir)
    if record is None:
        return None
    location = ObjectLocation.parse(record.root)
    store = open_object_store(
        location.bucket,
        endpoint=record.endpoint,
        region=record.region,
        profile=record.profile,
        allow_http=record.allow_http,
    )
    return RecordedStore(record.root, store)
