"""``heros-archiver ls`` and ``export``: what the catalog of an archive root says was archived.

Both read the catalog read-only (``observe.catalog_reader``), also while archivers write it: the SQLite catalog
of ROOT, or with ``--catalog-url`` a shared PostgreSQL one (ROOT then keeps the rows of that root; ``--host``
those of one host). Exit codes: 0 done, 2 cannot start (no catalog at ROOT, a bad filter, the target exists, the
[parquet] extra missing).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import ArchiverError
from ..extras import require_extra
from ..observe.catalog_reader import CatalogFailure, CatalogItem, CatalogReader, Filters, parse_since

__all__ = ["CATALOG_URL_VARIABLE", "export", "ls"]

#: The environment variable ``--catalog-url`` is read from when not given (``ls``, ``export``, ``verify``).
CATALOG_URL_VARIABLE = "HEROS_ARCHIVER_CATALOG_URL"

errors = Console(stderr=True)
#: Hex digits of a checksum the table shows (the full one: ``--json``).
CHECKSUM_SHOWN = 8

RootArgument = Annotated[
    Path | None,
    typer.Argument(help="the archive root (holds .heros-archiver/catalog.sqlite); with --catalog-url: only its rows"),
]
UrlOption = Annotated[
    str | None,
    typer.Option(envvar=CATALOG_URL_VARIABLE, help="a shared catalog: postgresql://user@host:port/database"),
]
HostOption = Annotated[str | None, typer.Option(help="only rows written on this host (a shared catalog)")]
ArchiverOption = Annotated[str | None, typer.Option(help="only rows of this archiver (NAME:EVENT, as ls shows)")]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(2)


def _open(root: Path | None, url: str | None) -> CatalogReader:
    if root is None and url is None:
        raise _fail("expected ROOT (its SQLite catalog) or --catalog-url postgresql://...")
    try:
        return CatalogReader(root, url=url)
    except ArchiverError as exc:
        raise _fail(str(exc)) from exc


def _filters(since: str | None, where: list[str] | None) -> dict[str, Any]:
    """``since`` checked, ``where`` pairs parsed (values as JSON when they are, as ``render`` takes them)."""
    from .app import _parse_value

    try:
        parse_since(since)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    parsed: dict[str, Any] = {}
    for pair in where or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--where: expected key=value, got {pair!r}")
        parsed[key] = _parse_value(value)
    return parsed


def _time(value: float) -> str:
    return datetime.fromtimestamp(value).isoformat(sep=" ", timespec="milliseconds")


def _short(checksum: str | None) -> str:
    """The first hex digits of a checksum (the algorithm is xxh3-128 throughout, ``outcomes.py``)."""
    if checksum is None:
        return "-"
    return checksum.partition(":")[2][:CHECKSUM_SHOWN]


def _item_row(item: CatalogItem, shared: bool) -> list[str]:
    sequence = "-" if item.sequence is None else str(item.sequence)
    where = [str(item.host), str(item.root)] if shared else []
    return [*where, item.source, sequence, item.location, str(item.nbytes), _time(item.received), _short(item.checksum)]


def _failure_row(failure: CatalogFailure, shared: bool) -> list[str]:
    sequence = "-" if failure.sequence is None else str(failure.sequence)
    where = [str(failure.host), str(failure.root)] if shared else []
    return [*where, failure.source, sequence, failure.kind, failure.entry or "-", failure.error,
            _time(failure.received)]  # fmt: skip


def ls(
    root: RootArgument = None,
    catalog_url: UrlOption = None,
    host: HostOption = None,
    archiver: ArchiverOption = None,
    source: Annotated[str | None, typer.Option(help="only items of this HERO")] = None,
    since: Annotated[
        str | None, typer.Option(help="only items received since: ISO 8601 (2026-03-01T12:00) or a duration (10m, 2h)")
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(help="metadata key=value (value parsed as JSON if it can be; repeatable: all must hold)"),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="at most this many items")] = None,
    failures: Annotated[bool, typer.Option("--failures", help="the dead-lettered and dropped items instead")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="one JSON object per item and line, every column")] = False,
) -> None:
    """List what the catalog of ROOT says was archived (in commit order): where each item went, its bytes,
    when it arrived, its checksum."""
    parsed = _filters(since, where)
    with _open(root, catalog_url) as reader:
        rows: Iterator[CatalogItem | CatalogFailure] = (reader.failures if failures else reader.items)(
            source, since, parsed, limit, archiver, host
        )
        try:
            if json_lines:
                _print_json_lines(rows, reader.failure_columns if failures else reader.item_columns)
            else:
                _print_table(rows, reader, failures, str(root if catalog_url is None else reader.where))
        except ArchiverError as exc:  # --host of a root's SQLite catalog; a database that went away
            raise _fail(str(exc)) from exc


def _print_json_lines(rows: Iterator[CatalogItem | CatalogFailure], columns: tuple[str, ...]) -> None:
    """One JSON object per row, with the catalog's columns (a root's catalog has no host nor root)."""
    out = sys.stdout
    for row in rows:
        out.write(json.dumps({name: getattr(row, name) for name in columns}, ensure_ascii=False) + "\n")


def _print_table(
    rows: Iterator[CatalogItem | CatalogFailure], reader: CatalogReader, failures: bool, where: str
) -> None:
    kind = "failure" if failures else "item"
    table = Table(title=f"catalog of {where}", caption_justify="left")
    columns: tuple[str, ...] = ("host", "root") if reader.shared else ()
    columns += (
        ("source", "sequence", "kind", "entry", "error", "received")
        if failures
        else ("source", "sequence", "location", "bytes", "received", "checksum")
    )
    for column in columns:
        table.add_column(
            column,
            justify="right" if column in ("sequence", "bytes") else "left",
            overflow="fold",
            no_wrap=column in ("checksum", "sequence", "bytes"),
            min_width=12 if column in ("location", "entry", "error", "root") else None,
        )
    shown = 0
    for row in rows:
        cells = _failure_row(row, reader.shared) if isinstance(row, CatalogFailure) else _item_row(row, reader.shared)
        table.add_row(*(escape(cell) for cell in cells))
        shown += 1
    table.caption = f"{shown} {kind}(s)"
    Console().print(table)


def export(
    parquet: Annotated[Path, typer.Option("--parquet", help="the Parquet file to write")],
    root: RootArgument = None,
    catalog_url: UrlOption = None,
    host: HostOption = None,
    archiver: ArchiverOption = None,
    failures: Annotated[
        bool, typer.Option("--failures", help="export the failures table instead of the items")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="replace FILE if it exists")] = False,
) -> None:
    """Write the catalog of ROOT (its items, or with --failures its failures) as a Parquet table: every column
    (a shared catalog's host and root too), metadata as JSON text. Written to a temporary beside FILE and
    renamed, so FILE is never half-written."""
    try:
        pa = require_extra("parquet", "pyarrow")
        pq = importlib.import_module("pyarrow.parquet")  # part of pyarrow
    except ArchiverError as exc:
        raise _fail(f"export --parquet needs pyarrow: {exc}") from exc
    target = parquet.absolute()
    if target.exists() and not force:
        raise _fail(f"{target} exists; expected a new file (pass --force to replace it)")
    table_name = "failures" if failures else "items"
    with _open(root, catalog_url) as reader:
        temporary = target.parent / f".{target.name}.{os.getpid()}.tmp"
        try:
            written = _write_parquet(pa, pq, reader, table_name, temporary, Filters(archiver=archiver, host=host))
            _publish(temporary, target, force)
        except OSError as exc:
            raise _fail(f"cannot write {target}: {exc}") from exc
        except ArchiverError as exc:
            raise _fail(str(exc)) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    errors.print(f"exported {written} row(s) of the {table_name} of {root or reader.where} to {target}")


#: Arrow types of the catalog's columns (every other column is text).
_ARROW_INTEGERS = frozenset({"id", "sequence", "idx", "count", "nbytes"})
_ARROW_FLOATS = frozenset({"received", "committed", "time"})


def _write_parquet(pa: Any, pq: Any, reader: CatalogReader, table_name: str, path: Path, filters: Filters) -> int:
    """Write table ``table_name`` (its rows that ``filters`` keep) to ``path`` in row groups of one batch each;
    how many rows."""
    columns = reader.item_columns if table_name == "items" else reader.failure_columns
    schema = pa.schema(
        [
            (name, pa.int64() if name in _ARROW_INTEGERS else pa.float64() if name in _ARROW_FLOATS else pa.string())
            for name in columns
        ]
    )
    written = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for rows in reader.table(table_name, filters=filters):
            arrays = [pa.array([row[index] for row in rows], type=field.type) for index, field in enumerate(schema)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            written += len(rows)
    return written


def _publish(temporary: Path, target: Path, force: bool) -> None:
    """Give the finished file its name: replacing one there with ``force``, else only if there is none."""
    if force:
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)  # fails if the name was taken meanwhile, unlike a rename
    except FileExistsError:
        raise _fail(f"{target} exists; expected a new file (pass --force to replace it)") from None
