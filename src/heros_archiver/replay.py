"""Re-drive dead-lettered items through the naming and writing they were meant for.

An item that is archived leaves the store; one that fails again stays, with the new error reported.
Running it twice never duplicates a file: the writer treats a target holding the same bytes as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .deadletter import DeadLetterStore
from .errors import ArchiverError, ReplayError
from .writer import FileWriter, WriterSettings


@dataclass
class ReplayOutcome:
    """What happened to one dead-letter entry."""

    entry: Path
    source: str
    ok: bool
    paths: list[Path] = field(default_factory=list)
    error: str = ""


def replay(directory: str | Path, template: str | None = None, dry_run: bool = False) -> list[ReplayOutcome]:
    """Replay every entry of the dead-letter store at ``directory``, oldest first.

    Args:
        directory: the dead-letter directory (e.g. ``<root>/.heros-archiver/dead-letter``).
        template: a corrected ``save_template`` to use instead of the recorded one.
        dry_run: only render and check; write nothing, remove nothing.
    """
    store = DeadLetterStore(directory)
    writers: dict[tuple[object, ...], FileWriter] = {}
    outcomes = []
    for entry in store.entries():
        source = "?"
        try:
            item = store.load(entry)
            source = item.source
            if item.writer is None:
                raise ReplayError(f"{entry}: stored by an archiver with its own _store; re-feed it with that code")
            settings = WriterSettings.from_dict(item.writer)
            if template is not None:
                settings.save_template = template
            key = tuple(settings.to_dict().values())
            writer = writers.get(key) or writers.setdefault(key, FileWriter(settings))
            if dry_run:
                paths = [path for path, _ in writer.plan(item.source, item.payload, item.metadata)]
            else:
                paths = [Path(p) for p in writer.write(item.source, item.payload, item.metadata, resumed=True)]
                store.remove(entry)
        except (ArchiverError, OSError) as exc:
            outcomes.append(ReplayOutcome(entry, source, False, error=f"{type(exc).__name__}: {exc}"))
            continue
        outcomes.append(ReplayOutcome(entry, source, True, paths))
    return outcomes
