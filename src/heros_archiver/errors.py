"""One exception hierarchy for everything the archiver reports.

Every error says what was expected, what arrived and where (source, event, path), so that
one log line is enough to find the cause. ``permanent`` tells the pipeline whether a retry
can help: a template that cannot render will not render on the next try, a full disk may.
"""

from __future__ import annotations

import errno


class ArchiverError(Exception):
    """Base class of all heros-archiver errors."""

    #: True when retrying the same item cannot succeed (bad input, not a transient fault).
    permanent: bool = True


class ConfigurationError(ArchiverError, ValueError):
    """An archiver was constructed with arguments that cannot work (found at start, not at the first frame)."""


class PayloadError(ArchiverError, TypeError):
    """An event payload does not have the shape or type the archiver's format needs."""


class TemplateRenderError(ArchiverError):
    """A path template could not be rendered from the metadata of an item (e.g. a missing key)."""


class PathConfinementError(ArchiverError):
    """A rendered path would leave the archive root (``../``, an absolute path elsewhere, a symlink out)."""


class TargetExistsError(ArchiverError, FileExistsError):
    """The target file exists and the ``on_exists`` policy forbids replacing it."""


class StorageError(ArchiverError, OSError):
    """Writing to storage failed for a reason that may go away (disk full, permissions, I/O error)."""

    permanent = False


class InvalidTargetError(StorageError):
    """The file system refuses the target's path or the file itself: a name too long, a component that is a
    file, a name it cannot hold (ENAMETOOLONG, ENOTDIR, EISDIR, ELOOP, EINVAL, EILSEQ, EFBIG).

    These come from the item (its rendered name, its size), not from a passing fault: retrying the same
    item gives the same answer, so it is dead-lettered at once instead of stalling its writer with retries.
    """

    permanent = True


#: The errnos of ``InvalidTargetError`` (decided here, in one place, for the writer and its helper process).
INVALID_TARGET_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EINVAL, errno.EILSEQ, errno.EFBIG}
)


def storage_error(code: int, message: str) -> StorageError:
    """The StorageError for an ``errno``: InvalidTargetError (permanent) when the item is the cause."""
    cls = InvalidTargetError if code in INVALID_TARGET_ERRNOS else StorageError
    return cls(code, message)


class ReplayError(ArchiverError):
    """A dead-letter entry could not be read back."""


class CatalogError(ArchiverError):
    """The catalog of an archive root cannot be opened or read: none there, another schema, not SQLite."""


class HerosCompatibilityError(ConfigurationError):
    """The installed heros lacks a private piece the archiver relies on (``heros_compat``): a heros release changed."""


class UnfaithfulError(ArchiverError):
    """A value cannot be kept in the archiver's own state exactly as it arrived (spool, dead-letter store).

    Raised for a type outside the faithful encoding's whitelist, a value pickle refuses (too deeply
    nested, not picklable), and for a stored copy that cannot be read back (damaged, planted, edited).
    """


class ItemUnreadableError(ArchiverError):
    """An archived item cannot be read back where its location says it is (``observe.readers``, for verify).

    ``reason`` says which way, for a report that sorts them: ``missing`` (no file or store there, or no such
    member in it), ``beyond_end`` (the index is past what the container holds: truncated, or never committed),
    ``unreadable`` (it is there but does not decode: a damaged chunk, shard, page or row group) or
    ``other_item`` (a Parquet row there holds another item's key). ``path``, ``member`` and ``index`` say where.
    """

    def __init__(self, reason: str, path: str, member: str | None, index: int | None, message: str) -> None:
        self.reason = reason
        self.path = path
        self.member = member
        self.index = index
        where = path if member is None else f"{member!r}{'' if index is None else f' [{index}]'} in {path}"
        super().__init__(f"{where}: {message}")


class StatusError(ArchiverError):
    """A running archiver's status could not be read over Zenoh (``heros-archiver status``): gone, or no answer."""

    permanent = False
