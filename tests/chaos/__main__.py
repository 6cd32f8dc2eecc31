"""``python -m tests.chaos [--full] [...]``: one chaos run; figures printed and written as JSON."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .run import FULL, RESULTS, SHORT, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    p.add_argument("--full", action="store_true", help="the full run (default: the short one)")
    p.add_argument("--orders", type=int, help="orders to complete")
    p.add_argument("--rate", type=float, help="orders completed per second")
    p.add_argument("--kills", type=int, help="SIGKILLs per daemon")
    p.add_argument("--pg-restarts", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--drain-timeout", type=float, help="seconds allowed to drain at the end")
    p.add_argument(
        "--half-open-restore",
        choices=["reset", "resume", "hold"],
        help="what happens to connections stalled by a half-open link when it comes back",
    )
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON output file")
    p.add_argument("--workdir", type=Path, help="keep everything (logs, data) here")
    p.add_argument("--keep", action="store_true", help="keep the work directory even on success")
    p.add_argument("-q", "--quiet", action="store_true", help="do not echo the fault timeline")
    args = p.parse_args(argv)
    settings = FULL if args.full else SHORT
    changes = {
        "orders": args.orders,
        "rate": args.rate,
        "kills_per_daemon": args.kills,
        "pg_restarts": args.pg_restarts,
        "seed": args.seed,
        "half_open_restore": args.half_open_restore,
        "drain_timeout": args.drain_timeout,
    }
    settings = replace(settings, **{k: v for k, v in changes.items() if v is not None})
    result = run(
        settings, workdir=args.workdir, keep=args.keep, echo=not args.quiet, results=args.results
    )
    print(result.summary())
    print(f"results: {args.results}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
