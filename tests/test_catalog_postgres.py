"""One catalog across archivers (issue 18, decision 0037): the catalog in a real PostgreSQL server, written by
archivers with ``catalog_url`` over real Zenoh, read by ``ls``, ``export`` and ``verify --catalog-url``, and
shared by archivers on two namespaced hosts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from catalog_kills import kill_and_restart
from conftest import RigFactory
from helpers import wait_for_items
from heros_archiver import ArrayArchiver, Hdf5Archiver
from heros_archiver.archivers.control import config_of
from heros_archiver.cli.app import app
from heros_archiver.cli.config import build_archivers, load_config
from heros_archiver.errors import CatalogError, ConfigurationError
from heros_archiver.observe import catalog
from heros_archiver.observe.catalog import CatalogListener
from heros_archiver.observe.catalog_backend import CatalogTarget
from heros_archiver.observe.catalog_postgres import PostgresCatalog
from heros_archiver.observe.catalog_reader import CatalogItem, CatalogReader
from heros_archiver.observe.catalog_schema import journal_directory
from heros_archiver.observe.readers import ContainerReader
from heros_archiver.testing import free_port, loopback_config_json, unique_realm
from heros_archiver.testing.servers import NetNamespaces, PostgresServer, namespaces_unavailable
from procs import DEADLINE, TESTS_DIR, child_env, wait_until, write_config
from test_catalog import archive_files, file_checksum

pytestmark = pytest.mark.timeout(180)

NPY = "{{ file_path }}/{{ '%03d' % frame }}.npy"
_databases = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the file's tests (each gets a database of its own); stopped by PID."""
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    """A new, empty database."""
    return postgres.create_database(f"catalog{next(_databases)}")


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def ls_json(*args: str) -> list[dict[str, Any]]:
    code, output = run_cli("ls", *args, "--json")
    assert code == 0, output
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def without_scope(row: dict[str, Any]) -> dict[str, Any]:
    """A shared catalog's row without the columns a root's catalog lacks."""
    return {key: value for key, value in row.items() if key not in ("host", "root")}


def postgres_items(url: str, **filters: Any) -> list[CatalogItem]:
    with CatalogReader(url=url) as reader:
        return list(reader.items(**filters))


def assert_files_and_shared_catalog_agree(root: Path, url: str) -> list[CatalogItem]:
    """Every file under the root is cataloged once in PostgreSQL, with its size and checksum, and no entry lacks
    its file."""
    items = postgres_items(url)
    assert {item.root for item in items} == {str(root)}
    paths = [item.path for item in items]
    assert len(paths) == len(set(paths)), "a location cataloged twice"
    assert archive_files(root) == set(paths)
    for item in items:
        assert item.nbytes == (root / item.path).stat().st_size and item.checksum == file_checksum(root / item.path)
    return items


