"""Benchmarks of the reindexer: run ``python -m bench --help``."""
