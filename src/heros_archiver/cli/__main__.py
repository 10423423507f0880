"""``python -m heros_archiver.cli``: the ``heros-archiver`` command."""

from .app import main

main()
