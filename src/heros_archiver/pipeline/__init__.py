"""Items on their way: the bounded queue and its lanes, overflow (block, spill, lose), the writer threads
with retry and dead-lettering, the container writer's commit points, and the per-source accounting.
"""
