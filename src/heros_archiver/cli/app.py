"""The ``heros-archiver`` command: demo, run, render, replay, formats, status, router, ls, export."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..archivers.object_root import object_root_of
from ..errors import ArchiverError
from ..naming.keys import confine_key
from ..naming.templates import PathTemplate, derive_root
from ..storage.objectstore import ObjectLocation
from . import status_command
from .catalog_commands import UrlOption
from .logging_options import LogFormat, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Archive the events of HEROS devices to files.")
console = Console(stderr=True)


def _print_version(value: bool) -> None:
    """``--version``: this package's version and those of the two it talks through (what a bug report needs)."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    typer.echo(f"heros-archiver {__version__} (heros {installed('heros')}, eclipse-zenoh {installed('eclipse-zenoh')})")
    raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the versions (ours, heros, Zenoh) and exit"
        ),
    ] = False,
) -> None:
    """Archive the events of HEROS devices to files."""


#: The counters of the table ``run`` prints per source when it stops.
STATS_COLUMNS = (
    "received",
    "archived",
    "retried",
    "dead_lettered",
    "dropped",
    "quarantined",
    "gaps",
    "missing",
    "bytes",
)


def _parse_value(text: str) -> Any:
    """``3`` -> 3, ``"a"`` -> "a", ``[1, 2]`` -> [1, 2]; anything that is not JSON stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_pairs(pairs: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            console.print(f"[red]expected key=value, got {pair!r}[/red]")
            raise typer.Exit(2)
        parsed[key] = _parse_value(value)
    return parsed


@app.command()
def render(
    template: Annotated[
        str, typer.Argument(help="Jinja2 path template, e.g. \"{{ file_path }}/img-{{ '%04d' % frame }}.npy\"")
    ],
    values: Annotated[
        list[str] | None, typer.Argument(help="metadata as key=value (values parsed as JSON if they can be)")
    ] = None,
    default: Annotated[
        list[str] | None, typer.Option(help="default metadata key=value, as in the config (repeatable)")
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(
            help="archive root, a directory or s3://bucket/prefix (default: derived from template and defaults)"
        ),
    ] = None,
) -> None:
    """Print the path TEMPLATE renders to for the given metadata, or the error (a dry run of the naming).

    As in the archiver, the archive root comes from the template and the --default values (the
    config), and the positional values (the event's metadata) are merged over the defaults. For an
    object-store root (``s3://bucket/prefix``, as root or as the template's start) it prints the object's URL.
    """
    defaults = _parse_pairs(default or [])
    metadata = {**defaults, **_parse_pairs(values or [])}
    try:
        object_root = object_root_of(template, root)
        if object_root is not None:
            location = ObjectLocation.parse(object_root)
            rendered = PathTemplate(template, os.sep).render_text(metadata)
            typer.echo(location.url(confine_key(rendered, object_root, location.prefix, template)))
            return
        compiled = PathTemplate(template, Path(root) if root else derive_root(template, defaults))
        path = compiled.render(metadata)
    except ArchiverError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    typer.echo(str(path))


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="BOSS-style JSON config: one object or a list of them")],
    realm: Annotated[str, typer.Option(help="HEROS realm")] = "heros",
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
    log_format: Annotated[LogFormat, typer.Option(help="text, or json: one JSON object per line")] = LogFormat.text,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve Prometheus metrics on this port (/metrics; needs prometheus-client)")
    ] = None,
    metrics_address: Annotated[str, typer.Option(help="address the metrics endpoint binds to")] = "127.0.0.1",
    zenoh_config: Annotated[
        Path | None,
        typer.Option(
            help="Zenoh config file (JSON5) of the archivers' session, e.g. a client of the host's router "
            "(sets HEROS_ZENOH_CONFIG; docs/deployment.md)"
        ),
    ] = None,
) -> None:
    """Run the archivers of CONFIG until Ctrl-C or SIGTERM, then drain them and print their figures."""
    from ..archivers.base import close_all
    from .config import build_archivers, load_config

    setup_logging(log_level, log_format)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        if zenoh_config is not None:
            from ..transport.session_config import read_session_config

            os.environ["HEROS_ZENOH_CONFIG"] = read_session_config(zenoh_config)
        entries = load_config(config)
        console.print(f"starting {len(entries)} archiver(s) of {config}")
        archivers = _build_unless_stopped(lambda: build_archivers(entries, realm), stop)
    except ArchiverError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if archivers is None:
        console.print("stopped before the archivers were up (still waiting for the Zenoh router?); nothing received")
        raise typer.Exit(1)
    metrics = _serve_metrics(archivers, metrics_port, metrics_address) if metrics_port is not None else None
    console.print(f"running {len(archivers)} archiver(s) in realm {realm!r}; Ctrl-C or SIGTERM to stop")
    while not stop.wait(0.5):
        pass
    console.print("stopping: draining queues")
    close_all(archivers)  # in parallel: stopping takes about the longest drain, not the sum
    if metrics is not None:
        metrics.close()
    for archiver in archivers:
        _print_stats(archiver.stats())
    _exit_without_finalizing(0)


def _exit_without_finalizing(code: int) -> NoReturn:
    """End the process once everything is drained and closed, without the interpreter's finalization.

    Zenoh's threads (Rust) and the threads blocked in it may still wake after the archivers closed (a peer
    leaving, a session closing in an ``atexit`` handler); one that takes the GIL after Python 3.11 began
    finalizing is ended by ``pthread_exit``, whose unwinding Rust cannot pass: the process aborts ("FATAL:
    exception not rethrown", exit -6, seen once in CI after a clean drain). Nothing is left to finalize here:
    logs and the console are flushed, the files closed, the helper and applier processes stopped."""
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _build_unless_stopped(build: Callable[[], list[Any]], stop: threading.Event) -> list[Any] | None:
    """``build()`` in a daemon thread; None if ``stop`` is set first. A client's first session waits for its
    router (``connect/timeout_ms: -1``, docs/deployment.md) inside Zenoh, where no signal handler runs: this
    way SIGTERM still ends ``run`` then (archivers already built are drained at exit, decision 0016)."""
    result: list[list[Any]] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            result.append(build())
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="heros-archiver-build", daemon=True).start()
    while not done.wait(0.1):
        if stop.is_set():
            return None
    if failure:
        raise failure[0]
    return result[0]


def _serve_metrics(archivers: list[Any], port: int, address: str) -> Any:
    """Start the metrics endpoint of ``archivers`` (``observe.metrics``), or close them and exit 2."""
    from ..archivers.base import close_all
    from ..observe.metrics import serve_metrics

    try:
        server = serve_metrics([archiver.status for archiver in archivers], port, address)
    except ArchiverError as exc:
        console.print(f"[red]error:[/red] {exc}")
        close_all(archivers)
        raise typer.Exit(2) from exc
    host, bound = server.address
    console.print(f"metrics on http://{host}:{bound}/metrics")
    return server


@app.command()
def replay(
    directory: Annotated[Path, typer.Argument(help="dead-letter directory, e.g. ROOT/.heros-archiver/dead-letter")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be written; change nothing")] = False,
    template: Annotated[
        str | None,
        typer.Option(
            help="a corrected save_template (Hdf5Archiver, ParquetArchiver: file_template; ZarrArchiver, "
            "ZarrAppendArchiver: store_template) to use instead of the recorded one"
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(help="archive root to write under (default: ROOT of ROOT/.heros-archiver/dead-letter)"),
    ] = None,
    dataset_template: Annotated[
        str | None, typer.Option(help="Hdf5Archiver entries: a corrected dataset_template (the stack in the file)")
    ] = None,
    array_template: Annotated[
        str | None,
        typer.Option(
            help="ZarrArchiver entries: a corrected array_path_template (the key in the store); ZarrAppendArchiver "
            "entries: a corrected array_template (the array frames are appended to)"
        ),
    ] = None,
    catalog_url: UrlOption = None,
) -> None:
    """Archive dead-lettered items again (after the disk was freed or the template fixed); archived entries leave.

    Files are written only under the archive root (entries recording another root are refused), one
    line reports each entry that failed, and the exit code is 1 when any did (2: nothing could start).
    The container archivers' items (Hdf5Archiver, ZarrAppendArchiver, TiffArchiver(stack=True), ParquetArchiver,
    DatasourceArchiver) are appended to their container again and committed (an item it holds is not added
    twice); a ZarrArchiver's payloads become their array again (an identical array there counts as written); a
    PostgresArchiver's are merged into their record again, arrays uploaded first (the database's password from
    PGPASSWORD or ~/.pgpass, the store's keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: entries hold none).
    What is archived goes into the root's catalog (or the shared one of --catalog-url) before its entry leaves.
    """
    from ..state.replay import replay as replay_entries

    try:
        outcomes = replay_entries(directory, template, dry_run, root, dataset_template, array_template, catalog_url)
    except (ArchiverError, OSError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    done = [o for o in outcomes if o.ok]
    if done:
        table = Table(title=f"replay of {directory}" + (" (dry run)" if dry_run else ""))
        for column in ("entry", "source", "result"):
            table.add_column(column)
        for outcome in done:
            result = ("would write " if dry_run else "archived ") + ", ".join(map(str, outcome.paths))
            table.add_row(outcome.entry.name, outcome.source, result)
        console.print(table)
    for outcome in outcomes:
        if not outcome.ok:  # one line each, whatever the terminal's width: the operator greps for them
            error = outcome.error.replace(f"{outcome.entry}: ", "")  # the line names the entry already
            console.print(f"[red]failed[/red] {escape(outcome.entry.name)}: {escape(error)}", soft_wrap=True)
    failed = len(outcomes) - len(done)
    verb = "would archive" if dry_run else "archived"
    console.print(f"{verb} {len(done)} of {len(outcomes)} item(s); {failed} failed")
    if failed:
        raise typer.Exit(1)


@app.command()
def formats(
    check: Annotated[
        bool, typer.Option("--check", help="also import each one and report what fails (a missing extra, a bad plugin)")
    ] = False,
) -> None:
    """List the file formats (FileArchiver's file_format) and sinks (a config's classname) installed.

    Both are found by entry point (groups heros_archiver.formats and heros_archiver.sinks), ours as those
    of any installed plugin; without --check nothing is imported. Exit code 1 when a name is registered
    twice or, with --check, cannot be used.
    """
    from .. import plugins

    registrations = plugins.available()
    counts: dict[tuple[str, str], int] = {}
    for registration in registrations:
        key = (registration.group, registration.name)
        counts[key] = counts.get(key, 0) + 1
    table = Table(title="formats and sinks (entry points)")
    for column in ("kind", "name", "object", "registered by", *(["check"] if check else [])):
        table.add_column(column, overflow="fold")
    problems: dict[tuple[str, str], str] = {}  # one per name: a name registered twice is one problem
    for registration in registrations:
        kind = "format" if registration.group == plugins.FORMATS_GROUP else "sink"
        twice = counts[(registration.group, registration.name)] > 1
        status = "[red]registered twice[/red]" if twice else "ok"
        if twice or check:
            try:
                plugins.make_format(registration.name) if kind == "format" else plugins.sink_class(registration.name)
            except ArchiverError as exc:
                status = status if twice else "[red]failed[/red]"
                problems[(registration.group, registration.name)] = str(exc)
        row = [kind, registration.name, registration.value, registration.distribution]
        table.add_row(*(escape(cell) for cell in row), *([status] if check else []))
    Console(width=max(console.width, 160)).print(table)
    for problem in problems.values():  # one line each, whatever the terminal's width, as replay's failures
        console.print(f"[red]failed[/red] {escape(problem)}", soft_wrap=True)
    if problems:
        raise typer.Exit(1)


def _print_stats(stats: dict[str, Any]) -> None:
    table = Table(title=f"event {stats['event']} of {stats['object_selector']}")
    table.add_column("source")
    for column in STATS_COLUMNS:
        table.add_column(column, justify="right")
    for source, counters in sorted(stats["sources"].items()):
        table.add_row(source, *(str(counters[c]) for c in STATS_COLUMNS))
    table.add_row("total", *(str(stats["total"][c]) for c in STATS_COLUMNS), style="bold")
    console.print(table)


@app.command()
def demo(
    frames: Annotated[int, typer.Option(help="number of frames to send")] = 200,
    shape: Annotated[str, typer.Option(help="frame shape HxW")] = "1024x1024",
    dtype: Annotated[str, typer.Option(help="frame dtype")] = "uint16",
    out: Annotated[
        Path | None, typer.Option(help="folder for the files (default: ./heros-archiver-demo/<time>)")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="frames per second (default: as fast as possible)")] = None,
    timeout: Annotated[float, typer.Option(help="give up when nothing arrives for this many seconds")] = 30.0,
    log_format: Annotated[LogFormat, typer.Option(help="text, or json: one JSON object per line")] = LogFormat.text,
) -> None:
    """Start a simulated camera and an ArrayArchiver on loopback Zenoh, archive FRAMES frames, check them."""
    from .demo import run_demo

    setup_logging("WARNING", log_format)
    height, _, width = shape.lower().partition("x")
    folder = out or Path.cwd() / "heros-archiver-demo" / time.strftime("%Y%m%d-%H%M%S")
    result = run_demo(frames, (int(height), int(width)), dtype, folder, rate, timeout, _progress)
    table = Table(title="heros-archiver demo", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")  # paths are shown whole, folded if the terminal is narrow
    for key, value in result.summary_rows():
        table.add_row(key, value)
    console.print(table)
    _exit_without_finalizing(0 if result.complete else 1)


def _progress(total: int, status: Callable[[], tuple[int, bool]]) -> None:
    """Show a progress bar of ``status()`` (archived so far, finished) until it says finished."""
    with Progress(
        TextColumn("archiving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("frames", total=total)
        finished = False
        while not finished:
            done, finished = status()
            progress.update(task, completed=done)
            if not finished:
                time.sleep(0.1)


app.command(name="status")(status_command.status)


@app.command()
def router(
    config: Annotated[
        Path | None, typer.Argument(help="Zenoh config file (JSON5) of the router, as zenohd -c takes")
    ] = None,
    listen: Annotated[
        list[str] | None,
        typer.Option(help="endpoint to listen on, e.g. tcp/0.0.0.0:7447 (repeatable; replaces the file's)"),
    ] = None,
    connect: Annotated[
        list[str] | None,
        typer.Option(help="router to connect to, e.g. tcp/central:7447 (repeatable; replaces the file's)"),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
    log_format: Annotated[LogFormat, typer.Option(help="text, or json: one JSON object per line")] = LogFormat.text,
) -> None:
    """Run a Zenoh router (eclipse-zenoh's, in Python: no zenohd needed) until Ctrl-C or SIGTERM.

    Hosts behind routers: cameras and archivers are Zenoh clients of their host's router, routers connect
    to each other (docs/deployment.md). Prints "@@ ROUTER UP <id>" once it listens; exit code 2 when the
    config is refused or it cannot listen.
    """
    from ..transport.router import run as run_router

    setup_logging(log_level, log_format)
    code = run_router(config, listen or [], connect or [])
    if code:
        raise typer.Exit(code)


def main() -> None:
    """Entry point of the ``heros-archiver`` command."""
    app()


from .catalog_commands import export, ls  # noqa: E402 - the catalog's commands, in a module of their own

app.command("ls")(ls)
app.command()(export)

from . import verify_command as _verify_command  # noqa: E402, F401  (registers ``verify`` on ``app``)
