"""The public archiver classes (``HERODataArchiver``, ``FileArchiver``, ``ArrayArchiver``, ``JsonArchiver``,
``Hdf5Archiver``, ``ZarrAppendArchiver``): they check their arguments, build the pipeline and a sink, and subscribe.

Imported from ``heros_archiver`` lazily; nothing here is imported by the helper process.
"""
