"""File formats: each turns one payload into the bytes of one file, knowing nothing of Zenoh or naming.

``base`` (the interface), ``npy`` and ``json``; imported one by one, so that what needs only the interface
(``storage``, and with it the helper process that publishes small files) does not load numpy.
"""
