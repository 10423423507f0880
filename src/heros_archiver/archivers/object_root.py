"""What a file archiver does at start when its root is an object store (``root="s3://bucket/prefix"``).

``ObjectRootOptions`` holds the arguments only such a root takes, checked once with the others;
``open_object_root`` connects, checks and cleans up before the first item: it opens the store by the AWS
conventions (``storage.objectstore``), finds out whether the store honours conditional create (a store that
does not is refused unless ``on_exists="overwrite"``, which needs none), aborts the multipart uploads under
the prefix older than ``stale_uploads_after`` (a killed writer's), and records the location in the local
state directory (``state.object_state``) where spool, dead letters and catalog live.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..state.object_state import StoreRecord, default_state_dir, record_store
from ..storage.objectstore import ObjectLocation, ObjectStore, is_object_url, open_object_store

log = logging.getLogger("heros_archiver")

#: What ``storage_options`` may hold (``open_object_store``'s arguments), with the types each takes.
STORAGE_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "endpoint": (str,),
    "region": (str,),
    "access_key": (str,),
    "secret_key": (str,),
    "session_token": (str,),
    "profile": (str,),
    "allow_http": (bool,),
}
#: The options never shown (reprs, ``config()``, messages).
SECRET_OPTIONS = frozenset({"secret_key", "session_token"})
#: Multipart uploads older than this are a killed writer's (one upload of even 5 GiB takes minutes).
DEFAULT_STALE_UPLOADS_AFTER = 3600.0


class Secret:
    """A credential kept out of every repr, of ``config()`` (shown as ``<Secret>``) and of logs."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "'***'"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


