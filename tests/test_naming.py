"""Path templates: the archive root rule, render errors, confinement (unit, property-based and over Zenoh)."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RigFactory
from helpers import (
    archived_files,
    assert_npy_equal,
    assert_refused_before_zenoh,
    dead_letter_entries,
    read_entry,
    wait_for_items,
)
from heros_archiver import (
    ArchiverError,
    ConfigurationError,
    PathConfinementError,
    TemplateRenderError,
)
from heros_archiver.naming.templates import PathTemplate, confine_text, derive_root


def confine(rendered: str, root: Path) -> Path:
    """The confined path of ``rendered`` under ``root`` (as the writer gets it, as text)."""
    return Path(confine_text(rendered, str(root)))


SPEC_TEMPLATE = "{{ file_path }}/testimg-{{ '%04d' % ( frame / 2 ) |round(0, 'floor') }}-{{ frame % 2 }}.npy"


# ---------------------------------------------------------------------------------------------- derive_root
@pytest.mark.parametrize(
    ("template", "defaults", "expected"),
    [
        (SPEC_TEMPLATE, {"file_path": "/mnt/images"}, "/mnt/images"),
        ("{{file_path}}/{{ frame }}.npy", {"file_path": "/mnt/images/"}, "/mnt/images"),
        ("{{- file_path -}}/x/{{ frame }}.npy", {"file_path": "/data"}, "/data/x"),
        ("{{ a }}/{{ b }}/{{ frame }}.npy", {"a": "/data", "b": "run-1"}, "/data/run-1"),
        ("/data/{{ run }}/{{ frame }}.npy", {}, "/data"),
        ("/data/run/img-{{ frame }}.npy", {}, "/data/run"),
        ("/data/out/fixed.npy", {}, "/data/out"),
        ("/data/{{ n }}/x.npy", {"n": 5}, "/data"),  # only str/path defaults are substituted
        ("/data/{{ n | upper }}/x.npy", {"n": "a"}, "/data"),  # only bare placeholders are substituted
        ("{{ file_path }}", {"file_path": "/data/one.npy"}, "/data"),
    ],
)
def test_derive_root_absolute(template: str, defaults: dict[str, object], expected: str) -> None:
    assert derive_root(template, defaults) == Path(expected)


def test_derive_root_relative_and_home(tmp_path: Path) -> None:
    assert Path.cwd() == tmp_path  # conftest chdirs every test into its tmp_path
    assert derive_root("{{ frame }}.npy", {}) == tmp_path
    assert derive_root("{{ file_path }}/{{ frame }}.npy", {}) == tmp_path  # no default: confined to the cwd
    assert derive_root("sub/dir/{{ frame }}.npy", {}) == tmp_path / "sub" / "dir"
    assert derive_root("{{ file_path }}/{{ frame }}.npy", {"file_path": "rel"}) == tmp_path / "rel"
    assert derive_root("~/archive/{{ frame }}.npy", {}) == Path(os.path.expanduser("~/archive"))


# ---------------------------------------------------------------------------------------------- PathTemplate
@pytest.mark.parametrize("source", ["{{ file_path }/x.npy", "{{ frame }.npy", "{% if %}x{% endif %}", "{{ a | }}"])
def test_syntax_error_is_a_configuration_error(source: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        PathTemplate(source, tmp_path)
    assert repr(source) in str(info.value)
    assert "syntax error" in str(info.value)


@pytest.mark.parametrize("source", ["", "   ", None, 5])
def test_empty_or_non_string_template_is_a_configuration_error(source: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        PathTemplate(source, tmp_path)  # type: ignore[arg-type]


def test_missing_key_names_key_and_template(tmp_path: Path) -> None:
    template = PathTemplate("{{ file_path }}/{{ frame }}-{{ camera_serial }}.npy", tmp_path)
    with pytest.raises(TemplateRenderError) as info:
        template.render({"file_path": str(tmp_path), "frame": 1})
    message = str(info.value)
    assert "camera_serial" in message
    assert "{{ file_path }}/{{ frame }}-{{ camera_serial }}.npy" in message


def test_render_spec_template(tmp_path: Path) -> None:
    template = PathTemplate(SPEC_TEMPLATE, tmp_path)
    names = [template.render({"file_path": str(tmp_path), "frame": i}).name for i in range(5)]
    assert names == [f"testimg-{i // 2:04d}-{i % 2}.npy" for i in range(5)]


def test_template_runs_sandboxed(tmp_path: Path) -> None:
    template = PathTemplate("{{ frame.__class__.__mro__ }}.npy", tmp_path)
    with pytest.raises(TemplateRenderError):
        template.render({"frame": 1})


# ---------------------------------------------------------------------------------------------- confine
def test_confine_accepts_paths_under_root(tmp_path: Path) -> None:
    assert confine("a/b.npy", tmp_path) == tmp_path / "a" / "b.npy"
    assert confine("a/../b.npy", tmp_path) == tmp_path / "b.npy"
    assert confine(f"{tmp_path}/c/d.npy", tmp_path) == tmp_path / "c" / "d.npy"
    assert confine("./~/x.npy", tmp_path) == tmp_path / "~" / "x.npy"  # no home expansion of rendered text


@pytest.mark.parametrize(
    "rendered",
    ["../x.npy", "a/../../x.npy", "../../../../../../etc/passwd", "/etc/passwd", "/tmp/elsewhere/x.npy", ".", "a/.."],
)
def test_confine_rejects_escapes(rendered: str, tmp_path: Path) -> None:
    with pytest.raises(PathConfinementError):
        confine(rendered, tmp_path / "root")


def test_confine_rejects_sibling_with_common_prefix(tmp_path: Path) -> None:
    with pytest.raises(PathConfinementError):
        confine(str(tmp_path / "root-other" / "x.npy"), tmp_path / "root")


@pytest.mark.parametrize("rendered", ["", "  ", "a\x00b.npy", "dir/"])
def test_confine_rejects_empty_nul_and_directories(rendered: str, tmp_path: Path) -> None:
    with pytest.raises(ArchiverError):
        confine(rendered, tmp_path)


# symlinks and renames below the root: tests/test_confinement.py (they are settled when writing)


# ---------------------------------------------------------------------------------------------- property
_TOKENS = ["a", "Z", "0", ".", "..", "../", "/", "\\", "~", "~/", "\x00", " ", "-", "{{ a }}", "\n", "é", "/etc"]
HOSTILE = st.one_of(
    st.lists(st.sampled_from(_TOKENS), max_size=8).map("".join),  # path-like pieces
    st.text(max_size=12),  # arbitrary text
)
PROPERTY_ROOT = Path("/srv/heros-archiver-property-root")  # never created: rendering and confine are lexical


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(
        [
            "{{ a }}/{{ b }}.npy",
            "{{ a }}{{ b }}",
            "{{ file_path }}/{{ a }}/{{ b }}.npy",
            "{{ file_path }}/{{ a }}-{{ b }}.json",
            "sub/{{ a }}/../{{ b }}.npy",
        ]
    ),
    a=HOSTILE,
    b=HOSTILE,
    override_file_path=st.one_of(st.none(), HOSTILE),
)
def test_rendered_paths_stay_under_root(template: str, a: str, b: str, override_file_path: str | None) -> None:
    defaults = {"file_path": str(PROPERTY_ROOT)}
    root = derive_root(template, defaults) if "file_path" in template else PROPERTY_ROOT
    compiled = PathTemplate(template, root)
    context = {**defaults, "a": a, "b": b}
    if override_file_path is not None:  # metadata from the network may override the default
        context["file_path"] = override_file_path
    try:
        path = compiled.render(context)
    except ArchiverError:
        return
    assert path.is_absolute()
    assert path != compiled.root
    assert path.is_relative_to(compiled.root)
    assert compiled.root.is_relative_to(PROPERTY_ROOT)
    assert ".." not in path.parts and "\x00" not in str(path)
    assert os.path.normpath(path) == str(path)


@settings(max_examples=300, deadline=None, database=None)
@given(
    template=st.sampled_from(
        [
            "{{ a }}/{{ b }}.npy",
            "{{ '%06d' % n }}-{{ a }}",
            "{{ a | upper }}{% for i in range(n % 3) %}-{{ i }}{% endfor %}",
            "{{ '%04d' % (n / 2) | round(0, 'floor') }}-{{ n % 2 }}",
            "{{ missing }}",
            "{{ a.__class__ }}",
        ]
    ),
    a=HOSTILE,
    b=HOSTILE,
    n=st.integers(-(10**6), 10**6),
)
def test_render_text_matches_jinja_render(template: str, a: str, b: str, n: int) -> None:
    """render_text skips Template.render's per-call copy of the globals; the result must not change."""
    compiled = PathTemplate(template, PROPERTY_ROOT)
    context = {"a": a, "b": b, "n": n, "range": "metadata may shadow a global"}
    if "range(" in template:
        del context["range"]
    try:
        expected: str | type[BaseException] = compiled._template.render(context)
    except Exception as exc:  # noqa: BLE001 - the same failure must come out of render_text
        expected = type(exc)
    try:
        got: str | type[BaseException] = compiled.render_text(context)
    except TemplateRenderError as exc:
        got = type(exc.__cause__) if exc.__cause__ is not None else TemplateRenderError
    assert got == expected


