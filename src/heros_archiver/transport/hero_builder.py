"""Make an archiver a HERO, as BOSS does, without heros-boss (decision 0032).

BOSS's ``HEROFactory`` builds, from the configured class, a class with heros' ``LocalHERO`` mixed in, constructs
the archiver with the configured arguments, then runs ``LocalHERO.__init__`` with the config's ``_id`` as the
name: every public method becomes a remote capability (``stats()``, ``pause()``, ...) and every ``@event`` method
an event other HEROs subscribe to (``archived``, ``failed``, ``low_disk_space``). ``hero_class`` makes that class
here, so that ``heros-archiver run`` runs each configured archiver as the same HERO BOSS would make, and
``heros-archiver`` needs no heros-boss. One thing differs from BOSS, on purpose: ``LocalHERO.__init__`` starts
heros' list of the peer's subscriptions afresh, forgetting those the archiver declared; they are put back, so
that the archiver undeclares its own before it drains (``HERODataArchiver._undeclare_subscription``) and heros
the rest at the end.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar, cast

from heros import LocalHERO

from . import heros_compat

__all__ = ["configured_class", "hero_class", "is_hero"]

T = TypeVar("T")


def is_hero(obj: object) -> bool:
    """Whether ``obj`` is a local HERO (made by ``hero_class``, by BOSS, or a LocalHERO subclass of its own)."""
    return isinstance(obj, LocalHERO)


def configured_class(cls: type) -> type:
    """The class a HERO class was made from (by ``hero_class`` or by BOSS): the first in its MRO that is no
    LocalHERO; ``cls`` itself for a class that is none."""
    return next((c for c in cls.__mro__ if not issubclass(c, LocalHERO)), cls)


#: The HERO classes made so far, by the class they were made from.
_MADE: dict[type, type] = {}
_MADE_LOCK = threading.Lock()


def hero_class(cls: type[T]) -> type[T]:
    """``cls`` with ``LocalHERO`` mixed in; construct it as ``hero_class(cls)(name, *args, hero_tags=None,
    **kwargs)``: ``cls(*args, **kwargs)`` (``realm`` and ``session_manager`` among them, as for any archiver),
    then a HERO named ``name`` in the same realm and session. Made once per class."""
    with _MADE_LOCK:
        made = _MADE.get(cls)
        if made is None:
            made = _MADE[cls] = _make(cls)
    return cast(type[T], made)


def _make(cls: type) -> type:
    def __init__(self: Any, hero_name: str, /, *args: Any, hero_tags: list[str] | None = None, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)  # type: ignore[misc]
        declared = list(heros_compat.subscriptions(self))
        try:
            LocalHERO.__init__(
                self,
                hero_name,
                realm=heros_compat.realm(self),
                session_manager=heros_compat.session_manager(self),
                tags=hero_tags,
            )
            heros_compat.keep_subscriptions(self, declared)
            heros_compat.check_hero(self)
        except BaseException:
            close = getattr(self, "close", None)
            if callable(close):
                close()
            raise

    made = type(f"{cls.__name__}_HERO", (cls, LocalHERO), {"__init__": __init__, "__module__": cls.__module__})
    made.__qualname__ = made.__name__
    made.__doc__ = cls.__doc__
    return made
