"""Benchmarks behind BENCHMARKS.md: each module runs as ``python -m bench.<name>``, writes JSON and prints a table."""