# ---------------------------------------------------------------------------------------------- over Zenoh
@pytest.mark.timeout(60)
def test_hostile_metadata_is_dead_lettered_not_written_outside(make_rig: RigFactory, tmp_path: Path) -> None:
    elsewhere = Path(f"/tmp/elsewhere-{uuid.uuid4().hex}")
    escape = (tmp_path / ".." / ".." / "escape.npy").resolve()
    assert not escape.exists()
    try:
        rig = make_rig("{{ file_path }}/{{ frame }}.npy")
        hostile = [
            {"file_path": str(elsewhere), "frame": 0},
            {"frame": "../../escape"},
            {"file_path": str(tmp_path) + "/../..", "frame": "up"},
        ]
        for i, metadata in enumerate(hostile):
            rig.camera.acquisition_data(np.full(3, i, dtype=np.int16), metadata)
        good = np.arange(5, dtype=np.int16)
        rig.camera.acquisition_data(good, {"frame": "good"})

        total = wait_for_items(rig.archiver, len(hostile) + 1)

        assert total["dead_lettered"] == len(hostile) and total["archived"] == 1, total
        assert rig.archiver.stats()["sources"]["cam"]["dead_lettered"] == len(hostile)
        assert not elsewhere.exists()
        assert not escape.exists()
        assert not (tmp_path.parent.parent / "up.npy").exists()
        assert archived_files(tmp_path) == ["good.npy"]
        assert_npy_equal(tmp_path / "good.npy", good)
        entries = dead_letter_entries(tmp_path)
        assert len(entries) == len(hostile)
        for entry in entries:
            assert "PathConfinementError" in read_entry(entry)["error"]
    finally:  # never leave anything outside tmp_path, even when the archiver misbehaves
        shutil.rmtree(elsewhere, ignore_errors=True)
        if escape.is_file():
            escape.unlink()


