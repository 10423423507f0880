"""Turn a Jinja2 path template and an item's metadata into a confined file path.

Templates run in Jinja2's immutable sandbox with ``StrictUndefined``: metadata arrives over the
network, so a template must not reach into Python objects, and a missing key must be an error
instead of an empty path component. Every rendered path is checked to lie under the archive root.

The archive root rule (when no explicit ``root`` is given): the fixed leading part of the template,
with ``{{ name }}`` placeholders filled from the *default* metadata (which comes from the trusted
config, not the network), up to its last ``/``. For the spec's
``{{ file_path }}/testimg-...npy`` with ``file_path="/mnt/images"`` the root is ``/mnt/images``. A
template with no fixed directory prefix is confined to the working directory at construction.
Relative rendered paths are resolved against the root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import SecurityError

from ..errors import ConfigurationError, PathConfinementError, TemplateRenderError
from .sandbox import MAX_RENDERED_CHARS, BoundedSandbox

_ENV = BoundedSandbox()
#: What Linux takes when a file system does not say: a name of 255 bytes, a path of 4096.
_DEFAULT_NAME_MAX, _DEFAULT_PATH_MAX = 255, 4096
_LEADING_PLACEHOLDER = re.compile(r"\{\{-?\s*([A-Za-z_][A-Za-z0-9_]*)\s*-?\}\}")
#: Values a render key may hold: immutable, and rendered the same whenever they compare equal with their type
#: (not float: -0.0 == 0.0 renders differently).
_KEYABLE = frozenset({str, int, bool, type(None)})


def derive_root(template: str, default_metadata: Mapping[str, Any]) -> Path:
    """Archive root implied by ``template`` and the trusted default metadata (see module docstring)."""
    prefix = ""
    rest = template
    while rest:
        cut = min((i for i in (rest.find("{{"), rest.find("{%"), rest.find("{#")) if i >= 0), default=len(rest))
        prefix += rest[:cut]
        rest = rest[cut:]
        match = _LEADING_PLACEHOLDER.match(rest)
        value = default_metadata.get(match.group(1)) if match else None
        if match is None or not isinstance(value, (str, os.PathLike)) or ".." in Path(os.fspath(value)).parts:
            break
        prefix += os.fspath(value)
        rest = rest[match.end() :]
    if rest == "":  # the whole template is fixed text: its directory is the root
        prefix = os.path.dirname(prefix) + "/"
    directory = prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""
    base = Path(directory) if directory else Path.cwd()
    return Path(os.path.abspath(os.path.expanduser(base)))


class PathTemplate:
    """A compiled, syntax-checked path template bound to an archive root.

    Args:
        source: the Jinja2 template text.
        root: directory every rendered path must stay under.
    """

    def __init__(self, source: str, root: str | os.PathLike[str]) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ConfigurationError(f"save_template: expected a non-empty Jinja2 template string, got {source!r}")
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigurationError(
                f"save_template {source!r}: Jinja2 syntax error at line {exc.lineno}: {exc.message}"
            ) from exc
        self.source = source
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        self._root_text = str(self.root)
        self._globals = dict(self._template.globals)
        self._name_max, self._path_max = _file_system_limits(self.root)
        tree = _ENV.parse(source)
        loaded = {node.name for node in tree.find_all(jinja2.nodes.Name) if node.ctx == "load"}
        #: the context keys the render depends on, sorted; None when it also names a global (``lipsum``...)
        self.variables: tuple[str, ...] | None = (
            None if loaded & self._globals.keys() else tuple(sorted(jinja2.meta.find_undeclared_variables(tree)))
        )

    def render_key(self, context: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """What the render of ``context`` depends on, as a hashable key (equal keys: equal renders), or None
        when that cannot be told cheaply (a global, a missing key, a value other than str, int, bool, None).

        For caching renders: a file template like ``{{ file_path }}/run-{{ run }}.h5`` renders the same path
        for every frame of a run, ~4 us of Jinja2 each time on the receive path."""
        if self.variables is None:
            return None
        key = []
        for name in self.variables:
            value = context.get(name, _MISSING)
            if type(value) not in _KEYABLE:
                return None
            key.append((type(value), value))
        return tuple(key)

    def render_text(self, context: Mapping[str, Any]) -> str:
        """Render the template to text, with no path checks (used by ``render`` and the CLI's dry run)."""
        try:
            # What Template.render does, without its two per-call walks over the template's globals (a
            # ChainMap): ~7 us -> ~2 us per event. The compiled code, and so the sandbox, are the same.
            template = self._template
            context_object = template.environment.context_class(
                template.environment, {**self._globals, **context}, template.name, template.blocks, self._globals
            )
            return _joined_within_bound(template.root_render_func(context_object))
        except jinja2.UndefinedError as exc:
            raise TemplateRenderError(
                f"template {self.source!r}: {exc.message} (metadata has keys {sorted(map(str, context))})"
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateRenderError(f"template {self.source!r}: {exc}") from exc
        except Exception as exc:  # MemoryError and RecursionError too: a fault of this item, not of the archiver
            raise TemplateRenderError(f"template {self.source!r}: {type(exc).__name__}: {exc}") from exc

    def render(self, context: Mapping[str, Any]) -> Path:
        """Render and confine: the absolute, normalised path of the file for ``context``."""
        return Path(self.render_confined(context))

    def render_confined(self, context: Mapping[str, Any]) -> str:
        """As ``render``, as text: the writer's hot path keeps paths as ``str`` (pathlib costs ~µs each)."""
        path = confine_text(self.render_text(context), self._root_text, self.source)
        if len(path) > self._name_max or not path.isascii():  # else no part can be too long
            self._check_file_system_limits(path)
        return path

    def _check_file_system_limits(self, path: str) -> None:
        """Raise TemplateRenderError for a path the file system would refuse as too long (ENAMETOOLONG)."""
        encoded = os.fsencode(path)
        longest = max(encoded.split(b"/"), key=len)
        if len(encoded) >= self._path_max or len(longest) > self._name_max:
            raise TemplateRenderError(
                f"template {self.source!r} rendered a path the file system cannot hold: {len(encoded)} bytes "
                f"(at most {self._path_max - 1}), its longest part {len(longest)} bytes (at most {self._name_max}): "
                f"{path[:120]!r}..."
            )


_MISSING = object()


def _joined_within_bound(chunks: Iterator[str]) -> str:
    """The render's output, refused as soon as it grows beyond any path (a loop over metadata can be long)."""
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDERED_CHARS:
            raise SecurityError(f"rendered more than {MAX_RENDERED_CHARS} characters, more than any file path holds")
        parts.append(chunk)
    return "".join(parts)


def _file_system_limits(root: Path) -> tuple[int, int]:
    """(longest name, longest path) in bytes on the file system of ``root`` (or its nearest existing parent)."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    limits = []
    for name, default in (("PC_NAME_MAX", _DEFAULT_NAME_MAX), ("PC_PATH_MAX", _DEFAULT_PATH_MAX)):
        try:
            limits.append(int(os.pathconf(probe, name)))
        except (OSError, ValueError):
            limits.append(default)
    return limits[0], limits[1]


def confine_text(rendered: str, root_text: str, template: str = "") -> str:
    """Resolve ``rendered`` against ``root_text`` (an absolute, normalised directory); raise unless the result
    is a file path under it. Lexical only (``..``, absolute paths): the writer opens every directory beneath a
    handle of the root without following symlinks (``confinement``), which no rename can get around."""
    where = f" (template {template!r})" if template else ""
    if not rendered.strip():
        raise TemplateRenderError(f"rendered path is empty{where}")
    if "\x00" in rendered:
        raise PathConfinementError(f"rendered path {rendered!r} contains a NUL byte{where}")
    if rendered.endswith(("/", os.sep)):
        raise PathConfinementError(f"rendered path {rendered!r} names a directory, expected a file name{where}")
    candidate = os.path.normpath(os.path.join(root_text, rendered))
    if not candidate.startswith(root_text.rstrip(os.sep) + os.sep) or candidate == root_text:
        raise PathConfinementError(
            f"rendered path {rendered!r} resolves to {candidate!r}, outside the archive root {root_text!r}{where}"
        )
    return candidate
