"""Chaos harness: real processes and real faults, then an order-by-order comparison.

    python -m tests.chaos            # the CI-sized run (make chaos-short)
    python -m tests.chaos --full     # >= 10,000 orders, >= 50 kills (make chaos)

See run.py for what it does and docs/reliability.md for how to read the figures.
"""
