"""Benchmark and testbed tools; run from the repository root as modules, e.g. `python -m benchmarks.inflate --help`."""
