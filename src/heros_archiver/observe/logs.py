"""Log lines as text or as JSON lines, and the fields that make a problem's line searchable.

Every problem (an item dead-lettered or LOST, a retry, a gap, a quarantined spool entry, a full queue, a
failed commit) is one log line, logged with ``extra=log_fields(source=..., event=..., path=..., error=...)``:
the text format shows the message as it always did; the JSON format (``--log-format json``) writes one object
per line, ``time``, ``level``, ``logger``, ``message`` and those fields as keys, so that a log collector
filters by source or path without parsing messages. Decision 0033.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ..saferepr import safe_str

__all__ = ["FIELDS", "LOG_FORMATS", "JsonFormatter", "configure_logging", "log_fields"]

#: The fields of a problem's log line (attributes of its ``LogRecord``).
FIELDS = ("source", "event", "path", "error")
#: What ``--log-format`` takes.
LOG_FORMATS = ("text", "json")


def log_fields(
    source: str | None = None,
    event: str | None = None,
    path: str | Path | None = None,
    error: BaseException | str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a problem's log call: the fields that are known (None left out); a path as text, an
    exception as ``ErrorType: message``."""
    fields: dict[str, Any] = {}
    if source is not None:
        fields["source"] = source
    if event is not None:
        fields["event"] = event
    if path is not None:
        fields["path"] = str(path)
    if error is not None:
        fields["error"] = error if isinstance(error, str) else f"{type(error).__name__}: {safe_str(error)}"
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, logger, message, the problem
    fields the record carries (``FIELDS``) and, if any, the exception's traceback."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(document, default=str).decode()
        except TypeError:  # text orjson refuses (a lone surrogate): the standard library escapes it
            return json.dumps(document, default=str)


def configure_logging(level: str, log_format: str, text_handler: logging.Handler) -> None:
    """Log at ``level`` (DEBUG, INFO, WARNING, ERROR) through ``text_handler`` (the command's rich handler), or
    as JSON lines on standard error for ``log_format == "json"``."""
    if log_format == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        handler = text_handler
    logging.basicConfig(level=level.upper(), format="%(message)s", handlers=[handler], force=True)
