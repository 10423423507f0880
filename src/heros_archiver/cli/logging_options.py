"""How the commands log: ``--log-level`` and ``--log-format`` (text through rich, or JSON lines; ``observe.logs``)."""

from __future__ import annotations

from enum import StrEnum

from rich.console import Console
from rich.logging import RichHandler

from ..observe.logs import configure_logging


class LogFormat(StrEnum):
    """What ``--log-format`` takes."""

    text = "text"
    json = "json"


def setup_logging(level: str, log_format: LogFormat | str = LogFormat.text) -> None:
    """Log at ``level`` to standard error: rich text lines, or one JSON object per line."""
    configure_logging(level, str(log_format), RichHandler(console=Console(stderr=True), show_path=False))