# ------------------------------------------------------------------------------------------------ one archiver
def test_a_postgres_catalog_answers_ls_export_and_verify_as_the_sqlite_catalog_of_the_same_run(
    make_rig: RigFactory, url: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # the same outcomes go to both catalogs: the archiver's (PostgreSQL) and a second catalog listener's (SQLite)
    sqlite = CatalogListener(tmp_path, "acquisition_data", lambda: "ArrayArchiver")
    rig = make_rig(NPY, sequence_key="frame", catalog_url=url, catalog_host="daq1", listeners=[sqlite])
    sent = rig.camera.acquire(30, shape=(16, 16), dtype="uint16", extra_metadata={"run": 7, "big": 1e16})
    rig.archiver.feed("cam", ("no array", {"frame": 99, "run": 7}))  # a dead letter: the failures table
    wait_for_items(rig.archiver, sent + 1)
    assert rig.archiver.stats()["catalog"]["path"] == url and rig.archiver.stats()["catalog"]["host"] == "daq1"
    rig.archiver.close()

    root = str(tmp_path)
    for args in ([], ["--failures"], ["--where", "run=7"], ["--where", "big=1e16"], ["--source", "cam"]):
        from_sqlite = ls_json(root, *args)
        from_postgres = ls_json(root, "--catalog-url", url, *args)
        assert from_sqlite and [
            {k: v for k, v in row.items() if k not in ("host", "root")} for row in from_postgres
        ] == (from_sqlite), args
        assert {(row["host"], row["root"]) for row in from_postgres} == {("daq1", root)}
    assert len(ls_json(root, "--catalog-url", url, "--host", "daq1")) == sent
    assert ls_json(root, "--catalog-url", url, "--host", "elsewhere") == []
    assert len(ls_json("--catalog-url", url, "--archiver", "ArrayArchiver:acquisition_data")) == sent

    exports = tmp_path_factory.mktemp("exports")  # not under the root: no orphans for verify below
    for table in ([], ["--failures"]):
        code, output = run_cli("export", root, "--parquet", str(exports / "s.parquet"), "--force", *table)
        assert code == 0, output
        code, output = run_cli("export", "--catalog-url", url, "--parquet", str(exports / "p.parquet"), "--force",
                               *table)  # fmt: skip
        assert code == 0, output
        exported = pq.read_table(exports / "p.parquet").to_pylist()
        assert [without_scope(row) for row in exported] == pq.read_table(exports / "s.parquet").to_pylist()
        assert {row["host"] for row in exported} == {"daq1"}

    damaged = tmp_path / "005.npy"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    reports = []
    for args in ([root], [root, "--catalog-url", url, "--host", "daq1"]):
        code, output = run_cli("verify", *args, "--json")
        assert code == 1, output
        reports.append(json.loads(output))
    from_sqlite, shared = reports
    (from_postgres,) = shared["reports"]
    assert shared["skipped"] == [] and shared["host"] == "daq1"
    for key in ("checked", "counts", "problems", "notes"):
        assert from_postgres[key] == from_sqlite[key], key
    assert [p["path"] for p in from_postgres["problems"]] == ["005.npy"]
    assert from_postgres["problems"][0]["kind"] == "modified"


def test_hdf5_frames_are_cataloged_by_index_and_verified_from_postgres(make_rig: RigFactory, url: str) -> None:
    rig = make_rig(
        None, archiver_cls=Hdf5Archiver, file_template="{{ file_path }}/run.h5", sequence_key="frame", catalog_url=url
    )
    sent = rig.camera.acquire(25, shape=(8, 8), dtype="uint16")
    wait_for_items(rig.archiver, sent)
    rig.archiver.close()
    items = postgres_items(url)
    assert [(i.path, i.member, i.idx, i.sequence) for i in items] == [("run.h5", "cam/data", n, n) for n in range(sent)]
    with ContainerReader(rig.root) as reader:
        for item in items:
            assert reader.read(item.path, item.member, item.idx, item.count).checksum == item.checksum
    code, output = run_cli("verify", "--catalog-url", url, "--json")  # this host's roots: the rig's
    assert code == 0, output
    (report,) = json.loads(output)["reports"]
    assert report["checked"]["containers"] == 1 and report["checked"]["items"] == sent and report["ok"]


# ------------------------------------------------------------------------------------------------ kills
def test_an_applier_killed_mid_run_is_restarted_and_the_catalog_has_every_item_once(
    make_rig: RigFactory, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog, "CHECK_INTERVAL", 0.0)
    rig = make_rig(NPY, sequence_key="frame", catalog_url=url)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # SIGKILL the applier process whenever it runs, while frames keep coming
        while not stop.wait(0.15) and len(killed) < 4:
            pid = rig.archiver.stats()["catalog"]["applier_pid"]
            if pid is not None and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        sent = rig.camera.acquire(400, shape=(8, 8), dtype="uint16", rate=400)
        wait_for_items(rig.archiver, sent)
    finally:
        stop.set()
        thread.join()
    assert len(killed) >= 2 and rig.archiver.stats()["catalog"]["applier_restarts"] >= 2
    rig.archiver.close()
    items = assert_files_and_shared_catalog_agree(rig.root, url)
    assert sorted(item.sequence for item in items) == list(range(sent))  # none lost, none twice
    assert not os.listdir(journal_directory(rig.root))
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT count(*) FROM heros_catalog.journal_applied").fetchone() == (0,)


def test_after_sigkill_of_the_archiver_a_restart_recovers_its_journal_into_postgres(tmp_path: Path, url: str) -> None:
    root = tmp_path / "archive"
    kill_and_restart(tmp_path, "npy", lambda out: archived(out) >= 300, DEADLINE, url=url)
    items = assert_files_and_shared_catalog_agree(root, url)
    assert len(items) >= 300
    assert not os.listdir(journal_directory(root)), "the killed run's journal was applied and removed"


def test_files_made_but_not_journaled_before_a_kill_are_adopted_into_postgres_with_their_intents(
    tmp_path: Path, url: str
) -> None:
    """As the SQLite catalog's test of the kill window held open: 20 items, the commit lines of the last 10 never
    written, SIGKILL; the restart adopts those 10 files into PostgreSQL with their intents' sequence values and
    metadata (decision 0047)."""
    root = tmp_path / "archive"
    kill_and_restart(tmp_path, "npy", lambda out: "@@ DONE" in out, DEADLINE, url=url, HEROS_TEST_UNJOURNALED="10")
    items = assert_files_and_shared_catalog_agree(root, url)
    assert sorted(item.sequence for item in items) == list(range(20))
    assert all(item.metadata == {"frame": item.sequence, "run": "crash", "file_path": str(root)} for item in items)


def archived(output: str) -> int:
    """The last archived count a catalog_child printed."""
    counts = re.findall(r"@@ ARCHIVED (\d+)", output)
    return int(counts[-1]) if counts else 0


def test_a_database_down_for_a_while_loses_nothing_the_journal_keeps_it(
    make_rig: RigFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with PostgresServer(tmp_path_factory.mktemp("restarted")) as server:
        url = server.create_database("catalog")
        rig = make_rig(NPY, sequence_key="frame", catalog_url=url)
        sent = rig.camera.acquire(40, shape=(8, 8), dtype="uint16")
        wait_until(lambda: len(postgres_items(url)) == sent, what="the first frames in the catalog")
        server.stop()
        sent += rig.camera.acquire(40, shape=(8, 8), dtype="uint16", start=sent)
        wait_for_items(rig.archiver, sent)  # archiving goes on without the database: the journal holds the rows
        server.start()  # same directory and port
        sent += rig.camera.acquire(40, shape=(8, 8), dtype="uint16", start=sent)
        wait_until(lambda: len(postgres_items(url)) == sent, what="the applier to catch up once the server is back")
        rig.archiver.close()
        items = assert_files_and_shared_catalog_agree(rig.root, url)
        assert sorted(item.sequence for item in items) == list(range(sent))


# ------------------------------------------------------------------------------------------------ schema, options
def test_archivers_starting_together_make_the_schema_once(url: str, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def start(number: int) -> None:
        try:
            PostgresCatalog.connect(url, writer=("h", str(tmp_path / str(number)))).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT version FROM heros_catalog.catalog_version").fetchall() == [(1,)]
        connection.execute("UPDATE heros_catalog.catalog_version SET version = 99")
    with pytest.raises(CatalogError, match="version 1, got version 99"):
        CatalogTarget(url, "h").open_writer(tmp_path)


def test_a_boss_config_passes_catalog_url_through_and_config_hides_its_password(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEROS_ZENOH_CONFIG", loopback_config_json(listen_port=free_port()))
    secret = url.replace("postgres@", "postgres:secret@")  # trust authentication: the password is not asked for
    arguments = {
        "object_selector": "cam",
        "event_name": "acquisition_data",
        "save_template": f"{tmp_path}/{{{{ frame }}}}.npy",
        "catalog_url": secret,
        "catalog_host": "boss-host",
    }
    [archiver] = build_archivers(load_config(write_config(tmp_path / "config.json", arguments)), unique_realm())
    try:
        assert archiver.options.catalog_url == secret and archiver.options.catalog_host == "boss-host"
        shown = config_of(archiver)["options"]["catalog_url"]
        assert "secret" not in shown and shown == url.replace("postgres@", "postgres:***@")
        assert "secret" not in json.dumps(archiver.stats()["catalog"])
        archiver.feed("cam", (np.arange(3), {"frame": 1}))
        wait_for_items(archiver, 1)
    finally:
        archiver.close()
    [item] = postgres_items(url)
    assert item.host == "boss-host" and item.path == "1.npy"


def test_host_selection_needs_a_shared_catalog(tmp_path: Path) -> None:
    CatalogListener(tmp_path, "acquisition_data", lambda: "A").close()  # an empty SQLite catalog
    code, output = run_cli("ls", str(tmp_path), "--host", "daq1")
    assert code == 2 and "records no host" in output
    code, output = run_cli("verify", str(tmp_path), "--all-hosts")
    assert code == 2 and "--catalog-url" in output
    code, output = run_cli("ls")
    assert code == 2 and "expected ROOT" in output


def test_a_reader_of_an_empty_database_says_there_is_no_catalog(url: str) -> None:
    code, output = run_cli("ls", "--catalog-url", url)
    assert code == 2 and "heros_catalog" in output and "no archiver with this catalog_url" in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"catalog_url": "mysql://x/y"}, "catalog_url: expected a PostgreSQL URL"),
        ({"catalog_url": "postgresql://u:secret@h/db", "catalog": False}, r"catalog=False.*u:\*\*\*@h"),
        ({"catalog_url": "postgresql://h/db?password=secret", "catalog": False}, r"password=\*\*\*"),
        ({"catalog_host": ""}, "catalog_host: expected a host name"),
    ],
)
def test_bad_catalog_arguments_are_refused_before_anything_starts(
    tmp_path: Path, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        ArrayArchiver(object_selector="cam", event_name="e", save_template=f"{tmp_path}/{{{{ frame }}}}.npy",
                      **arguments)  # fmt: skip
    assert "secret" not in str(raised.value)


def test_an_unreachable_catalog_fails_the_start_and_names_the_url(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=rf"127\.0\.0\.1:{(port := free_port())}/nowhere"):
        ArrayArchiver(object_selector="cam", event_name="e", save_template=f"{tmp_path}/{{{{ frame }}}}.npy",
                      catalog_url=f"postgresql://postgres@127.0.0.1:{port}/nowhere")  # fmt: skip


# ------------------------------------------------------------------------------------------------ two hosts
def test_two_archivers_on_two_hosts_share_one_catalog_that_verify_checks(tmp_path: Path) -> None:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    with (
        NetNamespaces(3, net=221) as hosts,
        PostgresServer(tmp_path / "pg", host=hosts.address(0), netns=hosts.names[0]) as server,
    ):
        url = server.url  # reachable only inside the namespaces
        roots = {1: tmp_path / "host1", 2: tmp_path / "host2"}
        kinds = {1: "npy", 2: "hdf5"}
        frames = {1: 40, 2: 30}
        procs = []
        try:
            for index in (1, 2):
                args = [str(TESTS_DIR / "catalog_host_child.py"), kinds[index], str(roots[index]), url,
                        f"host{index}", str(frames[index])]  # fmt: skip
                procs.append(in_host(hosts, index, args, tmp_path / f"host{index}.log"))
            for proc, index in zip(procs, (1, 2), strict=True):
                proc.wait(120)
                output = (tmp_path / f"host{index}.log").read_text()
                assert f"@@ DONE {frames[index]}" in output, output[-3000:]
        finally:
            for proc in procs:
                stop(proc)

        # verify on host 1: its own root checked, host 2's listed as skipped
        code, report = cli_in_host(hosts, 1, tmp_path, "verify", "--catalog-url", url, "--host", "host1", "--json")
        assert code == 0, report
        assert [r["root"] for r in report["reports"]] == [str(roots[1])] and report["reports"][0]["ok"]
        assert report["reports"][0]["checked"]["files"] == frames[1]
        assert report["skipped"] == [{"host": "host2", "root": str(roots[2]), "items": frames[2]}]
        code, text = cli_in_host(hosts, 1, tmp_path, "verify", "--catalog-url", url, "--host", "host1")
        assert code == 0 and f"skipped: {frames[2]} item(s) of host host2 under {roots[2]}" in text, text

        # the paths are shared here: every root, every item intact
        code, report = cli_in_host(hosts, 1, tmp_path, "verify", "--catalog-url", url, "--all-hosts", "--json")
        assert code == 0, report
        checked = {r["root"]: r["checked"] for r in report["reports"]}
        assert checked[str(roots[1])]["files"] == frames[1]
        assert checked[str(roots[2])]["containers"] == 1 and checked[str(roots[2])]["items"] == frames[2]
        assert report["ok"] and report["skipped"] == []

        code, lines = cli_in_host(hosts, 2, tmp_path, "ls", "--catalog-url", url, "--host", "host2", "--json")
        assert code == 0 and len(lines) == frames[2] and {row["root"] for row in lines} == {str(roots[2])}

        damaged = roots[1] / "007.npy"
        data = bytearray(damaged.read_bytes())
        data[200] ^= 0x01
        damaged.write_bytes(bytes(data))
        code, report = cli_in_host(hosts, 2, tmp_path, "verify", "--catalog-url", url, "--all-hosts", "--json")
        assert code == 1 and not report["ok"], report
        problems = {r["root"]: r["problems"] for r in report["reports"]}
        assert problems[str(roots[2])] == []
        assert [(p["kind"], p["path"]) for p in problems[str(roots[1])]] == [("modified", "007.npy")]


def in_host(hosts: NetNamespaces, index: int, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A Python child in host ``index``'s namespace (its own session: stopped by PID)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", hosts.names[index], sys.executable, *args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(0), start_new_session=True,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def cli_in_host(hosts: NetNamespaces, index: int, tmp_path: Path, *args: str) -> tuple[int, Any]:
    """``heros-archiver ARGS`` in host ``index``; its output parsed as JSON (lines for ``ls``) with ``--json``."""
    log = tmp_path / f"cli-{index}.log"
    proc = in_host(hosts, index, ["-m", "heros_archiver.cli", *args], log)
    try:
        proc.wait(120)
    finally:
        stop(proc)
    text = log.read_text()
    if "--json" not in args:
        return proc.returncode, text
    if args[0] == "ls":
        return proc.returncode, [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return proc.returncode, json.loads(text[text.index("{") :])
