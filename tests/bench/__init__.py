"""`make bench`: capture overhead, end-to-end drain vs procrastinate and PgQueuer, latency, scale.

Not a test suite: nothing here is named test_*.py, so pytest never collects it. Run it with
`make bench` (full, ~15 min) or `make bench-quick` (one repetition, small N, < 3 min), or
`.venv/bin/python -m tests.bench --help`. docs/benchmarks.md explains the method and results.
"""
