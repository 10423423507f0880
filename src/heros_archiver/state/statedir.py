"""The layout of the archiver's own folder under the archive root, named once for every module that uses it.

``<root>/.heros-archiver/`` holds the dead-letter store, the spool, the records of named temporaries and the
catalog of what was archived (``observe.catalog``, with the journals it is applied from);
event metadata can never render a path into it (``writer``), replay finds an archive's root from it
(``replay``), and a start refuses it when it is a symbolic link (``files``).
"""

from __future__ import annotations

from pathlib import PurePath

#: The directory under the archive root that holds the archiver's own state.
STATE_DIR_NAME = ".heros-archiver"
#: Where failed items are kept, relative to the root.
DEAD_LETTER_SUBDIR = PurePath(STATE_DIR_NAME, "dead-letter")
#: Where spilled items wait, beside the dead letters.
SPOOL_DIR_NAME = "spool"
#: Where each process records the directories of its named temporaries (decision 0014), relative to the root.
RECORDS_SUBDIR = PurePath(STATE_DIR_NAME, "temporaries")
#: Where the Zarr archiver builds each array before giving it its name (``storage.staged_trees``), relative to the root.
STAGING_SUBDIR = PurePath(STATE_DIR_NAME, "staging")
#: The catalog of what was archived under the root (SQLite, ``observe.catalog_schema``), relative to the root.
CATALOG_FILE = PurePath(STATE_DIR_NAME, "catalog.sqlite")
#: Where each archiver journals its outcomes before the catalog has them (``observe.catalog_journal``).
CATALOG_JOURNAL_SUBDIR = PurePath(STATE_DIR_NAME, "catalog-journal")
