"""Training and export of the default score network (needs the `train` extra: torch).

Only `digits` is importable without torch: the benchmarks and the oracle-model script use it.
"""
