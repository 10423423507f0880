"""Build archivers from BOSS-style JSON configurations, without BOSS.

A configuration is one object ``{"_id": ..., "classname": ..., "arguments": {...}}`` or a list of them.
The reference's class names (``herostools.actor.ArrayArchiver`` and friends) are accepted and mapped
to ours, so a config written for the reference runs unchanged under ``heros-archiver run``. A classname
without a dot is the name of a sink registered by entry point (``hdf5``, or a plugin's; ``plugins.py``).

An entry with an ``_id`` is built as BOSS builds it: a HERO of that name (``transport.hero_builder``), whose
public methods (``stats``, ``pause``, ...) other processes call and whose events (``archived``, ...) they
subscribe to. An entry without one is a plain observer: it archives, but nobody can reach it (decision 0032).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from ..archivers.base import HERODataArchiver
from ..errors import ConfigurationError
from ..plugins import sink_class
from ..transport.hero_builder import hero_class

_REFERENCE_NAMES = {
    f"{prefix}.{name}": f"heros_archiver.{name}"
    for prefix in ("herostools.actor", "herostools.actor.archiver", "herostools.actor.data_archiver")
    for name in ("ArrayArchiver", "JsonArchiver", "ZarrArchiver", "PostgresArchiver")
}


def load_config(path: str | Path) -> list[dict[str, Any]]:
    """The archiver entries of a config file (one object or a list of objects)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: expected a readable JSON file, got: {exc}") from exc
    entries = document if isinstance(document, list) else [document]
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "classname" not in entry:
            raise ConfigurationError(
                f"{path}: entry {number}: expected an object with 'classname' and 'arguments', got {str(entry)[:80]!r}"
            )
        if not isinstance(entry.get("arguments", {}), dict):
            raise ConfigurationError(f"{path}: entry {number}: 'arguments' must be an object")
    return entries


def resolve_class(classname: str) -> type[HERODataArchiver]:
    """Import ``classname`` (a dotted path, or a registered sink's name); reference names map to ours."""
    if "." not in classname:
        return sink_class(classname)
    dotted = _REFERENCE_NAMES.get(classname, classname)
    module_name, _, attribute = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"classname {classname!r}: expected an importable class, got: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, HERODataArchiver)):
        raise ConfigurationError(f"classname {classname!r}: expected a HERODataArchiver subclass, got {cls!r}")
    return cls


def build_archivers(entries: list[dict[str, Any]], realm: str) -> list[HERODataArchiver]:
    """Construct every archiver of ``entries`` in ``realm`` (a HERO named by its ``_id``, if it has one); on a
    failure, stop the ones already built."""
    names = [entry["_id"] for entry in entries if "_id" in entry]
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"_id: expected the archiver's HERO name (a non-empty text), got {name!r:.100}")
        if names.count(name) > 1:
            raise ConfigurationError(f"_id {name!r}: expected one archiver of each name, got {names.count(name)}")
    built: list[HERODataArchiver] = []
    try:
        for entry in entries:
            cls = resolve_class(entry["classname"])
            arguments = {"realm": realm, **entry.get("arguments", {})}
            try:
                if "_id" in entry:
                    built.append(hero_class(cls)(entry["_id"], **arguments))
                else:
                    built.append(cls(**arguments))
            except TypeError as exc:
                raise ConfigurationError(f"{entry.get('_id', entry['classname'])}: bad arguments: {exc}") from exc
    except BaseException:
        for archiver in built:
            archiver._teardown()
            archiver._destroy_hero()
        raise
    return built
