"""What the archiver's control methods and events need of it: its configuration as plain data, and the events
listener wired to its ``@event`` methods (decision 0032).

The public methods themselves (``config``, ``pause``, ``resume``, ``flush``, ``rollover``, the events) are on
``HERODataArchiver``, so that BOSS and ``heros-archiver run`` offer them as capabilities; what they do is here
and in ``pipeline.control`` and ``observe.events``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..observe.catalog_backend import redact_url
from ..observe.diskspace import DiskSpaceWatch
from ..observe.events import EventsListener
from ..observe.listeners import Listener
from ..saferepr import safe_repr
from ..transport import heros_compat
from ..transport.hero_builder import configured_class, is_hero

if TYPE_CHECKING:
    from .base import HERODataArchiver

__all__ = ["ArchiverEmitter", "config_of", "event_listeners", "plain"]


def plain(value: Any) -> Any:
    """``value`` as JSON and CBOR carry it: dataclasses and mappings as dicts (text keys), sequences as lists,
    paths as text; anything else that is not a number, text, bool or None (a callable, a listener) as its name."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"<{name}>" if isinstance(name, str) else safe_repr(value)


def config_of(archiver: HERODataArchiver) -> dict[str, Any]:
    """The archiver's class, name, root, and its options (``ArchiverOptions`` and ``sink_options``) as plain data."""
    cls = configured_class(type(archiver))
    root = getattr(archiver, "root", None)
    options = plain(archiver.options)
    if options.get("catalog_url"):  # remote callers see where the catalog is, not its password
        options["catalog_url"] = redact_url(options["catalog_url"])
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "name": heros_compat.hero_name(archiver) if is_hero(archiver) else None,
        "root": None if root is None else str(root),
        "options": options,
        "sink_options": plain(getattr(archiver, "sink_options", None)),
    }


class ArchiverEmitter:
    """Sends events through the archiver's ``@event`` methods once its HERO is made (``observe.events.Emitter``)."""

    def __init__(self, archiver: HERODataArchiver) -> None:
        self._archiver = archiver

    def ready(self) -> bool:
        return heros_compat.hero_ready(self._archiver)

    def name(self) -> str:
        return heros_compat.hero_name(self._archiver)

    def listened(self, event: str) -> bool:
        return heros_compat.event_listened(self._archiver, event)

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        getattr(self._archiver, event)(payload)


def event_listeners(archiver: HERODataArchiver, dead_letter_dir: Path) -> list[Listener]:
    """The events listener of ``archiver``, if it sends events: only a HERO does (an ``@event`` method needs the
    HERO's session and name; a plain ``EventObserver`` has neither), and only with ``events=True``."""
    options = archiver.options
    if not options.events or not is_hero(archiver):
        return []
    root = getattr(archiver, "root", None)
    root = None if root is None else Path(root)
    disk = None
    if options.low_disk_space is not None:
        disk = DiskSpaceWatch(root if root is not None else dead_letter_dir, options.low_disk_space)
    return [EventsListener(ArchiverEmitter(archiver), options.event_name, root, disk)]
