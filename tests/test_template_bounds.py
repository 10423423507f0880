"""Templates cannot exhaust the machine: a value from the metadata can't make a render huge (issue item 18).

Each hostile case renders, on an unbounded sandbox, a string of millions of characters (or a loop that never
ends soon, or a recursion): here it is a TemplateRenderError for that item, raised before the work is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RigFactory
from helpers import archived_files, dead_letter_entries, read_entry, wait_for_items
from heros_archiver import PathConfinementError, TemplateRenderError
from heros_archiver.naming.templates import PathTemplate

BIG = 5_000_000  # characters an unbounded render would make: small enough not to hurt, far beyond any path

HOSTILE = [
    ("{{ 'x' * n }}.npy", {"n": BIG}),
    ("{{ n * 'x' }}.npy", {"n": BIG}),
    ("{{ [0] * n | length }}.npy", {"n": BIG}),
    ("{{ '%0*d' % (n, frame) }}.npy", {"n": BIG, "frame": 1}),
    ("{{ ('%0' ~ n ~ 'd') % frame }}.npy", {"n": BIG, "frame": 1}),
    ("{{ '%.*f' % (n, 1.5) }}.npy", {"n": BIG}),
    ("{{ ('%0' ~ n ~ 'd') | format(frame) }}.npy", {"n": BIG, "frame": 1}),
    ("{{ frame | center(n) }}.npy", {"n": BIG, "frame": 1}),
    ("{{ s | indent(n, true) }}.npy", {"n": BIG, "s": "a"}),
    ("{{ '{:>{}}'.format(frame, n) }}.npy", {"n": BIG, "frame": 1}),
    ("{{ '{w:0{n}d}'.format_map({'w': frame, 'n': n}) }}.npy", {"n": BIG, "frame": 1}),
    ("{{ 10 ** n }}.npy", {"n": BIG}),
    ("{{ s.replace('', s) }}.npy", {"s": "a" * 3000}),
    ("{{ s | replace('a', s) }}.npy", {"s": "a" * 3000}),
    ("{{ s.join(parts) }}.npy", {"s": "a" * 3000, "parts": ["x"] * 3000}),
    ("{{ parts | join(s) }}.npy", {"s": "a" * 3000, "parts": ["x"] * 3000}),
    ("{{ s.ljust(n) }}.npy", {"s": "a", "n": BIG}),
    ("{{ s.rjust(n) }}{{ s.center(n) }}.npy", {"s": "a", "n": BIG}),
    ("{{ s.zfill(n) }}.npy", {"s": "a", "n": BIG}),
    ("{{ s.expandtabs(n) }}.npy", {"s": "\t", "n": BIG}),
    ("{{ [1] | batch(n, 0) | list | length }}.npy", {"n": BIG}),
    ("{{ [1] | slice(n) | list | length }}.npy", {"n": BIG}),
    ("{% for i in range(n) %}{{ s }}{% endfor %}.npy", {"n": 100_000, "s": "many characters"}),
    ("{% macro f(k) %}{{ f(k) }}{% endmacro %}{{ f(frame) }}.npy", {"frame": 1}),
    ("{{ s }}.npy", {"s": "b" * 300}),  # one name longer than any file system's 255 bytes
    ("{{ s }}.npy", {"s": "d/" * 2100}),  # a path longer than 4096 bytes
]


@pytest.mark.parametrize(("source", "metadata"), HOSTILE, ids=[source for source, _ in HOSTILE])
def test_hostile_metadata_is_a_render_error(source: str, metadata: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(TemplateRenderError) as info:
        PathTemplate(source, tmp_path).render_confined(metadata)
    assert repr(source) in str(info.value)


@pytest.mark.parametrize(
    ("source", "metadata", "name"),
    [
        ("{{ '%06d' % frame }}.npy", {"frame": 7}, "000007.npy"),
        ("{{ '%0*d' % (width, frame) }}.npy", {"width": 8, "frame": 7}, "00000007.npy"),
        ("{{ '{:>5}'.format(frame) }}-{{ frame | center(5) }}.npy", {"frame": 7}, "    7-  7  .npy"),
        ("{{ 'ab' * 3 }}-{{ s.zfill(4) }}-{{ 2 ** 10 }}.npy", {"s": "7"}, "ababab-0007-1024.npy"),
        ("{{ parts | join('-') }}-{{ s | replace('a', 'bb') }}.npy", {"parts": ["x", "y"], "s": "aa"}, "x-y-bbbb.npy"),
        ("{{ s }}.npy", {"s": "c" * 251}, "c" * 251 + ".npy"),  # 255 bytes: the longest name there is
    ],
)
def test_ordinary_templates_still_render(source: str, metadata: dict[str, Any], name: str, tmp_path: Path) -> None:
    assert PathTemplate(source, tmp_path).render(metadata) == tmp_path / name


TEMPLATES = [source for source, _ in HOSTILE]
HOSTILE_VALUES = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.text(max_size=50),
    st.text(alphabet="ab\t/", min_size=0, max_size=3000),
    st.lists(st.text(max_size=4), max_size=3000),
    st.floats(allow_nan=True),
)


@settings(max_examples=200, deadline=None, database=None)
@given(
    source=st.sampled_from(TEMPLATES),
    values=st.fixed_dictionaries(
        {"n": HOSTILE_VALUES, "s": HOSTILE_VALUES, "frame": HOSTILE_VALUES, "parts": HOSTILE_VALUES}
    ),
)
def test_any_metadata_renders_a_usable_path_or_a_render_error(source: str, values: dict[str, Any]) -> None:
    root = Path("/archive/root")
    try:
        path = PathTemplate(source, root).render_confined(values)
    except (TemplateRenderError, PathConfinementError):  # the item's error: dead-lettered, the archiver goes on
        return
    encoded = path.encode("utf-8", "surrogateescape")
    assert len(encoded) < 4096 and max(len(part) for part in encoded.split(b"/")) <= 255


@pytest.mark.timeout(60)
def test_hostile_width_over_zenoh_is_dead_lettered_and_the_next_frame_archived(
    make_rig: RigFactory, tmp_path: Path
) -> None:
    rig = make_rig("{{ file_path }}/{{ '%0*d' % (width, frame) }}.npy")
    rig.camera.acquisition_data(np.zeros(3, dtype=np.uint8), {"frame": 1, "width": 10**9})
    rig.camera.acquisition_data(np.ones(3, dtype=np.uint8), {"frame": 2, "width": 4})

    total = wait_for_items(rig.archiver, 2)

    assert total["archived"] == 1 and total["dead_lettered"] == 1 and total["retried"] == 0, total
    assert archived_files(tmp_path) == ["0002.npy"]
    [entry] = dead_letter_entries(tmp_path)
    assert "TemplateRenderError" in read_entry(entry)["error"]
