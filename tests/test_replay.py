"""Replaying the dead-letter store: fixed templates, dry runs, unreadable entries, and never a duplicate file."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RigFactory
from heros_archiver.errors import ConfigurationError, ReplayError
from heros_archiver.observe.catalog_reader import CatalogReader
from heros_archiver.observe.catalog_schema import catalog_path
from heros_archiver.observe.catalog_sqlite import SqliteCatalog
from heros_archiver.observe.verify import verify
from heros_archiver.sinks.writer import WriterSettings
from heros_archiver.state.deadletter import DeadLetterStore
from heros_archiver.state.replay import archive_root, replay
from procs import (
    check_frame_file,
    entries,
    frame,
    npy_files,
    read_entry,
    run_cli,
    send_frames,
    settled,
    tree_state,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

SHAPE = (4, 6)
TEMPLATE = "{{ file_path }}/{{ '%03d' % frame }}.npy"


def _store(root: Path) -> DeadLetterStore:
    return DeadLetterStore(root / ".heros-archiver" / "dead-letter")


def _put(store: DeadLetterStore, root: Path, index: int, on_exists: str = "error", template: str = TEMPLATE) -> Path:
    """A dead-letter entry as a FileArchiver with ``template`` under ``root`` would have written it."""
    settings = WriterSettings("npy", template, str(root), on_exists)  # type: ignore[arg-type]
    return store.put(
        source="cam",
        event="acquisition_data",
        payload=frame(index, SHAPE),
        metadata={"file_path": str(root), "frame": index},
        error="StorageError: [Errno 28] No space left on device",
        attempts=6,
        writer=settings.to_dict(),
    )


def test_entry_of_a_template_missing_a_key_replays_with_the_template_fixed(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    rig = make_rig("{{ file_path }}/{{ run }}/{{ '%03d' % frame }}.npy")  # the events carry no "run"
    send_frames(rig.camera, [0, 1, 2], SHAPE)
    wait_until(lambda: settled(rig.archiver.stats()) >= 3, what="three frames settled")
    rig.archiver._teardown()
    dead_letters = tmp_path / ".heros-archiver" / "dead-letter"
    dead = entries(dead_letters)
    assert len(dead) == 3 and rig.archiver.stats()["total"]["dead_lettered"] == 3
    assert all("TemplateRenderError" in read_entry(e)["error"] and "run" in read_entry(e)["error"] for e in dead)
    assert all(read_entry(e)["attempts"] == 1 for e in dead)  # not retried: it cannot succeed

    unchanged = run_cli(["replay", str(dead_letters)])
    assert unchanged.returncode == 1, unchanged.stdout
    assert "archived 0 of 3 item(s); 3 failed" in unchanged.stdout and "run" in unchanged.stdout
    assert entries(dead_letters) == dead and npy_files(tmp_path) == []

    fixed = run_cli(["replay", str(dead_letters), "--template", "{{ file_path }}/fixed/{{ '%03d' % frame }}.npy"])
    assert fixed.returncode == 0, fixed.stdout
    assert "archived 3 of 3 item(s); 0 failed" in fixed.stdout
    files = npy_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["fixed/000.npy", "fixed/001.npy", "fixed/002.npy"]
    assert [check_frame_file(p, SHAPE) for p in files] == [0, 1, 2]
    assert entries(dead_letters) == []
    with CatalogReader(tmp_path) as reader:  # in the catalog, as the archiver that dead-lettered them
        items = list(reader.items())
        [dead_letterer] = {failure.archiver for failure in reader.failures()}
    assert sorted(item.path for item in items) == ["fixed/000.npy", "fixed/001.npy", "fixed/002.npy"]
    assert {item.archiver for item in items} == {dead_letterer}
    assert [item.metadata["frame"] for item in items] == [0, 1, 2]
    report = verify(tmp_path)  # no replayed file is an orphan
    assert report.ok, report.problems


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for index in range(3):
        _put(store, tmp_path, index)
    before = tree_state(tmp_path)

    outcomes = replay(store.directory, dry_run=True)
    result = run_cli(["replay", str(store.directory), "--dry-run"])

    assert [o.ok for o in outcomes] == [True] * 3
    assert [o.paths for o in outcomes] == [[tmp_path / f"{i:03d}.npy"] for i in range(3)]
    assert result.returncode == 0, result.stdout
    assert "would archive 3 of 3 item(s); 0 failed" in result.stdout and "would write" in result.stdout
    assert tree_state(tmp_path) == before
    assert npy_files(tmp_path) == []


def test_unreadable_entries_are_reported_and_kept(tmp_path: Path) -> None:
    store = _store(tmp_path)
    good_before = _put(store, tmp_path, 0)
    corrupt = _put(store, tmp_path, 1)
    (corrupt / "item.pickle").write_bytes(b"garbage, not an array")  # the faithful copy, which replay reads
    unstorable = store.put(
        source="cam", event="acquisition_data", payload=object(), metadata={"frame": 2}, error="x", attempts=1
    )
    _put(store, tmp_path, 3)
    corrupt_bytes = (corrupt / "item.pickle").read_bytes()

    result = run_cli(["replay", str(store.directory)])

    assert result.returncode == 1, result.stdout
    assert "archived 2 of 4 item(s); 2 failed" in result.stdout
    assert "cannot read dead-letter entry" in result.stdout and "payload was not storable" in result.stdout
    assert entries(store.directory) == [corrupt, unstorable]  # kept, untouched
    assert (corrupt / "item.pickle").read_bytes() == corrupt_bytes
    assert not good_before.exists()
    assert [check_frame_file(p, SHAPE) for p in npy_files(tmp_path)] == [0, 3]


def test_existing_different_file_is_kept_and_the_entry_stays(tmp_path: Path) -> None:
    store = _store(tmp_path)
    entry = _put(store, tmp_path, 4)
    other = np.zeros(SHAPE, dtype="uint16")
    np.save(tmp_path / "004.npy", other)

    [outcome] = replay(store.directory)

    assert not outcome.ok and "TargetExistsError" in outcome.error, outcome
    assert entries(store.directory) == [entry]
    np.testing.assert_array_equal(np.load(tmp_path / "004.npy"), other)


@pytest.mark.parametrize(
    "on_exists",
    [
        "error",
        "overwrite",
        "unique",
    ],
)
def test_replay_twice_never_duplicates_a_file(tmp_path: Path, on_exists: str) -> None:
    store = _store(tmp_path)
    for index in range(3):
        _put(store, tmp_path, index, on_exists)
    # a replay interrupted between writing a file and removing its entry: the entry is still there next time
    copies = tmp_path / "copies"
    shutil.copytree(store.directory, copies)

    first = run_cli(["replay", str(store.directory)])
    assert first.returncode == 0, first.stdout
    assert "archived 3 of 3 item(s)" in first.stdout
    after_first = tree_state(tmp_path)
    second = run_cli(["replay", str(store.directory)])
    assert second.returncode == 0 and "archived 0 of 0 item(s)" in second.stdout, second.stdout
    assert tree_state(tmp_path) == after_first

    shutil.rmtree(store.directory)
    shutil.copytree(copies, store.directory)
    shutil.rmtree(copies)
    outcomes = replay(store.directory)

    assert [o.ok for o in outcomes] == [True] * 3, outcomes
    files = npy_files(tmp_path)
    assert [p.name for p in files] == ["000.npy", "001.npy", "002.npy"]
    assert [check_frame_file(p, SHAPE) for p in files] == [0, 1, 2]
    assert entries(store.directory) == []
    assert not catalog_path(tmp_path).exists()  # a root without a catalog (catalog=False) gets none from replay


def test_a_replay_cut_short_and_run_again_catalogs_each_file_once(tmp_path: Path) -> None:
    SqliteCatalog.for_writing(tmp_path).close()  # the root's catalog, as an archiver with catalog=True left it
    store = _store(tmp_path)
    for index in range(3):
        _put(store, tmp_path, index)
    copies = tmp_path / "copies"
    shutil.copytree(store.directory, copies)
    assert [o.ok for o in replay(store.directory)] == [True] * 3
    shutil.rmtree(store.directory)  # killed after its files were written and journaled, before the entries went
    shutil.move(copies, store.directory)

    outcomes = replay(store.directory)

    assert [o.ok for o in outcomes] == [True] * 3, outcomes
    assert [len(o.locations) for o in outcomes] == [1, 1, 1]
    with CatalogReader(tmp_path) as reader:
        items = list(reader.items())
    assert sorted(item.path for item in items) == ["000.npy", "001.npy", "002.npy"]  # one row each
    assert {item.archiver for item in items} == {"heros-archiver-replay:acquisition_data"}  # no failure row names them
    assert verify(tmp_path).ok


# ------------------------------------------------------------------ entries that must not be trusted (item 3)
def _writer(root: Path | str, template: str = TEMPLATE, /, **changes: Any) -> dict[str, Any]:
    """The writer settings of an entry, as recorded (``changes`` replace or add fields, None removes one)."""
    settings = {**WriterSettings("npy", template, str(root)).to_dict(), **changes}
    return {key: value for key, value in settings.items() if value is not None}


def _put_with(store: DeadLetterStore, index: int, writer: Any, metadata: dict[str, Any] | None = None) -> Path:
    """An entry whose writer settings (and metadata) are whatever a planted or edited entry may say."""
    return store.put(
        source="cam",
        event="acquisition_data",
        payload=frame(index, SHAPE),
        metadata={"frame": index} if metadata is None else metadata,
        error="StorageError: [Errno 28] No space left on device",
        attempts=6,
        writer=writer,
    )


def _failure_lines(output: str, entry: Path) -> list[str]:
    return [line for line in output.splitlines() if entry.name in line]


def test_hostile_entries_are_refused_and_write_nothing_outside_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "archive", tmp_path / "outside"
    outside.mkdir()
    store = _store(root)
    good = _put(store, root, 0)
    hostile = {
        # the recorded root is the whole file system, the template an absolute path elsewhere
        "root /": _put_with(store, 1, _writer("/", str(outside) + "/escape-1.npy")),
        # the recorded root is another directory, the metadata points the template there
        "root other": _put_with(store, 2, _writer(outside), {"file_path": str(outside), "frame": 2}),
        # the recorded root climbs out of the archive root
        "root ..": _put_with(store, 3, _writer(f"{root}/..", "{{ '%03d' % frame }}.npy")),
        # the recorded root is right, the template climbs out or is absolute
        "template ..": _put_with(store, 4, _writer(root, "../../escape-4.npy")),
        "template absolute": _put_with(store, 5, _writer(root, str(outside) + "/escape-5.npy")),
        "metadata absolute": _put_with(store, 6, _writer(root), {"file_path": str(outside), "frame": 6}),
        "root relative": _put_with(store, 7, _writer("archive", "{{ '%03d' % frame }}.npy")),
    }
    _put(store, root, 8)

    result = run_cli(["replay", str(store.directory)])

    assert result.returncode == 1, result.stdout
    assert f"archived 2 of {len(hostile) + 2} item(s); {len(hostile)} failed" in result.stdout, result.stdout
    assert list(outside.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["archive", "outside"]
    assert [check_frame_file(p, SHAPE) for p in npy_files(root)] == [0, 8]
    assert not good.exists() and entries(store.directory) == sorted(hostile.values())
    for what, entry in hostile.items():
        [line] = _failure_lines(result.stdout, entry)  # one line each, naming the entry
        recorded = read_entry(entry)["writer"]["root"]
        if what.startswith("root"):
            assert "recorded archive root" in line and repr(recorded) in line and repr(str(root)) in line, (what, line)
        else:
            assert "PathConfinementError" in line and "outside the archive root" in line, (what, line)


def test_recorded_root_through_a_symlink_to_the_store_root_is_the_same_root(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    store = _store(root)
    (tmp_path / "link").symlink_to(root)
    entry = _put_with(store, 0, _writer(tmp_path / "link", "{{ '%03d' % frame }}.npy"))

    [outcome] = replay(store.directory)

    assert outcome.ok and outcome.paths == [root / "000.npy"], outcome
    assert not entry.exists() and [check_frame_file(p, SHAPE) for p in npy_files(root)] == [0]


def test_a_store_outside_an_archive_root_needs_root(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "archive", tmp_path / "kept" / "dead-letters"
    store = DeadLetterStore(elsewhere)  # e.g. dead_letter_dir=... in the config: the root is not implied
    entry = _put(store, root, 0)

    refused = run_cli(["replay", str(elsewhere)])

    assert refused.returncode == 2, refused.stdout
    assert "--root" in refused.stdout and str(elsewhere) in refused.stdout, refused.stdout
    assert "Traceback" not in refused.stdout and entries(elsewhere) == [entry] and not root.exists()
    with pytest.raises(ReplayError, match="--root"):
        replay(elsewhere)

    wrong = run_cli(["replay", str(elsewhere), "--root", str(tmp_path / "other")])
    assert wrong.returncode == 1 and "recorded archive root" in wrong.stdout, wrong.stdout
    assert entries(elsewhere) == [entry] and not (tmp_path / "other").exists()

    given = run_cli(["replay", str(elsewhere), "--root", str(root)])
    assert given.returncode == 0, given.stdout
    assert "archived 1 of 1 item(s); 0 failed" in given.stdout
    assert [check_frame_file(p, SHAPE) for p in npy_files(root)] == [0] and entries(elsewhere) == []


def test_the_file_system_root_is_never_implied() -> None:
    with pytest.raises(ReplayError, match="--root /"):
        archive_root("/.heros-archiver/dead-letter")
    assert archive_root("/.heros-archiver/dead-letter", root="/") == Path("/")
    assert archive_root("/data/run42/.heros-archiver/dead-letter") == Path("/data/run42")
    assert archive_root("/data/run42/.heros-archiver/dead-letter/", root="/data/x/../y") == Path("/data/y")


def test_a_corrected_template_is_confined_too(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    store = _store(root)
    entry = _put(store, root, 0)

    result = run_cli(["replay", str(store.directory), "--template", "../escape-{{ frame }}.npy"])

    assert result.returncode == 1, result.stdout
    assert "PathConfinementError" in result.stdout and "outside the archive root" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"] and entries(store.directory) == [entry]


# ------------------------------------------------------------------ malformed entries (item 19)
def _hand_entry(store: DeadLetterStore, name: str, info: Any, payload: bool = True) -> Path:
    """An entry written with plain json and numpy (as an edited, truncated or foreign one may look)."""
    entry = store.directory / name
    entry.mkdir(parents=True)
    (entry / "entry.json").write_bytes(info if isinstance(info, bytes) else json.dumps(info).encode())
    if payload:
        np.save(entry / "payload.npy", frame(0, SHAPE))
    return entry


def _hand_info(root: Path, **changes: Any) -> dict[str, Any]:
    info = {
        "source": "cam",
        "event": "acquisition_data",
        "metadata": {"frame": 99},
        "error": "StorageError: disk full",
        "attempts": 6,
        "time": 0.0,
        "payload_file": "payload.npy",
        "payload_note": "numpy array",
        "writer": _writer(root, "hand/{{ '%03d' % frame }}.npy"),
        **changes,
    }
    return {key: value for key, value in info.items() if value is not None}


def test_malformed_entries_are_reported_one_line_each_and_the_others_replayed(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    store = _store(root)
    _put(store, root, 0)
    malformed = {
        "list": _hand_entry(store, "20260101T000000-1-00000001-list", []),
        "garbage": _hand_entry(store, "20260101T000000-1-00000002-garbage", b"\xff\x00{not json"),
        "no source": _hand_entry(store, "20260101T000000-1-00000003-nosource", _hand_info(root, source=None)),
        "source type": _hand_entry(store, "20260101T000000-1-00000004-sourcetype", _hand_info(root, source=["x"])),
        "metadata type": _hand_entry(store, "20260101T000000-1-00000005-metatype", _hand_info(root, metadata=[1])),
        "no payload": _hand_entry(store, "20260101T000000-1-00000006-nopayload", _hand_info(root), payload=False),
        "writer list": _put_with(store, 1, [1, 2]),
        "writer field missing": _put_with(store, 2, _writer(root, on_exists=None)),
        "writer field extra": _put_with(store, 3, _writer(root, compression="zstd")),
        "writer root type": _put_with(store, 4, _writer(root, root=5)),
        "writer bool type": _put_with(store, 5, _writer(root, merge_metadata="no")),
        "writer format": _put_with(store, 6, _writer(root, format="pickle")),
        "writer fsync": _put_with(store, 7, _writer(root, fsync="sometimes")),
        "writer template": _put_with(store, 8, _writer(root, "{{ frame")),
    }
    _put(store, root, 9)

    result = run_cli(["replay", str(store.directory)])

    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    total = len(malformed) + 2
    assert f"archived 2 of {total} item(s); {len(malformed)} failed" in result.stdout, result.stdout
    assert [check_frame_file(p, SHAPE) for p in npy_files(root)] == [0, 9]
    assert entries(store.directory) == sorted(malformed.values())  # kept, for the operator to look at
    expected_words = {
        "writer list": "list",
        "writer field missing": "on_exists",
        "writer field extra": "compression",
        "writer root type": "'root'",
        "writer bool type": "'merge_metadata'",
        "writer format": "pickle",
        "writer fsync": "sometimes",
        "writer template": "syntax",
        "source type": "source",
        "metadata type": "metadata",
    }
    for what, entry in malformed.items():
        [line] = _failure_lines(result.stdout, entry)
        assert expected_words.get(what, "") in line, (what, line)

    outcomes = replay(store.directory)  # the same through the API: an outcome per entry, never an exception
    assert [o.entry for o in outcomes] == sorted(malformed.values()) and not any(o.ok for o in outcomes)
    assert all(o.error for o in outcomes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"on_exists": None}, "missing ['on_exists']"),
        ({"extra": 1}, "unknown ['extra']"),
        ({"root": 5}, "'root': expected str, got int 5"),
        ({"split_data_array": 1}, "'split_data_array': expected bool, got int 1"),
        ({"merge_metadata": "no"}, "'merge_metadata': expected bool, got str 'no'"),
        ({"on_exists": False}, "'on_exists': expected str, got bool False"),
    ],
)
def test_writer_settings_from_dict_names_the_field(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        WriterSettings.from_dict(_writer(tmp_path, **changes))
    assert message in str(caught.value), caught.value
    with pytest.raises(ConfigurationError, match="expected a JSON object"):
        WriterSettings.from_dict([])
    assert WriterSettings.from_dict(_writer(tmp_path)) == WriterSettings("npy", TEMPLATE, str(tmp_path))


def test_an_entry_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    store, planted = _store(root), DeadLetterStore(tmp_path / "elsewhere")
    target = _put(planted, root, 0)
    store.directory.mkdir(parents=True)
    link = store.directory / "20260101T000000-1-00000001-cam"
    link.symlink_to(target)

    [outcome] = replay(store.directory)

    assert not outcome.ok and "symbolic link" in outcome.error and str(target) in outcome.error, outcome
    assert npy_files(root) == [] and link.is_symlink() and target.is_dir()


def test_a_corrected_template_that_does_not_compile_stops_before_any_entry(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    store = _store(root)
    entry = _put(store, root, 0)

    result = run_cli(["replay", str(store.directory), "--template", "{{ frame"])

    assert result.returncode == 2, result.stdout
    assert "Jinja2 syntax error" in result.stdout and "Traceback" not in result.stdout, result.stdout
    assert entries(store.directory) == [entry] and npy_files(root) == []


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_FIELDS = ["source", "event", "metadata", "error", "attempts", "time", "payload_file", "payload_note", "writer"]
_WRITER_FIELDS = list(WriterSettings.__dataclass_fields__)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.one_of(
        _JSON,  # anything at all in entry.json
        st.builds(  # a well-formed entry with some fields replaced or removed
            lambda changes, drop: {k: v for k, v in {**_hand_info(Path("/r")), **changes}.items() if k not in drop},
            st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=3),
            st.sets(st.sampled_from(_FIELDS), max_size=2),
        ),
        st.builds(  # a well-formed entry whose writer settings are tampered with
            lambda changes, drop: _hand_info(
                Path("/r"), writer={k: v for k, v in {**_writer("/r"), **changes}.items() if k not in drop}
            ),
            st.dictionaries(st.sampled_from([*_WRITER_FIELDS, "extra"]), _JSON, max_size=3),
            st.sets(st.sampled_from(_WRITER_FIELDS), max_size=2),
        ),
    ),
    raw=st.none() | st.binary(max_size=40),
)
def test_whatever_an_entry_holds_replay_reports_it_and_writes_only_under_the_root(
    tmp_path: Path, document: Any, raw: bytes | None
) -> None:
    base = tmp_path / uuid.uuid4().hex
    root = base / "r"
    store = _store(root)
    good = _put(store, root, 0)
    hostile = _hand_entry(store, "20260101T000000-1-00000001-x", raw if raw is not None else _rooted(document, root))

    outcomes = replay(store.directory)  # never raises, whatever the entry holds

    assert [o.entry for o in outcomes] == [hostile, good] and outcomes[1].ok, outcomes
    assert outcomes[0].ok or (outcomes[0].error and hostile.is_dir()), outcomes[0]
    assert [p for p in base.rglob("*") if p.is_file() and not p.is_relative_to(root)] == []
    assert check_frame_file(root / "000.npy", SHAPE) == 0
    shutil.rmtree(base)


def _rooted(document: Any, root: Path) -> bytes:
    """``document`` as JSON, with the placeholder root ``/r`` (wherever it is a value) replaced by ``root``."""

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, list):
            return [swap(item) for item in value]
        return str(root) if value == "/r" else value

    return json.dumps(swap(document)).encode()
