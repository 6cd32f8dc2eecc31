"""Measure a proposed daemon change: the daemon from the snapshot vs from a patched copy.

    cp -r cdc_invoice sql /tmp/patched/ && (edit /tmp/patched/cdc_invoice/...)
    .venv/bin/python -m tests.bench.compare /tmp/patched [--n 2000] [--reps 3] [--env K=V ...]

Interleaved drains (base, patched, base, ...) of the same orders through the same sandbox at
20 ms; prints invoices/s and daemon CPU ms/invoice for each, and the ratios. ``--env`` passes
settings to the patched daemon only (e.g. CDC_INVOICE_PROVIDER__MAX_CONNECTIONS=16), so a
configuration change can be measured with an unpatched copy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from tests.bench.drain import Rig
from tests.bench.env import ROOT, log, open_server, summary


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.compare")
    p.add_argument("patched", help="directory holding a patched cdc_invoice/ (and sql/)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=20)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--base", default="", help="directory of the base copy (default: work tree)")
    p.add_argument("--env", action="append", default=[], help="K=V for the patched daemon")
    p.add_argument("--sql", default="", help="SQL run once on the bench database (an index...)")
    args = p.parse_args()
    # Children run `python -m cdc_invoice`, which puts the working directory first on sys.path:
    # start them outside the work tree so that PYTHONPATH decides which copy runs.
    os.chdir(tempfile.mkdtemp(prefix="cdccmp-run-"))
    server = open_server()
    rig = Rig(server, "cdc_bench_compare", args.n, Path(tempfile.mkdtemp(prefix="cdccmp-")))
    if args.sql:
        import psycopg

        with psycopg.connect(rig.dsn, autocommit=True) as conn:
            conn.execute(args.sql)
    extra = dict(kv.split("=", 1) for kv in args.env)
    envs = {
        "base": {"PYTHONPATH": os.pathsep.join(filter(None, [args.base, str(ROOT)]))},
        "patched": {"PYTHONPATH": os.pathsep.join([args.patched, str(ROOT)]), **extra},
    }
    cells: dict[str, list[tuple[float, float, float]]] = {"base": [], "patched": []}
    try:
        for rep in range(args.reps):
            for name in ("base", "patched") if rep % 2 == 0 else ("patched", "base"):
                c = rig.daemon_drain(
                    args.n, args.latency_ms, concurrency=args.concurrency, env=envs[name]
                )
                cells[name].append((c.rate, c.cpu_ms_per_invoice, c.first_s))
                log(
                    f"{name}: {c.rate:.0f}/s, {c.cpu_ms_per_invoice:.2f} ms CPU/invoice, "
                    f"first invoice after {c.first_s:.1f}s"
                )
    finally:
        rig.close()
    out = {
        k: {
            "invoices_per_s": summary([r for r, _, _ in v], 1),
            "cpu_ms_per_invoice": summary([c for _, c, _ in v], 2),
            "first_invoice_s": summary([f for _, _, f in v], 2),
        }
        for k, v in cells.items()
    }
    out["rate_ratio"] = summary(
        [p[0] / b[0] for b, p in zip(cells["base"], cells["patched"], strict=True)], 2
    )
    out["cpu_ratio"] = summary(
        [p[1] / b[1] for b, p in zip(cells["base"], cells["patched"], strict=True)], 2
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
