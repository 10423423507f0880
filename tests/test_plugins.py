"""Formats and sinks by entry point (plugins.py, decision 0025), and the extras' missing-module errors.

The example plugin (tests/plugins/example: a package and its own ``.dist-info`` with ``entry_points.txt``)
is found the way an installed package is, by putting its directory on ``sys.path`` (this process) or
``PYTHONPATH`` (children). Frames come from a camera HERO over real Zenoh on loopback; files are read back
with a PGM parser of the test's own. A missing extra is made real by an import hook in a child process.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import procs
from conftest import RigFactory
from helpers import dead_letter_entries, read_entry, wait_for_items
from heros_archiver import ConfigurationError, FileArchiver, HERODataArchiver, plugins
from heros_archiver.state.replay import replay
from heros_archiver.testing import free_port, session_manager, unique_realm
from heros_archiver.transport.heros_compat import open_sessions

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLE = Path(__file__).resolve().parent / "plugins" / "example"
FAULTY = Path(__file__).resolve().parent / "plugins" / "faulty"
SHAPE = (12, 20)
TEMPLATE = "{{ file_path }}/{{ '%03d' % frame }}.pgm"


@pytest.fixture
def on_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """The plugin directories of ``request.param`` (default: the example) on sys.path for one test."""
    directories = [str(d) for d in getattr(request, "param", [EXAMPLE])]
    sys.path[:0] = directories
    plugins.refresh()
    try:
        yield
    finally:
        for directory in directories:
            sys.path.remove(directory)
        for name in [m for m in sys.modules if m.startswith(("heros_archiver_pgm", "heros_archiver_faulty"))]:
            del sys.modules[name]
        plugins.refresh()


def pythonpath(*directories: Path) -> str:
    """PYTHONPATH for a child: our source, the tests' helpers, and ``directories``."""
    return os.pathsep.join([str(PROJECT / "src"), str(PROJECT / "tests"), *map(str, directories)])


def read_pgm(path: Path) -> np.ndarray:
    """A binary PGM file as an array (parsed here, independently of the plugin that wrote it)."""
    data = path.read_bytes()
    header = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", data)
    assert header is not None, f"{path}: not a binary PGM file: {data[:20]!r}"
    width, height, maxval = map(int, header.groups())
    dtype = ">u2" if maxval > 255 else "u1"
    return np.frombuffer(data[header.end() :], dtype=dtype).reshape(height, width)


