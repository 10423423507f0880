"""``heros-archiver ls`` and ``export``: the catalog as a table, as JSON lines and as a Parquet file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import RigFactory
from helpers import wait_for_items
from heros_archiver.cli.app import app
from heros_archiver.observe.catalog_reader import CatalogReader, parse_since

pytestmark = pytest.mark.timeout(90)

CLI = [sys.executable, "-m", "heros_archiver.cli"]


@pytest.fixture
def archive(make_rig: RigFactory, tmp_path: Path) -> Path:
    """An archive root whose catalog holds 12 items of two sources (metadata run, tag) and one dead letter."""
    rig = make_rig("{{ file_path }}/{{ source_name }}/{{ frame }}.npy", matched=(), sequence_key="frame")
    for frame in range(12):
        source = "cam" if frame < 8 else "cam2"
        rig.archiver.feed(source, (np.full(4, frame), {"frame": frame, "run": frame % 3, "tag": f"t{frame // 6}"}))
    rig.archiver.feed("cam", ("no array", {"frame": 99, "run": 1}))
    wait_for_items(rig.archiver, 13)
    rig.archiver.close()
    return tmp_path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _json_lines(*args: str) -> list[dict[str, object]]:
    code, output = _run("ls", *args, "--json")
    assert code == 0, output
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_ls_shows_every_item_as_a_table(archive: Path) -> None:
    result = subprocess.run(
        [*CLI, "ls", str(archive)], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}
    )
    assert result.returncode == 0, result.stderr
    for frame in range(8):
        assert f"cam/{frame}.npy" in result.stdout
    assert "cam2/11.npy" in result.stdout and "12 item(s)" in result.stdout
    with CatalogReader(archive) as reader:
        first = next(reader.items())
    assert first.checksum is not None and first.checksum.split(":")[1][:8] in result.stdout


def test_ls_json_gives_every_column_and_the_metadata(archive: Path) -> None:
    rows = _json_lines(str(archive))
    assert [row["sequence"] for row in rows] == list(range(12))
    first = rows[0]
    assert set(first) == {"id", "archiver", "source", "event", "sequence", "path", "member", "idx", "count",
                          "nbytes", "checksum", "metadata", "received", "committed"}  # fmt: skip
    assert first["metadata"] == {"frame": 0, "run": 0, "tag": "t0", "file_path": str(archive)}
    assert first["path"] == "cam/0.npy" and first["archiver"] == "ArrayArchiver:acquisition_data"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--source", "cam2"], [8, 9, 10, 11]),
        (["--where", "run=1"], [1, 4, 7, 10]),
        (["--where", "run=1", "--where", "tag=t1"], [7, 10]),
        (["--where", 'tag="t0"'], [0, 1, 2, 3, 4, 5]),
        (["--where", 'run="1"'], []),  # the text "1" is not the number 1
        (["--where", "missing=1"], []),
        (["--limit", "3"], [0, 1, 2]),
        (["--since", "1h"], list(range(12))),
        (["--since", "2999-01-01T00:00:00"], []),
        (["--source", "cam", "--where", "run=2", "--limit", "1"], [2]),
    ],
)
def test_ls_filters(archive: Path, options: list[str], expected: list[int]) -> None:
    assert [row["sequence"] for row in _json_lines(str(archive), *options)] == expected


def test_ls_failures(archive: Path) -> None:
    (failure,) = _json_lines(str(archive), "--failures")
    assert failure["kind"] == "dead_lettered" and failure["sequence"] == 99 and "PayloadError" in str(failure["error"])
    code, output = _run("ls", str(archive), "--failures")
    assert code == 0 and "dead_lettered" in output and "1 failure(s)" in output


def test_ls_without_a_catalog_says_where_it_looked_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "ls", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert str(tmp_path / ".heros-archiver" / "catalog.sqlite") in " ".join(result.stderr.split())


@pytest.mark.parametrize(("option", "value"), [("--since", "yesterday-ish"), ("--where", "no-equals-sign")])
def test_ls_refuses_a_bad_filter(archive: Path, option: str, value: str) -> None:
    code, output = _run("ls", str(archive), option, value)
    assert code == 2 and "expected" in output


def test_parse_since_reads_durations_and_iso_times() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("1d", now=100_000.0) == 13_600.0
    assert parse_since("2026-03-01T00:00:00+00:00") == 1772323200.0
    assert parse_since(12.5) == 12.5 and parse_since(None) is None
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("soon")


def test_export_writes_the_catalog_as_parquet(archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "catalog.parquet"
    target.parent.mkdir()
    code, output = _run("export", str(archive), "--parquet", str(target))
    assert code == 0, output
    table = pq.read_table(target)
    with CatalogReader(archive) as reader:
        items = list(reader.items())
    assert table.num_rows == 12
    assert table.column("path").to_pylist() == [item.path for item in items]
    assert table.column("checksum").to_pylist() == [item.checksum for item in items]
    assert [json.loads(m) for m in table.column("metadata").to_pylist()] == [item.metadata for item in items]
    assert str(table.schema.field("received").type) == "double" and str(table.schema.field("idx").type) == "int64"
    assert os.listdir(target.parent) == ["catalog.parquet"], "no temporary left beside it"

    failures = tmp_path / "out" / "failures.parquet"
    assert _run("export", str(archive), "--parquet", str(failures), "--failures")[0] == 0
    assert pq.read_table(failures).column("kind").to_pylist() == ["dead_lettered"]


def test_export_refuses_to_overwrite_unless_forced(archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "catalog.parquet"
    target.write_bytes(b"keep me")
    code, output = _run("export", str(archive), "--parquet", str(target))
    assert code == 2 and "--force" in output and target.read_bytes() == b"keep me"
    assert _run("export", str(archive), "--parquet", str(target), "--force")[0] == 0
    assert pq.read_table(target).num_rows == 12


def test_export_without_pyarrow_names_the_extra(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # an import of it fails, as where it is not installed
    code, output = _run("export", str(archive), "--parquet", str(tmp_path / "x.parquet"))
    assert code == 2 and "[parquet]" in output and not (tmp_path / "x.parquet").exists()


def test_export_without_a_catalog_exits_2(tmp_path: Path) -> None:
    code, output = _run("export", str(tmp_path), "--parquet", str(tmp_path / "x.parquet"))
    assert code == 2 and "no catalog" in output
