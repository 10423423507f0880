"""Every use of heros' private attributes, in one place, checked against the installed heros.

The archiver needs more of heros than its public API offers: the observer's Zenoh session (to declare a
subscription with a handler of its own, decision 0002), its decoder, its list of subscriptions (so that
heros undeclares ours), its callbacks (dispatch with a cached sender name), the name parts of a key
expression, the session manager's open sessions and configuration (shared memory, decision 0003), the
discovery of a realm's HEROs (``heros-archiver status``), and whether an event of a local HERO has anyone to
hear it (its handler's callbacks and Zenoh publisher, decision 0046).
None of these are promised by heros, so a new release may rename or remove any of them. Here each is
reached through one function, and ``check_heros`` looks for all of them at import: a heros that changed
fails the archiver's start with a message that names what is missing, instead of an AttributeError on
Zenoh's receive thread at the first event. ``tests/test_heros_compat.py`` runs the same checks.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import heros
import heros.helper
from heros import EventObserver, HEROPeer
from heros.zenoh import ZenohSessionManager

from ..errors import HerosCompatibilityError

#: Class-level pieces of heros the archiver relies on: (owner, attribute, what the archiver does with it).
REQUIRED_CLASS_ATTRIBUTES: tuple[tuple[Any, str, str], ...] = (
    (EventObserver, "_subscribe_selector", "overridden to subscribe with a handler of the archiver's own"),
    (EventObserver, "_handle_event", "overridden to dispatch events with a cached sender name"),
    (EventObserver, "_deserialize", "decodes the bytes of a sample as heros would"),
    (EventObserver, "register_callback", "registers the archiver's feed before subscribing"),
    (EventObserver, "_ns_objects", "the key-expression prefix of HERO objects"),
    (ZenohSessionManager, "update_config", "turns Zenoh's shared memory off before the session opens"),
    (ZenohSessionManager, "release_session", "releases the session of an archiver that failed to start"),
    (heros.helper, "object_name_from_keyexpr", "finds the sending HERO's name in a key expression"),
    (HEROPeer, "_discover", "finds the running archivers of a realm (heros-archiver status)"),
)
#: Instance attributes an EventObserver has once constructed.
REQUIRED_OBSERVER_ATTRIBUTES = ("_session", "_session_manager", "_subscriptions", "_event_callbacks", "_realm")
#: Instance attributes a LocalHERO has once constructed: its name (the archiver's events name it), and the
#: liveliness token ``LocalHERO.__init__`` declares last (``hero_ready``: its events can be sent).
REQUIRED_HERO_ATTRIBUTES = ("_name", "_endpoint_base_path", "liveliness_token")


def heros_version() -> str:
    """The installed heros release, for messages ("unknown" if it cannot be told)."""
    try:
        return version("heros")
    except PackageNotFoundError:
        return "unknown"


def _missing(what: str, use: str) -> HerosCompatibilityError:
    return HerosCompatibilityError(
        f"heros {heros_version()}: expected {what} ({use}), but this heros has none; heros-archiver supports the "
        "heros releases named in its pyproject.toml"
    )


def check_heros(required: tuple[tuple[Any, str, str], ...] = REQUIRED_CLASS_ATTRIBUTES) -> None:
    """Raise HerosCompatibilityError naming the first private piece of heros that is missing."""
    for owner, attribute, use in required:
        if not hasattr(owner, attribute):
            raise _missing(f"{getattr(owner, '__name__', owner)}.{attribute}", use)


def check_observer(observer: EventObserver) -> None:
    """Raise HerosCompatibilityError unless a constructed observer has the attributes the archiver uses."""
    for attribute in REQUIRED_OBSERVER_ATTRIBUTES:
        if not hasattr(observer, attribute):
            raise _missing(f"EventObserver instances to have {attribute}", "set by heros' constructor")


def check_hero(hero: Any) -> None:
    """Raise HerosCompatibilityError unless a constructed LocalHERO has the attributes the archiver uses."""
    for attribute in REQUIRED_HERO_ATTRIBUTES:
        if not hasattr(hero, attribute):
            raise _missing(f"LocalHERO instances to have {attribute}", "set by heros' LocalHERO constructor")


def hero_ready(hero: Any) -> bool:
    """True once ``LocalHERO.__init__`` has finished (its last step declares the liveliness token): before, an
    ``@event`` method of an archiver that is being made a HERO has no publisher yet."""
    return getattr(hero, "liveliness_token", None) is not None


def keep_subscriptions(observer: EventObserver, declared: list[Any]) -> None:
    """Put ``declared`` back in front of the observer's subscriptions: ``LocalHERO.__init__`` (through
    ``HEROPeer.__init__``) starts heros' list afresh, after the archiver declared its own."""
    subscriptions(observer)[:0] = [sub for sub in declared if sub not in subscriptions(observer)]


