"""``heros-archiver verify ROOT``: the archive against its catalog, a summary table and one line per problem.

With ``--catalog-url`` the catalog is a shared PostgreSQL one (decision 0037): the roots of this host it names (or
only ROOT) are checked, one table each, and the roots of other hosts are listed as skipped (``--all-hosts``
checks them too, where every host's paths are reachable here)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

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
from .catalog_commands import CATALOG_URL_VARIABLE

if TYPE_CHECKING:
    from ..observe.verify import VerifyReport
    from ..observe.verify_shared import SharedVerifyReport

#: Below this many bytes to read no progress bar is shown (it would flash and go).
PROGRESS_FROM = 256 << 20


@app.command("verify")
def verify_command(
    root: Annotated[
        Path | None,
        typer.Argument(help="the archive root (holds .heros-archiver/catalog.sqlite); with --catalog-url: only it"),
    ] = None,
    catalog_url: Annotated[
        str | None,
        typer.Option(envvar=CATALOG_URL_VARIABLE, help="a shared catalog: postgresql://user@host:port/database"),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="with --catalog-url: check the roots of this host (default: this machine's)")
    ] = None,
    all_hosts: Annotated[
        bool, typer.Option("--all-hosts", help="with --catalog-url: check every host's roots (paths shared here)")
    ] = False,
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
    extra, is not installed; a shared catalog with nothing of this host's to check).
    """
    from ..observe.verify import verify  # imported when used: the other commands need none of it

    if catalog_url is not None:
        _verify_shared(catalog_url, root, host, all_hosts, as_json, not no_orphans, workers)
        return
    if root is None or host is not None or all_hosts:
        console.print("[red]error:[/red] expected ROOT (its SQLite catalog), or --catalog-url for --host and "
                      "--all-hosts", soft_wrap=True)  # fmt: skip
        raise typer.Exit(2)
    checked = root
    report = _run(lambda progress: verify(checked, orphans=not no_orphans, workers=workers, progress=progress),
                  as_json, _print)  # fmt: skip
    if not report.ok:
        raise typer.Exit(1)


def _verify_shared(
    url: str, root: Path | None, host: str | None, all_hosts: bool, as_json: bool, orphans: bool, workers: int | None
) -> None:
    """verify over a shared catalog: a table per root checked, a line per root skipped."""
    from ..observe.verify_shared import verify_shared

    roots: list[str | os.PathLike[str]] | None = None if root is None else [root]

    def check(progress: Callable[[int, int], None]) -> SharedVerifyReport:
        return verify_shared(url, host=host, all_hosts=all_hosts, roots=roots, orphans=orphans, workers=workers,
                             progress=progress)  # fmt: skip

    shared = _run(check, as_json, _print_shared)
    if not shared.reports:
        raise typer.Exit(2)
    if not shared.ok:
        raise typer.Exit(1)


R = TypeVar("R", "VerifyReport", "SharedVerifyReport")


def _run(check: Callable[[Callable[[int, int], None]], R], as_json: bool, show: Callable[[R], None]) -> R:
    """Run ``check`` (given the progress callback) under a progress bar, then print its report (``show``, or as
    JSON); exit 2 when it cannot do its work (no catalog, or one it cannot read; a container kind whose extra
    is missing; a shared catalog it cannot reach)."""
    with _ProgressBar(enabled=not as_json or console.is_terminal) as bar:
        try:
            report = check(bar.update)
        except ArchiverError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from exc
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        show(report)
    return report


def _print_shared(shared: SharedVerifyReport) -> None:
    out = Console(soft_wrap=True, highlight=False)
    for report in shared.reports:
        _print(report)
    for skipped in shared.skipped:
        out.print(skipped.line, markup=False)
    if shared.skipped:
        out.print("(run verify on those hosts, or --all-hosts where their paths are reachable here)", markup=False)
    if not shared.reports:
        whose = "any host" if shared.host is None else f"host {shared.host}"
        out.print(f"nothing checked: the catalog {shared.catalog} names no root of {whose} (--host?)", markup=False)
    else:
        problems = sum(len(report.problems) for report in shared.reports)
        verdict = "all is well" if shared.ok else f"{problems:,} problem(s)"
        out.print(f"{verdict}: {len(shared.reports)} root(s) checked, {len(shared.skipped)} skipped", markup=False)


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
