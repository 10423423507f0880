"""What happened to each item, for everyone who wants to know: outcomes, listeners, the catalog, events,
status and metrics (decision 0030).

The pipeline reports every item's end once, as an outcome (``outcomes``): archived (with where it went:
the file, or the container, member and index range, its bytes and checksum), dead-lettered (with the
entry), or dropped (with why). ``listeners.ListenerHub`` hands each batch of outcomes (one commit's) to
the listeners: cheap ones on the writer thread (``inline``), the rest on a thread of their own behind a
bounded queue, so that a slow listener never slows archiving and is counted when it falls behind.
"""
