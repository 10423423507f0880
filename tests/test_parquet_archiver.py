"""ParquetArchiver and DatasourceArchiver over real Zenoh: readings into tables read back by pyarrow, DuckDB,
pandas and polars; the journal across SIGKILL; schema changes; rollover by template, rows and size."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from heros import LocalDatasourceHERO
from hypothesis import given, settings
from hypothesis import strategies as st

import procs
from conftest import Rig, RigFactory
from helpers import RawCamera, dead_letter_entries, read_entry, tiny_file_system, wait_for_items, wait_until
from heros_archiver import ConfigurationError, DatasourceArchiver, ParquetArchiver
from heros_archiver.cli.config import build_archivers, load_config
from heros_archiver.pipeline.queueing import Item
from heros_archiver.sinks.containers.parquet import JOURNAL_SUBDIR, ParquetFile, recover_journals
from heros_archiver.sinks.containers.parquet_rows import OWN_COLUMNS, RowBuffer, schema_of
from heros_archiver.testing import free_port, loopback_config_json, session_manager, unique_realm, wait_for_subscriber

pytestmark = pytest.mark.timeout(120)

OWN = tuple(field.name for field in OWN_COLUMNS)


def rig(make_rig: RigFactory, cameras: tuple[str, ...] = ("s1",), **kwargs: Any) -> Rig:
    """Sensors (RawCamera: the dict is the whole payload) and a ParquetArchiver of their readings."""
    kwargs.setdefault("file_template", "{{ file_path }}/source={{ source_name }}/readings.parquet")
    made = make_rig(
        None, archiver_cls=ParquetArchiver, camera_cls=RawCamera, cameras=cameras,
        object_selector="*" if len(cameras) > 1 else cameras[0], **kwargs,
    )  # fmt: skip
    return made


def parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if ".heros-archiver" not in p.parts)


def rows(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in OWN} for row in pq.read_table(path).to_pylist()]


def journal_rows(root: Path) -> int:
    """Rows in the journals under ``root`` now (whole batches: what a reader of the stream gets)."""
    total = 0
    for journal in (root / JOURNAL_SUBDIR).glob("*.arrows"):
        with pa.OSFile(str(journal), "rb") as source:
            try:
                reader = ipc.open_stream(source)
                while True:
                    total += reader.read_next_batch().num_rows
            except (StopIteration, pa.ArrowInvalid, OSError):  # the end, or a batch still being written (OSError:
                pass  # "Expected to be able to read N bytes for message body"): what follows is not whole yet
    return total


def test_readings_of_several_heros_read_back_equal_by_pyarrow_and_duckdb(make_rig: RigFactory, tmp_path: Path) -> None:
    sensors = ("s1", "s2", "s3")
    made = rig(make_rig, sensors, sequence_key="n")
    sent: dict[str, list[dict[str, Any]]] = {name: [] for name in sensors}
    for n in range(40):
        for k, name in enumerate(sensors):
            reading = {"n": n, "temperature": 20.0 + k + n / 100, "unit": "degC", "ok": n % 3 != 0, "label": f"{k}:{n}"}
            sent[name].append(reading)
            made.cameras[name].acquisition_data(reading)
    wait_for_items(made.archiver, 120)
    made.archiver.close()

    total = made.archiver.stats()["total"]
    assert total["archived"] == 120 and total["dead_lettered"] == 0, total
    for name in sensors:
        path = tmp_path / f"source={name}" / "readings.parquet"
        table = pq.read_table(path)
        assert table.schema.field("temperature").type == pa.float64() and table.schema.field("n").type == pa.int64()
        assert rows(path) == sent[name]
        assert table.column("source_name").to_pylist() == [name] * 40
        assert table.column("sequence").to_pylist() == list(range(40))
    query = f"SELECT source, n, temperature, unit, ok, label FROM '{tmp_path}/**/*.parquet' ORDER BY source, n"
    got = duckdb.sql(query).fetchall()  # the Hive folder source=... is a column
    expected = [
        (name, r["n"], r["temperature"], r["unit"], r["ok"], r["label"]) for name in sensors for r in sent[name]
    ]
    assert got == expected


def test_closed_files_are_read_by_pandas_polars_and_duckdb_while_the_archiver_runs(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """A file of an earlier run (``run`` in the template) is published when the next run starts a new file
    and the old one is closed (``max_open_files=1``); the file being written is never visible as .parquet."""
    import pandas as pd
    import polars as pl

    made = rig(make_rig, file_template="{{ file_path }}/batch={{ run }}/{{ source_name }}.parquet", max_open_files=1)
    for n in range(10):
        made.camera.acquisition_data({"run": 1, "n": n, "v": n * 0.5})
    wait_for_items(made.archiver, 10)
    assert parquet_files(tmp_path) == [], "an open file is never visible under a .parquet name"
    made.camera.acquisition_data({"run": 2, "n": 0, "v": 0.0})
    wait_for_items(made.archiver, 11)
    wait_until(lambda: parquet_files(tmp_path) != [], 30, "the file of run 1 to be published")

    pattern = f"{tmp_path}/**/*.parquet"
    frame = pd.read_parquet(tmp_path / "batch=1" / "s1.parquet")
    assert frame["n"].tolist() == list(range(10)) and frame["v"].sum() == pytest.approx(22.5)
    polars_rows = pl.scan_parquet(pattern, hive_partitioning=True).select("n", "v").collect()
    assert polars_rows["n"].to_list() == list(range(10))
    assert duckdb.sql(f"SELECT count(*), max(run) FROM '{pattern}'").fetchall() == [(10, 1)]
    made.archiver.close()
    assert duckdb.sql(f"SELECT count(*), max(run) FROM '{pattern}'").fetchall() == [(11, 2)]


def test_sigkill_with_an_open_row_group_then_restart_has_every_accepted_reading_exactly_once(tmp_path: Path) -> None:
    """``heros-archiver run`` is SIGKILLed after journaling 20 readings (four commits of 5; the row group and
    the Parquet file are still open, nothing is published) with 3 more not yet journaled (not accepted: lost
    with the process, as the README says). The restart rebuilds the file from the journal (all 20, once); the
    sender then sends the readings from 20 on again, and every reading is in a file exactly once."""
    archive = tmp_path / "archive"
    port, realm = free_port(), unique_realm()
    arguments = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "default_metadata": {"file_path": str(archive)},
        "file_template": "{{ file_path }}/run.parquet",
        "sequence_key": "n",
        "flush_items": 5,
        "flush_seconds": 3600,
        "flush_idle": None,
        "row_group_rows": 1000,
    }
    config = procs.write_config(tmp_path / "config.json", arguments, classname="heros_archiver.ParquetArchiver")
    with procs.camera(port, realm, cls=RawCamera) as cam:
        with procs.run_archiver(config, realm, port, tmp_path / "run-1.log") as proc:
            procs.wait_for_archiver(cam, proc)
            for n in range(23):
                cam.acquisition_data({"n": n, "v": n * 1.5})
            wait_until(lambda: journal_rows(archive) == 20, 60, "four journal commits")
            proc.kill()
        assert parquet_files(archive) == [], "nothing is published before a file is closed"
        assert journal_rows(archive) == 20
        with procs.run_archiver(config, realm, port, tmp_path / "run-2.log") as proc:
            procs.wait_for_archiver(cam, proc)
            assert rows(archive / "run.parquet") == [{"n": n, "v": n * 1.5} for n in range(20)]
            for n in range(20, 30):  # what the archiver had not accepted, and more
                cam.acquisition_data({"n": n, "v": n * 1.5})
            wait_until(lambda: journal_rows(archive) == 10, 60, "the new readings journaled")
            code, output = proc.terminate()
        assert code == 0, output
        total = procs.parse_stats_table(output)
        assert total["received"] == 10 and total["archived"] == 10 and total["dead_lettered"] == 0, output
    assert not list((archive / JOURNAL_SUBDIR).iterdir())
    back = [row for path in parquet_files(archive) for row in rows(path)]
    assert sorted(row["n"] for row in back) == list(range(30)), "every reading exactly once"
    assert [p.name for p in parquet_files(archive)] == ["run-1.parquet", "run.parquet"]


def test_a_journal_cut_short_by_a_kill_gives_its_whole_batches_back(tmp_path: Path) -> None:
    """A kill in the middle of a journal write leaves a partial batch: it was never acknowledged, and the
    rebuilt file has every whole batch before it."""
    root = tmp_path
    schema = schema_of([{"v": 1.0}], "s")
    buffer = RowBuffer(schema, "x")
    file = ParquetFile(
        str(root), root / "a.parquet", schema, row_group_rows=10, row_group_seconds=60, compression="zstd", fsync=False
    )
    for n in range(3):
        buffer.add([{"v": float(n)}], "s", n, 0.0, bytes(16))
        file.write(buffer.take())
    journal = root / JOURNAL_SUBDIR / file.journal_name
    file.abandon()
    whole = journal.stat().st_size
    with open(journal, "ab") as handle:  # the start of a fourth batch, cut short
        handle.write(b"\xff\xff\xff\xff\x40\x00\x00\x00" + b"\x00" * 20)
    assert whole < journal.stat().st_size
    # the journal is this process's: recovery at start leaves the journals of live processes alone
    assert recover_journals(str(root)) == []
    [found] = [file.recover()]
    assert found is not None and found.rows == 3
    assert pq.read_table(root / "a.parquet").column("v").to_pylist() == [0.0, 1.0, 2.0]
    assert not journal.exists()


def test_a_reading_of_another_schema_starts_a_new_file_with_the_wider_schema(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    made = rig(make_rig)
    readings = [{"n": 0, "v": 1.5}, {"n": 1, "v": 2.5}, {"n": 2, "v": "high"}, {"n": 3, "v": "low", "extra": True}]
    for reading in readings:
        made.camera.acquisition_data(reading)
    wait_for_items(made.archiver, 4)
    made.archiver.close()

    folder = tmp_path / "source=s1"
    parts = [folder / "readings.parquet", folder / "readings-1.parquet", folder / "readings-2.parquet"]
    assert sorted(folder.iterdir()) == sorted(parts)
    assert [rows(p) for p in parts] == [readings[:2], [readings[2]], [readings[3]]]
    assert pq.read_schema(parts[1]).field("v").type == pa.string()
    assert pq.read_schema(parts[2]).names[-3:] == ["n", "v", "extra"]
    assert made.archiver.stats()["total"]["dead_lettered"] == 0


def test_under_dead_letter_a_reading_of_another_schema_is_dead_lettered_naming_the_key_and_both_types(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    made = rig(make_rig, on_schema_change="dead_letter")
    for reading in ({"n": 0, "v": 1.5}, {"n": 1, "v": "high"}, {"n": 2, "v": 2.5, "new": 1}, {"n": 3, "v": 3.5}):
        made.camera.acquisition_data(reading)
    total = wait_for_items(made.archiver, 4)
    made.archiver.close()

    assert total["archived"] == 2 and total["dead_lettered"] == 2, total
    errors = sorted(read_entry(entry)["error"] for entry in dead_letter_entries(tmp_path))
    assert any("key 'v' of type string" in e and "has double" in e and "'s1'" in e for e in errors), errors
    assert any("new key 'new' (type int64)" in e for e in errors), errors
    assert rows(tmp_path / "source=s1" / "readings.parquet") == [{"n": 0, "v": 1.5}, {"n": 3, "v": 3.5}]


def test_values_parquet_cannot_hold_and_payloads_that_are_no_reading_are_dead_lettered(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    made = rig(make_rig)
    for payload in ({"n": 0}, {"n": 2**70}, [1, 2, 3], {"received": 1}, {"n": 1}):
        made.camera.acquisition_data(payload)
    total = wait_for_items(made.archiver, 5)
    made.archiver.close()

    assert total["archived"] == 2 and total["dead_lettered"] == 3, total
    errors = " | ".join(read_entry(entry)["error"] for entry in dead_letter_entries(tmp_path))
    assert "does not fit a 64-bit column" in errors and "one of the archiver's own columns" in errors, errors
    assert rows(tmp_path / "source=s1" / "readings.parquet") == [{"n": 0}, {"n": 1}]


def test_numpy_scalars_and_datetimes_keep_their_types() -> None:
    when = dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.UTC)
    reading = {"f": np.float32(1.5), "i": np.int16(-3), "u": np.uint64(2**63), "b": np.bool_(True), "t": when}
    schema = schema_of([reading], "s")
    assert [schema.field(k).type for k in reading] == [
        pa.float32(), pa.int16(), pa.uint64(), pa.bool_(), pa.timestamp("us", tz="UTC")
    ]  # fmt: skip
    buffer = RowBuffer(schema, "x")
    buffer.check([reading], "s")
    buffer.add([reading], "s", None, 0.0, bytes(16))
    row = buffer.take().to_pylist()[0]
    assert row["u"] == 2**63 and row["t"] == when and row["f"] == 1.5


def test_rollover_by_template_hour_and_hive_folders(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, file_template="{{ file_path }}/source={{ source_name }}/date={{ date }}/{{ hour }}.parquet")
    for n in range(5):
        made.camera.acquisition_data({"n": n})
    wait_for_items(made.archiver, 5)
    made.archiver.close()
    [path] = parquet_files(tmp_path)
    received = pq.read_table(path).column("received").to_pylist()
    assert path.relative_to(tmp_path).parts == (
        "source=s1",
        f"date={received[0]:%Y-%m-%d}",
        f"{received[0]:%H}.parquet",
    )
    hive = duckdb.sql(f"SELECT DISTINCT source, date FROM read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=1)")
    assert hive.fetchall() == [("s1", received[0].date())]


def test_paths_kept_per_hour_change_at_the_hour_of_the_receive_time(make_rig: RigFactory, tmp_path: Path) -> None:
    """Paths of a template that reads the date and hour are kept per UTC hour of the receive time: a reading a
    millisecond before midnight and one at midnight go to different dates, and a kept path is what a render
    of that time gives."""
    made = rig(make_rig, file_template="{{ file_path }}/{{ date }}/{{ hour }}-{{ run }}.parquet")
    midnight = dt.datetime(2026, 12, 5, tzinfo=dt.UTC).timestamp()
    metadata = {"file_path": str(tmp_path), "run": 3}
    routes = []
    for received in (midnight - 3600.001, midnight - 0.001, midnight - 3599.0, midnight, midnight + 3599.999):
        item = Item("s1", {"n": 1}, metadata, 64, received=received)
        made.archiver._route(item)
        routes.append(os.path.relpath(str(item.route), tmp_path))
    assert routes == ["2026-12-04/22-3.parquet", "2026-12-04/23-3.parquet", "2026-12-04/23-3.parquet",
                      "2026-12-05/00-3.parquet", "2026-12-05/00-3.parquet"]  # fmt: skip
    assert len(made.archiver._routes) == 3


def test_paths_kept_per_value_render_as_a_render_would(make_rig: RigFactory, tmp_path: Path) -> None:
    """Rendered paths are kept per the values the template reads: 1, 1.0 and True still go apart, and a reading
    without the key is dead-lettered, also after one with it was routed."""
    made = rig(make_rig, file_template="{{ file_path }}/run-{{ run }}.parquet")
    for reading in ({"run": 1}, {"run": 1.0}, {"run": True}, {"n": 0}, {"run": 1}):
        made.camera.acquisition_data(reading)
    total = wait_for_items(made.archiver, 5)
    made.archiver.close()
    assert total["archived"] == 4 and total["dead_lettered"] == 1, total
    assert [p.name for p in parquet_files(tmp_path)] == ["run-1.0.parquet", "run-1.parquet", "run-True.parquet"]
    assert len(rows(tmp_path / "run-1.parquet")) == 2


def test_a_file_closed_by_the_open_file_limit_is_followed_by_the_next_part(
    make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two sources alternate with ``max_open_files=1``: each switch publishes the other's file, and its next
    reading starts the next part (never the name just published, which would move it with a warning)."""
    made = rig(make_rig, ("s1", "s2"), max_open_files=1)
    for n in range(3):
        for name in ("s1", "s2"):
            made.cameras[name].acquisition_data({"n": n})
            wait_for_items(made.archiver, 2 * n + (name == "s2") + 1)
    made.archiver.close()
    for name in ("s1", "s2"):
        folder = tmp_path / f"source={name}"
        parts = [folder / "readings.parquet", folder / "readings-1.parquet", folder / "readings-2.parquet"]
        assert sorted(folder.iterdir()) == sorted(parts)
        assert [rows(p) for p in parts] == [[{"n": 0}], [{"n": 1}], [{"n": 2}]]
    assert "existed when its rows were published" not in caplog.text


