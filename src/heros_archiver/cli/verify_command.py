"""``heros-archiver verify ROOT``: the archive against its catalog, a summary table and one line per problem."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..errors import ArchiverError
from ..observe.problems import KINDS, NOTE_KINDS
from .app import app, console

if TYPE_CHECKING:
    from ..observe.verify import VerifyReport

#: Below this many bytes to read no progress bar is shown (it would flash and go).
PROGRESS_FROM = 256 << 20


@app.command("verify")
def verify_command(
    root: Annotated[Path, typer.Argument(help="the archive root (the folder holding .heros-archiver/catalog.sqlite)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON document")] = False,
    no_orphans: Annotated[
        bool, typer.Option("--no-orphans", help="do not walk the root for files no entry names")
    ] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="threads reading and hashing (default 4)")] = None,
) -> None:
    """Recompute the checksum of every cataloged file and container item, and report what is missing, truncated,
    modified or unreadable, the files no entry names (orphans) and the gaps in sequence values.

    Runs beside an archiver that writes (what it commits meanwhile is not checked). Exit code 0 when all is
    well, 1 when anything was found, 2 when verify cannot do its work (no catalog; a container whose library, an
    extra, is not installed).
    """
    from ..observe.verify import verify  # imported when used: the other commands need none of it

    with _ProgressBar(enabled=not as_json or console.is_terminal) as bar:
        try:
            report = verify(root, orphans=not no_orphans, workers=workers, progress=bar.update)
        except ArchiverError as exc:  # no catalog, or one it cannot read; a container kind whose extra is missing
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from exc
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


class _ProgressBar:
    """A bar of bytes read, on stderr, shown once verify knows it has more than ``PROGRESS_FROM`` to read."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled and console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _ProgressBar:
        return self

    def update(self, done: int, total: int) -> None:
        if not self._enabled or total < PROGRESS_FROM:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("verifying"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("bytes", total=total)
        assert self._task is not None
        self._progress.update(self._task, completed=done)

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _print(report: VerifyReport) -> None:
    out = Console(soft_wrap=True, highlight=False)
    counts = report.counts()
    table = Table(title=f"verify of {escape(report.root)}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rate = report.bytes / (1 << 20) / report.seconds if report.seconds > 0 else 0.0
    rows = [
        ("files", f"{report.files:,}"),
        ("containers", f"{report.containers:,} ({report.items:,} items)"),
        ("bytes checked", f"{report.bytes / (1 << 20):,.1f} MiB in {report.seconds:.1f} s ({rate:,.0f} MiB/s)"),
        ("presence and size only", f"{report.unchecked:,}"),
        ("pending (Parquet not yet published)", f"{report.pending:,}"),
        ("sequence streams", f"{report.streams:,}"),
        ("orphans", "looked for" if report.orphans_checked else "not looked for (--no-orphans)"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    for kind in (*KINDS, *NOTE_KINDS):
        style = "red" if counts[kind] and kind in KINDS else ""
        table.add_row(kind, f"[{style}]{counts[kind]:,}[/{style}]" if style else f"{counts[kind]:,}")
    out.print(table)
    for problem in (*report.problems, *report.notes):  # one line each, whatever the width: for grep
        out.print(problem.line, markup=False)
    verdict = "all is well" if report.ok else f"{len(report.problems):,} problem(s)"
    out.print(f"{verdict}: {report.root}", markup=False)
