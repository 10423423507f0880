"""Where items go, behind one small interface (``base``): a file per item (``writer``, ``batching``, the
helper process ``publisher``) or a container that items are appended to (``hdf5``, ``containers``).
"""
