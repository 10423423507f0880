"""The optional dependencies: imported only by the archiver that needs one, and a clear error when it is missing.

h5py, zarr and tifffile take a second or more to import and are not needed by most archivers (nor by the
helper process, decision 0012), so each is an extra of ``pyproject.toml`` (``[hdf5]``, ``[zarr]``,
``[zarrs]``, ``[tiff]``, ``[all]``) and imported by ``require_extra`` when an archiver that needs it is made.
A missing one then fails at construction, before any Zenoh session or file exists, with the one command
that fixes it, instead of a bare ``ModuleNotFoundError`` at the first frame. Decision 0025.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigurationError

#: The package this is, as ``pip`` spells it in the install command of the message.
DISTRIBUTION = "heros-archiver"


def require_extra(extra: str, module: str) -> ModuleType:
    """Import ``module`` (e.g. ``"zarr"``), which the extra ``extra`` of ``pyproject.toml`` installs.

    Raises ConfigurationError when it cannot be imported: it names the module, the import's own error
    (a module not installed, or one of its dependencies missing or broken) and the install command.
    ``extra`` must be a key of ``[project.optional-dependencies]`` whose requirements install ``module``
    (tests/test_plugins.py checks every call in the package).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"expected the Python package {module!r} of the extra [{extra}], got an ImportError ({exc}); "
            f"install the extra: pip install '{DISTRIBUTION}[{extra}]'"
        ) from exc
