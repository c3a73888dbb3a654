"""Benchmarks: `python -m benchmarks.NAME [--quick]` writes benchmarks/results/NAME.json."""