def test_rollover_by_rows_and_by_size(make_rig: RigFactory, tmp_path: Path) -> None:
    made = rig(make_rig, file_template="{{ file_path }}/rows.parquet", max_rows=4)
    for n in range(10):
        made.camera.acquisition_data({"n": n})
    wait_for_items(made.archiver, 10)
    made.archiver.close()
    names = ["rows.parquet", "rows-1.parquet", "rows-2.parquet"]
    assert [len(rows(tmp_path / name)) for name in names] == [4, 4, 2]

    sized = tmp_path / "sized"
    made = rig(
        make_rig, file_template="{{ file_path }}/sized/big.parquet", max_bytes=50_000, flush_items=1, row_group_rows=1,
        compression="none",
    )  # fmt: skip
    for n in range(12):
        made.camera.acquisition_data({"n": n, "blob": f"{n:04d}" * 1000})
    wait_for_items(made.archiver, 12)
    made.archiver.close()
    files = sorted(sized.glob("*.parquet"), key=lambda p: int(p.stem.partition("-")[2] or 0))
    assert len(files) >= 3
    assert [row["n"] for path in files for row in rows(path)] == list(range(12))
    sizes = [path.stat().st_size for path in files]  # a file ends after the row group that reached the limit,
    assert all(size < 3 * 50_000 for size in sizes) and all(size >= 50_000 for size in sizes[:-1]), sizes


