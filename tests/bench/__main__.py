"""`python -m tests.bench [--quick] [--only capture,capture-instructions,e2e,latency,scale,claim]`.

Writes bench-results.json at the repository root and prints a table. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _freeze_code() -> Path:
    """Measure one consistent snapshot of cdc_invoice and sql/: copied before anything is
    imported, first on sys.path here and on PYTHONPATH for every child (daemon, sandbox,
    peers), so edits made in the work tree while the bench runs cannot mix versions."""
    root = Path(__file__).resolve().parents[2]
    snap = Path(tempfile.mkdtemp(prefix="cdcbench-code-"))
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(root / "cdc_invoice", snap / "cdc_invoice", ignore=ignore)
    shutil.copytree(root / "sql", snap / "sql", ignore=ignore)
    sys.path.insert(0, str(snap))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(snap), str(root), os.environ.get("PYTHONPATH", "")) if p
    )
    # `python -m cdc_invoice` puts its working directory first on sys.path: children must not
    # start in the work tree, or they would import it instead of the snapshot.
    run_dir = snap / "run"
    run_dir.mkdir()
    os.chdir(run_dir)
    return snap


CODE = _freeze_code()

from tests.bench import capture, claimscale, instructions, report  # noqa: E402
from tests.bench.drain import Cell, Rig  # noqa: E402
from tests.bench.env import ROOT, log, machine_info, open_server, percentile, summary  # noqa: E402

SECTIONS = ("capture", "capture-instructions", "e2e", "latency", "scale", "claim")
EXTRA = ("capture-profile", "capture-realistic")  # not in the default run: `--only capture-profile`
PEERS = ("procrastinate", "pgqueuer")


def cells_summary(cells: list[Cell]) -> dict[str, Any]:
    return {
        "n": cells[0].n if cells else 0,
        "invoices_per_s": summary([c.rate for c in cells], 1),
        "cpu_ms_per_invoice": summary([c.cpu_ms_per_invoice for c in cells], 2),
        "sandbox_cpu_ms_per_invoice": summary([c.sandbox_ms_per_invoice for c in cells], 2),
        "postgres_cpu_ms_per_invoice": summary([c.pg_ms_per_invoice for c in cells], 2),
        "peak_rss_mb": summary([c.rss_mb for c in cells], 1),
        "first_invoice_s": summary([c.first_s for c in cells], 2),
        "seconds": summary([c.seconds for c in cells], 2),
        "failed": sum(c.failed for c in cells),
        "loadavg": [round(os.getloadavg()[0], 2)],
    }


def run_e2e(rig: Rig, quick: bool, env: dict[str, str] | None) -> dict[str, Any]:
    n = 500 if quick else 5000
    reps = 1 if quick else 3
    out: dict[str, Any] = {"n": n, "repetitions": reps, "issue_delay_ms": 200}
    # 1. concurrency sweeps at 20 ms (each worker gets its best setting)
    sweep_n = 600
    grid = {"daemon": [32, 64, 128], "procrastinate": [32, 128, 256], "pgqueuer": [32, 128, 256]}
    if quick:  # no sweep: the settings the full run usually picks
        grid = {"daemon": [64], "procrastinate": [128], "pgqueuer": [128]}
    sweep: dict[str, dict[str, float]] = {}
    best: dict[str, int] = {}
    for who, values in grid.items():
        sweep[who] = {}
        if len(values) == 1:
            best[who] = values[0]
            continue
        for c in values:
            if who == "daemon":
                cell = rig.daemon_drain(sweep_n, 20, concurrency=c, env=env)
            else:
                cell = rig.peer_drain(who, sweep_n, 20, concurrency=c)
            sweep[who][str(c)] = round(cell.rate, 1)
            log(f"sweep {who} concurrency {c}: {cell.rate:.0f}/s")
        best[who] = int(max(sweep[who], key=lambda k: sweep[who][k]))
    out["sweep_20ms"] = {"n": sweep_n, "invoices_per_s": sweep, "chosen": best}
    # 2. the measured cells, interleaved: daemon, procrastinate, pgqueuer, repeated
    for latency in (20, 0):
        # 0 ms is the secondary figure: one repetition keeps `make bench` near 15-20 minutes
        r = reps if latency == 20 else int(os.environ.get("BENCH_REPS_0MS", "1"))
        cells: dict[str, list[Cell]] = {w: [] for w in grid}
        for rep in range(r):
            for who in grid:
                if who == "daemon":
                    cell = rig.daemon_drain(n, latency, concurrency=best[who], env=env)
                else:
                    cell = rig.peer_drain(who, n, latency, concurrency=best[who])
                cells[who].append(cell)
                log(
                    f"e2e {latency:>2} ms rep {rep + 1} {cell.who}: {cell.rate:.0f}/s, "
                    f"{cell.cpu_ms_per_invoice:.2f} ms CPU/invoice"
                )
        out[f"latency_{latency}ms"] = {w: cells_summary(c) for w, c in cells.items()}
        out[f"repetitions_{latency}ms"] = r
    return out


def run_latency(rig: Rig, quick: bool, max_rate: float, env: dict[str, str] | None) -> dict:
    rate = max(5.0, max_rate / 2)
    seconds = 5 if quick else 15
    res = rig.latency(rate, seconds, 20, concurrency=64)
    lat = res.pop("latencies_ms")
    target = 2 * 20 + 200 + 50
    return {
        **res,
        "rate": round(rate, 1),
        "seconds": seconds,
        "platform_latency_ms": 20,
        "issue_delay_ms": 200,
        "p50_ms": round(percentile(lat, 50), 1),
        "p90_ms": round(percentile(lat, 90), 1),
        "p99_ms": round(percentile(lat, 99), 1),
        "max_ms": round(max(lat), 1),
        "target_p99_ms": target,
        # how many invoices took 0-100 ms, 100-200 ms, ...: a second poll shows as a second hump
        "histogram_100ms": _histogram(lat, 100),
    }


def _histogram(values: list[float], width: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        lo = int(v // width * width)
        key = f"{lo}-{lo + int(width)}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0].split("-")[0])))


def run_scale(rig: Rig, quick: bool, env: dict[str, str] | None, conc: int) -> dict[str, Any]:
    n = 500 if quick else 3000
    reps = 1 if quick else 2
    one: list[Cell] = []
    two: list[Cell] = []
    for _ in range(reps):
        one.append(rig.daemon_drain(n, 0, concurrency=conc, env=env))
        two.append(rig.daemon_drain(n, 0, concurrency=conc, daemons=2, env=env))
        log(f"scale: one daemon {one[-1].rate:.0f}/s, two daemons {two[-1].rate:.0f}/s")
    alone = rig.sandbox_alone(1000 if quick else 6000, 64)
    log(f"sandbox alone: {alone['invoices_per_s']:.0f}/s, {alone['sandbox_cpu_util']:.0%} CPU")
    return {
        "n": n,
        "repetitions": reps,
        "latency_ms": 0,
        "one_daemon": cells_summary(one),
        "two_daemons": cells_summary(two),
        "ratio": summary([b.rate / a.rate for a, b in zip(one, two, strict=True)], 2),
        "sandbox_alone": {k: round(v, 2) if isinstance(v, float) else v for k, v in alone.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one repetition, small N (< 3 min)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    p.add_argument("--out", default=str(ROOT / "bench-results.json"))
    p.add_argument("--dsn", default="", help="admin DSN (default: 127.0.0.1:5432, else embedded)")
    p.add_argument(
        "--daemon-pythonpath",
        default="",
        help="run the daemon from a patched copy of cdc_invoice (measuring a proposal)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=0,
        help="repetitions for --only capture-realistic (default 3; 1 with --quick)",
    )
    p.add_argument("--seconds", type=float, default=0, help="seconds per pgbench run, the same")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS + EXTRA:
            p.error(f"unknown section {s!r}")
    env = None
    if args.daemon_pythonpath:
        env = {"PYTHONPATH": os.pathsep.join([args.daemon_pythonpath, str(ROOT)])}
    started = time.time()
    server = open_server(args.dsn or None)
    results: dict[str, Any] = {
        "meta": {
            "command": "make bench-quick" if args.quick else "make bench",
            "argv": sys.argv[1:],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "machine": machine_info(),
            "postgresql": {
                "version": server.version,
                "server": server.kind,
                "settings": server.settings,
                "pgbench": str(Path(server.bindir) / "pgbench"),
            },
            "daemon_pythonpath": args.daemon_pythonpath or None,
            "code": "a snapshot of cdc_invoice/ and sql/ taken when the bench started",
        }
    }
    log(f"PostgreSQL {server.version} ({server.kind}); sections {only}")
    workdir = Path(tempfile.mkdtemp(prefix="cdcbench-"))
    rig: Rig | None = None
    try:
        if "capture" in only:
            results["capture"] = capture.run(server, quick=args.quick)
        if "capture-realistic" in only:
            results["capture_realistic"] = capture.run_realistic(
                server, quick=args.quick, reps=args.reps or None, seconds=args.seconds or None
            )
        if "capture-profile" in only:
            results["capture_profile"] = capture.run_profile(server, rounds=6, n=10000)
        if "capture-instructions" in only:
            results["capture_instructions"] = instructions.run(server)
        if {"e2e", "latency", "scale"} & set(only):
            rig = Rig(server, "cdc_bench_e2e", 500 if args.quick else 5000, workdir)
        max_rate = 0.0
        conc = 64
        if "e2e" in only:
            assert rig is not None
            results["e2e"] = run_e2e(rig, args.quick, env)
            d = results["e2e"]["latency_20ms"]["daemon"]
            max_rate = float(d["invoices_per_s"]["median"])
            conc = int(results["e2e"]["sweep_20ms"]["chosen"]["daemon"])
        if "latency" in only:
            assert rig is not None
            if not max_rate:
                max_rate = rig.daemon_drain(1000, 20, concurrency=conc, env=env).rate
            results["latency"] = run_latency(rig, args.quick, max_rate, env)
        if "scale" in only:
            assert rig is not None
            results["scale"] = run_scale(rig, args.quick, env, conc)
        if "claim" in only:
            results["claim"] = claimscale.run(server, quick=args.quick)
    finally:
        if rig is not None:
            rig.close()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(CODE, ignore_errors=True)
    results["meta"]["seconds"] = round(time.time() - started, 1)
    results["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report.headline(results)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    report.print_table(results)
    log(f"wrote {args.out} in {results['meta']['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
