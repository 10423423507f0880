"""The ``heros-archiver`` command: ``demo``, ``run``, ``render``, ``replay`` (``app``), the demo, BOSS-style configs.

``main`` imports the command on first call, so that ``heros_archiver.cli.config`` can be used without
typer and rich.
"""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``heros-archiver`` command (``[project.scripts]``)."""
    from .app import main as run_app

    run_app()
