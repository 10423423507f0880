"""The private parts of heros the archiver uses are all there (heros_compat), and a missing one is named clearly."""

from __future__ import annotations

import types
from typing import Any

import pytest
import zenoh
from heros import serdes

from conftest import RigFactory
from heros_archiver.errors import ConfigurationError, HerosCompatibilityError
from heros_archiver.transport import heros_compat

pytestmark = pytest.mark.timeout(60)


def test_the_installed_heros_has_every_private_piece_the_archiver_uses() -> None:
    heros_compat.check_heros()  # raises HerosCompatibilityError, naming the piece, when heros changed


def test_a_missing_piece_is_named_with_the_heros_release_and_what_it_was_for() -> None:
    changed_heros = types.SimpleNamespace(__name__="EventObserver")
    with pytest.raises(HerosCompatibilityError) as info:
        heros_compat.check_heros(((changed_heros, "_deserialize", "decodes the bytes of a sample"),))
    message = str(info.value)
    assert "EventObserver._deserialize" in message and "decodes the bytes of a sample" in message
    assert f"heros {heros_compat.heros_version()}" in message
    assert isinstance(info.value, ConfigurationError)  # an archiver that cannot work: refused at start


def test_an_observer_without_an_attribute_is_refused_by_name() -> None:
    class Bare:
        _session = _session_manager = _subscriptions = _event_callbacks = None

    with pytest.raises(HerosCompatibilityError, match="_realm"):
        heros_compat.check_observer(Bare())  # type: ignore[arg-type]


def test_each_accessor_reaches_what_heros_set_on_a_real_archiver(make_rig: RigFactory) -> None:
    rig = make_rig()
    archiver: Any = rig.archiver
    heros_compat.check_observer(archiver)

    assert isinstance(heros_compat.session(archiver), zenoh.Session)
    manager = heros_compat.session_manager(archiver)
    assert manager is not None and rig.realm in heros_compat.open_sessions(manager)
    assert heros_compat.primary_subscription(archiver) in heros_compat.subscriptions(archiver)
    assert archiver.feed in heros_compat.event_callbacks(archiver).values()
    key = heros_compat.event_key(rig.realm, "cam", "acquisition_data")
    assert heros_compat.sender_name(archiver, key, "acquisition_data") == "cam"
    assert heros_compat.hero_name(rig.camera) == "cam"
    assert heros_compat.deserialize(archiver, serdes.serialize([1, {"frame": 2}])) == [1, {"frame": 2}]
