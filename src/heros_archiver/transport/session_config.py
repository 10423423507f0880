"""The Zenoh config of the archivers' own session, from a file: ``heros-archiver run --zenoh-config FILE``.

heros reads its session's config from ``HEROS_ZENOH_CONFIG``, which holds the JSON5 text itself, not a path;
a unit file or a shell that must quote a JSON document into a variable is where deployments go wrong. This
reads the file, has Zenoh check it (an unknown key or a value of the wrong type is refused here, naming the file,
not at the first session), and gives the text that ``run`` puts into ``HEROS_ZENOH_CONFIG`` before any archiver
opens its session. See ``docs/deployment.md``.
"""

from __future__ import annotations

from pathlib import Path

import zenoh

from ..errors import ConfigurationError


def read_session_config(path: Path) -> str:
    """The text of the Zenoh config file ``path``, once Zenoh has parsed it (JSON5, its own schema)."""
    try:
        text = path.read_text()
        zenoh.Config.from_json5(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"--zenoh-config {path}: expected a readable Zenoh config file, got: {exc}") from exc
    except zenoh.ZError as exc:
        raise ConfigurationError(f"--zenoh-config {path}: expected a Zenoh config (JSON5), got: {exc}") from exc
    return text