@dataclass(frozen=True)
class StorageOptions:
    """``storage_options`` checked: how to reach the store, the secrets wrapped (``Secret``)."""

    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    allow_http: bool | None = None
    access_key: str | None = None
    secret_key: Secret | None = None
    session_token: Secret | None = None

    @classmethod
    def from_mapping(cls, options: object) -> StorageOptions:
        """Check the user's mapping (keys, types) and wrap its secrets; ConfigurationError names what is wrong."""
        if not isinstance(options, Mapping):
            raise ConfigurationError(
                f"storage_options: expected a mapping of {sorted(STORAGE_OPTION_TYPES)}, got {options!r:.200}"
            )
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name not in STORAGE_OPTION_TYPES:
                raise ConfigurationError(
                    f"storage_options: expected keys among {sorted(STORAGE_OPTION_TYPES)}, got {name!r}"
                )
            if type(value) not in STORAGE_OPTION_TYPES[name]:
                shown = "***" if name in SECRET_OPTIONS else repr(value)[:200]
                raise ConfigurationError(
                    f"storage_options[{name!r}]: expected {STORAGE_OPTION_TYPES[name][0].__name__}, "
                    f"got {type(value).__name__} {shown}"
                )
            values[name] = Secret(value) if name in SECRET_OPTIONS else value
        return cls(**values)

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``open_object_store`` (secrets revealed; the ones given only)."""
        given = {name: getattr(self, name) for name in STORAGE_OPTION_TYPES if getattr(self, name) is not None}
        return {name: value.value if isinstance(value, Secret) else value for name, value in given.items()}


@dataclass(frozen=True)
class ObjectRootOptions:
    """The arguments of an ``s3://`` root (see ``FileArchiver``); all None/default for a local root.
    ``storage_options`` becomes a ``StorageOptions`` here (checked, secrets wrapped)."""

    storage_options: Mapping[str, Any] | StorageOptions | None = None
    state_dir: str | os.PathLike[str] | None = None
    stale_uploads_after: float = DEFAULT_STALE_UPLOADS_AFTER

    def __post_init__(self) -> None:
        if self.state_dir is not None and not isinstance(self.state_dir, str | os.PathLike):
            raise ConfigurationError(f"state_dir: expected a local directory path, got {self.state_dir!r:.200}")
        if self.state_dir is not None and is_object_url(os.fspath(self.state_dir)):
            raise ConfigurationError(f"state_dir: expected a local directory, got the URL {self.state_dir!r}")
        stale = self.stale_uploads_after
        if isinstance(stale, bool) or not isinstance(stale, int | float) or not stale >= 0:
            raise ConfigurationError(f"stale_uploads_after: expected seconds >= 0, got {stale!r:.200}")
        if self.storage_options is not None and not isinstance(self.storage_options, StorageOptions):
            object.__setattr__(self, "storage_options", StorageOptions.from_mapping(self.storage_options))

    def check(self, object_root: str | None) -> None:
        """Refuse these arguments for a local root, where they mean nothing."""
        given = [name for name in ("storage_options", "state_dir") if getattr(self, name) is not None]
        if object_root is None and (given or self.stale_uploads_after != DEFAULT_STALE_UPLOADS_AFTER):
            names = given or ["stale_uploads_after"]
            raise ConfigurationError(
                f"{', '.join(names)}: expected only with an object-store root (root='s3://bucket/prefix'); "
                "a local root keeps its state under <root>/.heros-archiver/"
            )

    def store_arguments(self) -> dict[str, Any]:
        """What ``open_object_store`` is given (the rest follows the AWS conventions)."""
        options = self.storage_options
        return options.arguments() if isinstance(options, StorageOptions) else {}


def object_root_of(save_template: str, root: str | os.PathLike[str] | None) -> str | None:
    """The ``s3://`` root of an archiver, or None for a local one: ``root`` when it is a URL; else, for a
    template that is one, its fixed text up to the last ``/`` before the first placeholder. A URL template
    outside a URL root, or a local path under one, is refused here rather than item by item."""
    if root is not None and is_object_url(os.fspath(root)):
        url = ObjectLocation.parse(os.fspath(root)).url()
        if save_template.startswith("/") or (is_object_url(save_template) and not save_template.startswith(url + "/")):
            raise ConfigurationError(
                f"save_template {save_template!r}: expected a key relative to the root {url!r}, or a URL under it"
            )
        return url
    if not is_object_url(save_template):
        return None
    if root is not None:
        raise ConfigurationError(
            f"save_template {save_template!r} is an object-store URL but root {os.fspath(root)!r} is local: "
            "pass root='s3://bucket/prefix' (or no root)"
        )
    fixed = save_template[: min((i for i in map(save_template.find, ("{{", "{%", "{#")) if i >= 0), default=None)]
    if fixed.count("/") < 3:  # s3://bucket/ at least: the bucket is fixed text
        raise ConfigurationError(f"save_template {save_template!r}: expected 's3://bucket/...' with a fixed bucket")
    return ObjectLocation.parse(fixed[: fixed.rfind("/")]).url()


@dataclass
class ObjectRoot:
    """An opened object-store root: where objects go, the store, and the local state directory."""

    location: ObjectLocation
    store: ObjectStore
    state_dir: Path


def open_object_root(url: str, options: ObjectRootOptions, on_exists: str) -> ObjectRoot:
    """Connect to the store of ``url`` and make it ready (see the module docstring); ConfigurationError when
    it cannot be reached, refuses the credentials, or cannot keep ``on_exists``."""
    location = ObjectLocation.parse(url)
    given = options.store_arguments()
    store = open_object_store(location.bucket, **given)
    honoured = store.check_conditional_create(location.state_prefix)
    if not honoured:
        if on_exists != "overwrite":
            raise ConfigurationError(
                f"object store {url} at {store.settings.endpoint or 'AWS'}: expected conditional create "
                f"(If-None-Match: *) to refuse a second create of one key, but the store let it through; "
                f"on_exists={on_exists!r} cannot be kept there (nothing would stop an overwrite): use a store "
                "that honours it, or on_exists='overwrite'"
            )
        log.warning("object store %s does not honour conditional create; on_exists='overwrite' needs none", url)
    aborted = store.abort_stale_uploads(location.key(""), options.stale_uploads_after)
    if aborted:
        log.warning("aborted %d stale multipart upload(s) under %s left by an earlier run", aborted, url)
    state_dir = Path(os.path.abspath(os.path.expanduser(options.state_dir or default_state_dir(location))))
    settings = store.settings
    profile = given.get("profile") or os.environ.get("AWS_PROFILE") or None
    record_store(state_dir, StoreRecord(url, settings.endpoint, settings.region, profile, settings.allow_http))
    return ObjectRoot(location, store, state_dir)
