"""Local writes that cannot escape the root and cannot be half-done: directory handles beneath the root
(``confinement``), atomic create without overwrite (``atomic``), named temporaries (``temporaries``) and the
writeback window (``writeback``).
"""
