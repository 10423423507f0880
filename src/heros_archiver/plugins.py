"""File formats and sinks found by entry point, so that another installed package adds one without touching ours.

Two entry-point groups (decision 0025):

* ``heros_archiver.formats``: a file format of the file-per-item archivers, by the name
  ``FileArchiver(save_template, file_format)`` takes. The object is a ``FileFormat`` factory (a class whose
  instances have ``prepare(payload) -> Content``, ``formats/base.py``), called without arguments once per
  writer. Naming, splitting, atomic writing, the helper process, dead letters and replay are the writer's
  and work for every format: the helper is handed encoded bytes, and a dead letter records the name.
* ``heros_archiver.sinks``: an archiver class (a ``HERODataArchiver`` subclass, e.g. one with a container
  sink), by a short name that ``heros-archiver run`` accepts as ``classname``. BOSS imports dotted class
  paths itself and needs no registry.

Our own formats and sinks are registered the same way, in our ``pyproject.toml``. Nothing is imported to
list what is registered; an entry point is loaded when its name is first asked for, checked (a wrong type
is a ConfigurationError naming what was expected, what was found and which distribution registered it) and
kept. A name registered twice is refused when asked for, never resolved by the order of ``sys.path``.

Run from a source checkout (``PYTHONPATH=src``, an editable install), the installed metadata of this package
is what ``pip`` wrote at install time, stale as soon as ``pyproject.toml`` changes; there our registrations
are read from the checkout's ``pyproject.toml``, which belongs to the code that is imported.
"""

from __future__ import annotations

import re
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .saferepr import safe_repr

if TYPE_CHECKING:
    from .archivers.base import HERODataArchiver
    from .formats.base import FileFormat

FORMATS_GROUP = "heros_archiver.formats"
SINKS_GROUP = "heros_archiver.sinks"
#: This package's distribution name (normalised as in the packaging specifications).
OWN_DISTRIBUTION = "heros-archiver"


@dataclass(frozen=True)
class Registration:
    """One entry point of one distribution: a name in a group, and the object it points to (not loaded)."""

    group: str
    name: str
    #: ``module:attribute`` as the distribution declared it
    value: str
    #: who registered it, for messages: ``name version`` (and where, for a source checkout)
    distribution: str
    entry_point: metadata.EntryPoint

    def describe(self) -> str:
        """``'pkg.mod:Obj' registered by dist 1.0``, for messages."""
        return f"entry point {self.name} = {self.value!r} registered by {self.distribution}"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _checkout_pyproject() -> Path | None:
    """``pyproject.toml`` of the source checkout this package is imported from, or None when installed."""
    package = Path(__file__).resolve().parent
    candidate = package.parent.parent / "pyproject.toml"
    return candidate if package.parent.name == "src" and candidate.is_file() else None


def _checkout_registrations(pyproject: Path, group: str) -> list[Registration] | None:
    """Our registrations in ``group`` as the checkout's ``pyproject.toml`` declares them (None: not ours)."""
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(
            f"{pyproject}: expected the readable pyproject.toml of the checkout heros_archiver is imported from, "
            f"got {type(exc).__name__}: {exc}"
        ) from exc
    if _normalise(str(project.get("name", ""))) != OWN_DISTRIBUTION:
        return None
    label = f"{OWN_DISTRIBUTION} {project.get('version', '?')} (source checkout, {pyproject})"
    declared = project.get("entry-points", {}).get(group, {})
    return [
        Registration(group, name, value, label, metadata.EntryPoint(name, value, group))
        for name, value in declared.items()
    ]


def discover(group: str) -> dict[str, list[Registration]]:
    """Every registration in ``group``, by name (a list: more than one is a conflict); imports nothing."""
    found: dict[str, list[Registration]] = {}
    pyproject = _checkout_pyproject()
    own = _checkout_registrations(pyproject, group) if pyproject is not None else None
    for registration in own or []:
        found.setdefault(registration.name, []).append(registration)
    for entry_point in metadata.entry_points(group=group):
        dist = entry_point.dist
        dist_name = dist.name if dist is not None else "an unnamed distribution"
        if own is not None and _normalise(dist_name) == OWN_DISTRIBUTION:
            continue  # our installed metadata, superseded by the checkout's pyproject.toml (module docstring)
        label = f"{dist_name} {dist.version}" if dist is not None else dist_name
        registration = Registration(group, entry_point.name, entry_point.value, label, entry_point)
        found.setdefault(entry_point.name, []).append(registration)
    return found


