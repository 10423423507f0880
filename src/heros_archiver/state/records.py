"""Reading a settings record back from a dead-letter entry, strictly: the entry is a file that may have been
edited, so a record that is not exactly what the archiver wrote is refused, never half-read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, ClassVar, Self

from ..errors import ConfigurationError

#: the type of JSON's ``null``, for field types that allow it
NONE = type(None)


def strict_fields(
    cls: type, data: Any, label: str, field_types: Mapping[str, tuple[type, ...]], kind: str
) -> dict[str, Any]:
    """``data`` checked as the record of the dataclass ``cls``: a JSON object with every field and nothing else,
    each value of exactly one of its ``field_types`` (``true`` is no number, ``1`` no boolean), and the field
    ``kind`` equal to ``kind``. ``label`` names the record in messages (e.g. "hdf5 writer settings")."""
    names = [item.name for item in fields(cls)]
    if not isinstance(data, dict):
        raise ConfigurationError(f"{label}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in names)
    missing = [name for name in names if name not in data]
    if unknown or missing:
        raise ConfigurationError(
            f"{label}: expected exactly the fields {names}, got unknown {unknown} and missing {missing}"
        )
    for name, kinds in field_types.items():
        if type(data[name]) not in kinds:
            expected = " or ".join("null" if allowed is NONE else allowed.__name__ for allowed in kinds)
            raise ConfigurationError(
                f"{label} field {name!r}: expected {expected}, got {type(data[name]).__name__} {data[name]!r:.100}"
            )
    if data["kind"] != kind:
        raise ConfigurationError(f"{label} field 'kind': expected {kind!r}, got {data['kind']!r}")
    return data


class SettingsRecord:
    """The writer settings an archiver records with its dead letters, as a dataclass (subclasses are ones):
    ``to_dict`` for ``entry.json``, ``from_dict`` to read it back strictly. Each kind names its ``KIND``, the
    ``LABEL`` of its messages and the JSON types of its fields; every kind records the archive ``root``."""

    KIND: ClassVar[str]
    LABEL: ClassVar[str]
    FIELD_TYPES: ClassVar[Mapping[str, tuple[type, ...]]]
    root: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Inverse of ``to_dict``, strict (the dict comes from a file that may have been edited): every field,
        nothing else, each of its JSON type (``true`` is no number, ``1`` no boolean), the right ``kind``."""
        return cls(**strict_fields(cls, data, cls.LABEL, cls.FIELD_TYPES, cls.KIND))