@pytest.mark.timeout(60)
def test_syntax_error_fails_at_construction_before_subscribing(tmp_path: Path) -> None:
    writers_before = {t for t in threading.enumerate() if t.name.startswith("heros-archiver-writer")}
    assert_refused_before_zenoh(tmp_path, "save_template", template="{{ file_path }/{{ frame }}.npy")
    writers_after = {t for t in threading.enumerate() if t.name.startswith("heros-archiver-writer")}
    assert writers_after <= writers_before, "writer threads were left running"


@pytest.mark.timeout(60)
def test_first_item_into_missing_root_is_archived(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig("{{ file_path }}/{{ frame }}.npy", default_metadata={"file_path": str(tmp_path / "new" / "root")})
    rig.camera.acquisition_data(np.arange(3), {"frame": 0})
    total = wait_for_items(rig.archiver, 1)
    assert total["archived"] == 1, total
    assert_npy_equal(tmp_path / "new" / "root" / "0.npy", np.arange(3))


@pytest.mark.timeout(60)
def test_metadata_cannot_write_into_the_archivers_state_directory(make_rig: RigFactory, tmp_path: Path) -> None:
    rig = make_rig("{{ file_path }}/{{ frame }}.npy")
    rig.camera.acquisition_data(np.arange(3), {"frame": ".heros-archiver/dead-letter/planted/payload"})
    rig.camera.acquisition_data(np.arange(3), {"frame": "ok"})

    total = wait_for_items(rig.archiver, 2)

    assert not (tmp_path / ".heros-archiver" / "dead-letter" / "planted").exists()
    assert total["archived"] == 1 and total["dead_lettered"] == 1, total