class PluginGroup:
    """The registrations of one entry-point group, loaded on demand and kept (thread-safe)."""

    def __init__(self, group: str, kind: str, check: Callable[[Registration, Any], None]) -> None:
        self.group = group
        #: what a name stands for, in messages ("format", "sink")
        self.kind = kind
        self._check = check
        self._lock = threading.RLock()  # reentrant: a plugin's import may look up another name
        self._registrations: dict[str, list[Registration]] | None = None
        self._loaded: dict[str, tuple[Registration, Any]] = {}

    def registrations(self) -> dict[str, list[Registration]]:
        """Every registration by name (found once per process, or again after ``refresh``)."""
        with self._lock:
            if self._registrations is None:
                self._registrations = discover(self.group)
            return self._registrations

    def load(self, name: str) -> Any:
        """The object registered as ``name``, imported and checked the first time it is asked for."""
        return self.entry(name)[1]

    def entry(self, name: str) -> tuple[Registration, Any]:
        """``name``'s registration and object (``load``)."""
        known = self.registrations()
        registered = known.get(name)
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            if not registered:
                raise ConfigurationError(
                    f"{self.kind} {name!r}: expected one of {', '.join(sorted(known)) or '(none)'} "
                    f"(entry-point group {self.group}), got {name!r}; a plugin's {self.kind}s are found once its "
                    "package is installed in this Python environment"
                )
            if len(registered) > 1:
                raise ConfigurationError(
                    f"{self.kind} {name!r}: expected one registration in the entry-point group {self.group}, got "
                    f"{len(registered)}: {'; '.join(r.describe() for r in registered)}; uninstall one of them"
                )
            registration = registered[0]
            try:
                value = registration.entry_point.load()
            except ConfigurationError as exc:  # e.g. a missing extra, worded already: say whose
                raise ConfigurationError(f"{self.kind} {name!r} ({registration.describe()}): {exc}") from exc
            except Exception as exc:  # whatever the plugin's import raises, worded alike
                raise ConfigurationError(
                    f"{self.kind} {name!r} ({registration.describe()}): expected an importable object, got "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._check(registration, value)
            self._loaded[name] = (registration, value)
            return registration, value

    def refresh(self) -> None:
        """Forget what was found and loaded: packages installed since are seen, removed ones forgotten."""
        with self._lock:
            self._registrations = None
            self._loaded.clear()


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {safe_repr(value, 120)}"


def _check_format_factory(registration: Registration, value: Any) -> None:
    if not callable(value):
        raise ConfigurationError(
            f"format {registration.name!r} ({registration.describe()}): expected a FileFormat class (called "
            f"without arguments; its instances have prepare(payload)), got {_describe(value)}"
        )


def _check_sink_class(registration: Registration, value: Any) -> None:
    from .archivers.base import HERODataArchiver  # heros and Zenoh: only once a sink is asked for

    if not (isinstance(value, type) and issubclass(value, HERODataArchiver)):
        raise ConfigurationError(
            f"sink {registration.name!r} ({registration.describe()}): expected a subclass of "
            f"heros_archiver.HERODataArchiver, got {_describe(value)}"
        )


formats = PluginGroup(FORMATS_GROUP, "format", _check_format_factory)
sinks = PluginGroup(SINKS_GROUP, "sink", _check_sink_class)


def make_format(name: str) -> FileFormat:
    """A new instance of the file format registered as ``name`` (one per writer).

    Raises ConfigurationError for a name not registered or registered twice, a plugin that cannot be
    imported or is not a FileFormat, and a format whose extra is missing (its constructor raises that).
    """
    registration, factory = formats.entry(name)
    try:
        instance = factory()
    except ConfigurationError as exc:  # e.g. a missing extra, worded already: say whose
        raise ConfigurationError(f"format {name!r} ({registration.describe()}): {exc}") from exc
    except Exception as exc:  # a plugin's constructor may raise anything
        raise ConfigurationError(
            f"format {name!r} ({registration.describe()}): expected a FileFormat made without arguments, "
            f"got {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(instance, "prepare", None)):
        raise ConfigurationError(
            f"format {name!r} ({registration.describe()}): expected a FileFormat (a method prepare(payload) "
            f"returning the file's content), got {_describe(instance)}"
        )
    result: FileFormat = instance
    return result


def sink_class(name: str) -> type[HERODataArchiver]:
    """The archiver class registered as sink ``name`` (ConfigurationError as for ``make_format``)."""
    cls: type[HERODataArchiver] = sinks.load(name)
    return cls


def available() -> list[Registration]:
    """Every registered format and sink, sorted by group and name, conflicts included; imports nothing."""
    return [
        registration
        for group in (formats, sinks)
        for _, registered in sorted(group.registrations().items())
        for registration in registered
    ]


def refresh() -> None:
    """Find the registrations again (after installing or removing a plugin in a running process, and in tests)."""
    formats.refresh()
    sinks.refresh()
