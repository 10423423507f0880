"""Everything between Zenoh and the pipeline: the subscription's intake, decoding camera frames as views,
the shared-memory decision, and ``heros_compat``, the one place that reaches heros' internals.
"""
