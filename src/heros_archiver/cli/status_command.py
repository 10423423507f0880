"""``heros-archiver status``: find the running archivers over Zenoh and show what they do, live.

Each archiver is asked for its ``status()`` (``observe.status``) through heros (``transport.discovery``);
the table has one row per archiver and source: received / archived / failed / gaps, the archive rate, and
on the archiver's first row its queue, the age of its oldest waiting item, its spool and the free space of
its disk. ``--once`` prints one table, ``--json`` one JSON document of every status; otherwise the table is
refreshed every ``--interval`` seconds until Ctrl-C, and the realm is searched again for archivers that
started since.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ..observe.metrics import archiver_label
from .logging_options import LogFormat, setup_logging

console = Console(stderr=True)

#: Seconds between two searches of the realm for archivers that started since, in the live view.
REDISCOVER_INTERVAL = 10.0
#: Characters of a last error shown in the table (the JSON has all of it).
ERROR_WIDTH = 80


def status(
    selector: Annotated[str, typer.Argument(help="which archivers: a glob on their HERO names, e.g. 'cam-*'")] = "*",
    realm: Annotated[str, typer.Option(help="HEROS realm")] = "heros",
    connect: Annotated[
        list[str] | None,
        typer.Option(
            help="Zenoh endpoint to connect to, e.g. tcp/127.0.0.1:7447 (repeatable; added to HEROS_ZENOH_CONFIG's)"
        ),
    ] = None,
    interval: Annotated[float, typer.Option(help="seconds between refreshes of the live table")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="print the table once and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document of every status and exit")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to look for archivers before giving up (exit code 2)")] = 10.0,
    log_format: Annotated[LogFormat, typer.Option(help="text, or json: one JSON object per line")] = LogFormat.text,
) -> None:
    """Show the running archivers (under BOSS or heros-archiver run) of REALM that match SELECTOR, live.

    Exit code 2 when none is found within --timeout; with --once or --json, 1 when one that was found did not answer.
    """
    from ..transport.discovery import ArchiverFinder

    setup_logging("WARNING", log_format)
    with ArchiverFinder(realm, connect or []) as finder:
        names = _find(finder, selector, timeout)
        if not names:
            config = "HEROS_ZENOH_CONFIG" if os.environ.get("HEROS_ZENOH_CONFIG") else "Zenoh's default configuration"
            endpoints = ", ".join(connect) if connect else "no --connect"
            console.print(
                f"[red]error:[/red] no archiver matching {escape(selector)!r} answered in realm {escape(realm)!r} "
                f"within {timeout:g} s (this peer: {config}, {escape(endpoints)}); archivers are found when they "
                "run under BOSS or heros-archiver run: check --realm, and --connect or HEROS_ZENOH_CONFIG",
                soft_wrap=True,
            )
            raise typer.Exit(2)
        if as_json or once:
            statuses, errors = _collect(finder, names)
            if as_json:
                document = {"realm": realm, "time": time.time(), "archivers": statuses, "errors": errors}
                sys.stdout.write(json.dumps(jsonable(document), indent=2) + "\n")
            else:
                Console().print(status_table(statuses, errors, realm))
            if errors:
                raise typer.Exit(1)
            return
        _live(finder, selector, names, realm, interval)


def jsonable(value: Any) -> Any:
    """``value`` with only what JSON carries: a status came over the network as CBOR, which also has sets,
    tuples, bytes and keys that are not text (kept as lists, lists, their repr and text)."""
    if isinstance(value, dict):
        return {key if isinstance(key, str) else repr(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _find(finder: Any, selector: str, timeout: float) -> list[str]:
    """The archivers matching ``selector``, asking again until one answers or ``timeout`` passed: a session
    that has only just connected may not have heard of the others' discovery yet and get no answer at all."""
    deadline = time.monotonic() + timeout
    while True:
        names: list[str] = finder.discover(selector, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
        if names or time.monotonic() >= deadline:
            return names
        time.sleep(0.2)


def _collect(finder: Any, names: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The status of each archiver, and ``{name, error}`` for each that gave none."""
    from ..errors import StatusError

    statuses, errors = [], []
    for name in names:
        try:
            statuses.append(finder.status(name))
        except StatusError as exc:
            errors.append({"name": name, "error": str(exc)})
    return statuses, errors


def _live(finder: Any, selector: str, names: list[str], realm: str, interval: float) -> None:
    """Refresh the table every ``interval`` seconds until Ctrl-C; look for new archivers now and then."""
    try:
        searched = time.monotonic()
        statuses, errors = _collect(finder, names)
        with Live(status_table(statuses, errors, realm), console=Console(), auto_refresh=False) as live:
            shown = f"showing {len(names)} archiver(s) of realm {escape(realm)!r}"
            console.print(f"{shown} every {interval:g} s; Ctrl-C to stop")  # printed above the table
            while True:
                time.sleep(interval)
                if time.monotonic() - searched >= REDISCOVER_INTERVAL:
                    names = sorted(set(names) | set(finder.discover(selector, timeout=1.0)))
                    searched = time.monotonic()
                statuses, errors = _collect(finder, names)
                live.update(status_table(statuses, errors, realm), refresh=True)
    except KeyboardInterrupt:  # Ctrl-C: the way to leave the live view
        return


def status_table(statuses: list[dict[str, Any]], errors: list[dict[str, str]], realm: str) -> Table:
    """One row per archiver and source (an archiver without sources yet: one row); the archiver's own figures
    (queue, oldest item, spool, disk) on its first row; one row per archiver that did not answer, or answered
    with something this version cannot show (another version's status, a broken peer: it came over the
    network, so it is shown as an error, never raised)."""
    table = Table(title=f"archivers in realm {realm} ({time.strftime('%H:%M:%S')})")
    for column in ("archiver", "source", "received", "archived", "failed", "gaps", "rate", "in flight"):
        table.add_column(column, justify="left" if column in ("archiver", "source") else "right")
    for column in ("queue", "oldest", "spool", "disk free"):
        table.add_column(column, justify="right")
    table.add_column("last error", overflow="fold")
    problems = list(errors)
    for status in sorted(statuses, key=_label):
        try:
            rows = _archiver_rows(status)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            problems.append({"name": _label(status), "error": f"a status this version cannot show ({exc!r:.200})"})
            continue
        for row in rows:
            table.add_row(*row)
        table.add_section()
    for problem in problems:
        table.add_row(escape(str(problem["name"])), "", *[""] * 10, f"[red]{escape(str(problem['error']))}[/red]")
    return table


def _label(status: Any) -> str:
    """The archiver's name in the table, whatever arrived."""
    try:
        return archiver_label(status)
    except (KeyError, TypeError, AttributeError):
        return "?"


def _archiver_rows(status: dict[str, Any]) -> list[list[str]]:
    """The rows of one archiver: its sources, its own figures on the first."""
    queue, disk = status["queue"], status["disk"]
    name = archiver_label(status) + (" (paused)" if status.get("paused") else "")
    intake = int(queue.get("intake_waiting") or 0)  # statuses of versions before it have none
    intake_bytes = queue.get("intake_waiting_bytes")  # nor those of versions before it
    waiting = f"{intake} · {_bytes(intake_bytes)}" if isinstance(intake_bytes, int | float) else str(intake)
    own = [
        f"{int(queue['items'])} · {_bytes(queue['bytes'])}" + (f" (+{waiting} in intake)" if intake else ""),
        _age(queue["oldest_age"]),
        str(int(queue["spooled"])),
        "-" if disk is None else _bytes(disk["free_bytes"]),
    ]
    sources: list[tuple[str, dict[str, Any] | None]] = sorted((str(k), v) for k, v in status["sources"].items())
    rows = []
    for index, (source, counters) in enumerate(sources or [("-", None)]):
        first = index == 0
        cells = ["-"] * 6 + [""] if counters is None else _source_cells(counters, float(status["time"]))
        rows.append(
            [escape(name) if first else "", escape(source), *cells[:6], *(own if first else [""] * len(own)), cells[6]]
        )
    return rows


def _source_cells(counters: dict[str, Any], now: float) -> list[str]:
    """received, archived, failed, gaps, rate, in flight and the last error of one source."""
    gaps = str(int(counters["gaps"])) + (f" ({int(counters['missing'])} missing)" if counters["gaps"] else "")
    rate = f"{counters['items_per_second']:.1f}/s · {_bytes(counters['bytes_per_second'])}/s"
    last = counters.get("last_error")
    error = ""
    if last:
        text = str(last["error"])
        text = text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"
        error = f"[red]{escape(str(last['kind']))}[/red] {_age(now - float(last['time']))} ago: {escape(text)}"
    counts = (int(counters[name]) for name in ("received", "archived", "failed"))
    return [*map(str, counts), gaps, rate, _in_flight(counters), error]


def _in_flight(counters: dict[str, Any]) -> str:
    """Items of one source received and not yet settled (queued, being written, waiting for a commit), and the
    samples of it still in a buffered intake (not yet received); ``-`` for a status of a version without them."""
    if "in_flight" not in counters:
        return "-"
    intake = int(counters.get("intake_waiting") or 0)
    return str(int(counters["in_flight"])) + (f" (+{intake} in intake)" if intake else "")


def _bytes(value: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while abs(value) >= 1024 and index < len(units) - 1:
        value /= 1024
        index += 1
    return f"{value:.0f} B" if index == 0 else f"{value:.1f} {units[index]}"


def _age(seconds: float | None) -> str:
    """``None`` -> ``-``, ``0.25`` -> ``0.2 s``, ``75`` -> ``1.2 min``, ``7200`` -> ``2.0 h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
