"""asyncjobs benchmarks: `nox -s bench` (or `python -m benchmarks [CASE...]`)."""
