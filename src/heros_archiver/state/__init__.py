"""The archiver's own files under ``<root>/.heros-archiver/``: the spool, the dead-letter store, the faithful
copy both keep, the readable description beside it, and replay of dead letters.
"""