def pyproject_entry_points() -> dict[str, dict[str, str]]:
    """``[project.entry-points]`` of our pyproject.toml."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"])


# --------------------------------------------------------------------------------------------- the registry
def test_the_built_ins_are_the_entry_points_our_pyproject_declares_and_each_loads() -> None:
    registered = {(r.group, r.name): r.value for r in plugins.available()}
    declared = {
        (group, name): value for group, table in pyproject_entry_points().items() for name, value in table.items()
    }
    assert registered == declared
    assert {("heros_archiver.formats", "npy"), ("heros_archiver.formats", "json")} <= set(declared)
    assert ("heros_archiver.sinks", "hdf5") in declared
    for group, name in declared:
        if group == plugins.FORMATS_GROUP:
            assert callable(plugins.make_format(name).prepare)
        else:
            assert issubclass(plugins.sink_class(name), HERODataArchiver)
    assert plugins.sink_class("hdf5").__name__ == "Hdf5Archiver"


def test_installed_from_a_wheel_the_built_ins_come_from_the_distributions_metadata(tmp_path: Path) -> None:
    """Outside a checkout there is no pyproject.toml: the package and a ``.dist-info`` with the
    ``entry_points.txt`` an install writes from our pyproject.toml, first on the path of a child."""
    site = tmp_path / "site"
    shutil.copytree(PROJECT / "src" / "heros_archiver", site / "heros_archiver")
    info = site / "heros_archiver-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: heros-archiver\nVersion: 0.1.0\n")
    sections = [
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
        for group, table in pyproject_entry_points().items()
    ]
    (info / "entry_points.txt").write_text("\n".join(sections))
    code = (
        "import sys, heros_archiver, numpy\n"
        "from heros_archiver import plugins\n"
        "print(heros_archiver.__file__)\n"
        "for r in plugins.available(): print(r.group, r.name, r.distribution)\n"
        "fmt = plugins.make_format('npy')\n"
        "assert not {'heros', 'zenoh', 'h5py'} & set(sys.modules), 'a format needs neither heros nor Zenoh'\n"
        "print(type(fmt).__name__, plugins.sink_class('hdf5').__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(EXAMPLE)]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(site / "heros_archiver" / "__init__.py")
    assert "heros_archiver.formats npy heros-archiver 0.1.0" in lines
    assert "heros_archiver.sinks hdf5 heros-archiver 0.1.0" in lines
    assert "heros_archiver.formats pgm heros-archiver-pgm 0.1.0" in lines
    assert lines[-1] == "NpyFormat Hdf5Archiver"


def test_an_unknown_format_is_refused_before_zenoh_naming_what_is_installed(tmp_path: Path) -> None:
    manager = session_manager(connect_port=free_port())
    try:
        with pytest.raises(
            ConfigurationError, match=r"format 'tiff-stack': expected one of json, npy, tiff \(entry-point"
        ):
            FileArchiver(
                "{{ file_path }}/{{ frame }}.tif", "tiff-stack", object_selector="cam", event_name="acquisition_data",
                default_metadata={"file_path": str(tmp_path)}, realm=unique_realm(), session_manager=manager,
            )  # fmt: skip
        assert open_sessions(manager) == {}
    finally:
        manager.force_close()


def test_listing_a_plugin_imports_nothing_and_asking_for_it_loads_it_once(on_path: None) -> None:
    found = {(r.group, r.name): r for r in plugins.available()}
    assert found[(plugins.FORMATS_GROUP, "pgm")].distribution == "heros-archiver-pgm 0.1.0"
    assert found[(plugins.SINKS_GROUP, "pgm")].value == "heros_archiver_pgm.archiver:PgmArchiver"
    assert "heros_archiver_pgm" not in sys.modules, "listing must not import a plugin"
    first = plugins.make_format("pgm")
    assert type(first).__module__ == "heros_archiver_pgm"
    assert "heros_archiver_pgm.archiver" not in sys.modules, "a format does not load the plugin's sink"
    assert plugins.formats.load("pgm") is type(first) is type(plugins.make_format("pgm"))
    assert plugins.make_format("pgm") is not first, "one instance per writer"


@pytest.mark.parametrize("on_path", [[EXAMPLE, FAULTY]], indirect=True)
@pytest.mark.parametrize(
    ("group", "name", "message"),
    [
        ("format", "pgm", r"format 'pgm': expected one registration .* got 2: .*heros-archiver-pgm 0\.1\.0.*"
         r"heros-archiver-faulty 0\.1\.0; uninstall one of them"),
        ("format", "number", r"format 'number' \(entry point number = 'heros_archiver_faulty:NUMBER' registered by "
         r"heros-archiver-faulty 0\.1\.0\): expected a FileFormat class .* got int 3"),
        ("format", "unprepared", r"'unprepared' .*: expected a FileFormat \(a method prepare.* got Unprepared"),
        ("format", "gone", r"'gone' .*heros-archiver-faulty.*: expected an importable object, got ModuleNotFoundError"),
        ("format", "needs-extra", r"'needs-extra' .*: expected the Python package "
         r"'heros_archiver_faulty_no_such_module' of the extra \[tiff\].*pip install 'heros-archiver\[tiff\]'"),
        ("sink", "not-an-archiver", r"'not-an-archiver' .*: expected a subclass of heros_archiver.HERODataArchiver"),
        ("sink", "nothing", r"sink 'nothing': expected one of array, .*\bnot-an-archiver\b.*\bpgm\b"),
    ],
)  # fmt: skip
def test_a_wrong_registration_is_refused_saying_what_was_expected_and_who_registered_it(
    on_path: None, group: str, name: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        plugins.make_format(name) if group == "format" else plugins.sink_class(name)
    assert callable(plugins.make_format("npy").prepare), "one bad registration leaves the others usable"
    assert plugins.sink_class("pgm").__name__ == "PgmArchiver"


def test_the_command_lists_formats_and_sinks_and_check_reports_each_fault(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=pythonpath(EXAMPLE), COLUMNS="250")
    listed = subprocess.run([*procs.CLI, "formats"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in listed.stdout.splitlines() if "│" in line]
    assert ["format", "pgm", "heros_archiver_pgm:PgmFormat", "heros-archiver-pgm 0.1.0"] in rows
    assert ["sink", "pgm", "heros_archiver_pgm.archiver:PgmArchiver", "heros-archiver-pgm 0.1.0"] in rows
    assert {row[1] for row in rows if row[0] == "format"} == {"json", "npy", "pgm", "tiff"}
    env["PYTHONPATH"] = pythonpath(EXAMPLE, FAULTY)
    checked = subprocess.run([*procs.CLI, "formats", "--check"], capture_output=True, text=True, env=env, timeout=60)
    assert checked.returncode == 1
    failures = [line for line in checked.stderr.splitlines() if line.startswith("failed ")]
    assert len(failures) == 6, checked.stderr  # pgm (twice: one line), number, unprepared, gone, needs-extra, sink
    assert any("pip install 'heros-archiver[tiff]'" in line for line in failures)
    assert "registered twice" in checked.stdout and "│ ok" in checked.stdout


# ------------------------------------------------------------------------------------- end to end over Zenoh
def test_a_plugin_format_archives_camera_frames_through_the_helper_and_its_dead_letters_replay(
    on_path: None, make_rig: RigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FileArchiver(save_template, "pgm"): a frame whose target exists and one PGM cannot hold are
    dead-lettered with the format's name; replay writes the first once its target is free, and without the
    plugin installed replay names the missing format."""
    (tmp_path / "005.pgm").write_bytes(b"kept")
    rig = make_rig(TEMPLATE, archiver_cls=FileArchiver, file_format="pgm", helper_process=True)
    helpers_at_start = rig.archiver.stats()["helper_processes"]
    assert len(helpers_at_start) == 1  # started without the plugin on its path: it is handed bytes only
    procs.send_frames(rig.camera, [0, 1, 2], SHAPE)
    rig.camera.acquisition_data(np.zeros((2, 3, 4), np.uint16), {"frame": 3})
    procs.send_frames(rig.camera, list(range(4, 10)), SHAPE)
    total = wait_for_items(rig.archiver, 10)
    assert total["archived"] == 8 and total["dead_lettered"] == 2, total
    for index in [0, 1, 2, 4, 6, 7, 8, 9]:
        np.testing.assert_array_equal(read_pgm(tmp_path / f"{index:03d}.pgm"), procs.frame(index, SHAPE))
    assert (tmp_path / "005.pgm").read_bytes() == b"kept"
    assert rig.archiver.stats()["helper_processes"] == helpers_at_start
    assert "itself" not in caplog.text, "the helper wrote the files, not the writer in its place"
    recorded = [read_entry(entry) for entry in dead_letter_entries(tmp_path)]
    assert [entry["writer"]["format"] for entry in recorded] == ["pgm", "pgm"]
    rig.archiver._teardown()

    store = tmp_path / ".heros-archiver" / "dead-letter"
    (tmp_path / "005.pgm").unlink()
    outcomes = {outcome.ok: outcome for outcome in replay(store)}
    assert outcomes[True].paths == [tmp_path / "005.pgm"]
    assert "PGM: expected a 2-D uint8 or uint16 array" in outcomes[False].error
    np.testing.assert_array_equal(read_pgm(tmp_path / "005.pgm"), procs.frame(5, SHAPE))

    env = dict(os.environ, PYTHONPATH=pythonpath(), COLUMNS="250")  # the plugin is not installed there
    result = subprocess.run([*procs.CLI, "replay", str(store)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "format 'pgm': expected one of json, npy" in result.stderr, result.stderr
    assert len(dead_letter_entries(tmp_path)) == 1, "an entry that failed stays"


def test_a_plugin_sink_runs_from_a_config_by_its_registered_name(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    config = procs.write_config(
        tmp_path / "config.json", procs.camera_archiver_arguments(archive, TEMPLATE, sequence_key="frame"), "pgm"
    )
    port, realm = free_port(), unique_realm()
    env = procs.child_env(port, PYTHONPATH=pythonpath(EXAMPLE))
    with (
        procs.camera(port, realm) as cam,
        procs.child([*procs.CLI, "run", str(config), "--realm", realm], tmp_path / "run.log", env) as archiver,
    ):
        procs.wait_for_archiver(cam, archiver)
        procs.send_frames(cam, list(range(20)), SHAPE)
        procs.wait_until(lambda: len(list(archive.glob("*.pgm"))) == 20, what="20 PGM files")
        code, output = archiver.terminate()
    assert code == 0, output
    assert procs.parse_stats_table(output)["archived"] == 20
    for index in range(20):
        np.testing.assert_array_equal(read_pgm(archive / f"{index:03d}.pgm"), procs.frame(index, SHAPE))


# ------------------------------------------------------------------------------------------- missing extras
HIDE = """
import importlib.abc, sys

class Hidden(importlib.abc.MetaPathFinder):
    '''An environment without these packages: importing one fails as it does when it is not installed.'''

    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in {names!r}:
            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
        return None

sys.meta_path.insert(0, Hidden())
"""


def run_hidden(names: set[str], code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a child Python in which the packages ``names`` cannot be imported."""
    env = dict(os.environ, PYTHONPATH=pythonpath())
    return subprocess.run(
        [sys.executable, "-c", HIDE.format(names=names) + code], capture_output=True, text=True, env=env, timeout=60
    )


def test_without_h5py_the_hdf5_sink_is_listed_and_loads_and_making_it_names_the_extra(tmp_path: Path) -> None:
    result = run_hidden(
        {"h5py", "hdf5plugin"},
        "import heros_archiver\n"
        "from heros_archiver import plugins\n"
        "cls = plugins.sink_class('hdf5')\n"
        "assert 'h5py' not in sys.modules\n"
        f"defaults = {{'file_path': {str(tmp_path)!r}}}\n"
        "try:\n"
        "    cls('{{ file_path }}/run.h5', object_selector='cam', event_name='e', default_metadata=defaults)\n"
        "except heros_archiver.ConfigurationError as exc:\n"
        "    print('REFUSED', exc)\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("REFUSED expected the Python package 'h5py' of the extra [hdf5]"), result.stdout
    assert "No module named 'h5py'" in result.stdout
    assert result.stdout.rstrip().endswith("install the extra: pip install 'heros-archiver[hdf5]'"), result.stdout
    assert list(tmp_path.iterdir()) == [], "refused before anything is written"


@pytest.mark.parametrize(("extra", "module"), [("zarr", "zarr"), ("zarrs", "zarrs"), ("tiff", "tifffile")])
def test_require_extra_names_the_extra_of_a_missing_package(extra: str, module: str) -> None:
    result = run_hidden(
        {module},
        "from heros_archiver.extras import require_extra\n"
        "from heros_archiver import ConfigurationError\n"
        "try:\n"
        f"    require_extra({extra!r}, {module!r})\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n",
    )
    assert result.returncode == 0, result.stderr
    assert f"'{module}' of the extra [{extra}]" in result.stdout, result.stdout
    assert f"pip install 'heros-archiver[{extra}]'" in result.stdout


def test_require_extra_returns_the_module_when_installed() -> None:
    from heros_archiver.extras import require_extra

    assert require_extra("hdf5", "h5py").__name__ == "h5py"


def test_every_require_extra_call_names_an_extra_that_installs_its_module() -> None:
    """A typo in an extra's name would send users to install something that does not exist: every call
    in the package (the Zarr and TIFF archivers' too) must match ``[project.optional-dependencies]``."""
    extras = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    distributions = metadata.packages_distributions()
    calls = []
    for path in (PROJECT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require_extra":
                extra, module = (ast.literal_eval(arg) for arg in node.args)
                calls.append((path.name, extra, module))
    assert ("hdf5_files.py", "hdf5", "h5py") in calls
    for where, extra, module in calls:
        assert extra in extras and extra != "dev", f"{where}: require_extra({extra!r}, ...): no such extra"
        wanted = {_normalized(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]) for requirement in extras[extra]}
        provided = {_normalized(name) for name in distributions.get(module, [])}
        assert wanted & provided, f"{where}: the extra [{extra}] installs {wanted}, none of which provides {module!r}"


def _normalized(distribution: str) -> str:
    """A distribution's name as pip compares them (PEP 503): ``prometheus_client`` is ``prometheus-client``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()