def test_a_full_disk_is_retried_and_every_reading_ends_in_a_file_exactly_once(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    """The archive (journal included) is on a 4 MiB tmpfs that a filler leaves ~150 KiB of: journal writes
    fail, their readings are retried; once the filler is gone every reading is archived, and after the
    drain every one is in a Parquet file exactly once (journals rebuilt into files), no journal left."""
    data = tmp_path / "data"
    with tiny_file_system(data, "4m"):
        filler = data / "filler"
        filler.write_bytes(b"\0" * (4 * 2**20 - 150 * 2**10))
        made = rig(
            make_rig, file_template=f"{data}/run.parquet", flush_items=10, max_retries=1000, retry_delay=0.02,
            retry_max_delay=0.05, compression="none",
        )  # fmt: skip
        for n in range(200):
            made.camera.acquisition_data({"n": n, "blob": f"{n:05d}" * 400})
        wait_until(lambda: made.archiver.stats()["total"]["retried"] > 0, what="a failed commit")
        filler.unlink()
        total = wait_for_items(made.archiver, 200)
        made.archiver.close()
        assert total["archived"] == 200 and total["dead_lettered"] == 0, total
        back = [row["n"] for path in parquet_files(data) for row in rows(path)]
        assert sorted(back) == list(range(200)), sorted(back)
        assert not list((data / JOURNAL_SUBDIR).glob("*.arrows"))


def test_an_existing_file_is_kept_under_on_exists_error(make_rig: RigFactory, tmp_path: Path) -> None:
    path = tmp_path / "source=s1" / "readings.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"old": [1]}), path)
    before = path.read_bytes()
    made = rig(make_rig, on_exists="error")
    made.camera.acquisition_data({"n": 0})
    total = wait_for_items(made.archiver, 1)
    made.archiver.close()
    assert total["dead_lettered"] == 1 and path.read_bytes() == before


def test_a_datasource_heros_readings_are_archived_with_units_from_a_three_line_boss_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, realm = free_port(), unique_realm()
    config = tmp_path / "sensors.json"
    config.write_text(
        '{"_id": "sensor-archive", "classname": "heros_archiver.DatasourceArchiver",\n'
        f' "arguments": {{"file_template": "{tmp_path}/sensors/source={{{{ source_name }}}}/readings.parquet",\n'
        '   "flush_seconds": 0.1}}\n'
    )
    assert len(config.read_text().splitlines()) == 3
    listening = session_manager(listen_port=port)
    sources = [LocalDatasourceHERO(name, realm=realm, session_manager=listening) for name in ("thermo", "gauge")]
    monkeypatch.setenv("HEROS_ZENOH_CONFIG", loopback_config_json(connect_port=port))
    try:
        [archiver] = build_archivers(load_config(config), realm)
        try:
            assert isinstance(archiver, DatasourceArchiver)
            for source in sources:
                wait_for_subscriber(source, "observable_data")
            for n in range(5):
                sources[0].observable_data({"T1": (20.0 + n, "degC"), "T2": (30 + n, "degC")})
                sources[1].observable_data({"p": (1e-7 * (n + 1), "mbar")})
            wait_for_items(archiver, 10)
        finally:
            archiver.close()
    finally:
        for source in sources:
            source._destroy_hero()
    total = archiver.stats()["total"]
    assert total["archived"] == 10 and total["dead_lettered"] == 0, total
    thermo = pq.read_table(tmp_path / "sensors" / "source=thermo" / "readings.parquet")
    assert thermo.schema.field("raw_value").type == pa.float64() and thermo.schema.field("inbound").type == pa.int64()
    assert thermo.column("id").to_pylist() == ["T1", "T2"] * 5
    assert thermo.column("raw_value").to_pylist() == [v for n in range(5) for v in (20.0 + n, 30.0 + n)]
    assert set(thermo.column("raw_unit").to_pylist()) == {"degC"}
    assert thermo.column("calibrated").to_pylist() == [False] * 10
    assert all(t > 1e9 for t in thermo.column("time").to_pylist())
    gauge = duckdb.sql(f"SELECT raw_value, raw_unit FROM '{tmp_path}/sensors/source=gauge/*.parquet'").fetchall()
    assert gauge == [(pytest.approx(1e-7 * (n + 1)), "mbar") for n in range(5)]


def test_resumed_spool_items_already_in_a_file_are_not_written_twice(make_rig: RigFactory, tmp_path: Path) -> None:
    """Readings without a sequence value: a resumed item whose key a published part holds counts as
    archived; the others go into the next part."""
    from heros_archiver.state.spool import Spool

    made = rig(make_rig)
    for n in range(3):
        made.camera.acquisition_data({"n": n})
    wait_for_items(made.archiver, 3)
    made.archiver.close()
    spool = Spool(tmp_path / ".heros-archiver" / "spool", "acquisition_data")
    for n in (1, 2, 3):
        reading = {"n": n}
        metadata = {"file_path": str(tmp_path), **reading}
        spool.put(Item("s1", reading, metadata, 100))
    again = rig(make_rig)
    wait_until(lambda: again.archiver.is_queue_drained() and not again.archiver.stats()["queue"]["spooled"])
    again.archiver.close()
    folder = tmp_path / "source=s1"
    assert rows(folder / "readings.parquet") == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert rows(folder / "readings-1.parquet") == [{"n": 3}]


def test_every_parquet_argument_is_checked_before_zenoh(tmp_path: Path) -> None:
    for bad in (
        {"on_schema_change": "cast"},
        {"row_group_rows": 0},
        {"row_group_seconds": -1},
        {"flush_items": 1.5},
        {"max_rows": 0},
        {"max_bytes": "1 MB"},
        {"on_exists": "overwrite"},
        {"compression": "brotli9"},
        {"fsync": "yes"},
        {"idle_timeout": None},
        {"flush_idle": -1},
        {"max_open_files": 0},
        {"root": 3},
    ):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            ParquetArchiver(f"{tmp_path}/x.parquet", "s", "e", **bad)
    with pytest.raises(ConfigurationError, match="file_template"):
        ParquetArchiver(None, "s", "e")  # type: ignore[arg-type]


def test_import_heros_archiver_does_not_load_pyarrow() -> None:
    code = "import sys, heros_archiver; heros_archiver.ParquetArchiver; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(max_size=20),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
)
_READINGS = st.dictionaries(st.text(max_size=12), _SCALARS, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(_READINGS, min_size=1, max_size=4))
def test_readings_from_the_network_come_back_as_sent_or_are_refused_with_a_payload_error(
    readings: list[dict[str, Any]],
) -> None:
    """Any readings: each one fits the schema of the first (and reads back equal, a missing key as None), does
    not fit (SchemaMismatchError, naming the key), or holds what no column can (PayloadError); nothing else."""
    from heros_archiver.errors import PayloadError
    from heros_archiver.sinks.containers.parquet_rows import SchemaMismatchError

    try:
        schema = schema_of(readings[:1], "s")
    except PayloadError:
        return
    buffer = RowBuffer(schema, "x")
    kept = []
    for reading in readings:
        try:
            buffer.check([reading], "s")
        except SchemaMismatchError as exc:
            assert repr(exc.key) in str(exc)
            continue
        except PayloadError:
            continue
        buffer.add([reading], "s", None, 0.0, bytes(16))
        kept.append(reading)
    names = [field.name for field in schema][len(OWN) :]
    back = [{k: v for k, v in row.items() if k not in OWN} for row in buffer.take().to_pylist()]
    assert back == [{name: reading.get(name) for name in names} for reading in kept]


