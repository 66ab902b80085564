"""Benchmarks: `python -m jobs.bench <name>`; each prints ratios against a baseline run in the same process."""