def session(observer: EventObserver) -> Any:
    """The observer's Zenoh session (heros opens one per realm and process)."""
    return observer._session


def session_manager(observer: EventObserver) -> ZenohSessionManager | None:
    """The session manager the observer got its session from (None before heros set it)."""
    return getattr(observer, "_session_manager", None)


def subscriptions(observer: EventObserver) -> list[Any]:
    """The subscriptions heros undeclares when the observer is destroyed (ours are added to it)."""
    result: list[Any] = getattr(observer, "_subscriptions", [])
    return result


def primary_subscription(observer: EventObserver) -> Any:
    """The event subscription heros' constructor declared (None before it did)."""
    return getattr(observer, "_subscription", None)


def event_callbacks(observer: EventObserver) -> dict[str, Callable[[str, Any], None]]:
    """The callbacks registered on the observer, by id."""
    callbacks: dict[str, Callable[[str, Any], None]] = observer._event_callbacks
    return callbacks


def deserialize(observer: EventObserver, raw: bytes) -> Any:
    """Decode the bytes of a sample as heros does."""
    return observer._deserialize(raw)


def sender_name(observer: EventObserver, key: str, event_name: str) -> str | None:
    """The name of the HERO that sent on key expression ``key`` (None if ``key`` has another shape)."""
    name: str | None = heros.helper.object_name_from_keyexpr(
        key,
        observer._ns_objects,
        observer._realm,
        event_name,
    )
    return name


def realm(observer: EventObserver) -> str:
    """The realm the observer's HEROs are in."""
    return str(observer._realm)


def event_key(realm: str, object_name: str, event_name: str) -> str:
    """The key expression on which HERO ``object_name`` of ``realm`` publishes ``event_name``."""
    return f"{EventObserver._ns_objects}/{realm}/{object_name}/{event_name}"


def open_sessions(manager: ZenohSessionManager) -> dict[str, Any]:
    """The sessions a manager has open, by realm (its configuration can no longer change for those)."""
    sessions: dict[str, Any] = getattr(manager, "_sessions", {})
    return sessions


def discover(peer: HEROPeer, timeout: float) -> dict[str, dict[str, Any]]:
    """Every HERO of the peer's realm that answers within ``timeout`` seconds: name -> its discovery reply
    (``class``, ``implements``, ``tags``, ...)."""
    replies: dict[str, dict[str, Any]] = peer._discover(timeout=timeout)
    return replies


def event_listened(hero: Any, event: str) -> bool:
    """Whether anything would receive ``event`` of the local HERO ``hero`` now: a callback connected in this
    process (heros' ``connect``, which also holds the remote HERO methods connected to it) or a Zenoh subscriber
    matching its publisher. True when heros' event handler is not as expected: then the event is sent, as heros
    would send it, rather than skipped on a guess."""
    try:
        handler = getattr(hero, event)
        if next(iter(handler.callbacks), None) is not None:
            return True
        return bool(handler.publisher.matching_status.matching)
    except Exception:  # noqa: BLE001 - another heros or Zenoh: fall back to sending
        return True


def hero_name(hero: Any) -> str:
    """The name a local HERO was created with."""
    return str(hero._name)


check_heros()