def test_a_path_out_of_the_root_from_the_metadata_is_dead_lettered(make_rig: RigFactory, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    made = rig(make_rig, file_template=f"{archive}/{{{{ name }}}}.parquet")
    for name in ("../escaped", "/etc/escaped", "ok"):
        made.camera.acquisition_data({"name": name, "n": 1})
    total = wait_for_items(made.archiver, 3)
    made.archiver.close()
    assert total["archived"] == 2 and total["dead_lettered"] == 1, total  # "archive//etc/..." stays under it
    found = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet"))
    assert found == [Path("archive/etc/escaped.parquet"), Path("archive/ok.parquet")]
    [entry] = dead_letter_entries(archive)
    assert "outside the archive root" in read_entry(entry)["error"]


def test_the_end_of_a_burst_is_journaled_once_no_reading_arrives(make_rig: RigFactory, tmp_path: Path) -> None:
    """Neither flush_items nor flush_seconds is reached: the idle commit (flush_idle, default 0.05 s) makes the
    readings archived while the archiver runs; with flush_idle=None they wait."""
    made = rig(make_rig, file_template="{{ file_path }}/idle.parquet", flush_items=1000, flush_seconds=3600)
    for n in range(3):
        made.camera.acquisition_data({"n": n})
    assert wait_for_items(made.archiver, 3, timeout=30)["archived"] == 3
    waiting = rig(
        make_rig, cameras=("s2",), file_template="{{ file_path }}/wait.parquet", flush_items=1000,
        flush_seconds=3600, flush_idle=None,
    )  # fmt: skip
    for n in range(3):
        waiting.camera.acquisition_data({"n": n})
    wait_until(lambda: waiting.archiver.stats()["total"]["received"] == 3, what="three readings received")
    time.sleep(0.3)
    assert waiting.archiver.stats()["total"]["archived"] == 0
