"""Benchmarks of ml_assets (`make bench`, `python -m bench.run`); never collected as tests."""
