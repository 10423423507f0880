"""One exception hierarchy for everything the archiver reports.

Every error says what was expected, what arrived and where (source, event, path), so that
one log line is enough to find the cause. ``permanent`` tells the pipeline whether a retry
can help: a template that cannot render will not render on the next try, a full disk may.
"""

from __future__ import annotations


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


class ReplayError(ArchiverError):
    """A dead-letter entry could not be read back."""


class UnfaithfulError(ArchiverError):
    """A value cannot be kept in the archiver's own state exactly as it arrived (spool, dead-letter store).

    Raised for a type outside the faithful encoding's whitelist, a value pickle refuses (too deeply
    nested, not picklable), and for a stored copy that cannot be read back (damaged, planted, edited).
    """
