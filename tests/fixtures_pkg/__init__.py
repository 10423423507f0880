"""Archiver subclasses importable by child processes (``PYTHONPATH=tests``) and by the tests themselves."""
